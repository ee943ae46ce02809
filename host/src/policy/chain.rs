//! The rule chain (step S4): rules in configured order; the first that
//! dials wins, one that asks for SMTP stops the chain, one with no opinion
//! or one that fails passes to the next; if nothing dials, normal SMTP.

use std::sync::Arc;

use serde::Serialize;

use super::rule::{LoadedRule, RuleFailure};

/// The rules in force, in order. Replaced as a whole on reload, so an
/// evaluation runs on one version of the chain from start to end.
#[derive(Clone, Default)]
pub struct Chain {
    pub links: Vec<Link>,
}

/// One place in the chain.
#[derive(Clone)]
pub enum Link {
    /// A rule ready to run.
    Ready(Arc<LoadedRule>),
    /// A rule whose module could not be loaded; it counts as a failure on
    /// every evaluation until a good module is written to its file.
    Unavailable { name: String, reason: String },
}

impl Link {
    pub fn name(&self) -> &str {
        match self {
            Link::Ready(rule) => rule.name(),
            Link::Unavailable { name, .. } => name,
        }
    }
}

impl Chain {
    /// This chain with the link of the same name replaced by `link`.
    pub fn with_replaced(&self, link: &Link) -> Chain {
        Chain {
            links: self
                .links
                .iter()
                .map(|current| {
                    if current.name() == link.name() {
                        link.clone()
                    } else {
                        current.clone()
                    }
                })
                .collect(),
        }
    }

    /// The rule called `name`, if it is loaded.
    pub fn rule(&self, name: &str) -> Option<&Arc<LoadedRule>> {
        self.links.iter().find_map(|link| match link {
            Link::Ready(rule) if rule.name() == name => Some(rule),
            _ => None,
        })
    }
}

/// How to deliver to one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "lowercase")]
pub enum Route {
    /// Call this number (S5–S7).
    Dial { number: String },
    /// Normal SMTP relay (S8).
    Smtp,
}

/// The chain's answer for one recipient, with who decided and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub route: Route,
    /// The rule that decided; `None` when no rule dialled or stopped the chain.
    pub rule: Option<String>,
    /// The deciding rule's reason, or why the chain fell through.
    pub reason: String,
    /// The SHA-256 of the deciding rule's module (its version), so a
    /// delivery records which version of a hot-reloaded rule decided it.
    pub version: Option<String>,
    /// Rules that failed on the way and were treated as having no opinion.
    pub failures: Vec<(String, RuleFailure)>,
}

impl Verdict {
    /// The number to call, if the verdict is to call.
    pub fn number(&self) -> Option<&str> {
        match &self.route {
            Route::Dial { number } => Some(number),
            Route::Smtp => None,
        }
    }
}

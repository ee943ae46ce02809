//! The rule chain (step S4): rules in configured order; the first that
//! dials wins, one that asks for SMTP stops the chain, one with no opinion
//! or one that fails passes to the next; if nothing dials, normal SMTP.

use std::sync::Arc;

use serde::Serialize;

use super::bindings::mailcall::rule::types::{Decision, Envelope, Message};
use super::counters::RuleCounters;
use super::generation::GenerationId;
use super::rule::{LoadedRule, RuleFailure};
use super::runtime::Runtime;
use super::tables::TableSet;

/// The rules of one generation, in order.
#[derive(Default)]
pub struct Chain {
    pub links: Vec<Link>,
}

/// One place in the chain.
pub struct Link {
    name: String,
    rule: LinkRule,
    counters: Arc<RuleCounters>,
}

enum LinkRule {
    /// A rule ready to run.
    Ready(Arc<LoadedRule>),
    /// A rule whose module could not be loaded when the server started; it
    /// counts as a failure on every evaluation until a good module is
    /// written to its file.
    Unavailable(String),
}

impl Link {
    pub fn ready(rule: Arc<LoadedRule>, counters: Arc<RuleCounters>) -> Link {
        Link {
            name: rule.name().to_string(),
            rule: LinkRule::Ready(rule),
            counters,
        }
    }

    pub fn unavailable(name: &str, reason: String, counters: Arc<RuleCounters>) -> Link {
        Link {
            name: name.to_string(),
            rule: LinkRule::Unavailable(reason),
            counters,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SHA-256 of the rule's module, when it is loaded.
    pub fn digest(&self) -> Option<&str> {
        match &self.rule {
            LinkRule::Ready(rule) => Some(&rule.digest),
            LinkRule::Unavailable(_) => None,
        }
    }

    /// Runs the rule for one recipient.
    fn run(
        &self,
        runtime: &Runtime,
        tables: &Arc<TableSet>,
        envelope: &Envelope,
        message: &Message,
    ) -> Result<Decision, RuleFailure> {
        match &self.rule {
            LinkRule::Ready(rule) => rule.evaluate(runtime, tables, envelope, message),
            LinkRule::Unavailable(reason) => Err(RuleFailure::Unavailable(reason.clone())),
        }
    }
}

impl Chain {
    /// The rule called `name`, if it is loaded.
    pub fn rule(&self, name: &str) -> Option<&Arc<LoadedRule>> {
        self.links.iter().find_map(|link| match &link.rule {
            LinkRule::Ready(rule) if link.name == name => Some(rule),
            _ => None,
        })
    }

    pub fn names(&self) -> Vec<&str> {
        self.links.iter().map(Link::name).collect()
    }

    /// Runs the chain for the one recipient in `envelope`.
    pub fn evaluate(
        &self,
        runtime: &Runtime,
        tables: &Arc<TableSet>,
        envelope: &Envelope,
        message: &Message,
    ) -> Verdict {
        self.evaluate_with(envelope, |link| {
            link.run(runtime, tables, envelope, message)
        })
    }

    /// The chain's logic, with `run` standing for running one link's rule.
    fn evaluate_with(
        &self,
        envelope: &Envelope,
        run: impl Fn(&Link) -> Result<Decision, RuleFailure>,
    ) -> Verdict {
        let mut failures = Vec::new();
        for link in &self.links {
            let counters = &link.counters;
            RuleCounters::add(&counters.evaluations);
            let decided = |route: Route, reason: String, failures| Verdict {
                route,
                rule: Some(link.name.clone()),
                reason,
                version: link.digest().map(str::to_string),
                generation: None,
                failures,
            };
            match run(link) {
                Ok(Decision::Dial(dial)) => {
                    RuleCounters::add(&counters.dials);
                    let route = Route::Dial {
                        number: dial.number,
                    };
                    return decided(route, dial.reason, failures);
                }
                Ok(Decision::UseSmtp(reason)) => {
                    RuleCounters::add(&counters.smtp);
                    return decided(Route::Smtp, reason, failures);
                }
                Ok(Decision::NoOpinion) => RuleCounters::add(&counters.no_opinion),
                Err(failure) => {
                    RuleCounters::add(&counters.failures);
                    match failure {
                        RuleFailure::Timeout(_) => RuleCounters::add(&counters.timeouts),
                        RuleFailure::MemoryCap(_) => RuleCounters::add(&counters.memory_caps),
                        _ => {}
                    }
                    // A module that did not load was logged when it failed
                    // to; do not repeat it for every recipient.
                    if matches!(failure, RuleFailure::Unavailable(_)) {
                        tracing::debug!(step = "S4", rule = %link.name, "rule not loaded, skipped");
                    } else {
                        tracing::warn!(
                            step = "S4",
                            rule = %link.name,
                            rcpt = %envelope.rcpt_to,
                            "rule failed, treated as no opinion: {failure}"
                        );
                    }
                    failures.push((link.name.clone(), failure));
                }
            }
        }
        Verdict {
            route: Route::Smtp,
            rule: None,
            reason: "no rule found a number".into(),
            version: None,
            generation: None,
            failures,
        }
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
    /// The policy generation that decided.
    pub generation: Option<GenerationId>,
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::bindings::mailcall::rule::types::Dial;
    use super::*;

    /// A chain of links named `names`; what each one decides is up to the
    /// test's `run`.
    fn chain(names: &[&str]) -> Chain {
        Chain {
            links: names
                .iter()
                .map(|name| Link::unavailable(name, "fake".into(), Arc::default()))
                .collect(),
        }
    }

    fn envelope() -> Envelope {
        Envelope {
            mail_from: "a@s.example".into(),
            rcpt_to: "b@r.example".into(),
            client_address: "127.0.0.1".into(),
            helo: "c.example".into(),
        }
    }

    fn dial(number: &str) -> Result<Decision, RuleFailure> {
        Ok(Decision::Dial(Dial {
            number: number.into(),
            reason: format!("found {number}"),
        }))
    }

    #[test]
    fn the_first_rule_with_an_opinion_decides() {
        let chain = chain(&["quiet", "broken", "caller", "never"]);
        let verdict = chain.evaluate_with(&envelope(), |link| match link.name() {
            "quiet" => Ok(Decision::NoOpinion),
            "broken" => Err(RuleFailure::Trap("unreachable".into())),
            "caller" => dial("0501234"),
            _ => panic!("the chain went on after a decision"),
        });
        assert_eq!(verdict.number(), Some("0501234"));
        assert_eq!(verdict.rule.as_deref(), Some("caller"));
        assert_eq!(verdict.reason, "found 0501234");
        assert_eq!(
            verdict.failures,
            [(
                "broken".to_string(),
                RuleFailure::Trap("unreachable".into())
            )]
        );
        let counters = &chain.links[1].counters;
        assert_eq!(counters.failures.load(Ordering::Relaxed), 1);
        assert_eq!(
            chain.links[3].counters.evaluations.load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn smtp_stops_the_chain_and_nothing_falls_through_to_smtp() {
        let chain = chain(&["stopper", "caller"]);
        let verdict = chain.evaluate_with(&envelope(), |link| match link.name() {
            "stopper" => Ok(Decision::UseSmtp("internal domain".into())),
            _ => dial("0501234"),
        });
        assert_eq!(
            (verdict.route, verdict.rule.as_deref()),
            (Route::Smtp, Some("stopper"))
        );

        let verdict = chain.evaluate_with(&envelope(), |_| Ok(Decision::NoOpinion));
        assert_eq!((verdict.route, verdict.rule), (Route::Smtp, None));
        assert_eq!(verdict.reason, "no rule found a number");
        assert_eq!(
            chain.links[1].counters.no_opinion.load(Ordering::Relaxed),
            1
        );
    }
}

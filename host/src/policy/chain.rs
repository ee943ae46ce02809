//! The rule chain (step S4): rules in configured order; the first that
//! dials wins, one that asks for SMTP stops the chain, one with no opinion
//! or one that fails passes to the next (or defers the recipient, or asks
//! its previous module, as its `on_error` says); if nothing dials, normal
//! SMTP. Shadow rules (and canaries outside their share) run beside the
//! chain and never decide: what they would have changed is recorded.

use std::collections::VecDeque;
use std::mem::take;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::bindings::mailcall::rule::types::{Decision, Envelope, Message};
use super::counters::RuleCounters;
use super::generation::GenerationId;
use super::rule::{LoadedRule, RuleFailure};
use super::runtime::Runtime;
use super::sandbox::{EvaluationTrace, ImportCall};
use super::tables::TableSet;
use crate::config::{OnRuleError, RuleMode, RuleSettings};

/// The rules of one generation, in order.
#[derive(Default)]
pub struct Chain {
    pub links: Vec<Link>,
}

/// How one link takes part, from its `[rules.NAME]` settings.
#[derive(Debug, Clone, Copy)]
pub struct Role {
    pub mode: RuleMode,
    pub canary: u32,
    pub on_error: OnRuleError,
    pub max_failures: u32,
    pub failure_window: Duration,
}

impl Role {
    pub fn of(settings: &RuleSettings) -> Role {
        Role {
            mode: settings.mode,
            canary: settings.canary,
            on_error: settings.on_error,
            max_failures: settings.max_failures,
            failure_window: Duration::from_secs(settings.failure_window_secs.into()),
        }
    }

    /// Whether the link decides for a message whose queue id falls in
    /// `share` (0–99).
    fn decides(&self, share: u32) -> bool {
        match self.mode {
            RuleMode::Active => true,
            RuleMode::Shadow => false,
            RuleMode::Canary => share < self.canary,
        }
    }
}

impl Default for Role {
    fn default() -> Role {
        Role::of(&RuleSettings::default())
    }
}

/// One place in the chain.
pub struct Link {
    name: String,
    rule: LinkRule,
    /// The rule's module of an earlier generation, for `on_error =
    /// "previous"` and for when the breaker is open.
    fallback: Option<Arc<LoadedRule>>,
    role: Role,
    counters: Arc<RuleCounters>,
    breaker: Breaker,
}

enum LinkRule {
    /// A rule ready to run.
    Ready(Arc<LoadedRule>),
    /// A rule whose module could not be loaded when the server started; it
    /// counts as a failure on every evaluation until a good module is
    /// written to its file.
    Unavailable(String),
}

/// Which module of a link runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    Current,
    Fallback,
}

/// Counts a link's recent failures; open (the rule switched off) once
/// there were `max_failures` within the window, until the generation is
/// replaced.
#[derive(Default)]
struct Breaker {
    failures: Mutex<VecDeque<Instant>>,
    open: AtomicBool,
}

impl Breaker {
    fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Records a failure; true when this one opened the breaker.
    fn failed(&self, role: &Role) -> bool {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.push_back(now);
        while failures
            .front()
            .is_some_and(|first| now.duration_since(*first) > role.failure_window)
        {
            failures.pop_front();
        }
        failures.len() >= role.max_failures as usize && !self.open.swap(true, Ordering::Relaxed)
    }
}

/// What one link came to.
enum Judged {
    Decided(Decision, Option<String>),
    Failed(RuleFailure),
}

impl Link {
    pub fn ready(
        rule: Arc<LoadedRule>,
        role: Role,
        fallback: Option<Arc<LoadedRule>>,
        counters: Arc<RuleCounters>,
    ) -> Link {
        Link {
            name: rule.name().to_string(),
            rule: LinkRule::Ready(rule),
            fallback,
            role,
            counters,
            breaker: Breaker::default(),
        }
    }

    pub fn unavailable(
        name: &str,
        reason: String,
        role: Role,
        counters: Arc<RuleCounters>,
    ) -> Link {
        Link {
            name: name.to_string(),
            rule: LinkRule::Unavailable(reason),
            fallback: None,
            role,
            counters,
            breaker: Breaker::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SHA-256 of the rule's module, when it is loaded.
    /// How it takes part: active, shadow, or canary for N %.
    pub fn mode(&self) -> String {
        match self.role.mode {
            RuleMode::Active => "active".into(),
            RuleMode::Shadow => "shadow".into(),
            RuleMode::Canary => format!("canary {} %", self.role.canary),
        }
    }

    pub fn digest(&self) -> Option<&str> {
        self.loaded().map(|rule| rule.digest.as_str())
    }

    /// The link's loaded module of this generation (`None`: not loaded).
    pub fn loaded(&self) -> Option<&Arc<LoadedRule>> {
        match &self.rule {
            LinkRule::Ready(rule) => Some(rule),
            LinkRule::Unavailable(_) => None,
        }
    }

    /// The rule's loaded module, for this generation or its fallback.
    pub fn module(&self) -> Option<&Arc<LoadedRule>> {
        match &self.rule {
            LinkRule::Ready(rule) => Some(rule),
            LinkRule::Unavailable(_) => self.fallback.as_ref(),
        }
    }

    /// Runs one of the link's modules for one recipient.
    fn run(
        &self,
        module: Module,
        runtime: &Runtime,
        tables: &Arc<TableSet>,
        envelope: &Envelope,
        message: &Arc<Message>,
        trace: &mut EvaluationTrace,
    ) -> Result<Decision, RuleFailure> {
        let rule = match (module, &self.rule) {
            (Module::Current, LinkRule::Ready(rule)) => rule,
            (Module::Current, LinkRule::Unavailable(reason)) => {
                return Err(RuleFailure::Unavailable(reason.clone()))
            }
            (Module::Fallback, _) => match &self.fallback {
                Some(rule) => rule,
                None => return Err(RuleFailure::Unavailable("no previous module".into())),
            },
        };
        rule.evaluate(runtime, tables, envelope, message, trace)
    }

    /// Runs one module through `run`, recording the step.
    fn step(
        &self,
        module: Module,
        role: StepRole,
        run: &impl Fn(&Link, Module, &mut EvaluationTrace) -> Result<Decision, RuleFailure>,
        steps: &mut Vec<Step>,
    ) -> Result<Decision, RuleFailure> {
        let started = Instant::now();
        let mut trace = EvaluationTrace::default();
        let outcome = run(self, module, &mut trace);
        self.counters.latency.observe(started.elapsed());
        steps.push(Step {
            rule: self.name.clone(),
            module: match module {
                Module::Current => self.digest().map(str::to_string),
                Module::Fallback => self.fallback_digest(),
            },
            role,
            decision: StepDecision::of(&outcome),
            took_us: started.elapsed().as_micros() as u64,
            instructions: trace.instructions,
            imports: trace.imports,
        });
        outcome
    }

    /// The earlier module it falls back to, if any.
    pub fn fallback(&self) -> Option<&Arc<LoadedRule>> {
        self.fallback.as_ref()
    }

    fn fallback_digest(&self) -> Option<String> {
        self.fallback.as_ref().map(|rule| rule.digest.clone())
    }

    /// Runs the link with its failure policy and breaker: the decision and
    /// the module version that made it, or the failure.
    fn judge(
        &self,
        envelope: &Envelope,
        run: &impl Fn(&Link, Module, &mut EvaluationTrace) -> Result<Decision, RuleFailure>,
        steps: &mut Vec<Step>,
    ) -> Judged {
        let previous = self.role.on_error == OnRuleError::Previous && self.fallback.is_some();
        if self.breaker.is_open() {
            if previous {
                RuleCounters::add(&self.counters.fallbacks);
                return match self.step(Module::Fallback, StepRole::Fallback, run, steps) {
                    Ok(decision) => Judged::Decided(decision, self.fallback_digest()),
                    Err(failure) => Judged::Failed(failure),
                };
            }
            let failure = RuleFailure::SwitchedOff(self.role.max_failures);
            steps.push(Step {
                rule: self.name.clone(),
                module: self.digest().map(str::to_string),
                role: StepRole::Active,
                decision: StepDecision::of(&Err(failure.clone())),
                took_us: 0,
                instructions: None,
                imports: Vec::new(),
            });
            return Judged::Failed(failure);
        }
        let failure = match self.step(Module::Current, StepRole::Active, run, steps) {
            Ok(decision) => return Judged::Decided(decision, self.digest().map(str::to_string)),
            Err(failure) => failure,
        };
        RuleCounters::add(&self.counters.failures);
        match failure {
            RuleFailure::Timeout(_) => RuleCounters::add(&self.counters.timeouts),
            RuleFailure::MemoryCap(_) => RuleCounters::add(&self.counters.memory_caps),
            _ => {}
        }
        // A module that did not load was logged when it failed to; do not
        // repeat it for every recipient.
        if !matches!(failure, RuleFailure::Unavailable(_)) {
            tracing::warn!(step = "S4", rule = %self.name, rcpt = %envelope.rcpt_to, "rule failed: {failure}");
        }
        if self.breaker.failed(&self.role) {
            RuleCounters::add(&self.counters.breaker_trips);
            tracing::error!(
                step = "S4",
                rule = %self.name,
                "{} failures within {:?}: rule switched off until the next reload{}",
                self.role.max_failures,
                self.role.failure_window,
                if previous { ", its previous module decides" } else { "" }
            );
        }
        if previous {
            RuleCounters::add(&self.counters.fallbacks);
            if let Ok(decision) = self.step(Module::Fallback, StepRole::Fallback, run, steps) {
                return Judged::Decided(decision, self.fallback_digest());
            }
        }
        Judged::Failed(failure)
    }
}

/// Where a message falls among canary shares (0–99), from its queue id
/// (FNV-1a): every recipient of one message gets the same treatment.
pub fn canary_share(queue_id: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in queue_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % 100) as u32
}

impl Chain {
    /// The rule called `name`, if it is loaded.
    pub fn rule(&self, name: &str) -> Option<&Arc<LoadedRule>> {
        self.links.iter().find_map(|link| match &link.rule {
            LinkRule::Ready(rule) if link.name == name => Some(rule),
            _ => None,
        })
    }

    /// The link called `name`.
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|link| link.name == name)
    }

    /// Switches rules the breaker switched off back on (a reload).
    pub fn close_breakers(&self) {
        for link in &self.links {
            link.breaker.open.store(false, Ordering::Relaxed);
            link.breaker
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
    }

    pub fn names(&self) -> Vec<&str> {
        self.links.iter().map(Link::name).collect()
    }

    /// Runs the chain for the one recipient in `envelope` of the message
    /// queued as `queue_id`.
    pub fn evaluate(
        &self,
        runtime: &Runtime,
        tables: &Arc<TableSet>,
        queue_id: &str,
        envelope: &Envelope,
        message: &Arc<Message>,
    ) -> Verdict {
        self.evaluate_with(envelope, canary_share(queue_id), |link, module, trace| {
            link.run(module, runtime, tables, envelope, message, trace)
        })
    }

    /// The chain's logic, with `run` standing for running one link's rule.
    fn evaluate_with(
        &self,
        envelope: &Envelope,
        share: u32,
        run: impl Fn(&Link, Module, &mut EvaluationTrace) -> Result<Decision, RuleFailure>,
    ) -> Verdict {
        let mut failures = Vec::new();
        let mut steps = Vec::new();
        let mut verdict = None;
        // Where the deciding link is, for the shadows' "would have".
        let mut decided_at = self.links.len();
        for (position, link) in self.links.iter().enumerate() {
            if !link.role.decides(share) {
                continue;
            }
            RuleCounters::add(&link.counters.evaluations);
            let decided = |route: Route, reason: String, version, failures| Verdict {
                route,
                rule: Some(link.name.clone()),
                reason,
                version,
                generation: None,
                failures,
                shadows: Vec::new(),
                steps: Vec::new(),
            };
            match link.judge(envelope, &run, &mut steps) {
                Judged::Decided(Decision::Dial(dial), version) => {
                    RuleCounters::add(&link.counters.dials);
                    let route = Route::Dial {
                        number: dial.number,
                    };
                    verdict = Some(decided(route, dial.reason, version, take(&mut failures)));
                }
                Judged::Decided(Decision::UseSmtp(reason), version) => {
                    RuleCounters::add(&link.counters.smtp);
                    verdict = Some(decided(Route::Smtp, reason, version, take(&mut failures)));
                }
                Judged::Decided(Decision::NoOpinion, _) => {
                    RuleCounters::add(&link.counters.no_opinion);
                    continue;
                }
                Judged::Failed(failure)
                    if link.role.on_error == OnRuleError::Defer
                        && !matches!(failure, RuleFailure::SwitchedOff(_)) =>
                {
                    RuleCounters::add(&link.counters.deferrals);
                    let reason = format!("4.3.0 rule {} failed: {failure}", link.name);
                    failures.push((link.name.clone(), failure));
                    verdict = Some(decided(Route::Defer, reason, None, take(&mut failures)));
                }
                Judged::Failed(failure) => {
                    failures.push((link.name.clone(), failure));
                    continue;
                }
            }
            decided_at = position;
            break;
        }
        let mut verdict = verdict.unwrap_or(Verdict {
            route: Route::Smtp,
            rule: None,
            reason: "no rule found a number".into(),
            version: None,
            generation: None,
            failures,
            shadows: Vec::new(),
            steps: Vec::new(),
        });
        for (position, link) in self.links.iter().enumerate() {
            if !link.role.decides(share) {
                let in_reach = position < decided_at;
                let shadow = link.shadow(envelope, &run, in_reach, &verdict.route, &mut steps);
                verdict.shadows.push(shadow);
            }
        }
        verdict.steps = steps;
        verdict
    }
}

impl Link {
    /// Runs a link as a shadow: what it decides, and whether it would have
    /// changed the route had it been active in its place (before the link
    /// that decided, or in a chain that fell through: `in_reach`).
    fn shadow(
        &self,
        envelope: &Envelope,
        run: &impl Fn(&Link, Module, &mut EvaluationTrace) -> Result<Decision, RuleFailure>,
        in_reach: bool,
        route: &Route,
        steps: &mut Vec<Step>,
    ) -> ShadowDecision {
        RuleCounters::add(&self.counters.shadow_evaluations);
        let (decision, would) = match self.step(Module::Current, StepRole::Shadow, run, steps) {
            Ok(Decision::Dial(dial)) => (
                format!("dial {} ({})", dial.number, dial.reason),
                Some(Route::Dial {
                    number: dial.number,
                }),
            ),
            Ok(Decision::UseSmtp(reason)) => (format!("smtp ({reason})"), Some(Route::Smtp)),
            Ok(Decision::NoOpinion) => ("no opinion".to_string(), None),
            Err(failure) => {
                RuleCounters::add(&self.counters.failures);
                (format!("failed: {failure}"), None)
            }
        };
        let disagrees = in_reach && would.as_ref().is_some_and(|would| would != route);
        if disagrees {
            RuleCounters::add(&self.counters.shadow_disagreements);
            tracing::info!(
                step = "S4",
                rule = %self.name,
                rcpt = %envelope.rcpt_to,
                shadow = %decision,
                chain = %route,
                "shadow rule disagrees"
            );
        }
        ShadowDecision {
            rule: self.name.clone(),
            decision,
            disagrees,
        }
    }
}

/// What a shadow rule decided for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowDecision {
    pub rule: String,
    /// `dial NUMBER (reason)`, `smtp (reason)`, `no opinion`, `failed: …`.
    pub decision: String,
    /// It would have changed the route.
    pub disagrees: bool,
}

/// How to deliver to one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "lowercase")]
pub enum Route {
    /// Call this number (S5–S7).
    Dial { number: String },
    /// Normal SMTP relay (S8).
    Smtp,
    /// Not now: a rule that must not be skipped failed; retried later.
    Defer,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Dial { number } => write!(f, "dial {number}"),
            Route::Smtp => f.write_str("smtp"),
            Route::Defer => f.write_str("defer"),
        }
    }
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
    /// What the shadow rules (and canaries outside their share) decided.
    pub shadows: Vec<ShadowDecision>,
    /// Every rule run, in order, for the decision record.
    pub steps: Vec<Step>,
}

/// One rule run during an evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub rule: String,
    /// The SHA-256 of the module that ran.
    pub module: Option<String>,
    pub role: StepRole,
    pub decision: StepDecision,
    pub took_us: u64,
    /// Instructions executed, on a metering engine (the tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<u64>,
    /// The host imports it called.
    pub imports: Vec<ImportCall>,
}

/// How a rule took part in an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepRole {
    Active,
    Shadow,
    /// The previous generation's module, after the rule failed.
    Fallback,
}

/// What one rule run came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StepDecision {
    Dial { number: String, reason: String },
    Smtp { reason: String },
    NoOpinion,
    Failed { failure: String },
}

impl StepDecision {
    pub fn of(outcome: &Result<Decision, RuleFailure>) -> StepDecision {
        match outcome {
            Ok(Decision::Dial(dial)) => StepDecision::Dial {
                number: dial.number.clone(),
                reason: dial.reason.clone(),
            },
            Ok(Decision::UseSmtp(reason)) => StepDecision::Smtp {
                reason: reason.clone(),
            },
            Ok(Decision::NoOpinion) => StepDecision::NoOpinion,
            Err(failure) => StepDecision::Failed {
                failure: failure.to_string(),
            },
        }
    }

    /// The same route, whatever the reasons given.
    pub fn same_as(&self, other: &StepDecision) -> bool {
        match (self, other) {
            (StepDecision::Dial { number: a, .. }, StepDecision::Dial { number: b, .. }) => a == b,
            (StepDecision::Smtp { .. }, StepDecision::Smtp { .. })
            | (StepDecision::NoOpinion, StepDecision::NoOpinion)
            | (StepDecision::Failed { .. }, StepDecision::Failed { .. }) => true,
            _ => false,
        }
    }
}

impl std::fmt::Display for StepDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepDecision::Dial { number, reason } => write!(f, "dial {number} ({reason})"),
            StepDecision::Smtp { reason } => write!(f, "smtp ({reason})"),
            StepDecision::NoOpinion => f.write_str("no opinion"),
            StepDecision::Failed { failure } => write!(f, "failed: {failure}"),
        }
    }
}

impl Verdict {
    /// The number to call, if the verdict is to call.
    pub fn number(&self) -> Option<&str> {
        match &self.route {
            Route::Dial { number } => Some(number),
            Route::Smtp | Route::Defer => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::super::bindings::mailcall::rule::types::Dial;
    use super::*;

    /// A chain of links named `names`, each with its role; what each one
    /// decides is up to the test's `run`.
    fn chain(links: &[(&str, Role)]) -> Chain {
        Chain {
            links: links
                .iter()
                .map(|(name, role)| Link::unavailable(name, "fake".into(), *role, Arc::default()))
                .collect(),
        }
    }

    fn active(names: &[&'static str]) -> Chain {
        chain(
            &names
                .iter()
                .map(|n| (*n, Role::default()))
                .collect::<Vec<_>>(),
        )
    }

    fn role(mode: RuleMode, on_error: OnRuleError) -> Role {
        Role {
            mode,
            on_error,
            ..Role::default()
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

    fn counter(chain: &Chain, index: usize, pick: fn(&RuleCounters) -> &AtomicU64) -> u64 {
        pick(&chain.links[index].counters).load(Ordering::Relaxed)
    }

    #[test]
    fn the_first_rule_with_an_opinion_decides() {
        let chain = active(&["quiet", "broken", "caller", "never"]);
        let verdict = chain.evaluate_with(&envelope(), 0, |link, _, _| match link.name() {
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
        assert_eq!(counter(&chain, 1, |c| &c.failures), 1);
        assert_eq!(counter(&chain, 3, |c| &c.evaluations), 0);
    }

    #[test]
    fn smtp_stops_the_chain_and_nothing_falls_through_to_smtp() {
        let chain = active(&["stopper", "caller"]);
        let verdict = chain.evaluate_with(&envelope(), 0, |link, _, _| match link.name() {
            "stopper" => Ok(Decision::UseSmtp("internal domain".into())),
            _ => dial("0501234"),
        });
        assert_eq!(
            (verdict.route, verdict.rule.as_deref()),
            (Route::Smtp, Some("stopper"))
        );

        let verdict = chain.evaluate_with(&envelope(), 0, |_, _, _| Ok(Decision::NoOpinion));
        assert_eq!((verdict.route, verdict.rule), (Route::Smtp, None));
        assert_eq!(verdict.reason, "no rule found a number");
        assert_eq!(counter(&chain, 1, |c| &c.no_opinion), 1);
    }

    #[test]
    fn a_shadow_never_decides_and_its_disagreements_are_recorded() {
        let shadow = role(RuleMode::Shadow, OnRuleError::Skip);
        let chain = chain(&[("new", shadow), ("old", Role::default()), ("late", shadow)]);
        // `new` would have dialled before `old` decided: a disagreement;
        // `late` comes after the decider: it could not have changed it.
        let verdict = chain.evaluate_with(&envelope(), 0, |link, _, _| match link.name() {
            "new" => dial("0509999"),
            "old" => Ok(Decision::UseSmtp("not ours".into())),
            _ => dial("0508888"),
        });
        assert_eq!(
            (verdict.route.clone(), verdict.rule.as_deref()),
            (Route::Smtp, Some("old"))
        );
        assert_eq!(
            verdict.shadows,
            [
                ShadowDecision {
                    rule: "new".into(),
                    decision: "dial 0509999 (found 0509999)".into(),
                    disagrees: true,
                },
                ShadowDecision {
                    rule: "late".into(),
                    decision: "dial 0508888 (found 0508888)".into(),
                    disagrees: false,
                },
            ]
        );
        assert_eq!(counter(&chain, 0, |c| &c.shadow_disagreements), 1);
        assert_eq!(
            counter(&chain, 0, |c| &c.evaluations),
            0,
            "never evaluated as active"
        );

        // Agreeing, or without an opinion, is no disagreement.
        let verdict = chain.evaluate_with(&envelope(), 0, |link, _, _| match link.name() {
            "new" => Ok(Decision::UseSmtp("same".into())),
            "old" => Ok(Decision::UseSmtp("not ours".into())),
            _ => Ok(Decision::NoOpinion),
        });
        assert!(
            verdict.shadows.iter().all(|s| !s.disagrees),
            "{:?}",
            verdict.shadows
        );
        assert_eq!(counter(&chain, 0, |c| &c.shadow_evaluations), 2);
    }

    #[test]
    fn a_canary_decides_for_its_share_and_shadows_the_rest() {
        let canary = Role {
            canary: 30,
            ..role(RuleMode::Canary, OnRuleError::Skip)
        };
        let chain = chain(&[("canary", canary), ("old", Role::default())]);
        let run = |link: &Link, _, _: &mut EvaluationTrace| match link.name() {
            "canary" => dial("0501111"),
            _ => dial("0502222"),
        };
        let inside = chain.evaluate_with(&envelope(), 29, run);
        assert_eq!(inside.number(), Some("0501111"));
        assert!(inside.shadows.is_empty());
        let outside = chain.evaluate_with(&envelope(), 30, run);
        assert_eq!(outside.number(), Some("0502222"));
        assert!(outside.shadows[0].disagrees);
        // The share is the queue id's, the same for every recipient.
        assert_eq!(canary_share("18A2F3C4D5E6"), canary_share("18A2F3C4D5E6"));
        let shares: Vec<u32> = (0..1000).map(|n| canary_share(&format!("{n:X}"))).collect();
        let under = shares.iter().filter(|&&s| s < 50).count();
        assert!((400..=600).contains(&under), "{under} of 1000 under 50");
    }

    #[test]
    fn a_rule_that_must_not_be_skipped_defers_the_recipient() {
        let chain = chain(&[
            ("strict", role(RuleMode::Active, OnRuleError::Defer)),
            ("next", Role::default()),
        ]);
        let verdict = chain.evaluate_with(&envelope(), 0, |link, _, _| match link.name() {
            "strict" => Err(RuleFailure::Timeout(Duration::from_millis(10))),
            _ => dial("0501234"),
        });
        assert_eq!(verdict.route, Route::Defer);
        assert_eq!(verdict.rule.as_deref(), Some("strict"));
        assert!(
            verdict
                .reason
                .starts_with("4.3.0 rule strict failed: deadline"),
            "{}",
            verdict.reason
        );
        assert_eq!(counter(&chain, 0, |c| &c.deferrals), 1);
        assert_eq!(counter(&chain, 1, |c| &c.evaluations), 0);
    }

    #[test]
    fn the_breaker_switches_a_failing_rule_off_until_the_next_generation() {
        let flaky = Role {
            max_failures: 3,
            ..Role::default()
        };
        let chain = chain(&[("flaky", flaky), ("next", Role::default())]);
        let calls = std::sync::atomic::AtomicU32::new(0);
        let run = |link: &Link, _, _: &mut EvaluationTrace| match link.name() {
            "flaky" => {
                calls.fetch_add(1, Ordering::Relaxed);
                Err(RuleFailure::Trap("boom".into()))
            }
            _ => dial("0501234"),
        };
        for _ in 0..10 {
            assert_eq!(
                chain.evaluate_with(&envelope(), 0, run).number(),
                Some("0501234")
            );
        }
        assert_eq!(
            calls.load(Ordering::Relaxed),
            3,
            "not run once switched off"
        );
        assert_eq!(counter(&chain, 0, |c| &c.breaker_trips), 1);
        assert_eq!(counter(&chain, 0, |c| &c.failures), 3);
        let verdict = chain.evaluate_with(&envelope(), 0, run);
        assert_eq!(
            verdict.failures,
            [("flaky".to_string(), RuleFailure::SwitchedOff(3))]
        );
    }
}

//! One loaded rule: its linked component, its limits, and how its
//! instances are made and reused. Running a rule never panics and never
//! fails the chain: every failure comes back as a [`RuleFailure`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::{Store, Trap};

use super::bindings::mailcall::rule::types::{Decision, Envelope, Message};
use super::bindings::{ContractVersion, LinkedRule, RuleInstance};
use super::runtime::{Runtime, EPOCH_TICK};
use super::sandbox::{EvaluationTrace, RuleContext, RuleState};
use super::tables::TableSet;
use crate::config::Isolation;

/// Longest number and reason a decision may carry.
const NUMBER_MAX: usize = 32;
const REASON_MAX: usize = 1024;

/// Why a rule gave no decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleFailure {
    #[error("deadline of {0:?} exceeded")]
    Timeout(Duration),
    #[error("memory cap of {0} bytes exceeded")]
    MemoryCap(usize),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
    #[error("returned an invalid decision: {0}")]
    InvalidDecision(String),
    #[error("not loaded: {0}")]
    Unavailable(String),
    #[error("switched off after {0} failures; back at the next reload")]
    SwitchedOff(u32),
}

/// The limits and reuse policy of one rule.
#[derive(Debug, Clone)]
pub struct RuleLimits {
    pub deadline: Duration,
    pub isolation: Isolation,
    pub pool_size: usize,
    pub max_calls_per_instance: u32,
}

/// A warm instance kept between evaluations (`isolation = "pooled"`).
struct WarmInstance {
    store: Store<RuleState>,
    bindings: RuleInstance,
    calls: u32,
}

/// A rule ready to run.
pub struct LoadedRule {
    context: Arc<RuleContext>,
    /// SHA-256 of the module, to tell versions apart in the log.
    pub digest: String,
    pre: LinkedRule<RuleState>,
    limits: RuleLimits,
    warm: Mutex<Vec<WarmInstance>>,
}

impl LoadedRule {
    pub fn new(
        context: RuleContext,
        digest: String,
        pre: LinkedRule<RuleState>,
        limits: RuleLimits,
    ) -> LoadedRule {
        LoadedRule {
            context: Arc::new(context),
            digest,
            pre,
            limits,
            warm: Mutex::new(Vec::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.context.name
    }

    /// The rule contract version the module was built against.
    pub fn contract(&self) -> ContractVersion {
        self.pre.contract()
    }

    /// The largest linear memory an instance of this module grew to.
    pub fn peak_memory(&self) -> usize {
        self.context
            .peak_memory
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs the rule for one recipient; the host imports it called (and,
    /// on a metering engine, its instruction count) go to `trace`.
    pub fn evaluate(
        &self,
        runtime: &Runtime,
        tables: &Arc<TableSet>,
        envelope: &Envelope,
        message: &Arc<Message>,
        trace: &mut EvaluationTrace,
    ) -> Result<Decision, RuleFailure> {
        let mut instance = match self.take_warm() {
            Some(mut instance) => {
                instance.store.data_mut().begin_evaluation(
                    tables.clone(),
                    envelope,
                    message.clone(),
                );
                instance.store.set_epoch_deadline(self.deadline_ticks());
                instance
            }
            // A fresh instance's deadline, set before instantiation, covers
            // instantiation and the call together.
            None => self.instantiate(runtime, tables, envelope, message)?,
        };
        if runtime.metered() {
            // Fuel is only a counter here, of the call alone (not the
            // instantiation): enough never to run out.
            let _ = instance.store.set_fuel(u64::MAX);
        }
        let outcome = instance
            .bindings
            .call_resolve(&mut instance.store, envelope, message);
        trace
            .imports
            .extend(instance.store.data_mut().take_imports());
        if runtime.metered() {
            trace.instructions = instance.store.get_fuel().ok().map(|left| u64::MAX - left);
        }
        match outcome {
            Ok(decision) => {
                instance.calls += 1;
                self.return_warm(instance);
                validate(decision)
            }
            // A trapped instance is poisoned: it is dropped, never reused.
            Err(error) => Err(self.failure(error, instance.store.data())),
        }
    }

    fn instantiate(
        &self,
        runtime: &Runtime,
        tables: &Arc<TableSet>,
        envelope: &Envelope,
        message: &Arc<Message>,
    ) -> Result<WarmInstance, RuleFailure> {
        let mut state = RuleState::new(self.context.clone(), tables.clone());
        state.begin_evaluation(tables.clone(), envelope, message.clone());
        let mut store = Store::new(runtime.engine(), state);
        store.limiter(|state| state);
        store.set_epoch_deadline(self.deadline_ticks());
        if runtime.metered() {
            let _ = store.set_fuel(u64::MAX);
        }
        match self.pre.instantiate(&mut store) {
            Ok(bindings) => Ok(WarmInstance {
                store,
                bindings,
                calls: 0,
            }),
            Err(error) => Err(match self.failure(error, store.data()) {
                RuleFailure::Trap(reason) => RuleFailure::Instantiate(reason),
                other => other,
            }),
        }
    }

    fn take_warm(&self) -> Option<WarmInstance> {
        if self.limits.isolation != Isolation::Pooled {
            return None;
        }
        self.warm.lock().ok()?.pop()
    }

    fn return_warm(&self, instance: WarmInstance) {
        if self.limits.isolation != Isolation::Pooled
            || instance.calls >= self.limits.max_calls_per_instance
        {
            return;
        }
        if let Ok(mut warm) = self.warm.lock() {
            if warm.len() < self.limits.pool_size {
                warm.push(instance);
            }
        }
    }

    fn deadline_ticks(&self) -> u64 {
        let ticks = self.limits.deadline.as_nanos() / EPOCH_TICK.as_nanos();
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }

    /// Names what went wrong: the deadline, the memory cap, or a trap.
    fn failure(&self, error: wasmtime::Error, state: &RuleState) -> RuleFailure {
        if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
            return RuleFailure::Timeout(self.limits.deadline);
        }
        if state.memory_refused() {
            return RuleFailure::MemoryCap(self.context.memory_limit);
        }
        let stderr = state.stderr_text();
        let mut reason = format!("{error:#}");
        if !stderr.is_empty() {
            reason = format!("{reason} (stderr: {stderr})");
        }
        RuleFailure::Trap(reason)
    }
}

/// A decision the host can act on: a dial number is digits only, and a
/// reason fits the record.
fn validate(decision: Decision) -> Result<Decision, RuleFailure> {
    let reason = match &decision {
        Decision::Dial(dial) => {
            if dial.number.is_empty()
                || dial.number.len() > NUMBER_MAX
                || !dial.number.bytes().all(|b| b.is_ascii_digit())
            {
                let shown = &dial.number[..dial.number.floor_char_boundary(64)];
                return Err(RuleFailure::InvalidDecision(format!(
                    "dial number {shown:?} is not 1 to {NUMBER_MAX} digits"
                )));
            }
            dial.reason.as_str()
        }
        Decision::UseSmtp(reason) => reason.as_str(),
        Decision::NoOpinion => "",
    };
    if reason.len() > REASON_MAX {
        return Err(RuleFailure::InvalidDecision(format!(
            "reason longer than {REASON_MAX} bytes"
        )));
    }
    Ok(decision)
}

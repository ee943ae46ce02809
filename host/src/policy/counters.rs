//! Per-rule counters, kept by rule name across generations, so a reload
//! does not reset what an operator watches (`mailcall rules status`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters of one rule.
#[derive(Debug, Default)]
pub struct RuleCounters {
    pub evaluations: AtomicU64,
    pub dials: AtomicU64,
    pub smtp: AtomicU64,
    pub no_opinion: AtomicU64,
    pub failures: AtomicU64,
    pub timeouts: AtomicU64,
    pub memory_caps: AtomicU64,
    /// Evaluations as a shadow, and those where it would have decided
    /// otherwise than the chain did.
    pub shadow_evaluations: AtomicU64,
    pub shadow_disagreements: AtomicU64,
    /// Recipients deferred because the rule failed (`on_error = "defer"`).
    pub deferrals: AtomicU64,
    /// Decisions made by the previous generation's module instead
    /// (`on_error = "previous"`).
    pub fallbacks: AtomicU64,
    /// Times its circuit breaker switched it off.
    pub breaker_trips: AtomicU64,
}

impl RuleCounters {
    pub(super) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every rule's counters, by name.
#[derive(Debug, Default)]
pub struct Counters {
    rules: Mutex<HashMap<String, Arc<RuleCounters>>>,
}

impl Counters {
    /// The counters of rule `name`, made on first use.
    pub fn of(&self, name: &str) -> Arc<RuleCounters> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        rules.entry(name.to_string()).or_default().clone()
    }
}

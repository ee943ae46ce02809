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
    /// How long its evaluations took (as chain link and as shadow).
    pub latency: Latency,
}

/// Upper bounds of the latency buckets, in microseconds: 10 µs, doubling,
/// to about 10 s; past the last, the overflow bucket.
pub const LATENCY_BOUNDS_US: [u64; 21] = {
    let mut bounds = [0; 21];
    let mut index = 0;
    while index < bounds.len() {
        bounds[index] = 10 << index;
        index += 1;
    }
    bounds
};

/// Evaluation times in fixed buckets (lock-free: two atomic adds a
/// sample), for the rules page's percentiles and Prometheus' histogram.
#[derive(Debug, Default)]
pub struct Latency {
    /// Per bucket of `LATENCY_BOUNDS_US`, then the overflow.
    counts: [AtomicU64; 22],
    sum_us: AtomicU64,
}

/// What a [`Latency`] held at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LatencySnapshot {
    /// Per bucket of `LATENCY_BOUNDS_US`, then the overflow.
    pub counts: Vec<u64>,
    pub sum_us: u64,
}

impl Latency {
    pub fn observe(&self, took: std::time::Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            counts: self
                .counts
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

impl LatencySnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The bucket bound under which a `quantile` (0–1) of the samples lie,
    /// in microseconds (an upper estimate, as Prometheus' histogram_quantile
    /// would give at the bucket's edge); `None` without samples or past the
    /// last bound.
    pub fn quantile_us(&self, quantile: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((quantile * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return LATENCY_BOUNDS_US.get(index).copied();
            }
        }
        None
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn quantiles_are_the_bucket_bounds_their_rank_falls_under() {
        let latency = Latency::default();
        assert_eq!(latency.snapshot().quantile_us(0.5), None);
        for _ in 0..90 {
            latency.observe(Duration::from_micros(15)); // bucket ≤ 20 µs
        }
        for _ in 0..10 {
            latency.observe(Duration::from_micros(3000)); // ≤ 5120 µs
        }
        let snapshot = latency.snapshot();
        assert_eq!(snapshot.count(), 100);
        assert_eq!(snapshot.sum_us, 90 * 15 + 10 * 3000);
        assert_eq!(snapshot.quantile_us(0.5), Some(20));
        assert_eq!(snapshot.quantile_us(0.9), Some(20));
        assert_eq!(snapshot.quantile_us(0.99), Some(5120));
        latency.observe(Duration::from_secs(60));
        assert_eq!(latency.snapshot().quantile_us(1.0), None);
    }
}

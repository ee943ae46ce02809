//! When to try a deferred recipient again: exponential backoff, capped,
//! until the message's lifetime runs out. The defaults are Postfix's
//! (`minimal_backoff_time=300s`, `maximal_backoff_time=4000s`,
//! `maximal_queue_lifetime=5d`).

use std::time::Duration;

use crate::config::QueueSettings;

/// The retry policy of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    /// The wait after the first failed attempt; doubled after each one.
    pub first_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// How long after acceptance a message is given up on (and bounced).
    pub lifetime: Duration,
}

impl RetrySchedule {
    /// The schedule of a `[queue]` section.
    pub fn new(settings: &QueueSettings) -> RetrySchedule {
        RetrySchedule {
            first_backoff: Duration::from_secs(settings.minimal_backoff_secs.into()),
            max_backoff: Duration::from_secs(settings.maximal_backoff_secs.into()),
            lifetime: Duration::from_secs(settings.maximal_lifetime_secs.into()),
        }
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule::new(&QueueSettings::default())
    }
}

/// What to do after a temporary failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextAttempt {
    /// Try again at this time (Unix seconds).
    At(u64),
    /// The lifetime is over: fail the recipient and bounce.
    GiveUp,
}

impl RetrySchedule {
    /// After `attempts` failed attempts (1 after the first), at `now`, for a
    /// message accepted at `received_at` (both Unix seconds).
    pub fn after_failure(&self, attempts: u32, received_at: u64, now: u64) -> NextAttempt {
        let expires = received_at.saturating_add(self.lifetime.as_secs());
        if now >= expires {
            return NextAttempt::GiveUp;
        }
        let doublings = attempts.saturating_sub(1).min(32);
        let backoff = self
            .first_backoff
            .as_secs()
            .saturating_mul(1u64 << doublings)
            .min(self.max_backoff.as_secs());
        // The last attempt happens at expiry rather than never.
        NextAttempt::At(now.saturating_add(backoff).min(expires))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up_at_expiry() {
        let schedule = RetrySchedule::default();
        let start = 1_000_000;
        assert_eq!(
            schedule.after_failure(1, start, start),
            NextAttempt::At(start + 300)
        );
        assert_eq!(
            schedule.after_failure(2, start, start),
            NextAttempt::At(start + 600)
        );
        assert_eq!(
            schedule.after_failure(4, start, start),
            NextAttempt::At(start + 2400)
        );
        assert_eq!(
            schedule.after_failure(5, start, start),
            NextAttempt::At(start + 4000)
        );
        assert_eq!(
            schedule.after_failure(60, start, start),
            NextAttempt::At(start + 4000)
        );
        let expires = start + 5 * 24 * 3600;
        assert_eq!(
            schedule.after_failure(9, start, expires - 10),
            NextAttempt::At(expires)
        );
        assert_eq!(
            schedule.after_failure(9, start, expires),
            NextAttempt::GiveUp
        );
    }
}

//! The last hour, minute by minute: what the overview's "last hour"
//! figures and its plot show. In memory, so it starts empty at each start
//! (the history keeps everything; Prometheus keeps the long view).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::history::{AttemptOutcome, DeliveryPath};

/// Minutes kept.
pub const MINUTES: u64 = 60;

/// The paths counted, in the overview's order.
pub const PATHS: [DeliveryPath; 3] = [DeliveryPath::Local, DeliveryPath::Call, DeliveryPath::Relay];

/// The outcomes counted, in the overview's order.
pub const OUTCOMES: [AttemptOutcome; 4] = [
    AttemptOutcome::Delivered,
    AttemptOutcome::Deferred,
    AttemptOutcome::Failed,
    AttemptOutcome::FellBack,
];

/// One minute's figures (or a sum of minutes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub accepted: u64,
    /// By path (`PATHS`) and outcome (`OUTCOMES`).
    pub attempts: [[u64; 4]; 3],
}

impl Figures {
    fn add(&mut self, other: &Figures) {
        self.accepted += other.accepted;
        for (row, other) in self.attempts.iter_mut().zip(&other.attempts) {
            for (count, other) in row.iter_mut().zip(other) {
                *count += other;
            }
        }
    }

    /// Attempts with `outcome`, whatever the path.
    pub fn outcome(&self, outcome: AttemptOutcome) -> u64 {
        let Some(column) = OUTCOMES.iter().position(|o| *o == outcome) else {
            return 0;
        };
        self.attempts.iter().map(|row| row[column]).sum()
    }
}

/// The minutes of the last hour that saw something, oldest first.
#[derive(Default)]
pub struct Recent {
    minutes: Mutex<VecDeque<(u64, Figures)>>,
}

/// The minute now (since the Unix epoch).
pub fn this_minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() / 60)
}

impl Recent {
    /// Adds to `minute`'s figures.
    pub fn count(&self, minute: u64, change: impl FnOnce(&mut Figures)) {
        let mut minutes = self.minutes.lock().expect("not poisoned");
        while minutes
            .front()
            .is_some_and(|(first, _)| first + MINUTES <= minute)
        {
            minutes.pop_front();
        }
        match minutes.back_mut() {
            Some((last, figures)) if *last == minute => change(figures),
            // A clock set back: count it into the latest minute.
            Some((last, figures)) if *last > minute => change(figures),
            _ => {
                let mut figures = Figures::default();
                change(&mut figures);
                minutes.push_back((minute, figures));
            }
        }
    }

    /// An accepted message, now.
    pub fn accepted(&self) {
        self.count(this_minute(), |figures| figures.accepted += 1);
    }

    /// An attempt's end, now.
    pub fn attempt(&self, path: DeliveryPath, outcome: AttemptOutcome) {
        let (Some(row), Some(column)) = (
            PATHS.iter().position(|p| *p == path),
            OUTCOMES.iter().position(|o| *o == outcome),
        ) else {
            return;
        };
        self.count(this_minute(), |figures| figures.attempts[row][column] += 1);
    }

    /// Each of the `MINUTES` minutes up to `now`, oldest first (zero where
    /// nothing happened).
    pub fn series(&self, now: u64) -> Vec<Figures> {
        let minutes = self.minutes.lock().expect("not poisoned");
        let first = (now + 1).saturating_sub(MINUTES);
        (first..=now)
            .map(|minute| {
                minutes
                    .iter()
                    .find(|(m, _)| *m == minute)
                    .map_or_else(Figures::default, |(_, figures)| *figures)
            })
            .collect()
    }

    /// The sum of the last hour up to `now`.
    pub fn last_hour(&self, now: u64) -> Figures {
        let mut sum = Figures::default();
        for figures in self.series(now) {
            sum.add(&figures);
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_older_than_an_hour_drop_out_of_the_sum() {
        let recent = Recent::default();
        recent.count(1000, |f| f.accepted += 2);
        recent.count(1030, |f| f.attempts[1][0] += 1);
        recent.count(1030, |f| f.accepted += 1);
        assert_eq!(recent.last_hour(1030).accepted, 3);
        assert_eq!(recent.last_hour(1030).outcome(AttemptOutcome::Delivered), 1);
        let series = recent.series(1030);
        assert_eq!(series.len(), 60);
        assert_eq!(series[59].accepted, 1);
        assert_eq!(series[59 - 30].accepted, 2);
        // An hour after the first minute, it is gone.
        assert_eq!(recent.last_hour(1060).accepted, 1);
        recent.count(1060, |f| f.accepted += 5);
        assert_eq!(recent.minutes.lock().unwrap().len(), 2);
        assert_eq!(recent.last_hour(1119).accepted, 5);
        assert_eq!(recent.last_hour(1120).accepted, 0);
    }
}

//! The call ladder of Fig. 4, recorded as the call happens: every message
//! of the call and every step of its channel, with its label (T1–T7 are
//! the caller's, R1–R4 the callee's answers), a short text and its time
//! from the INVITE. The caller records the whole ladder as it sees it, the
//! callee its own side; each step is logged too (INFO, with the Call-ID).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The labels of Fig. 4, and `L` for finding where to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Label {
    /// Locating the number's SIP target before the INVITE (route, ENUM,
    /// RFC 3263): no message between A and B, a step of A's own.
    L,
    /// INVITE with the channel offer.
    T1,
    /// ACK.
    T2,
    /// The channel offered (SDP).
    T3,
    /// The channel opened.
    T4,
    /// The SMTP session on the channel.
    T5,
    /// The channel closed.
    T6,
    /// BYE.
    T7,
    /// 100 Trying, 180 Ringing.
    R1,
    /// The final answer to the INVITE.
    R2,
    /// The channel answered (SDP).
    R3,
    /// 200 to BYE.
    R4,
}

/// Who sends a step's message: A calls, B answers; `Local` steps send none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Caller,
    Callee,
    Local,
}

impl Label {
    /// T-steps go from A to B, R-steps from B to A, L-steps stay at A.
    pub fn sender(self) -> Side {
        match self {
            Label::T1 | Label::T2 | Label::T3 | Label::T4 | Label::T5 | Label::T6 | Label::T7 => {
                Side::Caller
            }
            Label::R1 | Label::R2 | Label::R3 | Label::R4 => Side::Callee,
            Label::L => Side::Local,
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One step of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rung {
    /// Microseconds since the call began (the INVITE).
    pub at_us: u64,
    pub label: Label,
    pub text: String,
}

/// The steps of one call so far. Cloned handles record into the same
/// ladder (the session on the channel adds its SMTP summary).
#[derive(Debug, Clone)]
pub struct Ladder {
    started: Instant,
    call_id: Arc<Mutex<String>>,
    rungs: Arc<Mutex<Vec<Rung>>>,
}

impl Default for Ladder {
    fn default() -> Self {
        Ladder::new()
    }
}

/// Steps kept per call; a call that somehow makes more keeps its first.
const RUNGS_KEPT: usize = 64;

/// Room for the steps of a whole call, taken at once.
const RUNGS_TYPICAL: usize = 16;

impl Ladder {
    /// A ladder starting now.
    pub fn new() -> Ladder {
        Ladder {
            started: Instant::now(),
            call_id: Arc::default(),
            rungs: Arc::new(Mutex::new(Vec::with_capacity(RUNGS_TYPICAL))),
        }
    }

    /// Names the call in the log lines of later steps.
    pub(crate) fn set_call_id(&self, call_id: &str) {
        *self.call_id.lock().unwrap_or_else(|p| p.into_inner()) = call_id.to_string();
    }

    /// The call it is the ladder of.
    pub(crate) fn call_id(&self) -> String {
        self.call_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records (and logs) one step.
    pub fn step(&self, label: Label, text: impl Into<String>) {
        let text = text.into();
        // The Call-ID is read (under its lock) only if the step is logged.
        tracing::info!(
            call_id = %*self.call_id.lock().unwrap_or_else(|p| p.into_inner()),
            "{label} {text}"
        );
        let mut rungs = self.rungs.lock().unwrap_or_else(|p| p.into_inner());
        if rungs.len() < RUNGS_KEPT {
            rungs.push(Rung {
                at_us: self.started.elapsed().as_micros() as u64,
                label,
                text,
            });
        }
    }

    /// The steps recorded so far, in order.
    pub fn rungs(&self) -> Vec<Rung> {
        self.rungs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_record_into_one_ladder_in_order() {
        let ladder = Ladder::new();
        ladder.set_call_id("c1");
        let session = ladder.clone();
        ladder.step(Label::T1, "INVITE sip:1@b");
        ladder.step(Label::R2, "200 OK");
        session.step(Label::T5, "SMTP: 250 queued");
        let rungs = ladder.rungs();
        let labels: Vec<Label> = rungs.iter().map(|r| r.label).collect();
        assert_eq!(labels, [Label::T1, Label::R2, Label::T5]);
        assert!(rungs.windows(2).all(|w| w[0].at_us <= w[1].at_us));
        assert_eq!(Label::R2.sender(), Side::Callee);
        assert_eq!(Label::T5.to_string(), "T5");
    }

    #[test]
    fn a_runaway_call_keeps_its_first_steps() {
        let ladder = Ladder::new();
        for n in 0..100 {
            ladder.step(Label::T5, format!("step {n}"));
        }
        let rungs = ladder.rungs();
        assert_eq!(rungs.len(), RUNGS_KEPT);
        assert_eq!(rungs[0].text, "step 0");
    }
}

//! The calls' timers (RFC 3261 §17.2.1 Timers G, H, I; §13.3.1.4): one
//! queue for every call, served by one task, instead of a task per timer.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Answering, ServerCall};

/// RFC 3261 §17.1.1.1: the round-trip estimate and the longest interval
/// between retransmissions.
pub(super) const T1: Duration = Duration::from_millis(500);
pub(super) const T2: Duration = Duration::from_secs(4);
/// How long a datagram may stay in the network (§17.1.2.2).
pub(super) const T4: Duration = Duration::from_secs(5);
/// 64*T1: how long a final answer waits for its ACK (Timer H, Timer L),
/// and how long an ended call is remembered over UDP, so that
/// retransmissions of its requests are absorbed or answered again.
pub(super) const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(32);

pub(super) enum Timer {
    /// Our final answer is not ACKed yet: send it again (over UDP) every
    /// `every` (doubling up to T2, §17.2.1 Timer G, §13.3.1.4) until
    /// `until` (64*T1), then give up.
    AwaitAck {
        every: Option<Duration>,
        until: Instant,
    },
    /// Forget the call.
    Forget,
}

struct Due {
    at: Instant,
    /// Keeps entries due at the same instant in order.
    seq: u64,
    call: Weak<ServerCall>,
    timer: Timer,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
pub(super) struct Timers {
    queue: BinaryHeap<Reverse<Due>>,
    seq: u64,
}

impl Timers {
    /// Queues `timer` for `call` at `at`; says whether it comes due first.
    pub(super) fn push(&mut self, at: Instant, call: &Arc<ServerCall>, timer: Timer) -> bool {
        let first = self.queue.peek().is_none_or(|Reverse(first)| at < first.at);
        self.seq += 1;
        self.queue.push(Reverse(Due {
            at,
            seq: self.seq,
            call: Arc::downgrade(call),
            timer,
        }));
        first
    }
}

/// Fires the timers as they come due, until `cancel` or the answering is gone.
pub(super) async fn run_timers(
    answering: Weak<Answering>,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) {
    loop {
        let Some(answering) = answering.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut due = Vec::new();
        let next = {
            let mut timers = answering.timers.lock().unwrap_or_else(|p| p.into_inner());
            while timers
                .queue
                .peek()
                .is_some_and(|Reverse(first)| first.at <= now)
            {
                let Reverse(first) = timers.queue.pop().expect("peeked");
                due.push(first);
            }
            timers.queue.peek().map(|Reverse(first)| first.at)
        };
        for Due { call, timer, .. } in due {
            if let Some(call) = call.upgrade() {
                answering.fire(call, timer);
            }
        }
        drop(answering);
        let far = now + Duration::from_secs(3600);
        tokio::select! {
            () = tokio::time::sleep_until(next.unwrap_or(far)) => {}
            () = changed.notified() => {}
            () = cancel.cancelled() => return,
        }
    }
}

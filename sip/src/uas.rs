//! The calls we answer, at the protocol level: the INVITE server
//! transaction (RFC 3261 §17.2.1, with RFC 6026's Accepted state), the
//! dialog its 2xx makes (§12.1.1) with the 2xx retransmitted until the ACK
//! (§13.3.1.4), and the requests inside that dialog (BYE §15.1.2, CANCEL
//! §9.2, a re-INVITE, OPTIONS), answered as the transports receive them;
//! everything else goes on to rsipstack (responses to our requests, and
//! requests outside our calls).
//!
//! Why not rsipstack's server transactions and dialog layer here: per call
//! they cost a task and a channel for each transaction, a dialog with its
//! own state channel, several copies of each answer and a parse of the
//! From and To headers at every step. Under `scripts/bench-sip` the callee
//! spent about 220 µs of CPU per call on this machine, sipp's UAS 57 µs;
//! with this module (and the screen's view of each message in place of a
//! second parse, `screen::Passed`) under 50 µs, as little as sipp's (see
//! `sip/README.md`). A call is one map entry; of its INVITE the callee
//! reads the Request-URI, From and body (`Invite`), rsipstack parses it
//! whole only for our BYE; its ACK and BYE are never parsed beyond the
//! screen; its timers (retransmissions, how long an ended call is
//! remembered) are entries in one queue served by one task (`timers`).
//! The callee's policy (who may call, the channel, the session) stays in
//! `callee`, which drives a `ServerInvite`.

mod answer;
mod invite;
#[cfg(test)]
mod tests;
mod timers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use rsipstack::sip::StatusCode;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub(crate) use answer::{Arrival, Path};
pub(crate) use invite::{contact_value, Invite, ServerInvite};

use crate::ladder::{Label, Ladder};
use crate::screen::{self, Passed};
use answer::{answer_with, copied_lines, new_tag, response, Extra, Ids, Reply};
use timers::{run_timers, Timer, Timers, T1, T2, T4, TRANSACTION_TIMEOUT};

/// One call: the key it is found by and what its transaction and dialog
/// need to answer the requests that come for it.
struct ServerCall {
    key: CallKey,
    /// The INVITE's top Via branch (its CANCEL and retransmissions have it).
    branch: String,
    cseq: u32,
    /// Our tag: in the To of every answer, and the dialog's local tag.
    to_tag: String,
    reply: Reply,
    state: Mutex<CallState>,
    /// Told on every change of `state.phase`.
    changed: Notify,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CallKey {
    call_id: String,
    from_tag: String,
}

struct CallState {
    phase: Phase,
    /// Our last answer to the INVITE, while a retransmitted INVITE or the
    /// retransmission timer may need it again.
    last_answer: Option<Bytes>,
    /// Until the call is over; an ended call is remembered without it
    /// (at thousands of calls a second, 64*T1 of them add up).
    live: Option<Live>,
}

/// What a call needs only while it lives.
struct Live {
    /// What every answer to the INVITE copies from it (`copied_lines`).
    invite_lines: String,
    record_route: String,
    ladder: Ladder,
}

/// Where a call stands: its INVITE transaction's and its dialog's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No final answer yet (180 perhaps).
    Proceeding,
    /// 2xx sent, no ACK yet.
    Accepted,
    /// The 2xx was ACKed: the call runs.
    Confirmed,
    /// A non-2xx final answer sent (ours, or 487 after CANCEL or BYE), no
    /// ACK yet.
    Refused(Ending),
    /// Over; remembered a while for retransmissions.
    Ended(Ending),
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The caller's BYE.
    Bye,
    /// The caller's CANCEL, before our final answer.
    Cancel,
    /// No ACK to our 2xx within 64*T1: the callee ends it with BYE.
    NoAck,
    /// We refused it, or hung up ourselves.
    Ours,
}

impl ServerCall {
    fn lock(&self) -> MutexGuard<'_, CallState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends an answer to the INVITE (while the call lives), and keeps it
    /// for retransmissions.
    fn answer(
        &self,
        state: &mut CallState,
        status: StatusCode,
        extra: &[Extra],
        body: Option<(&str, &[u8])>,
    ) {
        let Some(live) = &state.live else { return };
        let dialog_making = (101..300).contains(&status.code());
        let record_route = if dialog_making {
            live.record_route.as_str()
        } else {
            ""
        };
        let answer = answer_with(status, &[&live.invite_lines, record_route], extra, body);
        self.reply.send(&answer);
        state.last_answer = Some(answer);
    }

    fn set_phase(&self, state: &mut CallState, phase: Phase) {
        state.phase = phase;
        match phase {
            // Retransmitted INVITEs are absorbed from now on (RFC 6026).
            Phase::Confirmed => state.last_answer = None,
            Phase::Ended(_) => {
                state.last_answer = None;
                state.live = None;
            }
            _ => {}
        }
        self.changed.notify_waiters();
    }

    /// 487 to the pending INVITE (§9.2, §15.1.2), then its ACK awaited.
    fn terminate(&self, state: &mut CallState, ending: Ending) {
        self.answer(state, StatusCode::RequestTerminated, &[], None);
        self.set_phase(state, Phase::Refused(ending));
    }
}

/// The calls by Call-ID and From tag. Hashed with foldhash, seeded at
/// random per map (hashbrown's own default), not SipHash: every request
/// hashes its key once or twice, and SipHash was a twentieth of the
/// callee's instructions.
type Calls = HashMap<CallKey, Arc<ServerCall>, foldhash::fast::RandomState>;

/// What `take` made of a request.
pub(crate) enum Take {
    /// It belonged to a call we answer, and is answered.
    Done,
    /// A new call: `begin` it once its INVITE is read (`Invite::read`).
    NewCall(Box<NewCall>),
    /// Not ours: for rsipstack.
    Pass,
}

/// A new call, as `take` found it.
pub(crate) struct NewCall {
    key: CallKey,
    branch: String,
    cseq: u32,
    to_tag: String,
    invite_lines: String,
    record_route: String,
    reply: Reply,
}

/// The calls we answer, and what answers them.
pub(crate) struct Answering {
    calls: Mutex<Calls>,
    timers: Mutex<Timers>,
    /// Told when a timer comes due sooner than the earliest before.
    timers_changed: Arc<Notify>,
    /// Takes each new call: spawns the callee's task for it (set once the
    /// user agent is up; a call before that is refused).
    on_call: OnceLock<Box<dyn Fn(ServerInvite) + Send + Sync>>,
}

impl Answering {
    /// Starts the timer task (until `cancel`).
    pub fn start(cancel: CancellationToken) -> Arc<Answering> {
        let answering = Arc::new(Answering {
            calls: Mutex::default(),
            timers: Mutex::default(),
            timers_changed: Arc::new(Notify::new()),
            on_call: OnceLock::new(),
        });
        let changed = answering.timers_changed.clone();
        tokio::spawn(run_timers(Arc::downgrade(&answering), changed, cancel));
        answering
    }

    /// Hands each new call to `on_call`, as it arrives: in the receiving
    /// task, so the call's own task starts on the same thread, at once.
    pub fn on_call(&self, on_call: impl Fn(ServerInvite) + Send + Sync + 'static) {
        self.on_call.set(Box::new(on_call)).ok();
    }

    fn calls(&self) -> MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls remembered: running, or ended and absorbing retransmissions.
    pub fn remembered(&self) -> usize {
        self.calls().len()
    }

    /// Calls not over yet.
    pub fn running(&self) -> usize {
        let calls = self.calls();
        calls
            .values()
            .filter(|call| !matches!(call.lock().phase, Phase::Ended(_)))
            .count()
    }

    /// Answers `request` if it belongs to a call we answer; says what
    /// else to do with it.
    pub fn take(&self, request: &Passed, arrival: &Arrival) -> Take {
        let Some(ids) = Ids::of(request) else {
            return Take::Pass;
        };
        let method = request.method();
        let key = CallKey {
            call_id: ids.call_id.to_string(),
            from_tag: ids.from_tag.to_string(),
        };
        let known = self.calls().get(&key).cloned();
        let Some(call) = known else {
            if method == "INVITE" && ids.to_tag.is_none() {
                let to_tag = new_tag();
                let (reply, top_via) = Reply::of(arrival, request);
                let (invite_lines, record_route) = copied_lines(request, &top_via, &to_tag);
                return Take::NewCall(Box::new(NewCall {
                    key,
                    branch: ids.branch.to_string(),
                    cseq: ids.cseq,
                    to_tag,
                    invite_lines,
                    record_route,
                    reply,
                }));
            }
            return Take::Pass;
        };
        if ids.to_tag == Some(call.to_tag.as_str()) {
            self.in_dialog(&call, request, method, ids.cseq, arrival);
            return Take::Done;
        }
        match method {
            "INVITE" if ids.to_tag.is_none() => {
                if ids.branch == call.branch {
                    // A retransmission (§17.2.3): our answer again, if one
                    // is due, where it came from this time.
                    let last = call.lock().last_answer.clone();
                    if let Some(answer) = last {
                        Reply::of(arrival, request).0.send(&answer);
                    }
                } else {
                    // Same call, another transaction: merged (§8.2.2.2).
                    let (reply, top_via) = Reply::of(arrival, request);
                    let status = StatusCode::LoopDetected;
                    reply.send(&response(request, &top_via, status, &new_tag(), &[]));
                }
                Take::Done
            }
            "CANCEL" if ids.branch == call.branch => {
                self.cancel(&call, request, arrival);
                Take::Done
            }
            _ => Take::Pass,
        }
    }

    /// Begins the call `take` found new, once its INVITE is read.
    pub fn begin(self: &Arc<Self>, new: NewCall, invite: Invite, arrival: &Arrival) {
        let NewCall {
            key,
            branch,
            cseq,
            to_tag,
            invite_lines,
            record_route,
            reply,
        } = new;
        let ladder = Ladder::new();
        ladder.set_call_id(&key.call_id);
        let live = Live {
            invite_lines,
            record_route,
            ladder: ladder.clone(),
        };
        let call = Arc::new(ServerCall {
            key: key.clone(),
            branch,
            cseq,
            to_tag,
            reply,
            state: Mutex::new(CallState {
                phase: Phase::Proceeding,
                last_answer: None,
                live: Some(live),
            }),
            changed: Notify::new(),
        });
        self.calls().insert(key, call.clone());
        let invite = ServerInvite {
            answering: self.clone(),
            call,
            ladder,
            request: invite,
            transport: arrival.transport,
            peer: arrival.peer,
            connection: arrival.connection.clone(),
        };
        // Before the user agent is up, the INVITE is dropped unanswered,
        // which answers it (`ServerInvite`'s Drop).
        if let Some(on_call) = self.on_call.get() {
            on_call(invite);
        }
    }

    /// A request with our tag: inside the call's dialog.
    fn in_dialog(
        &self,
        call: &Arc<ServerCall>,
        request: &Passed,
        method: &str,
        cseq: u32,
        arrival: &Arrival,
    ) {
        // Made only for a request that gets one: an ACK, most of what
        // comes inside a call, gets none.
        let answer = |status, extra: &[Extra]| {
            let (reply, top_via) = Reply::of(arrival, request);
            reply.send(&response(request, &top_via, status, &call.to_tag, extra));
        };
        let mut state = call.lock();
        match method {
            "ACK" => match state.phase {
                Phase::Accepted if cseq == call.cseq => {
                    step(&state, Label::T2, "ACK received");
                    call.set_phase(&mut state, Phase::Confirmed);
                }
                Phase::Refused(ending) => {
                    call.set_phase(&mut state, Phase::Ended(ending));
                    drop(state);
                    // Timer I: ACK retransmissions are absorbed a while (§17.2.1).
                    let linger = if call.reply.reliable() {
                        Duration::ZERO
                    } else {
                        T4
                    };
                    self.forget_after(call, linger);
                }
                // Retransmissions.
                _ => {}
            },
            "BYE" => {
                let phase = state.phase;
                let again = matches!(
                    phase,
                    Phase::Refused(Ending::Bye) | Phase::Ended(Ending::Bye)
                );
                if !again {
                    step(&state, Label::T7, "BYE from the peer");
                }
                answer(StatusCode::OK, &[]);
                if again {
                    return;
                }
                step(&state, Label::R4, "200 to BYE");
                match phase {
                    Phase::Proceeding => {
                        call.terminate(&mut state, Ending::Bye);
                        drop(state);
                        self.await_ack(call);
                    }
                    Phase::Accepted | Phase::Confirmed => {
                        call.set_phase(&mut state, Phase::Ended(Ending::Bye));
                        drop(state);
                        self.forget_after(call, self.linger(call));
                    }
                    // Over already (our BYE crossed theirs).
                    Phase::Refused(_) | Phase::Ended(_) => {}
                }
            }
            // We never renegotiate the channel of a running call.
            "INVITE" => {
                debug!(call_id = %call.key.call_id, "re-INVITE refused: 488");
                answer(StatusCode::NotAcceptableHere, &[]);
            }
            "OPTIONS" => {
                let allow = screen::allow_header();
                let extra = [
                    ("Allow", allow),
                    ("Accept", "application/sdp"),
                    ("Supported", ""),
                ];
                answer(StatusCode::OK, &extra);
            }
            // A CANCEL names no dialog (it has no To tag): not one of ours.
            "CANCEL" => answer(StatusCode::CallTransactionDoesNotExist, &[]),
            // Methods we know but do not serve (§8.2.1).
            _ => {
                let allow = screen::allow_header();
                let extra = [("Allow", allow)];
                answer(StatusCode::MethodNotAllowed, &extra);
            }
        }
    }

    /// §9.2: 200 to the CANCEL and, before our final answer, 487 to the INVITE.
    fn cancel(&self, call: &Arc<ServerCall>, request: &Passed, arrival: &Arrival) {
        let (reply, top_via) = Reply::of(arrival, request);
        reply.send(&response(
            request,
            &top_via,
            StatusCode::OK,
            &call.to_tag,
            &[],
        ));
        let mut state = call.lock();
        if state.phase == Phase::Proceeding {
            call.terminate(&mut state, Ending::Cancel);
            drop(state);
            self.await_ack(call);
        }
    }

    /// How long an ended call is remembered: over UDP, until retransmissions
    /// of its requests are over; over a stream there are none.
    fn linger(&self, call: &ServerCall) -> Duration {
        match call.reply.reliable() {
            true => Duration::ZERO,
            false => TRANSACTION_TIMEOUT,
        }
    }

    fn schedule(&self, call: &Arc<ServerCall>, after: Duration, timer: Timer) {
        let at = Instant::now() + after;
        let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        let first = timers.push(at, call, timer);
        drop(timers);
        if first {
            self.timers_changed.notify_one();
        }
    }

    fn forget_after(&self, call: &Arc<ServerCall>, after: Duration) {
        if after.is_zero() {
            self.forget(call);
        } else {
            self.schedule(call, after, Timer::Forget);
        }
    }

    fn forget(&self, call: &Arc<ServerCall>) {
        let mut calls = self.calls();
        if calls
            .get(&call.key)
            .is_some_and(|known| Arc::ptr_eq(known, call))
        {
            calls.remove(&call.key);
        }
    }

    /// Starts waiting for the ACK of the final answer just sent.
    fn await_ack(&self, call: &Arc<ServerCall>) {
        let every = (!call.reply.reliable()).then_some(T1);
        let until = Instant::now() + TRANSACTION_TIMEOUT;
        let first = every.unwrap_or(TRANSACTION_TIMEOUT);
        self.schedule(call, first, Timer::AwaitAck { every, until });
    }

    /// Does what `timer` of `call` is due for.
    fn fire(&self, call: Arc<ServerCall>, timer: Timer) {
        let Timer::AwaitAck { every, until } = timer else {
            return self.forget(&call);
        };
        let mut state = call.lock();
        let ending = match state.phase {
            Phase::Accepted => Ending::NoAck,
            Phase::Refused(ending) => ending,
            // ACKed.
            _ => return,
        };
        if Instant::now() >= until {
            call.set_phase(&mut state, Phase::Ended(ending));
            drop(state);
            // Over a stream, or after 64*T1 of retransmissions: nothing
            // more will come for it that needs an answer.
            return self.forget(&call);
        }
        if let (Some(every), Some(answer)) = (every, state.last_answer.clone()) {
            drop(state);
            call.reply.send(&answer);
            let next = Timer::AwaitAck {
                every: Some((every * 2).min(T2)),
                until,
            };
            self.schedule(&call, every, next);
        }
    }
}

/// A step in a call's ladder, while it lives.
fn step(state: &CallState, label: Label, text: &'static str) {
    if let Some(live) = &state.live {
        live.ladder.step(label, text);
    }
}

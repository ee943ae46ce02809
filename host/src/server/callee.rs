//! The callee side of delivery by call: the channel of an answered call is
//! served by the same SMTP session as a TCP client, restricted to our local
//! domains (a call never relays), and what it accepts goes through the
//! queue into the local Maildirs like any other message. When the call is
//! over, each recipient it brought gets a history line (`received`) with
//! the call's ladder as this side saw it: the callee's record of Fig. 4.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use mailcall_sip::{CallHandler, CallInfo, Channel, HandlerFuture};
use tokio::io::AsyncWriteExt;

use super::Shared;
use crate::history::{self, Attempt, AttemptOutcome, DeliveryPath, History};
use crate::queue::spool::MessageId;
use crate::smtp::session::{Session, SessionPolicy};

/// Answers calls with the SMTP server.
pub struct SmtpOverCall {
    shared: Arc<Shared>,
    history: Arc<History>,
    /// What each call's session queued, until the call ends.
    received: Arc<Mutex<Queued>>,
}

/// By Call-ID: the messages queued, with their recipients.
type Queued = HashMap<String, Vec<(MessageId, Vec<String>)>>;

impl SmtpOverCall {
    pub fn new(shared: Arc<Shared>, history: Arc<History>) -> SmtpOverCall {
        SmtpOverCall {
            shared,
            history,
            received: Arc::default(),
        }
    }
}

fn lock(received: &Mutex<Queued>) -> std::sync::MutexGuard<'_, Queued> {
    received.lock().unwrap_or_else(|p| p.into_inner())
}

/// The history lines of what call `call` brought: one per recipient.
fn received(call: &CallInfo, queued: &[(MessageId, Vec<String>)]) -> Vec<Attempt> {
    let rungs = call.ladder.rungs();
    let took_ms = rungs.last().map_or(0, |rung| rung.at_us / 1000);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let mut lines = Vec::new();
    for (id, recipients) in queued {
        for recipient in recipients {
            lines.push(Attempt {
                // When the INVITE came.
                at_ms: now_ms.saturating_sub(took_ms),
                queue_id: id.to_string(),
                message_id: None,
                recipient: recipient.clone(),
                path: DeliveryPath::Call,
                outcome: AttemptOutcome::Received,
                detail: format!("received over a call from {}", call.from),
                number: Some(call.number.clone()),
                rule: None,
                rule_version: None,
                policy: None,
                reason: None,
                shadow_disagreements: Vec::new(),
                call_id: Some(call.call_id.clone()),
                sip_status: Some(200),
                peer: Some(call.peer.to_string()),
                elapsed_ms: took_ms,
                ladder: rungs.clone(),
            });
        }
    }
    lines
}

impl CallHandler for SmtpOverCall {
    fn handle(&self, channel: Channel, call: CallInfo) -> HandlerFuture {
        let shared = self.shared.clone();
        let received = self.received.clone();
        Box::pin(async move {
            let policy = SessionPolicy {
                over_call: true,
                ..shared.policy.clone()
            };
            let mut session = Session::new(policy, call.peer.ip());
            if channel.is_tls() {
                session.set_encrypted();
            }
            tracing::info!(step = "T5", call_id = %call.call_id, from = %call.from, "SMTP over the call's channel");
            let mut channel = shared.metrics.metered(channel);
            let greeting = session.greeting().to_string();
            if channel.write_all(greeting.as_bytes()).await.is_err() {
                return;
            }
            let ended = super::smtp::drive(&mut session, channel, call.peer, &shared).await;
            if !session.queued().is_empty() {
                lock(&received).insert(call.call_id.clone(), session.queued().to_vec());
            }
            match ended {
                Ok(_) => {
                    tracing::info!(step = "T6", call_id = %call.call_id, "SMTP session over the call ended")
                }
                Err(error) => {
                    tracing::info!(step = "T6", call_id = %call.call_id, "SMTP session over the call broke: {error}")
                }
            }
        })
    }

    /// The call is over: a history line for each recipient it brought,
    /// with the ladder as we saw it.
    fn ended(&self, call: &CallInfo) {
        let Some(queued) = lock(&self.received).remove(&call.call_id) else {
            return;
        };
        self.history.note(&history::lines(&received(call, &queued)));
    }
}

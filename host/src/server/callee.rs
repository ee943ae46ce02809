//! The callee side of delivery by call: the channel of an answered call is
//! served by the same SMTP session as a TCP client, restricted to our local
//! domains (a call never relays), and what it accepts goes through the
//! queue into the local Maildirs like any other message.

use std::sync::Arc;

use mailcall_sip::{CallHandler, CallInfo, Channel, HandlerFuture};
use tokio::io::AsyncWriteExt;

use super::Shared;
use crate::smtp::session::{Session, SessionPolicy};

/// Answers calls with the SMTP server.
pub struct SmtpOverCall {
    pub shared: Arc<Shared>,
}

impl CallHandler for SmtpOverCall {
    fn handle(&self, channel: Channel, call: CallInfo) -> HandlerFuture {
        let shared = self.shared.clone();
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
            match super::smtp::drive(&mut session, channel, call.peer, &shared).await {
                Ok(_) => {
                    tracing::info!(step = "T6", call_id = %call.call_id, "SMTP session over the call ended")
                }
                Err(error) => {
                    tracing::info!(step = "T6", call_id = %call.call_id, "SMTP session over the call broke: {error}")
                }
            }
        })
    }
}

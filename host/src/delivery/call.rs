//! Steps S5–S7 as the planner sees them: hand a message to the final
//! server behind a number, over a call. The SIP user agent implements
//! [`Caller`]; the planner only learns what became of the call and of the
//! SMTP transaction on its channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use mailcall_sip::{CallInfo, Label, Ladder, Rung, UserAgent};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::smtp::client::{self, ClientSettings, Outgoing, Relayed};

/// What one call achieved.
#[derive(Debug, Clone)]
pub struct CallReport {
    /// The call's Call-ID, once an INVITE went out.
    pub call_id: Option<String>,
    /// The final SIP status (200 when answered; 486, 404, ... when not).
    pub sip_status: Option<u16>,
    /// The SMTP transaction over the channel (S6), or why there was none
    /// (busy, not found, no answer, channel failure, ...).
    pub result: Result<Relayed, String>,
    /// The call step by step, as far as it got.
    pub ladder: Vec<Rung>,
}

/// Places calls that carry mail.
pub trait Caller: Send + Sync {
    /// S5: call `number`; S6: run SMTP for `outgoing` over the channel to
    /// the final server; S7: hang up.
    fn deliver<'a>(
        &'a self,
        number: &'a str,
        outgoing: Outgoing<'a>,
    ) -> Pin<Box<dyn Future<Output = CallReport> + Send + 'a>>;
}

/// The [`Caller`] of `mailcall serve`: mailcall-sip's user agent places
/// the call, and the SMTP client runs on its channel.
pub struct SipCaller {
    agent: Arc<UserAgent>,
    client: ClientSettings,
    metrics: Arc<Metrics>,
}

impl SipCaller {
    pub fn new(agent: Arc<UserAgent>, config: &Config, metrics: Arc<Metrics>) -> SipCaller {
        SipCaller {
            agent,
            metrics,
            // No STARTTLS on the channel: its TLS, if any, came with the SDP.
            client: ClientSettings {
                tls: None,
                ..super::client_settings(config)
            },
        }
    }
}

impl Caller for SipCaller {
    fn deliver<'a>(
        &'a self,
        number: &'a str,
        outgoing: Outgoing<'a>,
    ) -> Pin<Box<dyn Future<Output = CallReport> + Send + 'a>> {
        Box::pin(async move {
            let (client, metrics) = (&self.client, &self.metrics);
            let session = |channel, info: CallInfo| async move {
                tracing::info!(step = "S6", call_id = %info.call_id, "SMTP over the call");
                let recipients = outgoing.recipients.len();
                info.ladder.step(
                    Label::T5,
                    format!(
                        "SMTP: MAIL FROM:<{}>, {recipients} RCPT, DATA ({} bytes)",
                        outgoing.mail_from,
                        outgoing.message.len()
                    ),
                );
                let relayed = client::send_over(metrics.metered(channel), client, outgoing).await;
                info.ladder.step(Label::T5, smtp_summary(&relayed));
                relayed
            };
            let ladder = Ladder::new();
            match self.agent.call(number, &ladder, session).await {
                Ok(call) => CallReport {
                    call_id: Some(call.call_id),
                    sip_status: Some(call.sip_status),
                    result: Ok(call.output),
                    ladder: ladder.rungs(),
                },
                Err(failure) => CallReport {
                    call_id: failure.call_id().map(str::to_string),
                    sip_status: failure.sip_status(),
                    result: Err(failure.to_string()),
                    ladder: ladder.rungs(),
                },
            }
        })
    }
}

/// The final server's answers, for the ladder.
fn smtp_summary(relayed: &Relayed) -> String {
    match relayed {
        Relayed::Replies(replies) => {
            let replies: Vec<String> = replies.iter().map(ToString::to_string).collect();
            format!("the final server: {}", replies.join("; "))
        }
        Relayed::Failed(reply) => format!("SMTP failed: {reply}"),
    }
}

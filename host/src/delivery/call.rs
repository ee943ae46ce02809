//! Steps S5–S7 as the planner sees them: hand a message to the final
//! server behind a number, over a call. The SIP user agent implements
//! [`Caller`]; the planner only learns what became of the call and of the
//! SMTP transaction on its channel.

use std::future::Future;
use std::pin::Pin;

use crate::smtp::client::{Outgoing, Relayed};

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

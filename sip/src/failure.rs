//! Why a call did not carry a session: what went wrong, and the call it
//! happened to (once an INVITE went out).

use std::fmt;

/// The step that ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// No final answer to the INVITE (we sent CANCEL), or a 408.
    Answer,
    /// The session ran longer than `session_timeout_secs`.
    Session,
}

/// A call that failed: its kind, and its Call-ID where one was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFailure {
    pub kind: FailureKind,
    pub call_id: Option<String>,
}

/// What made a call fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailureKind {
    #[error("busy ({0})")]
    Busy(u16),
    #[error("not found ({0})")]
    NotFound(u16),
    #[error("unavailable ({0})")]
    Unavailable(u16),
    #[error("rejected: {code} {reason}")]
    Rejected { code: u16, reason: String },
    #[error("timed out waiting for {0:?}")]
    Timeout(Stage),
    #[error("channel failed: {0}")]
    Channel(String),
    #[error("no route to number {0}")]
    NoRoute(String),
    #[error("SIP transport: {0}")]
    Transport(String),
    /// `[call] require_tls`: the signalling would not be (or was not) TLS.
    #[error("not secure: {0}")]
    NotSecure(String),
}

impl CallFailure {
    /// A failure before any INVITE went out.
    pub(crate) fn before_invite(kind: FailureKind) -> CallFailure {
        CallFailure {
            kind,
            call_id: None,
        }
    }

    /// A failure of the call `call_id`.
    pub(crate) fn of_call(call_id: &str, kind: FailureKind) -> CallFailure {
        CallFailure {
            kind,
            call_id: Some(call_id.to_string()),
        }
    }

    /// Maps a final non-2xx answer to the INVITE.
    pub(crate) fn from_status(code: u16, reason: &str, call_id: &str) -> CallFailure {
        let kind = match code {
            486 | 600 => FailureKind::Busy(code),
            404 | 604 => FailureKind::NotFound(code),
            480 | 503 => FailureKind::Unavailable(code),
            408 => FailureKind::Timeout(Stage::Answer),
            _ => FailureKind::Rejected {
                code,
                reason: reason.to_string(),
            },
        };
        CallFailure::of_call(call_id, kind)
    }

    /// The Call-ID of the failed call, where one was sent.
    pub fn call_id(&self) -> Option<&str> {
        self.call_id.as_deref()
    }

    /// The final SIP status that ended the call, where there was one
    /// (a 408 is reported as a timeout, without it).
    pub fn sip_status(&self) -> Option<u16> {
        match &self.kind {
            FailureKind::Busy(code)
            | FailureKind::NotFound(code)
            | FailureKind::Unavailable(code)
            | FailureKind::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl std::error::Error for CallFailure {}

impl fmt::Display for CallFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.call_id {
            Some(call_id) => write!(f, "{} [call {call_id}]", self.kind),
            None => self.kind.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_answers_map_to_kinds_and_keep_their_status() {
        let failure = CallFailure::from_status(486, "486 Busy Here", "c1");
        assert_eq!(failure.kind, FailureKind::Busy(486));
        assert_eq!(failure.sip_status(), Some(486));
        assert_eq!(failure.to_string(), "busy (486) [call c1]");
        let timeout = CallFailure::from_status(408, "408 Request Timeout", "c2");
        assert_eq!(timeout.kind, FailureKind::Timeout(Stage::Answer));
        assert_eq!(timeout.sip_status(), None);
        let rejected = CallFailure::from_status(415, "415 Unsupported Media Type", "c3");
        assert_eq!(rejected.sip_status(), Some(415));
        let no_route = CallFailure::before_invite(FailureKind::NoRoute("999".into()));
        assert_eq!(no_route.to_string(), "no route to number 999");
        assert_eq!(no_route.call_id(), None);
    }
}

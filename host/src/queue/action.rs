//! The operator's actions on queued messages, as Postfix's `postsuper` and
//! `postqueue` offer them: hold (kept from delivery until released, also
//! across restarts), release, retry now, delete (no report) and bounce
//! (failed for good, with the RFC 3464 report to the sender).
//!
//! Each action is an outcome record per recipient in the spool, so it is
//! as durable as a delivery's, carried through compaction like one, and
//! its history line rides in the same record.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::bounce;
use super::spool::{MessageId, Outcome, Queued, Spool, SpoolError};
use crate::history::{self, Attempt, AttemptOutcome, DeliveryPath};

/// What the operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Keep every unfinished recipient from delivery until released.
    Hold,
    /// Let held recipients be delivered again, now.
    Release,
    /// Try deferred recipients now instead of at their retry time.
    Retry,
    /// Remove the message without telling the sender.
    Delete,
    /// Fail every unfinished recipient and send the sender a report.
    Bounce,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Hold => "hold",
            Action::Release => "release",
            Action::Retry => "retry",
            Action::Delete => "delete",
            Action::Bounce => "bounce",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an action did to one message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Acted {
    /// Recipients whose state it changed.
    pub changed: usize,
    /// True when some recipient is due now (release, retry): the scheduler
    /// is to deliver the message.
    pub due_now: bool,
    /// The report queued to the sender (bounce).
    pub report: Option<MessageId>,
}

/// Why an action was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("{0} is not in the queue (finished, or no such id)")]
    NotQueued(MessageId),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

fn now() -> (u64, u64) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (since.as_secs(), since.as_millis() as u64)
}

/// The outcome `action` gives a recipient in state `current`, and the
/// history's name for it; `None` when it does not apply (a finished
/// recipient, a release of one not held, a retry of one already due).
fn next(
    action: Action,
    current: Option<&Outcome>,
    by: &str,
    now: u64,
) -> Option<(Outcome, AttemptOutcome)> {
    if current.is_some_and(Outcome::is_final) {
        return None;
    }
    let attempts = match current {
        Some(Outcome::Deferred { attempts, .. } | Outcome::Held { attempts, .. }) => *attempts,
        _ => 0,
    };
    let held = matches!(current, Some(Outcome::Held { .. }));
    match action {
        Action::Hold if held => None,
        Action::Hold => Some((
            Outcome::Held {
                detail: format!("held by {by}"),
                attempts,
            },
            AttemptOutcome::Held,
        )),
        Action::Release if held => Some((
            Outcome::Deferred {
                detail: format!("released by {by}"),
                attempts,
                retry_at: now,
            },
            AttemptOutcome::Released,
        )),
        Action::Retry => match current {
            Some(Outcome::Deferred {
                detail, retry_at, ..
            }) if *retry_at > now => Some((
                Outcome::Deferred {
                    detail: detail.clone(),
                    attempts,
                    retry_at: now,
                },
                AttemptOutcome::Retried,
            )),
            _ => None,
        },
        Action::Release => None,
        Action::Delete => Some((
            Outcome::Deleted {
                detail: format!("deleted by {by}"),
            },
            AttemptOutcome::Deleted,
        )),
        Action::Bounce => Some((
            Outcome::Failed {
                detail: format!("5.0.0 returned to the sender by {by}"),
                code: 554,
            },
            AttemptOutcome::Failed,
        )),
    }
}

/// Carries out `action` on message `id` for operator `by` (a user name,
/// or `mailcall queue` for the CLI); a bounce's report is queued with
/// `hostname` as the reporting server.
pub fn apply(
    spool: &Spool,
    hostname: &str,
    action: Action,
    id: MessageId,
    by: &str,
) -> Result<Acted, ActionError> {
    let queued: Queued = spool.get(id).ok_or(ActionError::NotQueued(id))?;
    // Read before the recipients finish: a finished message's bytes may go.
    let body = spool.body(id)?;
    let message_id = mail_parser::MessageParser::new()
        .parse_headers(&body)
        .and_then(|message| message.message_id().map(str::to_string));
    let (now, now_ms) = now();
    let mut acted = Acted::default();
    let mut notices = Vec::new();
    for (index, recipient) in queued.envelope.recipients.iter().enumerate() {
        // Decided on the state under the spool's lock: a delivery that
        // finished this recipient meanwhile is not overwritten.
        let decide = |current: Option<&Outcome>| {
            let (outcome, name) = next(action, current, by, now)?;
            let line = Attempt {
                at_ms: now_ms,
                queue_id: id.to_string(),
                message_id: message_id.clone(),
                recipient: recipient.clone(),
                path: DeliveryPath::Operator,
                outcome: name,
                detail: outcome.detail().to_string(),
                number: None,
                rule: None,
                rule_version: None,
                policy: None,
                reason: None,
                shadow_disagreements: Vec::new(),
                call_id: None,
                sip_status: None,
                peer: None,
                elapsed_ms: 0,
                ladder: Vec::new(),
            };
            Some((outcome, history::lines(&[line])))
        };
        let outcome = match spool.update(id, index, decide) {
            Ok(Some(outcome)) => outcome,
            Ok(None) => continue,
            // Finished meanwhile by a delivery under way: nothing to do.
            Err(SpoolError::Unknown(_)) => break,
            Err(error) => return Err(error.into()),
        };
        tracing::info!(%id, rcpt = %recipient, %action, by, "{}", outcome.detail());
        acted.changed += 1;
        acted.due_now |= matches!(outcome, Outcome::Deferred { .. });
        if action == Action::Bounce {
            let failed = bounce::Action::Failed;
            notices.extend(bounce::notice(
                &queued.envelope,
                index,
                failed,
                outcome.detail(),
            ));
        }
    }
    if !notices.is_empty() {
        let (envelope, bytes) = bounce::report(hostname, id, &queued.envelope, &body, &notices);
        acted.report = Some(spool.enqueue(envelope, &bytes)?);
    }
    Ok(acted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deferred(retry_at: u64) -> Outcome {
        Outcome::Deferred {
            detail: "451 later".into(),
            attempts: 3,
            retry_at,
        }
    }

    #[test]
    fn each_action_changes_only_the_states_it_applies_to() {
        let now = 1000;
        let held = Outcome::Held {
            detail: "held by x".into(),
            attempts: 3,
        };
        let delivered = Outcome::Delivered {
            detail: "250".into(),
        };
        let kinds = |action, current: Option<&Outcome>| next(action, current, "x", now);
        // Hold keeps the attempts; holding twice changes nothing.
        assert_eq!(
            kinds(Action::Hold, Some(&deferred(2000))),
            Some((held.clone(), AttemptOutcome::Held))
        );
        assert_eq!(kinds(Action::Hold, Some(&held)), None);
        // Release only what is held, due now, attempts kept.
        assert_eq!(
            kinds(Action::Release, Some(&held)).map(|(o, _)| o),
            Some(Outcome::Deferred {
                detail: "released by x".into(),
                attempts: 3,
                retry_at: now
            })
        );
        assert_eq!(kinds(Action::Release, Some(&deferred(2000))), None);
        // Retry only a deferral not yet due; a held one stays held.
        assert_eq!(
            kinds(Action::Retry, Some(&deferred(2000))).map(|(o, _)| o),
            Some(deferred(now))
        );
        assert_eq!(kinds(Action::Retry, Some(&deferred(now))), None);
        assert_eq!(kinds(Action::Retry, Some(&held)), None);
        assert_eq!(kinds(Action::Retry, None), None);
        // Delete and bounce finish anything unfinished, nothing finished.
        assert!(matches!(
            kinds(Action::Delete, Some(&held)),
            Some((Outcome::Deleted { .. }, AttemptOutcome::Deleted))
        ));
        assert!(matches!(
            kinds(Action::Bounce, None),
            Some((Outcome::Failed { code: 554, .. }, AttemptOutcome::Failed))
        ));
        for action in [
            Action::Hold,
            Action::Release,
            Action::Retry,
            Action::Delete,
            Action::Bounce,
        ] {
            assert_eq!(kinds(action, Some(&delivered)), None, "{action}");
        }
    }

    #[test]
    fn a_hold_outlasts_the_deferral_of_an_attempt_under_way() {
        let held = Outcome::Held {
            detail: "held by x".into(),
            attempts: 1,
        };
        assert_eq!(
            deferred(5).over(Some(&held)),
            Outcome::Held {
                detail: "held by x".into(),
                attempts: 3
            }
        );
        let delivered = Outcome::Delivered {
            detail: "250".into(),
        };
        assert_eq!(delivered.clone().over(Some(&held)), delivered);
        assert_eq!(deferred(5).over(None), deferred(5));
    }

    fn envelope() -> crate::queue::spool::Envelope {
        crate::queue::spool::Envelope {
            mail_from: "a@x.example".into(),
            recipients: vec!["b@y.example".into(), "c@y.example".into()],
            received_at: 1,
            received_at_ms: 1000,
            client_address: "127.0.0.1".into(),
            helo: "x".into(),
            envelope_id: None,
            return_full: None,
            notify: Vec::new(),
            original_recipients: Vec::new(),
        }
    }

    #[test]
    fn a_hold_survives_a_reopen_and_a_bounce_reports_to_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"Message-ID: <m1@x.example>\r\nSubject: s\r\n\r\nbody\r\n";
        let id = {
            let (spool, _) = Spool::open(dir.path()).unwrap();
            let id = spool.enqueue(envelope(), body).unwrap();
            let acted = apply(&spool, "mx.x.example", Action::Hold, id, "alice").unwrap();
            assert_eq!(acted.changed, 2);
            assert!(!acted.due_now);
            id
        };
        let (spool, recovery) = Spool::open(dir.path()).unwrap();
        assert!(recovery.messages[0]
            .outcomes
            .iter()
            .all(|o| matches!(o, Some(Outcome::Held { .. }))));
        // A deferral of an attempt that was under way does not undo it.
        spool
            .record(
                id,
                0,
                Outcome::Deferred {
                    detail: "451".into(),
                    attempts: 1,
                    retry_at: 0,
                },
                String::new(),
            )
            .unwrap();
        assert!(matches!(
            spool.get(id).unwrap().outcomes[0],
            Some(Outcome::Held { attempts: 1, .. })
        ));
        let released = apply(&spool, "mx.x.example", Action::Release, id, "alice").unwrap();
        assert_eq!((released.changed, released.due_now), (2, true));
        assert!(
            spool.get(id).unwrap().outcomes.iter().all(|o| matches!(
                o,
                Some(Outcome::Deferred { detail, .. }) if detail == "released by alice"
            )),
            "a release is recorded as it is, not kept held"
        );
        let bounced = apply(&spool, "mx.x.example", Action::Bounce, id, "alice").unwrap();
        assert_eq!(bounced.changed, 2);
        assert!(spool.get(id).is_none(), "a bounced message is finished");
        let report = spool.get(bounced.report.unwrap()).unwrap();
        assert_eq!(report.envelope.mail_from, "");
        assert_eq!(report.envelope.recipients, ["a@x.example"]);
        let text = String::from_utf8(spool.body(report.id).unwrap()).unwrap();
        assert!(text.contains("returned to the sender by alice"), "{text}");
        assert!(matches!(
            apply(&spool, "mx.x.example", Action::Delete, id, "alice"),
            Err(ActionError::NotQueued(_))
        ));
        // A deletion sends nothing.
        let other = spool.enqueue(envelope(), body).unwrap();
        let deleted = apply(&spool, "mx.x.example", Action::Delete, other, "bob").unwrap();
        assert_eq!((deleted.changed, deleted.report), (2, None));
        assert_eq!(spool.unfinished_count(), 1, "only the report is left");
    }
}

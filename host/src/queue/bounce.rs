//! Bounces and other delivery status notifications (RFC 3464): when
//! recipients fail for good, the sender gets a `multipart/report` saying
//! which and why; with `NOTIFY=SUCCESS` it also hears of deliveries, and
//! with `NOTIFY=DELAY` of the first deferral (RFC 3461). A notice is never
//! sent for a notice (null sender), nor against a recipient's `NOTIFY`.

use std::time::{SystemTime, UNIX_EPOCH};

use super::spool::{Envelope, MessageId};

/// What happened to a recipient, as RFC 3464's `Action` field names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    /// Deferred, still being retried.
    Delayed,
    /// Stored in a final mailbox, here or by the final server.
    Delivered,
    /// Handed to a server that sends no notices of its own.
    Relayed,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

/// One recipient for a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub address: String,
    pub original: Option<String>,
    pub action: Action,
    /// The reply or reason (`550 5.1.1 no such user (from 127.0.0.1:25)`).
    pub detail: String,
}

/// The notice of `action` for recipient `index` of `envelope`, if the
/// sender wants to hear of it ([`wants_notice`]).
pub fn notice(envelope: &Envelope, index: usize, action: Action, detail: &str) -> Option<Notice> {
    wants_notice(envelope, index, action).then(|| Notice {
        address: envelope.recipients[index].clone(),
        original: envelope.original_recipients.get(index).cloned().flatten(),
        action,
        detail: detail.to_string(),
    })
}

/// True when the sender wants to hear of `action` for recipient `index`:
/// not a notice itself, and `NOTIFY` asks for it (without `NOTIFY`: only
/// failures, as RFC 3461 §4.1 says).
pub fn wants_notice(envelope: &Envelope, index: usize, action: Action) -> bool {
    if envelope.mail_from.is_empty() {
        return false;
    }
    let flags = envelope.notify.get(index).copied().unwrap_or(0);
    match action {
        Action::Failed => flags == 0 || flags & smtp_proto::RCPT_NOTIFY_FAILURE != 0,
        Action::Delayed => flags & smtp_proto::RCPT_NOTIFY_DELAY != 0,
        Action::Delivered | Action::Relayed => flags & smtp_proto::RCPT_NOTIFY_SUCCESS != 0,
    }
}

/// The report on `notices` (recipients of message `id`): its envelope (null
/// sender, to the original sender) and its bytes.
pub fn report(
    hostname: &str,
    id: MessageId,
    original: &Envelope,
    message: &[u8],
    notices: &[Notice],
) -> (Envelope, Vec<u8>) {
    let failed = notices.iter().any(|n| n.action == Action::Failed);
    let delayed = notices.iter().any(|n| n.action == Action::Delayed);
    let (subject, summary) = if failed {
        (
            "Undelivered Mail Returned to Sender",
            "Your message could not be delivered to one or more recipients.",
        )
    } else if delayed {
        (
            "Delayed Mail (still being retried)",
            "Your message could not be delivered yet; it will be tried again.",
        )
    } else {
        (
            "Successful Mail Delivery Report",
            "Your message was delivered to the recipients below.",
        )
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let date = mail_parser::DateTime::from_timestamp(now as i64).to_rfc822();
    let arrival = mail_parser::DateTime::from_timestamp(original.received_at as i64).to_rfc822();
    let boundary = format!("{id}.{now}/{hostname}");
    let mut text = format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.{now}.bounce@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at host {hostname}.\r\n\
         \r\n\
         {summary}\r\n\
         \r\n",
        to = original.mail_from,
    );
    for recipient in notices {
        text.push_str(&format!(
            "<{}>: {}\r\n",
            recipient.address, recipient.detail
        ));
    }
    text.push_str(&format!(
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n\
         X-Mailcall-Queue-ID: {id}\r\n"
    ));
    if let Some(envelope_id) = &original.envelope_id {
        text.push_str(&format!("Original-Envelope-Id: {envelope_id}\r\n"));
    }
    text.push_str(&format!("Arrival-Date: {arrival}\r\n"));
    for recipient in notices {
        text.push_str("\r\n");
        if let Some(original) = &recipient.original {
            // smtp-proto keeps the address of `ORCPT=rfc822;addr` alone.
            let typed = if original.contains(';') {
                original.clone()
            } else {
                format!("rfc822;{original}")
            };
            text.push_str(&format!("Original-Recipient: {typed}\r\n"));
        }
        text.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\nAction: {}\r\nStatus: {}\r\nDiagnostic-Code: smtp; {}\r\n",
            recipient.address,
            recipient.action.name(),
            status_code(&recipient.detail, recipient.action),
            recipient.detail
        ));
    }
    // RET=FULL returns the whole message of a bounce; otherwise (RET=HDRS,
    // no RET, or no failure) its headers, as Postfix does by default.
    let full = failed && original.return_full == Some(true);
    let headers_end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |at| at + 2);
    let returned = if full {
        message
    } else {
        &message[..headers_end]
    };
    let content_type = if full {
        "message/rfc822"
    } else {
        "text/rfc822-headers"
    };
    text.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n"
    ));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(returned);
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let envelope = Envelope {
        mail_from: String::new(),
        recipients: vec![original.mail_from.clone()],
        received_at: now,
        received_at_ms: now.saturating_mul(1000),
        client_address: String::new(),
        helo: hostname.to_string(),
        envelope_id: None,
        return_full: None,
        notify: Vec::new(),
        original_recipients: Vec::new(),
    };
    (envelope, bytes)
}

/// The enhanced status code in a reply (`5.1.1`) of the class the action
/// has (5 failed, 4 delayed, 2 otherwise), or that class's generic one.
fn status_code(detail: &str, action: Action) -> String {
    let class = match action {
        Action::Failed => "5",
        Action::Delayed => "4",
        Action::Delivered | Action::Relayed => "2",
    };
    detail
        .split_whitespace()
        .find(|word| {
            let parts: Vec<&str> = word.split('.').collect();
            parts.len() == 3
                && parts[0] == class
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map_or_else(|| format!("{class}.0.0"), str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(from: &str, notify: Vec<u64>) -> Envelope {
        Envelope {
            mail_from: from.into(),
            recipients: vec!["a@remote.test".into()],
            received_at: 1_795_000_000,
            received_at_ms: 0,
            client_address: "127.0.0.1".into(),
            helo: "c".into(),
            envelope_id: Some("env-1".into()),
            return_full: None,
            notify,
            original_recipients: vec![None],
        }
    }

    #[test]
    fn a_bounce_is_a_delivery_status_report_to_the_sender() {
        let original = envelope("taro@local.test", vec![]);
        let failed = [Notice {
            address: "a@remote.test".into(),
            original: Some("rfc822;a@remote.test".into()),
            action: Action::Failed,
            detail: "550 5.1.1 no such user (from 127.0.0.1:2525)".into(),
        }];
        let message = b"Subject: hello\r\nFrom: taro@local.test\r\n\r\nsecret body\r\n";
        let (bounce_envelope, bytes) = report("mx.test", MessageId(7), &original, message, &failed);
        assert_eq!(bounce_envelope.mail_from, "");
        assert_eq!(bounce_envelope.recipients, ["taro@local.test"]);
        let text = String::from_utf8(bytes).unwrap();
        for expected in [
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Final-Recipient: rfc822; a@remote.test",
            "Original-Recipient: rfc822;a@remote.test",
            "Action: failed",
            "Status: 5.1.1",
            "Original-Envelope-Id: env-1",
            "Content-Type: text/rfc822-headers",
            "Subject: hello",
        ] {
            assert!(text.contains(expected), "{expected} missing in\n{text}");
        }
        assert!(!text.contains("secret body"), "RET=HDRS by default");
    }

    #[test]
    fn no_bounce_for_bounces_or_when_notify_excludes_failure() {
        assert!(!wants_notice(&envelope("", vec![]), 0, Action::Failed));
        assert!(wants_notice(
            &envelope("a@b.test", vec![]),
            0,
            Action::Failed
        ));
        assert!(!wants_notice(
            &envelope("a@b.test", vec![smtp_proto::RCPT_NOTIFY_NEVER]),
            0,
            Action::Failed
        ));
        assert!(!wants_notice(
            &envelope("a@b.test", vec![smtp_proto::RCPT_NOTIFY_SUCCESS]),
            0,
            Action::Failed
        ));
        assert!(wants_notice(
            &envelope("a@b.test", vec![smtp_proto::RCPT_NOTIFY_FAILURE]),
            0,
            Action::Failed
        ));
    }

    #[test]
    fn success_and_delay_notices_only_when_asked_for() {
        let success = envelope("a@b.test", vec![smtp_proto::RCPT_NOTIFY_SUCCESS]);
        assert!(wants_notice(&success, 0, Action::Delivered));
        assert!(wants_notice(&success, 0, Action::Relayed));
        assert!(!wants_notice(&success, 0, Action::Delayed));
        let plain = envelope("a@b.test", vec![]);
        assert!(!wants_notice(&plain, 0, Action::Delivered));
        assert!(!wants_notice(&plain, 0, Action::Delayed));
        let delay = envelope("a@b.test", vec![smtp_proto::RCPT_NOTIFY_DELAY]);
        assert!(wants_notice(&delay, 0, Action::Delayed));
        let notice = Notice {
            address: "a@remote.test".into(),
            original: None,
            action: Action::Relayed,
            detail: "250 2.0.0 Ok: queued as 1 (from 127.0.0.1:2525)".into(),
        };
        let message = b"Subject: hello\r\n\r\nsecret body\r\n";
        let (_, bytes) = report("mx.test", MessageId(8), &success, message, &[notice]);
        let text = String::from_utf8(bytes).unwrap();
        for expected in [
            "Subject: Successful Mail Delivery Report",
            "Action: relayed",
            "Status: 2.0.0",
            "Content-Type: text/rfc822-headers",
        ] {
            assert!(text.contains(expected), "{expected} missing in\n{text}");
        }
        assert!(!text.contains("secret body"));
    }
}

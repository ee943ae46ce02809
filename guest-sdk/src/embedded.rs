//! The search of the `embedded-number` rule (the patent's claim 2): a number
//! of the numbering plan written in the message itself.
//!
//! Where it looks, in this order, and why:
//! 1. the recipient address, local part then domain (`050-1234-5678@…`,
//!    `info@05012345678.example.jp`): the sender addressed the number itself;
//! 2. the display names of the `To`/`Cc` mailboxes that are this recipient
//!    (`"Kyoto 050-1234-5678" <info@…>`): only this recipient's, since the
//!    others' numbers belong to the others;
//! 3. the `Subject`;
//! 4. when the recipient is not in `To`/`Cc` at all (Bcc, a list), the other
//!    human-written headers (`To`, `Cc`, `Comments`, …; never trace or
//!    identifier headers such as `Received` or `Message-ID`);
//! 5. the text body.

use crate::headers::is_human_header;
use crate::number::{find_first, Found};
use crate::{address, Envelope, Mailbox, Message, NumberingPlan};

/// A number found in the message, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Embedded {
    /// The number in national form, digits only.
    pub number: String,
    /// Where and how it was written, for the decision's reason.
    pub reason: String,
}

/// Finds the number this recipient's message carries, if any.
pub fn find(envelope: &Envelope, message: &Message, plan: &NumberingPlan) -> Option<Embedded> {
    let found = |found: Found, place: String| Embedded {
        reason: format!("number {} in {place}", found.written.trim()),
        number: found.number,
    };
    let (local, domain) = address::split(&envelope.rcpt_to);
    if let Some(hit) = find_first(local, plan) {
        return Some(found(hit, "the recipient address (local part)".into()));
    }
    if let Some(hit) = find_first(domain, plan) {
        return Some(found(hit, "the recipient address (domain)".into()));
    }

    let mut recipient_listed = false;
    for (field, mailboxes) in [("To", &message.to), ("Cc", &message.cc)] {
        for mailbox in mailboxes
            .iter()
            .filter(|m| is_recipient(m, &envelope.rcpt_to))
        {
            recipient_listed = true;
            if let Some(hit) = mailbox
                .name
                .as_deref()
                .and_then(|name| find_first(name, plan))
            {
                return Some(found(
                    hit,
                    format!("the display name of the recipient in {field}"),
                ));
            }
        }
    }

    if let Some(hit) = message.subject.as_deref().and_then(|s| find_first(s, plan)) {
        return Some(found(hit, "Subject".into()));
    }

    if !recipient_listed {
        let other_headers = message.headers.iter().filter(|header| {
            is_human_header(&header.name) && !header.name.eq_ignore_ascii_case("subject")
        });
        for header in other_headers {
            if let Some(hit) = find_first(&header.value, plan) {
                return Some(found(hit, format!("the {} header", header.name)));
            }
        }
    }

    find_first(&message.body_text, plan).map(|hit| found(hit, "the message body".into()))
}

fn is_recipient(mailbox: &Mailbox, rcpt_to: &str) -> bool {
    mailbox
        .address
        .as_deref()
        .is_some_and(|address| address.trim().eq_ignore_ascii_case(rcpt_to.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Header;

    fn plan() -> NumberingPlan {
        NumberingPlan {
            country_code: "81".into(),
            trunk_prefix: "0".into(),
            prefixes: vec!["050".into(), "080".into()],
            digits: 11,
        }
    }

    fn envelope(rcpt: &str) -> Envelope {
        Envelope {
            mail_from: "sender@example.org".into(),
            rcpt_to: rcpt.into(),
            client_address: "127.0.0.1".into(),
            helo: "client.example.org".into(),
        }
    }

    fn mailbox(name: &str, address: &str) -> Mailbox {
        Mailbox {
            name: Some(name.into()),
            address: Some(address.into()),
        }
    }

    fn message(headers: &[(&str, &str)], body: &str) -> Message {
        Message {
            headers: headers
                .iter()
                .map(|(name, value)| Header {
                    name: name.to_string(),
                    value: value.to_string(),
                })
                .collect(),
            subject: headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("subject"))
                .map(|(_, value)| value.to_string()),
            from: vec![],
            to: vec![],
            cc: vec![],
            body_text: body.into(),
            body_truncated: false,
        }
    }

    #[test]
    fn the_recipient_address_comes_first() {
        let msg = message(&[("Subject", "call 080-0000-1111")], "");
        let hit = find(&envelope("050-1234-5678@example.jp"), &msg, &plan()).unwrap();
        assert_eq!(hit.number, "05012345678");
        assert!(hit.reason.contains("local part"), "{}", hit.reason);

        let hit = find(&envelope("info@050.1234.5678.example.jp"), &msg, &plan()).unwrap();
        assert_eq!(hit.number, "05012345678");
        assert!(hit.reason.contains("domain"), "{}", hit.reason);
    }

    #[test]
    fn only_this_recipients_display_name_counts() {
        let mut msg = message(&[("To", "x")], "");
        msg.to = vec![
            mailbox("Osaka 080-0000-1111", "osaka@example.jp"),
            mailbox("Kyoto ０５０－１２３４－５６７８", "kyoto@example.jp"),
        ];
        let hit = find(&envelope("KYOTO@example.jp"), &msg, &plan()).unwrap();
        assert_eq!(hit.number, "05012345678");
        assert!(hit.reason.contains("display name"), "{}", hit.reason);

        // Listed without a number: others' numbers are not this recipient's.
        msg.to.push(mailbox("Nara", "nara@example.jp"));
        assert_eq!(find(&envelope("nara@example.jp"), &msg, &plan()), None);
    }

    #[test]
    fn unlisted_recipients_read_the_human_headers_but_not_trace_headers() {
        let msg = message(
            &[
                (
                    "Received",
                    "from 050-1234-5678.example by mx; id 08000001111",
                ),
                ("Message-ID", "<05012345678@example.jp>"),
                ("References", "<080-0000-1111@example.jp>"),
                ("To", "Branch 080 0000 1111 <branch@example.jp>"),
            ],
            "",
        );
        let hit = find(&envelope("bcc@example.org"), &msg, &plan()).unwrap();
        assert_eq!(hit.number, "08000001111");
        assert_eq!(hit.reason, "number 080 0000 1111 in the To header");
    }

    #[test]
    fn identifiers_alone_are_not_numbers() {
        let msg = message(
            &[
                ("Received", "from 050-1234-5678.example by mx"),
                ("Message-ID", "<05012345678@example.jp>"),
                ("In-Reply-To", "<050-1234-5678@example.jp>"),
                ("DKIM-Signature", "v=1; b=05012345678"),
            ],
            "No number here. Order 2024050123456789, 2024-05-01, ¥50,800.",
        );
        assert_eq!(find(&envelope("someone@example.org"), &msg, &plan()), None);
    }

    #[test]
    fn the_subject_then_the_body() {
        let msg = message(
            &[("Subject", "Re: 至急 ０８０－００００－１１１１へ")],
            "050-1234-5678",
        );
        let hit = find(&envelope("a@example.org"), &msg, &plan()).unwrap();
        assert_eq!(hit.number, "08000001111");
        assert!(hit.reason.ends_with("in Subject"), "{}", hit.reason);

        let msg = message(
            &[("Subject", "hello")],
            "Please call +81 50-1234-5678 today",
        );
        let hit = find(&envelope("a@example.org"), &msg, &plan()).unwrap();
        assert_eq!(hit.number, "05012345678");
        assert_eq!(hit.reason, "number +81 50-1234-5678 in the message body");
    }
}

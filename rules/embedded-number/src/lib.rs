//! `embedded-number` (claim 2): dial a number of the numbering plan that is
//! written in the message itself. Where it looks, in this order, and why:
//! 1. the recipient address, local part then domain (`050-1234-5678@…`,
//!    `info@05012345678.example.jp`): the sender addressed the number itself;
//! 2. the display names of the `To`/`Cc` mailboxes that are this recipient
//!    (`"Kyoto 050-1234-5678" <info@…>`): only this recipient's, since the
//!    others' numbers belong to the others;
//! 3. the `Subject`;
//! 4. when the recipient is not in `To`/`Cc` at all (Bcc, a list), the other
//!    human-written headers (never trace headers such as `Received`);
//! 5. the text body.
//!
//! What is and is not a number is the host's `numbers.find-first`.

use mailcall_guest_sdk::host::{find_number, fold, is_human_header};
use mailcall_guest_sdk::{export_rule, Decision, Envelope, FoundNumber, Message, Rule};

struct EmbeddedNumber;

fn dial(found: FoundNumber, place: &str) -> Decision {
    Decision::dial(found.number, format!("number {} in {place}", found.written))
}

impl Rule for EmbeddedNumber {
    fn resolve(envelope: Envelope, message: Message) -> Decision {
        let rcpt = &envelope.rcpt_to;
        let (local, domain) = rcpt.rsplit_once('@').unwrap_or((rcpt, ""));
        if let Some(found) = find_number(local) {
            return dial(found, "the recipient address (local part)");
        }
        if let Some(found) = find_number(domain) {
            return dial(found, "the recipient address (domain)");
        }

        let this_recipient = fold(rcpt.trim_matches(' '));
        let mut recipient_listed = false;
        for (field, mailboxes) in [("To", &message.to), ("Cc", &message.cc)] {
            for mailbox in mailboxes {
                let Some(address) = &mailbox.address else {
                    continue;
                };
                if fold(address.trim_matches(' ')) != this_recipient {
                    continue;
                }
                recipient_listed = true;
                if let Some(found) = mailbox.name.as_deref().and_then(find_number) {
                    let place = format!("the display name of the recipient in {field}");
                    return dial(found, &place);
                }
            }
        }

        if let Some(found) = message.subject.as_deref().and_then(find_number) {
            return dial(found, "Subject");
        }
        if !recipient_listed {
            for header in &message.headers {
                if !is_human_header(&header.name) || fold(&header.name) == "subject" {
                    continue;
                }
                if let Some(found) = find_number(&header.value) {
                    return dial(found, &format!("the {} header", header.name));
                }
            }
        }
        match find_number(&message.body_text) {
            Some(found) => dial(found, "the message body"),
            None => Decision::NoOpinion,
        }
    }
}

export_rule!(EmbeddedNumber);

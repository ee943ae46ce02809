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
//! What is and is not a number is the host's `numbers.find-first`; the
//! message's own texts are named by `Part`, so the host reads them itself.

use mailcall_guest_sdk::host::{find_number, find_number_in, fold, is_human_header};
use mailcall_guest_sdk::{export_rule, Decision, Envelope, FoundNumber, Message, Part, Rule};

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
            for (index, mailbox) in (0..).zip(mailboxes) {
                let Some(address) = &mailbox.address else {
                    continue;
                };
                if fold(address.trim_matches(' ')) != this_recipient {
                    continue;
                }
                recipient_listed = true;
                if mailbox.name.is_none() {
                    continue;
                }
                let name = match field {
                    "To" => Part::ToName(index),
                    _ => Part::CcName(index),
                };
                if let Some(found) = find_number_in(name) {
                    let place = format!("the display name of the recipient in {field}");
                    return dial(found, &place);
                }
            }
        }

        if message.subject.is_some() {
            if let Some(found) = find_number_in(Part::Subject) {
                return dial(found, "Subject");
            }
        }
        if !recipient_listed {
            for (index, header) in (0..).zip(&message.headers) {
                if !is_human_header(&header.name) || fold(&header.name) == "subject" {
                    continue;
                }
                if let Some(found) = find_number_in(Part::Header(index)) {
                    return dial(found, &format!("the {} header", header.name));
                }
            }
        }
        match find_number_in(Part::Body) {
            Some(found) => dial(found, "the message body"),
            None => Decision::NoOpinion,
        }
    }
}

export_rule!(EmbeddedNumber);

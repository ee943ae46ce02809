//! `embedded-number` (claim 2): dial a number of the numbering plan that is
//! written in the message itself — in the recipient address, this
//! recipient's display name, the Subject, the human-written headers, or the
//! body. The search is the SDK's [`embedded::find`]; read its docs for the
//! order and for what is not a number.

use mailcall_guest_sdk::{embedded, export_rule, host, Decision, Envelope, Message, Rule};

struct EmbeddedNumber;

impl Rule for EmbeddedNumber {
    fn resolve(envelope: Envelope, message: Message) -> Decision {
        match embedded::find(&envelope, &message, &host::numbering_plan()) {
            Some(found) => Decision::dial(found.number, found.reason),
            None => Decision::NoOpinion,
        }
    }
}

export_rule!(EmbeddedNumber);

//! `custom`: an example of a rule that is logic, not a table — *call only
//! for urgent mail*.
//!
//! Put it first in the chain. A message that is not marked urgent gets
//! `use-smtp`, which stops the chain: it goes by normal SMTP relay even if a
//! later rule could find a number. An urgent message gets `no-opinion`, so
//! the rules after it (embedded number, tables) find the number — unless the
//! sender's domain has its own number in the configuration, which is dialled
//! at once. It shows: reading headers, composing with the rest of the chain,
//! and using the rule's own configuration values.
//!
//! Urgent means any of: `Importance: high`, `Priority: urgent`,
//! `X-Priority: 1` or `2`, or a Subject starting with `URGENT` or `至急`.
//!
//! Configuration (`[rules.custom.config]`): `sender.DOMAIN = "number"` dials
//! that number for urgent mail from `DOMAIN`.

use mailcall_guest_sdk::number::normalize;
use mailcall_guest_sdk::{address, export_rule, host, Decision, Envelope, Message, Rule};

struct UrgentOnly;

impl Rule for UrgentOnly {
    fn resolve(envelope: Envelope, message: Message) -> Decision {
        if !is_urgent(&message) {
            return Decision::UseSmtp("not marked urgent: calls are for urgent mail".into());
        }
        let (_, sender_domain) = address::split(&envelope.mail_from);
        let configured = host::config(&format!("sender.{}", sender_domain.to_lowercase()));
        match configured.and_then(|value| normalize(&value, &host::numbering_plan())) {
            Some(number) => Decision::dial(number, format!("urgent mail from {sender_domain}")),
            None => Decision::NoOpinion,
        }
    }
}

fn is_urgent(message: &Message) -> bool {
    let header_says_urgent = message.headers.iter().any(|header| {
        let value = header.value.trim();
        match header.name.to_ascii_lowercase().as_str() {
            "importance" => value.eq_ignore_ascii_case("high"),
            "priority" => value.eq_ignore_ascii_case("urgent"),
            "x-priority" => value.starts_with('1') || value.starts_with('2'),
            _ => false,
        }
    });
    let subject = message.subject.as_deref().unwrap_or("").trim_start();
    header_says_urgent
        || subject
            .get(..6)
            .is_some_and(|start| start.eq_ignore_ascii_case("urgent"))
        || subject.starts_with("至急")
}

export_rule!(UrgentOnly);

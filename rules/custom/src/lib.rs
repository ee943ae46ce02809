//! `custom`: an example of a rule that is logic, not a table — *call only
//! for urgent mail*.
//!
//! Put it first in the chain. A message that is not marked urgent gets
//! `use-smtp`, which stops the chain: it goes by normal SMTP relay even if a
//! later rule could find a number. An urgent message gets `no-opinion`, so
//! the rules after it (embedded number, tables) find the number — unless the
//! sender's domain has its own number in the configuration, which is dialled
//! at once.
//!
//! Urgent means any of: `Importance: high`, `Priority: urgent`,
//! `X-Priority: 1` or `2`, or a Subject starting with `URGENT` or `至急`
//! (compared folded: any case, full-width too).
//!
//! Configuration (`[rules.custom.config]`): `sender.DOMAIN = "number"` dials
//! that number for urgent mail from `DOMAIN`.

use mailcall_guest_sdk::host::{config, fold, normalize_number};
use mailcall_guest_sdk::{export_rule, Decision, Envelope, Message, Rule};

struct UrgentOnly;

impl Rule for UrgentOnly {
    fn resolve(envelope: Envelope, message: Message) -> Decision {
        if !is_urgent(&message) {
            return Decision::UseSmtp("not marked urgent: calls are for urgent mail".into());
        }
        let sender_domain = envelope.mail_from.rsplit_once('@').map_or("", |(_, d)| d);
        let configured = config(&format!("sender.{}", fold(sender_domain)));
        match configured.and_then(|value| normalize_number(&value)) {
            Some(number) => Decision::dial(number, format!("urgent mail from {sender_domain}")),
            None => Decision::NoOpinion,
        }
    }
}

fn is_urgent(message: &Message) -> bool {
    let header_says_urgent = message.headers.iter().any(|header| {
        let value = fold(&header.value);
        let value = value.trim_matches(' ');
        match fold(&header.name).as_str() {
            "importance" => value == "high",
            "priority" => value == "urgent",
            "x-priority" => value.starts_with('1') || value.starts_with('2'),
            _ => false,
        }
    });
    let subject = message.subject.as_deref().unwrap_or("");
    header_says_urgent
        || fold(subject).trim_start_matches(' ').starts_with("urgent")
        || subject.trim_start_matches(' ').starts_with("至急")
}

export_rule!(UrgentOnly);

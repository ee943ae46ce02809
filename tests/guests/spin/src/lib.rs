//! A bad rule for the engine's tests: loops forever, so the deadline must
//! stop it.

use mailcall_guest_sdk::{export_rule, Decision, Envelope, Message, Rule};

struct Spin;

impl Rule for Spin {
    fn resolve(envelope: Envelope, _message: Message) -> Decision {
        let mut counter = 0u64;
        loop {
            counter = std::hint::black_box(counter.wrapping_add(envelope.rcpt_to.len() as u64));
        }
    }
}

export_rule!(Spin);

//! A bad rule for the engine's tests: panics (a trap in WebAssembly) for
//! every recipient except `ok@…`, where it asks for normal SMTP; so the
//! same instance can be seen to trap and the next one to work.

use mailcall_guest_sdk::{export_rule, Decision, Envelope, Message, Rule};

struct Trap;

impl Rule for Trap {
    fn resolve(envelope: Envelope, _message: Message) -> Decision {
        if envelope.rcpt_to.starts_with("ok@") {
            return Decision::UseSmtp("the trap rule did not trap".into());
        }
        panic!("the trap rule traps for {}", envelope.rcpt_to);
    }
}

export_rule!(Trap);

//! A bad rule for the engine's tests: allocates far past any sane memory
//! cap, touching every page, so the host's limit must refuse it.

use mailcall_guest_sdk::{export_rule, Decision, Envelope, Message, Rule};

struct Hog;

impl Rule for Hog {
    fn resolve(_envelope: Envelope, _message: Message) -> Decision {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        for _ in 0..1024 {
            hoard.push(vec![7u8; 1 << 20]);
        }
        let total: usize = hoard
            .iter()
            .map(|chunk| chunk[chunk.len() - 1] as usize)
            .sum();
        Decision::dial(total.to_string(), "the hog was never stopped")
    }
}

export_rule!(Hog);

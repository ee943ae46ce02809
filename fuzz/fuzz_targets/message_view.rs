//! The message view built for rules (`host/src/policy/message.rs`) from
//! arbitrary bytes: never a panic, and the body limit holds: the text body
//! is at most `body_limit` bytes, and a cut one loses less than a character.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailcall::policy::message_view;

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the body limit, the rest is the message.
    let (limit, raw) = match data {
        [high, low, raw @ ..] => (usize::from(u16::from_be_bytes([*high, *low])), raw),
        _ => (64, data),
    };
    if let Ok(message) = message_view(raw, limit) {
        let len = message.body_text.len();
        assert!(len <= limit, "body of {len} bytes over the limit {limit}");
        if message.body_truncated {
            assert!(len + 4 > limit, "cut to {len} bytes, the limit is {limit}");
        }
    }
});

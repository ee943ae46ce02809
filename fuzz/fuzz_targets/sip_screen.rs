//! The screen every received SIP message passes (`sip/src/screen.rs`), on
//! arbitrary bytes as a datagram and as a message cut from a stream: never a
//! panic; what passes is no longer than the input; an answer is a SIP
//! response with the status it claims.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use mailcall_sip::fuzzing::{screen, Framing, Rejected, Verdict};

fuzz_target!(|bytes: &[u8]| {
    let source: SocketAddr = "192.0.2.7:5070".parse().expect("an address");
    for framing in [Framing::Datagram, Framing::Stream] {
        match screen(bytes, framing, source) {
            Verdict::Pass { len, .. } => assert!(len <= bytes.len(), "{len} > {}", bytes.len()),
            Verdict::Refused(Rejected::Answer {
                response, status, ..
            }) => {
                let start = format!("SIP/2.0 {status} ");
                assert!(
                    response.starts_with(start.as_bytes()),
                    "answer {:?} is not a {status}",
                    String::from_utf8_lossy(&response)
                );
                assert!(
                    (400..700).contains(&status),
                    "a refusal must be an error, not {status}"
                );
            }
            Verdict::Refused(Rejected::Drop { .. }) => {}
        }
    }
});

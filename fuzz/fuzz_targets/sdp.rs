//! The SDP parser (`sip/src/sdp.rs`) on arbitrary bodies: never a panic,
//! and what it reads survives our own writing: `parse(to_sdp(d)) == d`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailcall_sip::fuzzing::ChannelDescription;

fuzz_target!(|body: &[u8]| {
    let Ok(channel) = ChannelDescription::parse(body) else {
        return;
    };
    let written = channel.to_sdp(1);
    let again = ChannelDescription::parse(written.as_bytes())
        .unwrap_or_else(|error| panic!("our own SDP {written:?} does not parse: {error}"));
    assert_eq!(again, channel, "round trip through {written:?}");
});

//! The TCP framer (`next_frame` in `sip/src/transports.rs`), which cuts SIP
//! messages out of a stream by their Content-Length, on arbitrary bytes in
//! arbitrary chunks: never a panic, and the frames are the same whatever the
//! chunking (a TCP segment boundary must not change what is read).
//!
//! Input: the first byte is the chunk size (0: the whole stream at once),
//! the rest is the stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mailcall_sip::fuzzing::{next_frame, Frame};

/// Feeds `stream` `chunk` bytes at a time (all at once if 0), the way the
/// TCP reader does; the frames read and the bytes left over.
fn frames(stream: &[u8], chunk: usize) -> (Vec<Frame>, Vec<u8>) {
    let chunk = if chunk == 0 {
        stream.len().max(1)
    } else {
        chunk
    };
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk) {
        buffer.extend_from_slice(piece);
        while let Some(frame) = next_frame(&mut buffer) {
            let unframed = matches!(frame, Frame::Unframed { .. });
            frames.push(frame);
            // The reader stops at a frame it cannot cut: the stream ends.
            if unframed {
                return (frames, Vec::new());
            }
        }
    }
    (frames, buffer.to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let whole = frames(stream, 0);
    let chunked = frames(stream, usize::from(chunk));
    let total: usize = whole
        .0
        .iter()
        .map(|frame| match frame {
            Frame::Message(bytes) => bytes.len(),
            _ => 0,
        })
        .sum();
    assert!(total <= stream.len());
    assert_eq!(whole, chunked, "chunks of {chunk} read differently");
});

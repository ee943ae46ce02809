//! The DATA reader (`host/src/smtp/data.rs`) on arbitrary bytes in arbitrary
//! chunks: never a panic; the same outcome (body or refusal, and where the
//! next command starts) whatever the chunking; an accepted body has only
//! CRLF line ends and, stuffed again, reads back to itself.
//!
//! Input: the first byte is the chunk size (0: all at once), the second the
//! size limit in units of 64 bytes (0: none to speak of), the rest the data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailcall::smtp::data::{dot_stuff, DataError, DataReceiver, Progress};

type Outcome = Option<(Result<Vec<u8>, DataError>, usize)>;

/// Feeds `input` `chunk` bytes at a time (all at once if 0): the result and
/// how many bytes of `input` the body took, once the end of data was read.
fn read(input: &[u8], chunk: usize, max_size: usize) -> Outcome {
    let chunk = if chunk == 0 {
        input.len().max(1)
    } else {
        chunk
    };
    let mut receiver = DataReceiver::new(max_size);
    let mut offset = 0;
    for piece in input.chunks(chunk) {
        match receiver.feed(piece) {
            Progress::More => offset += piece.len(),
            Progress::Ended { consumed } => {
                assert!(consumed <= piece.len());
                return Some((receiver.finish(), offset + consumed));
            }
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let [chunk, limit, input @ ..] = data else {
        return;
    };
    let max_size = usize::from(*limit) * 64;
    let whole = read(input, 0, max_size);
    let chunked = read(input, usize::from(*chunk), max_size);
    assert_eq!(whole, chunked, "chunks of {chunk} read differently");
    let Some((Ok(body), consumed)) = whole else {
        return;
    };
    assert!(body.len() <= max_size);
    assert!(input[..consumed].ends_with(b"\r\n.\r\n") || input[..consumed] == *b".\r\n");
    // Every line of an accepted body ends in CRLF, with no CR or LF inside.
    for line in body.split_inclusive(|&b| b == b'\n') {
        assert!(line.ends_with(b"\r\n"), "line {line:?} of {body:?}");
        assert!(!line[..line.len() - 2].contains(&b'\r'));
    }
    // Stuffing the body again and reading it back gives the body.
    let stuffed = dot_stuff(&body, None);
    let again = read(&stuffed, 0, max_size);
    assert_eq!(again, Some((Ok(body), stuffed.len())));
});

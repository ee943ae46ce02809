//! Cutting SIP messages out of a byte stream (RFC 3261 §18.3): by
//! Content-Length, with RFC 5626 keep-alive pings and the blank lines
//! allowed between messages.

use bytes::{Buf, Bytes, BytesMut};

use crate::screen::{self, MAX_MESSAGE};

/// RFC 5626 keep-alive: a blank-line ping gets a single CRLF pong.
pub(crate) const PING: &[u8] = b"\r\n\r\n";
pub(crate) const PONG: &[u8] = b"\r\n";

/// What a stream holds next.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Ping,
    /// A whole message: head, blank line, Content-Length bytes of body
    /// (cut off the read buffer, not copied).
    Message(Bytes),
    /// A message whose length we cannot tell (or will not take): the
    /// stream cannot be read any further.
    Unframed {
        head: Vec<u8>,
        status: u16,
        why: String,
    },
}

/// Cuts the next frame off `buffer`, if it is all there.
pub fn next_frame(buffer: &mut BytesMut) -> Option<Frame> {
    loop {
        if buffer.starts_with(PING) {
            buffer.advance(PING.len());
            return Some(Frame::Ping);
        }
        // A pong, or blank lines between messages (RFC 3261 §7.5): skip,
        // unless it may still grow into a ping.
        match buffer.first() {
            Some(b'\r' | b'\n') if !PING.starts_with(buffer) => buffer.advance(1),
            _ => break,
        }
    }
    let Some(at) = screen::find_blank_line(buffer) else {
        return (buffer.len() > MAX_MESSAGE).then(|| {
            let head = buffer.split().to_vec();
            let why = format!("no end of headers in {MAX_MESSAGE} bytes");
            Frame::Unframed {
                head,
                status: 513,
                why,
            }
        });
    };
    let head_len = at + 4;
    let unframed = |buffer: &mut BytesMut, status: u16, why: String| {
        let head = buffer[..head_len].to_vec();
        buffer.clear();
        Some(Frame::Unframed { head, status, why })
    };
    let length = match content_length(&buffer[..head_len]) {
        Ok(Some(length)) => length,
        // Streams frame by it, so it is mandatory there (RFC 3261 §18.3, §20.14).
        Ok(None) => return unframed(buffer, 400, "no Content-Length in a stream".into()),
        Err(why) => return unframed(buffer, 400, why),
    };
    let total = head_len.saturating_add(length);
    if total > MAX_MESSAGE {
        let why = format!("{total} bytes is more than the {MAX_MESSAGE} we take");
        return unframed(buffer, 513, why);
    }
    if buffer.len() < total {
        return None;
    }
    Some(Frame::Message(buffer.split_to(total).freeze()))
}

/// The Content-Length of a message head (`Content-Length` or its compact
/// form `l`, any case, value possibly folded), by a scan of its lines: the
/// screen reads the whole head once the message is cut, and refuses
/// there what else is wrong with it.
fn content_length(head: &[u8]) -> Result<Option<usize>, String> {
    let mut found = None;
    let mut lines = head.split(|&byte| byte == b'\n').peekable();
    lines.next(); // the start line
    while let Some(line) = lines.next() {
        let Some(colon) = line.iter().position(|&byte| byte == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if !name.eq_ignore_ascii_case(b"content-length") && !name.eq_ignore_ascii_case(b"l") {
            continue;
        }
        let mut value = line[colon + 1..].trim_ascii().to_vec();
        // Folded onto the next lines (RFC 3261 §7.3.1).
        while let Some(next) =
            lines.next_if(|next| next.starts_with(b" ") || next.starts_with(b"\t"))
        {
            value.extend_from_slice(next.trim_ascii());
        }
        let length = std::str::from_utf8(&value)
            .ok()
            .and_then(|value| value.parse::<usize>().ok())
            .ok_or_else(|| {
                let value = String::from_utf8_lossy(&value);
                format!("Content-Length {value:?} is not a number")
            })?;
        if found.is_some_and(|found| found != length) {
            return Err("two different Content-Lengths".into());
        }
        found = Some(length);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(buffer: Vec<u8>) -> (Vec<Frame>, Vec<u8>) {
        let mut buffer = BytesMut::from(&buffer[..]);
        let mut frames = Vec::new();
        while let Some(frame) = next_frame(&mut buffer) {
            frames.push(frame);
        }
        (frames, buffer.to_vec())
    }

    const OPTIONS: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 2\r\n\r\nhi";

    #[test]
    fn messages_are_cut_by_content_length() {
        let two = [OPTIONS, OPTIONS, b"OPT"].concat();
        let (frames, rest) = frames(two);
        assert_eq!(
            frames,
            [
                Frame::Message(Bytes::from_static(OPTIONS)),
                Frame::Message(Bytes::from_static(OPTIONS))
            ]
        );
        assert_eq!(rest, b"OPT");
        // Not yet whole: wait.
        let (frames, rest) = super::tests::frames(OPTIONS[..OPTIONS.len() - 1].to_vec());
        assert!(frames.is_empty());
        assert_eq!(rest.len(), OPTIONS.len() - 1);
    }

    #[test]
    fn pings_get_pongs_and_blank_lines_are_skipped() {
        let (frames, rest) = frames([&b"\r\n\r\n"[..], b"\r\n", OPTIONS].concat());
        assert_eq!(
            frames,
            [Frame::Ping, Frame::Message(Bytes::from_static(OPTIONS))]
        );
        assert!(rest.is_empty());
        // A lone CRLF may be the start of a ping.
        let (frames, rest) = super::tests::frames(b"\r\n".to_vec());
        assert!(frames.is_empty());
        assert_eq!(rest, b"\r\n");
    }

    #[test]
    fn an_unreadable_or_huge_length_ends_the_stream() {
        let bad = b"OPTIONS sip:a@b SIP/2.0\r\nl: lots\r\n\r\nmore".to_vec();
        let (frames, rest) = frames(bad);
        assert!(matches!(&frames[..], [Frame::Unframed { status: 400, .. }]));
        assert!(rest.is_empty());
        let no_length = b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\nmore".to_vec();
        assert!(matches!(
            &frames_of(no_length)[..],
            [Frame::Unframed { status: 400, .. }]
        ));
        let huge = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 70000\r\n\r\n".to_vec();
        assert!(matches!(
            &frames_of(huge)[..],
            [Frame::Unframed { status: 513, .. }]
        ));
        let endless = vec![b'a'; MAX_MESSAGE + 1];
        assert!(matches!(
            &frames_of(endless)[..],
            [Frame::Unframed { status: 513, .. }]
        ));
    }

    fn frames_of(buffer: Vec<u8>) -> Vec<Frame> {
        frames(buffer).0
    }

    #[test]
    fn the_length_is_found_in_any_spelling_and_folded() {
        for head in [
            "OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 2\r\n\r\n",
            "OPTIONS sip:a@b SIP/2.0\r\ncontent-length   :2\r\n\r\n",
            "OPTIONS sip:a@b SIP/2.0\r\nl: 2\r\n\r\n",
            "OPTIONS sip:a@b SIP/2.0\r\nContent-Length:\r\n  2\r\n\r\n",
            "OPTIONS sip:a@b SIP/2.0\r\nL: 2\r\nContent-Length: 2\r\n\r\n",
        ] {
            assert_eq!(content_length(head.as_bytes()), Ok(Some(2)), "{head:?}");
        }
        let none = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n";
        assert_eq!(content_length(none.as_bytes()), Ok(None));
        for bad in [
            "OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 2\r\nl: 3\r\n\r\n",
            "OPTIONS sip:a@b SIP/2.0\r\nContent-Length: two\r\n\r\n",
            "OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n",
        ] {
            assert!(content_length(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}

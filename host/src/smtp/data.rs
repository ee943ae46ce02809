//! The body of `DATA` (RFC 5321 §4.1.1.4), read incrementally.
//!
//! The end of data is only `<CRLF>.<CRLF>`; dot-stuffing is undone (a line
//! starting with `..` becomes `.`). A bare LF or a bare CR anywhere in the
//! body marks the message as refused, as Postfix's
//! `smtpd_forbid_bare_newline` does, but reading goes on to the real end of
//! data: so `<LF>.<CR><LF>`, `<CR><LF>.<LF>` and friends can never end the
//! message early, and nothing after them is ever read as a command (SMTP
//! smuggling). A body over the size limit is read to its end and refused.

/// Why a body was refused once its end was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// `550 5.5.2`: an LF not preceded by CR, or a CR not followed by LF.
    #[error("bare <CR> or <LF> in message body")]
    BareNewline,
    /// `552 5.3.4`: more than the size limit.
    #[error("message exceeds the size limit")]
    TooLarge,
}

/// Where the reader is within the body's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after `<CRLF>`, or the start of data).
    LineStart,
    /// Within a line.
    InLine,
    /// After a CR; only LF may follow.
    Cr,
    /// After a `.` at the start of a line.
    Dot,
    /// After `.` `<CR>` at the start of a line; LF ends the data.
    DotCr,
}

/// Reads one `DATA` body from the bytes the client sends.
#[derive(Debug)]
pub struct DataReceiver {
    state: State,
    body: Vec<u8>,
    size: usize,
    max_size: usize,
    error: Option<DataError>,
}

/// What [`DataReceiver::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The whole input was body: feed more.
    More,
    /// The end of data was read; the first `consumed` bytes of the input
    /// were the rest of the body and its terminator, what follows is the
    /// next command.
    Ended { consumed: usize },
}

impl DataReceiver {
    /// A reader for a body of at most `max_size` bytes (after unstuffing).
    pub fn new(max_size: usize) -> DataReceiver {
        DataReceiver {
            state: State::LineStart,
            body: Vec::new(),
            size: 0,
            max_size,
            error: None,
        }
    }

    /// Reads body bytes from `input`, up to and including the end of data.
    pub fn feed(&mut self, input: &[u8]) -> Progress {
        for (index, &byte) in input.iter().enumerate() {
            if self.step(byte) {
                return Progress::Ended {
                    consumed: index + 1,
                };
            }
        }
        Progress::More
    }

    /// The body (lines ending in CRLF, dots unstuffed), or why it is refused.
    /// Call after [`Progress::Ended`].
    pub fn finish(self) -> Result<Vec<u8>, DataError> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.body),
        }
    }

    /// Takes one byte; true at the end of data.
    fn step(&mut self, byte: u8) -> bool {
        match (self.state, byte) {
            (State::LineStart, b'.') => self.state = State::Dot,
            (State::Dot, b'\r') => self.state = State::DotCr,
            (State::DotCr, b'\n') => return true,
            // `..x` is `.x`: the stuffed dot is dropped.
            (State::Dot, b'\n') => self.bare_newline(b'\n'),
            (State::Dot, other) => {
                self.state = State::InLine;
                self.take(other);
            }
            (State::DotCr, other) => {
                self.error = Some(DataError::BareNewline);
                self.state = State::InLine;
                self.take(b'\r');
                self.step(other);
            }
            (State::LineStart | State::InLine, b'\r') => self.state = State::Cr,
            (State::LineStart | State::InLine, b'\n') => self.bare_newline(b'\n'),
            (State::LineStart | State::InLine, other) => {
                self.state = State::InLine;
                self.take(other);
            }
            (State::Cr, b'\n') => {
                self.take(b'\r');
                self.take(b'\n');
                self.state = State::LineStart;
            }
            (State::Cr, other) => {
                // A bare CR: what follows is still within the line.
                self.error = Some(DataError::BareNewline);
                self.take(b'\r');
                self.state = State::InLine;
                self.step(other);
            }
        }
        false
    }

    /// A bare LF: refused, and never the start of a line, so no `.` after it
    /// can end the data.
    fn bare_newline(&mut self, byte: u8) {
        self.error = Some(DataError::BareNewline);
        self.take(byte);
        self.state = State::InLine;
    }

    fn take(&mut self, byte: u8) {
        self.size += 1;
        if self.size > self.max_size {
            self.error.get_or_insert(DataError::TooLarge);
            return;
        }
        if self.error.is_none() {
            self.body.push(byte);
        }
    }
}

/// A message as it is sent line by line in SMTP `DATA` and POP3 `RETR`:
/// CRLF line ends, a dot doubled at the start of a line, then the `.`
/// line. With `body_lines`, only the headers, the blank line and that many
/// body lines are sent (POP3 `TOP`).
pub fn dot_stuff(message: &[u8], body_lines: Option<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut in_body = false;
    let mut sent_body_lines = 0;
    for line in message.split_inclusive(|&b| b == b'\n') {
        if in_body && body_lines.is_some_and(|limit| sent_body_lines >= limit) {
            break;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
        if in_body {
            sent_body_lines += 1;
        } else if text.is_empty() {
            in_body = true;
        }
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of `chunk` bytes; returns the outcome and
    /// the bytes left after the end of data.
    fn read(input: &[u8], chunk: usize) -> (Option<Result<Vec<u8>, DataError>>, Vec<u8>) {
        let mut receiver = DataReceiver::new(1000);
        let mut offset = 0;
        while offset < input.len() {
            let end = (offset + chunk).min(input.len());
            if let Progress::Ended { consumed } = receiver.feed(&input[offset..end]) {
                return (Some(receiver.finish()), input[offset + consumed..].to_vec());
            }
            offset = end;
        }
        (None, Vec::new())
    }

    fn each_chunking(input: &[u8], check: impl Fn(Option<Result<Vec<u8>, DataError>>, Vec<u8>)) {
        for chunk in [1, 2, 3, 7, input.len().max(1)] {
            let (outcome, rest) = read(input, chunk);
            check(outcome, rest);
        }
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_can_stop_after_n_body_lines() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\nc", None), b"a\r\n..b\r\nc\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\r\n", None), b"a\r\n.\r\n");
        assert_eq!(
            dot_stuff(b"S: x\r\n\r\none\r\ntwo\r\n", Some(1)),
            b"S: x\r\n\r\none\r\n.\r\n"
        );
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf_and_unstuffs_dots() {
        each_chunking(
            b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n",
            |outcome, rest| {
                assert_eq!(
                    outcome,
                    Some(Ok(b"Subject: x\r\n\r\n.leading dot\r\n".to_vec()))
                );
                assert_eq!(rest, b"QUIT\r\n");
            },
        );
        each_chunking(b".\r\n", |outcome, rest| {
            assert_eq!(outcome, Some(Ok(Vec::new())));
            assert!(rest.is_empty());
        });
        each_chunking(b"a.\r\n.x\r\n.\r\n", |outcome, _| {
            assert_eq!(outcome, Some(Ok(b"a.\r\nx\r\n".to_vec())));
        });
    }

    #[test]
    fn smuggling_sequences_never_end_the_data() {
        for smuggled in [
            &b"body\n.\r\nMAIL FROM:<evil@x>\r\n"[..],
            b"body\r\n.\nMAIL FROM:<evil@x>\r\n",
            b"body\n.\nMAIL FROM:<evil@x>\r\n",
            b"body\r.\r\nMAIL FROM:<evil@x>\r\n",
            b"body\r\n.\rMAIL FROM:<evil@x>\r\n",
            b"body\r\r\n.\r\r\n",
        ] {
            let mut input = smuggled.to_vec();
            // Nothing of the above ends the data; the real end does.
            each_chunking(&input, |outcome, _| {
                assert_eq!(outcome, None, "{smuggled:?}")
            });
            input.extend_from_slice(b"\r\n.\r\nRSET\r\n");
            each_chunking(&input, |outcome, rest| {
                assert_eq!(outcome, Some(Err(DataError::BareNewline)), "{smuggled:?}");
                assert_eq!(rest, b"RSET\r\n", "{smuggled:?}");
            });
        }
    }

    #[test]
    fn an_oversized_body_is_read_to_its_end_and_refused() {
        let mut input = vec![b'a'; 1500];
        input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
        let (outcome, rest) = read(&input, 100);
        assert_eq!(outcome, Some(Err(DataError::TooLarge)));
        assert_eq!(rest, b"NOOP\r\n");
    }
}

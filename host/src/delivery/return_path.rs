//! The `Return-Path:` header that final delivery adds (RFC 5321 §4.4): the
//! envelope's reverse-path, `<>` for the null sender, at the top of the
//! message. Any `Return-Path:` already in the header section goes first,
//! as RFC 5321 asks of the final server and as Postfix's local delivery
//! does: it came from a sender or an earlier hop, not from the envelope.

/// `message` as stored in a mailbox: `Return-Path: <reverse_path>` first,
/// then the message without its own `Return-Path:` fields (and their
/// folded lines). The body is left alone.
pub fn with_return_path(reverse_path: &str, message: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(message.len() + reverse_path.len() + 18);
    stored.extend_from_slice(b"Return-Path: <");
    stored.extend_from_slice(reverse_path.as_bytes());
    stored.extend_from_slice(b">\r\n");
    let mut rest = message;
    // Whether the field being read (with its folded lines) is dropped.
    let mut dropping = false;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let (line, after) = rest.split_at(end);
        if line == b"\r\n" || line == b"\n" {
            break; // the end of the header section
        }
        let folded = matches!(line.first(), Some(b' ' | b'\t'));
        if !folded {
            dropping = is_return_path(line);
        }
        if !dropping {
            stored.extend_from_slice(line);
        }
        rest = after;
    }
    stored.extend_from_slice(rest);
    stored
}

/// Whether a header line starts a `Return-Path:` field (any case, with the
/// white space before the colon that RFC 5322's obsolete syntax allows).
fn is_return_path(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    line[..colon]
        .trim_ascii_end()
        .eq_ignore_ascii_case(b"return-path")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(reverse_path: &str, message: &str) -> String {
        String::from_utf8(with_return_path(reverse_path, message.as_bytes())).unwrap()
    }

    #[test]
    fn the_reverse_path_goes_first() {
        assert_eq!(
            stored(
                "a@sender.example",
                "Received: x\r\nSubject: hi\r\n\r\nbody\r\n"
            ),
            "Return-Path: <a@sender.example>\r\nReceived: x\r\nSubject: hi\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn the_null_sender_is_angle_brackets() {
        assert_eq!(
            stored("", "Subject: bounce\r\n\r\nx\r\n"),
            "Return-Path: <>\r\nSubject: bounce\r\n\r\nx\r\n"
        );
    }

    #[test]
    fn return_paths_already_there_are_removed_with_their_folded_lines() {
        assert_eq!(
            stored(
                "real@sender.example",
                "Return-Path: <forged@evil.example>\r\nReceived: x\r\n\
                 return-path :\r\n <second@evil.example>\r\nSubject: hi\r\n\tthere\r\n\r\nbody\r\n"
            ),
            "Return-Path: <real@sender.example>\r\nReceived: x\r\nSubject: hi\r\n\tthere\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn a_return_path_in_the_body_stays() {
        let message = "Subject: quoting\r\n\r\nReturn-Path: <in@body.example>\r\n";
        assert_eq!(
            stored("a@b.example", message),
            format!("Return-Path: <a@b.example>\r\n{message}")
        );
    }

    #[test]
    fn a_message_without_a_body_or_with_lf_line_ends_keeps_its_bytes() {
        assert_eq!(
            stored("a@b.example", "Subject: no body"),
            "Return-Path: <a@b.example>\r\nSubject: no body"
        );
        assert_eq!(
            stored("a@b.example", "Return-Path: <x@y>\nSubject: lf\n\nbody\n"),
            "Return-Path: <a@b.example>\r\nSubject: lf\n\nbody\n"
        );
        assert_eq!(stored("", ""), "Return-Path: <>\r\n");
    }

    #[test]
    fn a_field_named_like_return_path_but_longer_stays() {
        let message = "Return-Path-Extra: kept\r\nX-Return-Path: kept\r\n\r\n";
        assert_eq!(
            stored("a@b.example", message),
            format!("Return-Path: <a@b.example>\r\n{message}")
        );
    }
}

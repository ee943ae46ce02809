//! The POP3 session (`host/src/pop3/session.rs`, sans-I/O) on arbitrary
//! command lines over an arbitrary mailbox, with the caller's side played
//! in memory: never a panic; every response starts `+OK` or `-ERR` and ends
//! in CRLF; a multi-line answer ends with the `.` line; a `RETR` sends, once
//! un-stuffed, exactly the octets its `+OK` line announced (`TOP` no more),
//! which are the RFC 1939 count; nothing is deleted twice, and nothing before the
//! session ends.
//!
//! Input: the messages, separated by NUL bytes, then two NULs, then the
//! lines the client sends. The user `taro` has the password `secret`;
//! `busy` stands for a check that cannot be made now.
#![no_main]

use std::collections::BTreeSet;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use mailcall::auth::Verdict;
use mailcall::mailbox::maildir::StoredMessage;
use mailcall::pop3::session::{After, OpenError, Pop3Policy, Pop3Session, Response};

/// The message's size as RFC 1939 counts it: every line ending in CRLF.
fn size_as_sent(message: &[u8]) -> u64 {
    let mut size = 0;
    for line in message.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        size += text.len() as u64 + 2;
    }
    size
}

/// The message as the client rebuilds it from a multi-line answer.
fn unstuffed(body: &[u8]) -> Vec<u8> {
    let body = body.strip_suffix(b".\r\n").expect("the final dot line");
    let mut out = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

struct Mailbox {
    messages: Vec<Vec<u8>>,
    deleted: BTreeSet<usize>,
    in_use: bool,
}

impl Mailbox {
    fn stored(&self) -> Vec<StoredMessage> {
        self.messages
            .iter()
            .enumerate()
            .map(|(index, content)| StoredMessage {
                unique: format!("m{index}"),
                path: PathBuf::from(index.to_string()),
                size: size_as_sent(content),
            })
            .collect()
    }
}

/// Plays the caller's part until the session waits for the next line;
/// true when the session asked to close.
fn answer(
    session: &mut Pop3Session,
    mailbox: &mut Mailbox,
    mut response: Response,
    whole: bool,
) -> bool {
    loop {
        let bytes = std::mem::take(&mut response.bytes);
        if !bytes.is_empty() {
            check(&bytes);
        }
        response = match response.after {
            After::Continue | After::StartTls => return false,
            After::Close => return true,
            After::Authenticate { login, password } => {
                session.authenticated(match (login.as_str(), password.as_str()) {
                    ("taro", "secret") => Verdict::Accepted("taro".into()),
                    (_, "busy") => Verdict::Unavailable,
                    _ => Verdict::Refused,
                })
            }
            After::OpenMailbox { user } => {
                assert_eq!(user, "taro");
                let opened = match mailbox.in_use {
                    true => Err(OpenError::InUse),
                    false => Ok(mailbox.stored()),
                };
                mailbox.in_use = true;
                session.opened(opened)
            }
            After::Read { path } => {
                let index: usize = path.to_str().and_then(|p| p.parse().ok()).expect("ours");
                let content = mailbox.messages[index].clone();
                let reply = session.read(Ok(content.clone()));
                if reply.bytes.starts_with(b"+OK ") {
                    let text = String::from_utf8_lossy(&reply.bytes);
                    let (first, rest) = text.split_once("\r\n").expect("a first line");
                    let announced: u64 = first
                        .strip_prefix("+OK ")
                        .and_then(|t| t.strip_suffix(" octets"))
                        .and_then(|n| n.parse().ok())
                        .expect("+OK N octets");
                    let sent = unstuffed(&reply.bytes[first.len() + 2..]);
                    assert_eq!(announced, size_as_sent(&content), "{first}");
                    // RETR sends all of it, TOP a part.
                    match whole {
                        true => assert_eq!(sent.len() as u64, announced, "{rest:?}"),
                        false => assert!(sent.len() as u64 <= announced, "{rest:?}"),
                    }
                }
                reply
            }
            After::Delete { messages } => {
                for message in messages {
                    let index: usize = message.path.to_str().unwrap().parse().unwrap();
                    assert!(mailbox.deleted.insert(index), "deleted twice");
                }
                session.updated(0)
            }
        };
    }
}

/// Every response is `+OK`/`-ERR` lines ending in CRLF; multi-line ones end
/// with the dot line.
fn check(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    assert!(
        bytes.starts_with(b"+OK") || bytes.starts_with(b"-ERR"),
        "{text:?}"
    );
    assert!(bytes.ends_with(b"\r\n"), "{text:?}");
    let first_line = bytes.iter().position(|&b| b == b'\n').map_or(0, |e| e + 1);
    if first_line < bytes.len() {
        assert!(bytes.ends_with(b"\r\n.\r\n"), "{text:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.windows(2).position(|w| w == b"\0\0");
    let (messages, lines) = match split {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (&b""[..], data),
    };
    let mut mailbox = Mailbox {
        messages: messages
            .split(|&b| b == 0)
            .filter(|m| !m.is_empty())
            .take(8)
            .map(<[u8]>::to_vec)
            .collect(),
        deleted: BTreeSet::new(),
        in_use: false,
    };
    let policy = Pop3Policy {
        hostname: "mx.local.example".into(),
        max_errors: 20,
        tls_available: true,
    };
    let mut session = Pop3Session::new(policy, "127.0.0.1".parse().expect("an address"));
    assert!(session.greeting().starts_with(b"+OK "));
    let text = String::from_utf8_lossy(lines);
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        let whole = line
            .get(..4)
            .is_some_and(|c| c.eq_ignore_ascii_case("RETR"));
        let response = session.command(line);
        if answer(&mut session, &mut mailbox, response, whole) {
            return;
        }
    }
    assert!(mailbox.deleted.is_empty(), "deleted without QUIT");
});

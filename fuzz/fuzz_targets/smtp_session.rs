//! The inbound SMTP session (`host/src/smtp/session.rs`) driven the way the
//! server drives it, on an arbitrary conversation in arbitrary chunks:
//! never a panic or a loop; every reply line is `ddd` + space or dash + text
//! + CRLF; and, unless STARTTLS dropped buffered input (as RFC 3207 wants),
//! the replies and accepted messages are the same whatever the chunking.
//!
//! Input: a byte of options (TLS offered, over a call, which client
//! address, synchronous users, how commits end), a byte of chunk size
//! (0: all at once), then what the client sends.
#![no_main]

use std::collections::HashSet;
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use mailcall::auth::Verdict;
use mailcall::queue::spool::MessageId;
use mailcall::smtp::reply::Reply;
use mailcall::smtp::session::{Accepted, CommitError, Session, SessionPolicy, Step};

/// The password `AUTH` accepts, for any login.
const PASSWORD: &str = "secret";
/// The password for which the verifier is too busy to check.
const BUSY: &str = "busy";

fn policy(options: u8) -> SessionPolicy {
    SessionPolicy {
        hostname: "mx.local.example".into(),
        local_domains: HashSet::from(["local.example".to_string()]),
        local_addresses: HashSet::from([
            "postmaster@local.example".to_string(),
            "taro@local.example".to_string(),
        ]),
        relay_networks: vec!["10.1.0.0/16".parse().expect("a network")],
        max_message_size: 2_000,
        max_recipients: 3,
        max_errors: 10,
        tls_available: options & 1 != 0,
        over_call: options & 2 != 0,
        synchronous_networks: vec!["198.51.100.0/24".parse().expect("a network")],
        synchronous_users: match options & 16 != 0 {
            true => HashSet::from(["taro".to_string()]),
            false => HashSet::new(),
        },
    }
}

fn client(options: u8) -> IpAddr {
    let address = match (options >> 2) & 3 {
        0 => "127.0.0.1",
        1 => "10.1.2.3",
        2 => "192.0.2.9",
        _ => "198.51.100.4",
    };
    address.parse().expect("an address")
}

/// What one run of the session gave.
#[derive(Debug, PartialEq)]
struct Transcript {
    replies: Vec<u8>,
    /// The messages accepted, without their `Received:` header (it holds
    /// the time).
    accepted: Vec<Accepted>,
    /// A `STARTTLS` handshake happened.
    tls: bool,
}

fn run(options: u8, conversation: &[u8], chunk: usize) -> Transcript {
    let chunk = if chunk == 0 {
        conversation.len().max(1)
    } else {
        chunk
    };
    let mut session = Session::new(policy(options), client(options));
    let mut replies = session.greeting().to_string().into_bytes();
    let mut accepted = Vec::new();
    let mut tls = false;
    let mut pieces = conversation.chunks(chunk);
    // Each step reads input or answers a command that consumed some.
    let bound = 3 * conversation.len() + 16;
    for _ in 0..bound {
        match session.step(&mut replies) {
            Step::NeedInput => match pieces.next() {
                Some(piece) => session.feed(piece),
                None => {
                    return Transcript {
                        replies,
                        accepted,
                        tls,
                    }
                }
            },
            Step::Commit(mut message) => {
                message.message = without_received(&message.message);
                match (options >> 5) & 3 {
                    1 => session.committed(
                        Err(CommitError::Interrupted("disk full".into())),
                        &mut replies,
                    ),
                    2 => session
                        .committed_reply(Reply::new(554, "5.0.0", "delivery failed"), &mut replies),
                    _ => session.committed(Ok(MessageId(0x1A2B3C)), &mut replies),
                }
                accepted.push(*message);
            }
            Step::StartTls => {
                tls = true;
                session.tls_started();
            }
            Step::Authenticate { login, password } => {
                let verdict = match password.as_str() {
                    PASSWORD => Verdict::Accepted(login),
                    BUSY => Verdict::Unavailable,
                    _ => Verdict::Refused,
                };
                session.authenticated(verdict, &mut replies);
            }
            Step::Close => {
                assert!(matches!(session.step(&mut replies), Step::Close));
                return Transcript {
                    replies,
                    accepted,
                    tls,
                };
            }
        }
    }
    panic!("no end after {bound} steps");
}

/// The message after the `Received:` header the session put first. A
/// message whose first line starts with white space continues that header
/// (as it would after Postfix's own `Received:`): then nothing is left.
fn without_received(message: &[u8]) -> Vec<u8> {
    assert!(
        message.starts_with(b"Received: "),
        "no Received: header first"
    );
    // The first CRLF not followed by folding white space (or at the end).
    let end = (0..message.len().saturating_sub(1)).find(|&at| {
        message[at..].starts_with(b"\r\n") && !matches!(message.get(at + 2), Some(b' ' | b'\t'))
    });
    match end {
        Some(end) => message[end + 2..].to_vec(),
        None => Vec::new(),
    }
}

/// Every reply line is a code, a space or dash, text, CRLF.
fn check_replies(replies: &[u8]) {
    assert!(replies.ends_with(b"\r\n"));
    for line in replies.split_inclusive(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(line);
        assert!(line.len() >= 6 && line.ends_with(b"\r\n"), "reply {text:?}");
        let body = &line[..line.len() - 2];
        assert!(!body.contains(&b'\r'), "reply {text:?}");
        assert!(
            matches!(line[0], b'2'..=b'5')
                && line[1..3].iter().all(u8::is_ascii_digit)
                && matches!(line[3], b' ' | b'-'),
            "reply {text:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let [options, chunk, conversation @ ..] = data else {
        return;
    };
    let whole = run(*options, conversation, 0);
    check_replies(&whole.replies);
    for message in &whole.accepted {
        assert!(
            !message.recipients.is_empty(),
            "a message without recipients"
        );
        assert!(message.recipients.len() <= 3);
    }
    let chunked = run(*options, conversation, usize::from(*chunk));
    check_replies(&chunked.replies);
    if !whole.tls && !chunked.tls {
        assert_eq!(
            String::from_utf8_lossy(&whole.replies),
            String::from_utf8_lossy(&chunked.replies),
            "chunks of {chunk} answered differently"
        );
        assert_eq!(whole.accepted, chunked.accepted);
    }
});

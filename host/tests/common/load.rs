//! Bounded SMTP loads for the crash, power-loss and full-disk tests: each
//! message carries a unique token (in its Message-ID, Subject and body), is
//! sent over a real TCP connection, and the server's answer to its end of
//! data is kept; afterwards the Maildir is read back and every token
//! checked: acknowledged ones delivered exactly once with their exact
//! bytes, refused ones never.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the server said to one message's end of data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `250`: the server promised to deliver it.
    Accepted,
    /// A `4xx`/`5xx` at any step: the server never took it.
    Refused(String),
    /// The connection broke before the answer: it may or may not have
    /// been taken (never acknowledged, so at most once).
    Unknown,
}

/// A message made for `token`, about `size` bytes, CRLF line ends and no
/// line starting with a dot (so its bytes on the wire are its bytes). Its
/// body names B's number of the call tests, for the embedded-number rule.
pub fn message(token: &str, size: usize) -> String {
    let mut text = format!(
        "From: <load@remote.test>\r\nMessage-ID: <{token}@load.test>\r\nSubject: load {token}\r\n\r\nPlease call 050-2222-0000 back.\r\n"
    );
    let mut line = 0;
    while text.len() < size {
        text.push_str(&format!(
            "{token} line {line:05} abcdefghijklmnopqrstuvwxyz0123456789\r\n"
        ));
        line += 1;
    }
    text.push_str(&format!("end of {token}\r\n"));
    text
}

/// The last line of the next reply (after any `250-` continuations).
fn reply(reader: &mut impl BufRead) -> Option<String> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Some(line.trim_end().to_string());
        }
    }
}

/// Sends one message from `from` to `rcpt` in its own session and returns
/// the answer to its end of data.
pub fn send(address: SocketAddr, from: &str, rcpt: &str, message: &str) -> Answer {
    let Ok(stream) = TcpStream::connect_timeout(&address, Duration::from_secs(5)) else {
        return Answer::Refused("connection refused".into());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let Ok(mut writer) = stream.try_clone() else {
        return Answer::Unknown;
    };
    let mut reader = BufReader::new(stream);
    // Before DATA's end a broken connection means "not taken".
    let steps = [
        String::new(),
        "EHLO load.test\r\n".to_string(),
        format!("MAIL FROM:<{from}>\r\n"),
        format!("RCPT TO:<{rcpt}>\r\n"),
        "DATA\r\n".to_string(),
    ];
    for step in &steps {
        if !step.is_empty() && writer.write_all(step.as_bytes()).is_err() {
            return Answer::Refused(format!("connection broke at {}", step.trim_end()));
        }
        match reply(&mut reader) {
            Some(line) if line.starts_with('2') || line.starts_with('3') => {}
            Some(line) => return Answer::Refused(line),
            None => return Answer::Refused(format!("connection broke at {step:?}")),
        }
    }
    if writer.write_all(message.as_bytes()).is_err() || writer.write_all(b".\r\n").is_err() {
        return Answer::Unknown;
    }
    let answer = match reply(&mut reader) {
        Some(line) if line.starts_with("250") => Answer::Accepted,
        Some(line) => Answer::Refused(line),
        None => Answer::Unknown,
    };
    let _ = writer.write_all(b"QUIT\r\n");
    answer
}

/// Every token sent, with its message and the server's answer.
#[derive(Debug, Default)]
pub struct Ledger {
    pub sent: BTreeMap<String, (String, Answer)>,
}

impl Ledger {
    pub fn count(&self, wanted: fn(&Answer) -> bool) -> usize {
        self.sent.values().filter(|(_, a)| wanted(a)).count()
    }

    pub fn accepted(&self) -> usize {
        self.count(|a| *a == Answer::Accepted)
    }
}

/// Sends messages from `clients` threads, each at most `per_client`
/// messages and none after `limit`, tokens starting with `prefix`; every
/// thread stops once the server is gone (no answer, or no connection).
/// The answers go into `ledger`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    address: SocketAddr,
    prefix: &str,
    rcpt: &str,
    clients: usize,
    per_client: usize,
    size: impl Fn(usize) -> usize + Send + Sync + 'static,
    ledger: Arc<Mutex<Ledger>>,
    limit: Duration,
) -> Vec<std::thread::JoinHandle<()>> {
    let size = Arc::new(size);
    let started = Instant::now();
    (0..clients)
        .map(|client| {
            let (ledger, size) = (ledger.clone(), size.clone());
            let (rcpt, prefix) = (rcpt.to_string(), prefix.to_string());
            std::thread::spawn(move || {
                for n in 0..per_client {
                    if started.elapsed() > limit {
                        return;
                    }
                    let token = format!("{prefix}{client:02}x{n:04}");
                    let text = message(&token, size(client * per_client + n));
                    let answer = send(address, "load@remote.test", &rcpt, &text);
                    let stop = matches!(&answer, Answer::Unknown)
                        || matches!(&answer, Answer::Refused(r) if r.starts_with("connection"));
                    ledger.lock().unwrap().sent.insert(token, (text, answer));
                    if stop {
                        return;
                    }
                }
            })
        })
        .collect()
}

/// The messages in `maildir` (its `new/` and `cur/`), by token: each
/// file's bytes, one entry per copy. Files without a token are kept under
/// the empty token (they should not exist).
pub fn delivered(maildir: &Path) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut found: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(maildir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            let token = text
                .split("Message-ID: <")
                .nth(1)
                .and_then(|rest| rest.split_once("@load.test>"))
                .map(|(token, _)| token.to_string())
                .unwrap_or_default();
            found.entry(token).or_default().push(bytes);
        }
    }
    found
}

/// What a check of the ledger against the Maildir found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub acknowledged: usize,
    pub delivered: usize,
    /// Acknowledged, not delivered.
    pub lost: Vec<String>,
    /// Delivered more than once: token and copies.
    pub duplicated: Vec<(String, usize)>,
    /// Delivered with other bytes than were sent (after the trace headers).
    pub corrupted: Vec<String>,
    /// Refused with a reply, and delivered all the same.
    pub refused_but_delivered: Vec<String>,
    /// Files with no token of ours, or a token never sent.
    pub strangers: usize,
    /// Sent with no answer (the crash), delivered.
    pub unknown_delivered: usize,
}

impl Verdict {
    /// One line for the test's output.
    pub fn summary(&self) -> String {
        format!(
            "acknowledged {}, delivered {}, lost {}, duplicated {}, corrupted {}, refused but delivered {}, strangers {}, unanswered but delivered {}",
            self.acknowledged,
            self.delivered,
            self.lost.len(),
            self.duplicated.len(),
            self.corrupted.len(),
            self.refused_but_delivered.len(),
            self.strangers,
            self.unknown_delivered
        )
    }
}

/// True if `stored` is `sent` under trace headers only (`Received:`,
/// `Return-Path:` and their folded lines).
pub fn same_message(stored: &[u8], sent: &str) -> bool {
    let Some(trace) = stored.strip_suffix(sent.as_bytes()) else {
        return false;
    };
    let trace = String::from_utf8_lossy(trace);
    trace.split_inclusive("\r\n").all(|line| {
        line.starts_with("Received:")
            || line.starts_with("Return-Path:")
            || line.starts_with(' ')
            || line.starts_with('\t')
    })
}

/// Checks every token of `ledger` against `found`.
pub fn check(ledger: &Ledger, found: &BTreeMap<String, Vec<Vec<u8>>>) -> Verdict {
    let mut verdict = Verdict {
        acknowledged: ledger.accepted(),
        delivered: found.values().map(Vec::len).sum(),
        ..Verdict::default()
    };
    for (token, copies) in found {
        if !ledger.sent.contains_key(token) {
            verdict.strangers += copies.len();
        }
    }
    for (token, (text, answer)) in &ledger.sent {
        let copies = found.get(token).map_or(&[][..], Vec::as_slice);
        if copies.len() > 1 {
            verdict.duplicated.push((token.clone(), copies.len()));
        }
        if copies.iter().any(|stored| !same_message(stored, text)) {
            verdict.corrupted.push(token.clone());
        }
        match answer {
            Answer::Accepted if copies.is_empty() => verdict.lost.push(token.clone()),
            Answer::Refused(_) if !copies.is_empty() => {
                verdict.refused_but_delivered.push(token.clone())
            }
            Answer::Unknown if !copies.is_empty() => verdict.unknown_delivered += 1,
            _ => {}
        }
    }
    verdict
}

/// Waits (at most `limit`) until every acknowledged token of `ledger` is
/// in `maildir`; returns what is there.
pub fn wait_delivered(
    maildir: &Path,
    ledger: &Ledger,
    limit: Duration,
) -> BTreeMap<String, Vec<Vec<u8>>> {
    let started = Instant::now();
    loop {
        let found = delivered(maildir);
        let all = ledger
            .sent
            .iter()
            .filter(|(_, (_, answer))| *answer == Answer::Accepted)
            .all(|(token, _)| found.contains_key(token));
        if all || started.elapsed() > limit {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

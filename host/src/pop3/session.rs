//! One POP3 session (RFC 1939, CAPA from RFC 2449), line by line, without
//! I/O. AUTHORIZATION → TRANSACTION → UPDATE: deletions take effect only at
//! `QUIT` from TRANSACTION.
//!
//! The caller (a TCP connection) hands each command line to
//! [`Pop3Session::command`] and writes the [`Response`]; when its
//! [`After`] asks for work — check a password, open the mailbox, read a
//! message, delete messages — the caller does it and hands the result back
//! to the matching method, which gives the next response. The session never
//! touches the disk or checks a password itself.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::auth::Verdict;
use crate::mailbox::maildir::StoredMessage;
use crate::smtp::data::dot_stuff;

/// What the server offers and its limits, the same for every session.
#[derive(Debug, Clone)]
pub struct Pop3Policy {
    /// The name in the greeting.
    pub hostname: String,
    /// `-ERR` replies before the session is closed.
    pub max_errors: u32,
    /// Whether `STLS` is offered (the caller can upgrade the stream).
    pub tls_available: bool,
}

/// A response, and what the caller does after sending it.
#[derive(Debug)]
pub struct Response {
    pub bytes: Vec<u8>,
    pub after: After,
}

/// What follows a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    /// Read the next command.
    Continue,
    /// Close the connection (after a TLS `close_notify`).
    Close,
    /// Run the TLS handshake (`STLS`), then call [`Pop3Session::tls_started`].
    StartTls,
    /// Check these credentials, then call [`Pop3Session::authenticated`].
    Authenticate { login: String, password: String },
    /// Take this user's mailbox for the session (one session at a time)
    /// and list it, then call [`Pop3Session::opened`].
    OpenMailbox { user: String },
    /// Read this message file, then call [`Pop3Session::read`].
    Read { path: PathBuf },
    /// Remove these message files (UPDATE), then call
    /// [`Pop3Session::updated`].
    Delete { messages: Vec<StoredMessage> },
}

/// Why a mailbox could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Another session has it (`-ERR [IN-USE]`).
    InUse,
    /// It could not be read (`-ERR [SYS/TEMP]`).
    Unreadable,
}

/// The mailbox as the session sees it: a snapshot taken at login.
struct Transaction {
    user: String,
    messages: Vec<StoredMessage>,
    deleted: Vec<bool>,
}

/// Work the session waits for the caller to finish.
enum Waiting {
    /// [`After::Authenticate`].
    Credentials,
    /// [`After::OpenMailbox`] for this user.
    Mailbox(String),
    /// [`After::Read`]: the message's size, and the body lines for `TOP`.
    Message { size: u64, top: Option<usize> },
    /// [`After::Delete`].
    Deletions,
}

/// One session.
pub struct Pop3Session {
    policy: Pop3Policy,
    client: IpAddr,
    /// The name given with `USER`, until `PASS`.
    user: Option<String>,
    transaction: Option<Transaction>,
    waiting: Option<Waiting>,
    errors: u32,
    tls: bool,
}

fn ok(text: &str) -> Response {
    Response {
        bytes: format!("+OK {text}\r\n").into_bytes(),
        after: After::Continue,
    }
}

fn err(text: &str) -> Response {
    Response {
        bytes: format!("-ERR {text}\r\n").into_bytes(),
        after: After::Continue,
    }
}

/// A response that is only work for the caller, nothing to send yet.
fn work(after: After) -> Response {
    Response {
        bytes: Vec::new(),
        after,
    }
}

fn closing(response: Response) -> Response {
    Response {
        after: After::Close,
        ..response
    }
}

impl Pop3Session {
    pub fn new(policy: Pop3Policy, client: IpAddr) -> Pop3Session {
        Pop3Session {
            policy,
            client,
            user: None,
            transaction: None,
            waiting: None,
            errors: 0,
            tls: false,
        }
    }

    pub fn greeting(&self) -> Vec<u8> {
        format!("+OK {} POP3 server ready\r\n", self.policy.hostname).into_bytes()
    }

    /// Answers one command line (without its line end).
    pub fn command(&mut self, line: &str) -> Response {
        let response = if self.waiting.is_some() {
            // The caller did not finish the work asked for: a bug there,
            // answered without losing the session's state.
            err("[SYS/TEMP] the previous command is still running")
        } else {
            self.dispatch(line)
        };
        self.count_errors(response)
    }

    /// Closes the session after too many `-ERR` replies.
    fn count_errors(&mut self, response: Response) -> Response {
        if !response.bytes.starts_with(b"-ERR") {
            return response;
        }
        self.errors += 1;
        if self.errors < self.policy.max_errors {
            return response;
        }
        // One response line per command, even the last (found by
        // fuzzing: a second -ERR line was sent after the first).
        let mut bytes = response.bytes;
        bytes.truncate(bytes.len().saturating_sub(2));
        bytes.extend_from_slice(b" (too many errors, closing)\r\n");
        Response {
            bytes,
            after: After::Close,
        }
    }

    fn dispatch(&mut self, line: &str) -> Response {
        let mut words = line.split_whitespace();
        let keyword = words.next().unwrap_or("").to_ascii_uppercase();
        let args: Vec<&str> = words.collect();
        match (keyword.as_str(), self.transaction.is_some()) {
            ("CAPA", _) => self.capabilities(),
            ("QUIT", false) => closing(ok("bye")),
            ("QUIT", true) => self.update(),
            ("NOOP", true) => ok(""),
            ("USER", false) => self.user(&args),
            ("PASS", false) => self.pass(line),
            ("STLS", false) => self.start_tls(),
            ("STAT", true) => self.stat(),
            ("LIST", true) => self.list(&args, false),
            ("UIDL", true) => self.list(&args, true),
            ("RETR", true) => self.retrieve(&args, None),
            ("TOP", true) => match args.get(1).and_then(|n| n.parse::<usize>().ok()) {
                Some(lines) => self.retrieve(&args[..1], Some(lines)),
                None => err("usage: TOP msg n"),
            },
            ("DELE", true) => self.delete(&args),
            ("RSET", true) => {
                if let Some(transaction) = &mut self.transaction {
                    transaction.deleted.iter_mut().for_each(|d| *d = false);
                }
                ok("")
            }
            (_, false)
                if [
                    "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET", "NOOP",
                ]
                .contains(&keyword.as_str()) =>
            {
                err("not in the TRANSACTION state: log in first")
            }
            (_, true) if ["USER", "PASS", "STLS"].contains(&keyword.as_str()) => {
                err("already logged in")
            }
            _ => err("unknown command"),
        }
    }

    /// TLS is up after `STLS`: the client starts over in AUTHORIZATION.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.user = None;
    }

    /// Passwords only where they cannot be read on the way (RFC 2595).
    fn login_allowed(&self) -> bool {
        self.tls || self.client.is_loopback()
    }

    fn capabilities(&self) -> Response {
        let mut bytes = b"+OK Capability list follows\r\n".to_vec();
        if self.login_allowed() && self.transaction.is_none() {
            bytes.extend_from_slice(b"USER\r\n");
        }
        if self.policy.tls_available && !self.tls && self.transaction.is_none() {
            bytes.extend_from_slice(b"STLS\r\n");
        }
        bytes.extend_from_slice(
            b"UIDL\r\nTOP\r\nRESP-CODES\r\nPIPELINING\r\nIMPLEMENTATION mailcall\r\n.\r\n",
        );
        Response {
            bytes,
            after: After::Continue,
        }
    }

    fn start_tls(&mut self) -> Response {
        if self.tls {
            err("TLS is already active")
        } else if !self.policy.tls_available {
            err("STLS is not available")
        } else {
            Response {
                after: After::StartTls,
                ..ok("Begin TLS negotiation")
            }
        }
    }

    fn user(&mut self, args: &[&str]) -> Response {
        if !self.login_allowed() {
            return err("[AUTH] USER/PASS only after STLS");
        }
        match args {
            [name] => {
                self.user = Some(name.to_string());
                ok("send PASS")
            }
            _ => err("usage: USER name"),
        }
    }

    fn pass(&mut self, line: &str) -> Response {
        let Some(login) = self.user.take() else {
            return err("send USER first");
        };
        // The password is the rest of the line: it may contain spaces.
        let password = line.get(5..).unwrap_or("").to_string();
        self.waiting = Some(Waiting::Credentials);
        work(After::Authenticate { login, password })
    }

    /// The caller checked the credentials of [`After::Authenticate`].
    pub fn authenticated(&mut self, verdict: Verdict) -> Response {
        if !matches!(self.waiting, Some(Waiting::Credentials)) {
            return self.count_errors(err("[SYS/TEMP] no login was asked for"));
        }
        self.waiting = None;
        let response = match verdict {
            Verdict::Accepted(user) => {
                self.waiting = Some(Waiting::Mailbox(user.clone()));
                work(After::OpenMailbox { user })
            }
            Verdict::Refused => err("[AUTH] invalid user name or password"),
            Verdict::Unavailable => err("[SYS/TEMP] cannot check passwords now, try later"),
        };
        self.count_errors(response)
    }

    /// The caller opened the mailbox of [`After::OpenMailbox`]: its
    /// messages, oldest first.
    pub fn opened(&mut self, mailbox: Result<Vec<StoredMessage>, OpenError>) -> Response {
        let Some(Waiting::Mailbox(user)) = self.waiting.take() else {
            return self.count_errors(err("[SYS/TEMP] no mailbox was asked for"));
        };
        let response = match mailbox {
            Ok(messages) => {
                tracing::info!(client = %self.client, %user, "POP3 login");
                let count = messages.len();
                let response = ok(&format!("{user} has {count} messages"));
                self.transaction = Some(Transaction {
                    user,
                    deleted: vec![false; count],
                    messages,
                });
                response
            }
            Err(OpenError::InUse) => err("[IN-USE] the mailbox is open in another session"),
            Err(OpenError::Unreadable) => err("[SYS/TEMP] cannot open the mailbox"),
        };
        self.count_errors(response)
    }

    fn live(&self) -> impl Iterator<Item = (usize, &StoredMessage)> {
        let transaction = self.transaction.as_ref();
        transaction.into_iter().flat_map(|t| {
            t.messages
                .iter()
                .enumerate()
                .filter(|(i, _)| !t.deleted[*i])
        })
    }

    fn stat(&self) -> Response {
        let (count, size) = self
            .live()
            .fold((0, 0), |(n, s), (_, m)| (n + 1, s + m.size));
        ok(&format!("{count} {size}"))
    }

    /// The message numbered `arg` (1-based), if it exists and is not deleted.
    fn message(&self, arg: Option<&&str>) -> Result<(usize, &StoredMessage), Response> {
        let number: usize = arg
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| err("give a message number"))?;
        self.live()
            .find(|(index, _)| index + 1 == number)
            .ok_or_else(|| err("no such message"))
    }

    fn list(&self, args: &[&str], unique: bool) -> Response {
        let describe = |index: usize, message: &StoredMessage| {
            if unique {
                format!("{} {}", index + 1, message.unique)
            } else {
                format!("{} {}", index + 1, message.size)
            }
        };
        if !args.is_empty() {
            return match self.message(args.first()) {
                Ok((index, message)) => ok(&describe(index, message)),
                Err(response) => response,
            };
        }
        let mut bytes = b"+OK listing follows\r\n".to_vec();
        for (index, message) in self.live() {
            bytes.extend_from_slice(describe(index, message).as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b".\r\n");
        Response {
            bytes,
            after: After::Continue,
        }
    }

    fn retrieve(&mut self, args: &[&str], top: Option<usize>) -> Response {
        let (size, path) = match self.message(args.first()) {
            Ok((_, message)) => (message.size, message.path.clone()),
            Err(response) => return response,
        };
        self.waiting = Some(Waiting::Message { size, top });
        work(After::Read { path })
    }

    /// The caller read the file of [`After::Read`]: the message is sent
    /// with CRLF line ends and dot-stuffed.
    pub fn read(&mut self, content: std::io::Result<Vec<u8>>) -> Response {
        let Some(Waiting::Message { size, top }) = self.waiting.take() else {
            return self.count_errors(err("[SYS/TEMP] no message was asked for"));
        };
        let response = match content {
            Ok(content) => {
                let mut bytes = format!("+OK {size} octets\r\n").into_bytes();
                bytes.extend_from_slice(&dot_stuff(&content, top));
                Response {
                    bytes,
                    after: After::Continue,
                }
            }
            Err(error) => {
                tracing::error!(client = %self.client, "cannot read a message: {error}");
                err("[SYS/TEMP] cannot read the message")
            }
        };
        self.count_errors(response)
    }

    fn delete(&mut self, args: &[&str]) -> Response {
        let index = match self.message(args.first()) {
            Ok((index, _)) => index,
            Err(response) => return response,
        };
        if let Some(transaction) = &mut self.transaction {
            transaction.deleted[index] = true;
        }
        ok(&format!("message {} deleted", index + 1))
    }

    /// UPDATE: the caller removes the deleted messages, then the session
    /// ends.
    fn update(&mut self) -> Response {
        let Some(transaction) = self.transaction.take() else {
            return closing(ok("bye"));
        };
        let messages: Vec<StoredMessage> = transaction
            .messages
            .into_iter()
            .zip(transaction.deleted)
            .filter_map(|(message, deleted)| deleted.then_some(message))
            .collect();
        if messages.is_empty() {
            return closing(ok("bye"));
        }
        tracing::info!(user = %transaction.user, count = messages.len(), "POP3 deletions");
        self.waiting = Some(Waiting::Deletions);
        work(After::Delete { messages })
    }

    /// The caller removed the messages of [`After::Delete`]; `failed` of
    /// them could not be removed.
    pub fn updated(&mut self, failed: usize) -> Response {
        if !matches!(self.waiting.take(), Some(Waiting::Deletions)) {
            return closing(err("[SYS/TEMP] no deletion was asked for"));
        }
        if failed > 0 {
            closing(err("[SYS/TEMP] some deleted messages were not removed"))
        } else {
            closing(ok("bye"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client and the caller's side in memory: messages are `(unique,
    /// content)`, the password of `taro` is `secret`, and `busy` stands
    /// for a check that could not be made now.
    struct Client {
        session: Pop3Session,
        messages: Vec<(String, Vec<u8>)>,
        in_use: bool,
        deleted: Vec<PathBuf>,
        closed: bool,
    }

    impl Client {
        fn new(address: &str, messages: &[(&str, &[u8])]) -> Client {
            let policy = Pop3Policy {
                hostname: "mx.test".into(),
                max_errors: 10,
                tls_available: true,
            };
            Client {
                session: Pop3Session::new(policy, address.parse().unwrap()),
                messages: messages
                    .iter()
                    .map(|(u, c)| (u.to_string(), c.to_vec()))
                    .collect(),
                in_use: false,
                deleted: Vec::new(),
                closed: false,
            }
        }

        fn stored(&self) -> Vec<StoredMessage> {
            self.messages
                .iter()
                .map(|(unique, content)| StoredMessage {
                    unique: unique.clone(),
                    path: PathBuf::from(unique),
                    size: content.len() as u64,
                })
                .collect()
        }

        /// Sends one command; returns everything written back.
        fn say(&mut self, line: &str) -> String {
            let mut out = Vec::new();
            let mut response = self.session.command(line);
            loop {
                out.extend_from_slice(&response.bytes);
                response = match response.after {
                    After::Continue | After::StartTls => break,
                    After::Close => {
                        self.closed = true;
                        break;
                    }
                    After::Authenticate { login, password } => {
                        self.session
                            .authenticated(match (login.as_str(), password.as_str()) {
                                ("taro", "secret") => Verdict::Accepted("taro".into()),
                                (_, "busy") => Verdict::Unavailable,
                                _ => Verdict::Refused,
                            })
                    }
                    After::OpenMailbox { user } => {
                        assert_eq!(user, "taro");
                        let opened = if self.in_use {
                            Err(OpenError::InUse)
                        } else {
                            Ok(self.stored())
                        };
                        self.session.opened(opened)
                    }
                    After::Read { path } => {
                        let content = self
                            .messages
                            .iter()
                            .find(|(unique, _)| path == std::path::Path::new(unique))
                            .map(|(_, content)| content.clone())
                            .ok_or_else(|| std::io::Error::other("gone"));
                        self.session.read(content)
                    }
                    After::Delete { messages } => {
                        self.deleted.extend(messages.into_iter().map(|m| m.path));
                        self.session.updated(0)
                    }
                };
            }
            String::from_utf8(out).unwrap()
        }
    }

    const FIRST: &[u8] = b"Subject: 1\r\n\r\n.dot\r\none\r\ntwo\r\n";
    const SECOND: &[u8] = b"Subject: 2\r\n\r\nx\r\n";

    #[test]
    fn a_session_lists_retrieves_and_deletes_at_quit_only() {
        let mut client = Client::new("127.0.0.1", &[("a", FIRST), ("b", SECOND)]);
        assert!(client.say("STAT").starts_with("-ERR"), "not logged in");
        assert_eq!(client.say("USER taro"), "+OK send PASS\r\n");
        assert_eq!(client.say("PASS secret"), "+OK taro has 2 messages\r\n");
        assert_eq!(client.say("STAT"), "+OK 2 47\r\n");
        assert_eq!(
            client.say("LIST"),
            "+OK listing follows\r\n1 30\r\n2 17\r\n.\r\n"
        );
        assert_eq!(client.say("UIDL 2"), "+OK 2 b\r\n");
        assert_eq!(
            client.say("RETR 1"),
            "+OK 30 octets\r\nSubject: 1\r\n\r\n..dot\r\none\r\ntwo\r\n.\r\n"
        );
        assert_eq!(
            client.say("TOP 1 1"),
            "+OK 30 octets\r\nSubject: 1\r\n\r\n..dot\r\n.\r\n"
        );
        assert_eq!(client.say("DELE 1"), "+OK message 1 deleted\r\n");
        assert!(client.say("RETR 1").starts_with("-ERR no such message"));
        assert_eq!(client.say("STAT"), "+OK 1 17\r\n");
        assert_eq!(client.say("RSET"), "+OK \r\n");
        assert_eq!(client.say("DELE 2"), "+OK message 2 deleted\r\n");
        assert!(client.deleted.is_empty(), "nothing removed before QUIT");
        assert_eq!(client.say("QUIT"), "+OK bye\r\n");
        assert!(client.closed);
        assert_eq!(client.deleted, [PathBuf::from("b")]);
    }

    #[test]
    fn wrong_passwords_busy_checks_and_mailboxes_in_use_are_refused() {
        let mut client = Client::new("127.0.0.1", &[]);
        assert!(client
            .say("PASS secret")
            .starts_with("-ERR send USER first"));
        client.say("USER taro");
        assert_eq!(
            client.say("PASS wrong"),
            "-ERR [AUTH] invalid user name or password\r\n"
        );
        client.say("USER taro");
        assert!(client.say("PASS busy").starts_with("-ERR [SYS/TEMP]"));
        client.in_use = true;
        client.say("USER taro");
        assert!(client.say("PASS secret").starts_with("-ERR [IN-USE]"));
        client.in_use = false;
        client.say("USER taro");
        assert_eq!(client.say("PASS secret"), "+OK taro has 0 messages\r\n");
        assert!(client
            .say("USER taro")
            .starts_with("-ERR already logged in"));
        // QUIT with nothing deleted removes nothing.
        assert_eq!(client.say("QUIT"), "+OK bye\r\n");
        assert!(client.deleted.is_empty());
    }

    #[test]
    fn passwords_only_over_tls_or_loopback_and_too_many_errors_close() {
        let mut client = Client::new("192.0.2.7", &[]);
        let capabilities = client.say("CAPA");
        assert!(capabilities.contains("STLS\r\n"), "{capabilities}");
        assert!(!capabilities.contains("USER\r\n"), "{capabilities}");
        assert!(client.say("USER taro").starts_with("-ERR [AUTH]"));
        assert!(client.say("STLS").starts_with("+OK"));
        client.session.tls_started();
        let capabilities = client.say("CAPA");
        assert!(!capabilities.contains("STLS"), "{capabilities}");
        assert!(capabilities.contains("USER\r\n"), "{capabilities}");
        assert!(client.say("STLS").starts_with("-ERR"));
        // Two errors so far: the tenth closes.
        for _ in 0..7 {
            assert!(!client.closed);
            client.say("BOGUS");
        }
        let last = client.say("BOGUS");
        assert!(
            last.ends_with(" (too many errors, closing)\r\n"),
            "{last:?}"
        );
        assert_eq!(last.matches("\r\n").count(), 1, "one line: {last:?}");
        assert!(client.closed);
    }

    #[test]
    fn results_nobody_asked_for_are_refused_without_a_panic() {
        let mut client = Client::new("127.0.0.1", &[]);
        assert!(client
            .session
            .authenticated(Verdict::Accepted("taro".into()))
            .bytes
            .starts_with(b"-ERR"));
        assert!(client
            .session
            .opened(Ok(Vec::new()))
            .bytes
            .starts_with(b"-ERR"));
        assert!(client
            .session
            .read(Ok(Vec::new()))
            .bytes
            .starts_with(b"-ERR"));
        assert!(
            client.say("STAT").starts_with("-ERR"),
            "still not logged in"
        );
    }
}

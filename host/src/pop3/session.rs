//! One POP3 session (RFC 1939, CAPA from RFC 2449), line by line, without
//! network I/O. AUTHORIZATION → TRANSACTION → UPDATE: deletions take effect
//! only at `QUIT` from TRANSACTION; a mailbox is open in one session at a
//! time.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::mailbox::maildir::{Maildir, StoredMessage};
use crate::smtp::data::dot_stuff;

/// What all POP3 sessions share.
pub struct Pop3Shared {
    pub config: Arc<Config>,
    /// The folder holding one Maildir per user.
    pub mail_dir: PathBuf,
    /// Mailboxes open in a session now.
    pub open: Mutex<HashSet<String>>,
    /// For `STLS`; `None` if TLS could not be set up.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Keeps a mailbox marked open until dropped.
struct MailboxLock {
    shared: Arc<Pop3Shared>,
    user: String,
}

impl Drop for MailboxLock {
    fn drop(&mut self) {
        if let Ok(mut open) = self.shared.open.lock() {
            open.remove(&self.user);
        }
    }
}

/// The mailbox as the session sees it: a snapshot taken at login.
struct Transaction {
    maildir: Maildir,
    messages: Vec<StoredMessage>,
    deleted: Vec<bool>,
    _lock: MailboxLock,
}

/// One session.
pub struct Pop3Session {
    shared: Arc<Pop3Shared>,
    client: IpAddr,
    user: Option<String>,
    transaction: Option<Transaction>,
    errors: u32,
    tls: bool,
}

/// A response, and what the connection does after sending it.
pub struct Response {
    pub bytes: Vec<u8>,
    pub after: After,
}

/// What follows a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Continue,
    Close,
    /// Run the TLS handshake (`STLS`), then call [`Pop3Session::tls_started`].
    StartTls,
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

impl Pop3Session {
    pub fn new(shared: Arc<Pop3Shared>, client: IpAddr) -> Pop3Session {
        Pop3Session {
            shared,
            client,
            user: None,
            transaction: None,
            errors: 0,
            tls: false,
        }
    }

    pub fn greeting(&self) -> Vec<u8> {
        format!(
            "+OK {} POP3 server ready\r\n",
            self.shared.config.server.hostname
        )
        .into_bytes()
    }

    /// Answers one command line (without its line end).
    pub fn command(&mut self, line: &str) -> Response {
        let response = self.dispatch(line);
        if response.bytes.starts_with(b"-ERR") {
            self.errors += 1;
            if self.errors >= self.shared.config.server.max_errors {
                let mut bytes = response.bytes;
                bytes.extend_from_slice(b"-ERR too many errors, closing\r\n");
                return Response {
                    bytes,
                    after: After::Close,
                };
            }
        }
        response
    }

    fn dispatch(&mut self, line: &str) -> Response {
        let mut words = line.split_whitespace();
        let keyword = words.next().unwrap_or("").to_ascii_uppercase();
        let args: Vec<&str> = words.collect();
        match (keyword.as_str(), self.transaction.is_some()) {
            ("CAPA", _) => self.capabilities(),
            ("QUIT", false) => Response {
                after: After::Close,
                ..ok("bye")
            },
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
        if self.shared.tls.is_some() && !self.tls && self.transaction.is_none() {
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
        } else if self.shared.tls.is_none() {
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
        let Some(user) = self.user.take() else {
            return err("send USER first");
        };
        // The password is the rest of the line: it may contain spaces.
        let password = line.get(5..).unwrap_or("");
        let Some(name) = crate::credentials::check(&self.shared.config, &user, password) else {
            return err("[AUTH] invalid user name or password");
        };
        {
            let Ok(mut open) = self.shared.open.lock() else {
                return err("[SYS/TEMP] internal error");
            };
            if !open.insert(name.clone()) {
                return err("[IN-USE] the mailbox is open in another session");
            }
        }
        let lock = MailboxLock {
            shared: self.shared.clone(),
            user: name.clone(),
        };
        let opened = Maildir::open(&self.shared.mail_dir.join(&name)).and_then(|maildir| {
            let messages = maildir.messages()?;
            Ok((maildir, messages))
        });
        match opened {
            Ok((maildir, messages)) => {
                let count = messages.len();
                self.transaction = Some(Transaction {
                    maildir,
                    deleted: vec![false; count],
                    messages,
                    _lock: lock,
                });
                ok(&format!("{name} has {count} messages"))
            }
            Err(error) => {
                tracing::error!(user = %name, "cannot open mailbox: {error}");
                err("[SYS/TEMP] cannot open the mailbox")
            }
        }
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

    fn retrieve(&self, args: &[&str], top: Option<usize>) -> Response {
        let (_, message) = match self.message(args.first()) {
            Ok(found) => found,
            Err(response) => return response,
        };
        let content = match std::fs::read(&message.path) {
            Ok(content) => content,
            Err(error) => {
                tracing::error!(file = %message.path.display(), "cannot read: {error}");
                return err("[SYS/TEMP] cannot read the message");
            }
        };
        let mut bytes = format!("+OK {} octets\r\n", message.size).into_bytes();
        bytes.extend_from_slice(&dot_stuff(&content, top));
        Response {
            bytes,
            after: After::Continue,
        }
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

    /// UPDATE: the deletions take effect, then the session ends.
    fn update(&mut self) -> Response {
        let Some(transaction) = self.transaction.take() else {
            return Response {
                after: After::Close,
                ..ok("bye")
            };
        };
        let mut failed = 0;
        for (message, deleted) in transaction.messages.iter().zip(&transaction.deleted) {
            if *deleted && transaction.maildir.delete(message).is_err() {
                failed += 1;
            }
        }
        if failed > 0 {
            return Response {
                after: After::Close,
                ..err("[SYS/TEMP] some deleted messages were not removed")
            };
        }
        Response {
            after: After::Close,
            ..ok("bye")
        }
    }
}

//! The POP3 server (step S3's read side): users fetch their local mail.
//!
//! - [`session`]: one session, line by line, without I/O.
//! - here: the connection that drives it over TCP (and TLS after `STLS`),
//!   checks passwords with the shared [`Authenticator`], and does the
//!   session's disk work on the Maildir.

pub mod session;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::auth::Authenticator;
use crate::mailbox::maildir::{Maildir, StoredMessage};
use crate::server::listener::Listener;
use session::{After, OpenError, Pop3Policy, Pop3Session};

/// The longest command line accepted (RFC 2449 allows 255 octets).
const LINE_LIMIT: usize = 512;

/// What all POP3 connections share.
pub struct Pop3Shared {
    pub policy: Pop3Policy,
    /// The folder holding one Maildir per user.
    pub mail_dir: PathBuf,
    /// Mailboxes open in a session now: one session per mailbox.
    pub open: Mutex<HashSet<String>>,
    /// For `STLS`; `None` if TLS could not be set up.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Checks passwords (shared with SMTP `AUTH`).
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Seconds to wait for a command, and for the TLS handshake.
    pub command_timeout: Duration,
    /// Sessions at once; more are told `-ERR [SYS/TEMP]`.
    pub max_sessions: u32,
}

/// Serves POP3 on `listener` forever.
pub async fn listen(listener: TcpListener, shared: Arc<Pop3Shared>) {
    let listener = Listener::new(
        listener,
        shared.max_sessions,
        b"-ERR [SYS/TEMP] too many connections, try later\r\n".to_vec(),
        "POP3",
    );
    listener
        .run(|stream, peer| {
            shared.metrics.session("pop3");
            connection(stream, peer, shared.clone())
        })
        .await;
}

/// Marks a user's mailbox open in one session; the mark is removed when it
/// is dropped.
struct MailboxMark {
    shared: Arc<Pop3Shared>,
    user: String,
}

impl Drop for MailboxMark {
    fn drop(&mut self) {
        if let Ok(mut open) = self.shared.open.lock() {
            open.remove(&self.user);
        }
    }
}

/// The mailbox a session has open.
struct OpenMailbox {
    maildir: Maildir,
    _mark: MailboxMark,
}

/// One client's connection: its session, and its mailbox once open.
struct Connection {
    shared: Arc<Pop3Shared>,
    client: IpAddr,
    session: Pop3Session,
    mailbox: Option<OpenMailbox>,
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Pop3Shared>,
) -> std::io::Result<()> {
    let mut connection = Connection {
        session: Pop3Session::new(shared.policy.clone(), peer.ip()),
        client: peer.ip(),
        shared: shared.clone(),
        mailbox: None,
    };
    let mut stream = BufReader::new(stream);
    stream.write_all(&connection.session.greeting()).await?;
    let Some(stream) = connection.drive(stream).await? else {
        return Ok(());
    };
    let Some(acceptor) = &shared.tls else {
        return Ok(());
    };
    // Input the client sent before the handshake is dropped with the
    // buffer: nothing can be injected in clear into the TLS session.
    let handshake = acceptor.accept(stream.into_inner());
    let tls = match tokio::time::timeout(shared.command_timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::info!(%peer, "POP3 TLS handshake failed: {error}");
            return Ok(());
        }
        Err(_) => return Ok(()),
    };
    connection.session.tls_started();
    connection.drive(BufReader::new(tls)).await?;
    Ok(())
}

impl Connection {
    /// Answers commands over `stream` until the session ends (`None`; the
    /// stream is shut down, with a TLS `close_notify`) or asks for TLS (the
    /// stream is handed back for the handshake).
    async fn drive<S>(&mut self, mut stream: BufReader<S>) -> std::io::Result<Option<BufReader<S>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut line = Vec::new();
        loop {
            line.clear();
            let mut limited = (&mut stream).take(LINE_LIMIT as u64 + 2);
            let read = limited.read_until(b'\n', &mut line);
            let read = tokio::time::timeout(self.shared.command_timeout, read).await;
            let ending: &[u8] = match read {
                Ok(Ok(0)) => b"",
                Ok(Ok(_)) if !line.ends_with(b"\n") => b"-ERR line too long\r\n",
                Ok(Ok(_)) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\r', '\n']).to_string();
                    match self.answer(&text, &mut stream).await? {
                        After::StartTls => {
                            stream.flush().await?;
                            return Ok(Some(stream));
                        }
                        After::Close => b"",
                        _ => continue,
                    }
                }
                Ok(Err(error)) => return Err(error),
                Err(_) => b"-ERR timeout, closing\r\n",
            };
            stream.write_all(ending).await?;
            let _ = stream.shutdown().await;
            return Ok(None);
        }
    }

    /// Answers one command, doing the work the session asks for; returns
    /// what follows the last response (`Continue`, `Close` or `StartTls`).
    async fn answer<S>(&mut self, line: &str, stream: &mut S) -> std::io::Result<After>
    where
        S: AsyncWrite + Unpin,
    {
        let mut response = self.session.command(line);
        loop {
            if !response.bytes.is_empty() {
                stream.write_all(&response.bytes).await?;
            }
            response = match response.after {
                after @ (After::Continue | After::Close | After::StartTls) => return Ok(after),
                After::Authenticate { login, password } => {
                    let verdict = self
                        .shared
                        .auth
                        .verify(self.client, &login, &password)
                        .await;
                    self.session.authenticated(verdict)
                }
                After::OpenMailbox { user } => {
                    let opened = self.open(user).await;
                    self.session.opened(opened)
                }
                After::Read { path } => {
                    let content = tokio::task::spawn_blocking(move || std::fs::read(path))
                        .await
                        .unwrap_or_else(|error| Err(std::io::Error::other(error)));
                    self.session.read(content)
                }
                After::Delete { messages } => {
                    let failed = self.delete(messages).await;
                    self.session.updated(failed)
                }
            };
        }
    }

    /// Takes `user`'s mailbox for this session and lists it.
    async fn open(&mut self, user: String) -> Result<Vec<StoredMessage>, OpenError> {
        {
            let mut open = self.shared.open.lock().map_err(|_| OpenError::Unreadable)?;
            if !open.insert(user.clone()) {
                return Err(OpenError::InUse);
            }
        }
        // Marked open from here: the mark goes if listing fails.
        let mark = MailboxMark {
            shared: self.shared.clone(),
            user: user.clone(),
        };
        let root = self.shared.mail_dir.join(&user);
        let listed = tokio::task::spawn_blocking(move || {
            let maildir = Maildir::open(&root)?;
            let messages = maildir.messages()?;
            Ok::<_, crate::mailbox::maildir::MaildirError>((maildir, messages))
        })
        .await;
        match listed {
            Ok(Ok((maildir, messages))) => {
                self.mailbox = Some(OpenMailbox {
                    maildir,
                    _mark: mark,
                });
                Ok(messages)
            }
            Ok(Err(error)) => {
                tracing::error!(%user, "cannot open the mailbox: {error}");
                Err(OpenError::Unreadable)
            }
            Err(error) => {
                tracing::error!(%user, "cannot open the mailbox: {error}");
                Err(OpenError::Unreadable)
            }
        }
    }

    /// Removes `messages` from the open mailbox; returns how many could not
    /// be removed.
    async fn delete(&mut self, messages: Vec<StoredMessage>) -> usize {
        let Some(mailbox) = &self.mailbox else {
            return messages.len();
        };
        let maildir = mailbox.maildir.clone();
        let count = messages.len();
        tokio::task::spawn_blocking(move || {
            messages
                .iter()
                .filter(|message| maildir.delete(message).is_err())
                .count()
        })
        .await
        .unwrap_or(count)
    }
}

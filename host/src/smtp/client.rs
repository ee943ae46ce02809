//! The SMTP client: relaying to another server (S8), and later the final
//! server at the far end of a call (S6).
//!
//! One transaction per connection, with a reply per recipient, so each
//! recipient gets its own outcome (`2xx` delivered, `4xx` retried, `5xx`
//! failed). Commands are pipelined when the server offers `PIPELINING`
//! (RFC 2920); `STARTTLS` is used whenever offered, if the caller allows
//! (opportunistic, RFC 7435); the message is sent as stored, dot-stuffed,
//! ending in exactly one `<CRLF>.<CRLF>`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::data::dot_stuff;

/// A reply line longer than this ends the connection (RFC 5321 asks for
/// 512; be generous).
const REPLY_LINE_LIMIT: u64 = 4096;
/// Lines of one multi-line reply, at most.
const REPLY_LINES_LIMIT: usize = 256;

/// One reply: its code and its text (lines joined by spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    pub code: u16,
    pub text: String,
}

impl ServerReply {
    /// A reply made up here, for a failure of our own (`4xx` retries).
    pub fn local(code: u16, text: impl Into<String>) -> ServerReply {
        ServerReply {
            code,
            text: text.into(),
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

impl std::fmt::Display for ServerReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// The result of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relayed {
    /// The transaction ran: each recipient's final reply (the `RCPT` reply
    /// if refused there, else the reply to the end of data).
    Replies(Vec<ServerReply>),
    /// It failed before any recipient could be answered (connection,
    /// greeting, `EHLO`/`MAIL` refused, or the connection broke): the same
    /// reply, or a local `4xx`, for everyone. Another server of the
    /// destination may be tried.
    Failed(ServerReply),
}

/// One message to send.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub mail_from: &'a str,
    pub recipients: &'a [String],
    pub message: &'a [u8],
}

/// How the client behaves.
#[derive(Clone)]
pub struct ClientSettings {
    /// The name given in `EHLO`.
    pub hostname: String,
    /// Opportunistic TLS, if wanted.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub connect_timeout: Duration,
    /// The wait for each reply.
    pub reply_timeout: Duration,
}

/// Sends `outgoing` to the server at `address` (`server_name` is its host
/// name, for TLS).
pub async fn relay(
    address: SocketAddr,
    server_name: &str,
    settings: &ClientSettings,
    outgoing: Outgoing<'_>,
) -> Relayed {
    let attempt = async {
        let stream = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| timed_out("connect"))??;
        stream.set_nodelay(true)?;
        let mut connection = Connection::new(stream, settings.reply_timeout);
        let capabilities = match connection.hello(&settings.hostname).await? {
            Ok(capabilities) => capabilities,
            Err(refused) => return Ok(Relayed::Failed(refused)),
        };
        let Some(tls) = settings
            .tls
            .clone()
            .filter(|_| capabilities.has("STARTTLS"))
        else {
            return connection.transact(&capabilities, outgoing).await;
        };
        let reply = connection.command("STARTTLS").await?;
        if reply.code != 220 {
            // Offered but refused: go on in clear, as `may` allows.
            return connection.transact(&capabilities, outgoing).await;
        }
        let stream = connection.into_inner()?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .unwrap_or_else(|_| rustls::pki_types::ServerName::IpAddress(address.ip().into()));
        let handshake = tokio_rustls::TlsConnector::from(tls).connect(name, stream);
        let stream = tokio::time::timeout(settings.reply_timeout, handshake)
            .await
            .map_err(|_| timed_out("TLS handshake"))??;
        let mut connection = Connection::new(stream, settings.reply_timeout);
        // RFC 3207: no greeting after the handshake; EHLO again.
        let capabilities = match connection.ehlo(&settings.hostname).await? {
            Ok(capabilities) => capabilities,
            Err(refused) => return Ok(Relayed::Failed(refused)),
        };
        connection.transact(&capabilities, outgoing).await
    };
    attempt.await.unwrap_or_else(|error: std::io::Error| {
        Relayed::Failed(ServerReply::local(
            451,
            format!("4.4.1 cannot talk to {address}: {error}"),
        ))
    })
}

/// Sends `outgoing` over a stream already connected to an SMTP server (a
/// call's channel): greeting, `EHLO`, the transaction, `QUIT`.
pub async fn send_over<S>(stream: S, settings: &ClientSettings, outgoing: Outgoing<'_>) -> Relayed
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut connection = Connection::new(stream, settings.reply_timeout);
    let attempt = async {
        match connection.hello(&settings.hostname).await? {
            Ok(capabilities) => connection.transact(&capabilities, outgoing).await,
            Err(refused) => Ok(Relayed::Failed(refused)),
        }
    };
    attempt.await.unwrap_or_else(|error| {
        Relayed::Failed(ServerReply::local(
            451,
            format!("4.4.2 connection broken: {error}"),
        ))
    })
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out"))
}

/// The extensions a server named in its `EHLO` reply.
struct Capabilities(Vec<String>);

impl Capabilities {
    fn has(&self, keyword: &str) -> bool {
        self.0.iter().any(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|word| word.eq_ignore_ascii_case(keyword))
        })
    }

    /// The server's `SIZE` limit, if it gave one (0 means none).
    fn size_limit(&self) -> Option<usize> {
        self.0.iter().find_map(|line| {
            let mut words = line.split_whitespace();
            let keyword = words.next()?;
            if !keyword.eq_ignore_ascii_case("SIZE") {
                return None;
            }
            words.next()?.parse().ok().filter(|&limit| limit > 0)
        })
    }
}

struct Connection<S> {
    stream: BufReader<S>,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    fn new(stream: S, timeout: Duration) -> Connection<S> {
        Connection {
            stream: BufReader::new(stream),
            timeout,
        }
    }

    /// The stream, for the TLS handshake; refused if the server sent more
    /// than the `220` (which would be read as if it came over TLS).
    fn into_inner(self) -> std::io::Result<S> {
        if !self.stream.buffer().is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "data after the reply to STARTTLS",
            ));
        }
        Ok(self.stream.into_inner())
    }

    async fn reply(&mut self) -> std::io::Result<ServerReply> {
        Ok(self.reply_lines().await?.0)
    }

    /// A reply, and its lines apart (for `EHLO`'s list of extensions).
    async fn reply_lines(&mut self) -> std::io::Result<(ServerReply, Vec<String>)> {
        tokio::time::timeout(self.timeout, self.read_reply())
            .await
            .map_err(|_| timed_out("reply"))?
    }

    async fn read_reply(&mut self) -> std::io::Result<(ServerReply, Vec<String>)> {
        let mut text = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = (&mut self.stream)
                .take(REPLY_LINE_LIMIT)
                .read_until(b'\n', &mut line)
                .await?;
            if read == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
            if !line.ends_with(b"\n") {
                return Err(invalid("reply line too long"));
            }
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end();
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|code| (200..600).contains(code))
                .ok_or_else(|| invalid("not an SMTP reply"))?;
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                let reply = ServerReply {
                    code,
                    text: text.join(" "),
                };
                return Ok((reply, text));
            }
            if text.len() > REPLY_LINES_LIMIT {
                return Err(invalid("reply has too many lines"));
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        tokio::time::timeout(self.timeout, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| timed_out("write"))?
    }

    async fn command(&mut self, line: &str) -> std::io::Result<ServerReply> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// The greeting, then `EHLO` (or `HELO` if `EHLO` is refused).
    async fn hello(
        &mut self,
        hostname: &str,
    ) -> std::io::Result<Result<Capabilities, ServerReply>> {
        let greeting = self.reply().await?;
        if greeting.code != 220 {
            let _ = self.command("QUIT").await;
            return Ok(Err(greeting));
        }
        self.ehlo(hostname).await
    }

    async fn ehlo(&mut self, hostname: &str) -> std::io::Result<Result<Capabilities, ServerReply>> {
        self.send(format!("EHLO {hostname}\r\n").as_bytes()).await?;
        let (reply, mut lines) = self.reply_lines().await?;
        if reply.is_positive() {
            lines.remove(0); // the server's name
            return Ok(Ok(Capabilities(lines)));
        }
        let helo = self.command(&format!("HELO {hostname}")).await?;
        if helo.is_positive() {
            Ok(Ok(Capabilities(Vec::new())))
        } else {
            Ok(Err(helo))
        }
    }

    /// `MAIL`, `RCPT` for each recipient, `DATA` and the message, `QUIT`.
    async fn transact(
        &mut self,
        capabilities: &Capabilities,
        outgoing: Outgoing<'_>,
    ) -> std::io::Result<Relayed> {
        let mut mail = format!("MAIL FROM:<{}>", outgoing.mail_from);
        if let Some(limit) = capabilities.size_limit() {
            if outgoing.message.len() > limit {
                let _ = self.command("QUIT").await;
                return Ok(Relayed::Failed(ServerReply::local(
                    552,
                    format!("5.3.4 message size exceeds the server's limit of {limit}"),
                )));
            }
        }
        if capabilities.has("SIZE") {
            mail.push_str(&format!(" SIZE={}", outgoing.message.len()));
        }
        if capabilities.has("8BITMIME") && !outgoing.message.is_ascii() {
            mail.push_str(" BODY=8BITMIME");
        }
        let international =
            !outgoing.mail_from.is_ascii() || outgoing.recipients.iter().any(|r| !r.is_ascii());
        if international {
            if !capabilities.has("SMTPUTF8") {
                let _ = self.command("QUIT").await;
                return Ok(Relayed::Failed(ServerReply::local(
                    553,
                    "5.6.7 the server does not take internationalized addresses (no SMTPUTF8)",
                )));
            }
            mail.push_str(" SMTPUTF8");
        }
        let rcpts: Vec<String> = outgoing
            .recipients
            .iter()
            .map(|recipient| format!("RCPT TO:<{recipient}>"))
            .collect();
        let (mail_reply, mut replies, data_reply) = if capabilities.has("PIPELINING") {
            // One write for the whole envelope, then the replies in order.
            let mut batch = format!("{mail}\r\n");
            for rcpt in &rcpts {
                batch.push_str(rcpt);
                batch.push_str("\r\n");
            }
            batch.push_str("DATA\r\n");
            self.send(batch.as_bytes()).await?;
            let mail_reply = self.reply().await?;
            let mut replies = Vec::with_capacity(rcpts.len());
            for _ in &rcpts {
                replies.push(self.reply().await?);
            }
            let data_reply = self.reply().await?;
            (mail_reply, replies, Some(data_reply))
        } else {
            let mail_reply = self.command(&mail).await?;
            let mut replies = Vec::with_capacity(rcpts.len());
            if mail_reply.is_positive() {
                for rcpt in &rcpts {
                    replies.push(self.command(rcpt).await?);
                }
            }
            let data_reply = if replies.iter().any(ServerReply::is_positive) {
                Some(self.command("DATA").await?)
            } else {
                None
            };
            (mail_reply, replies, data_reply)
        };
        if !mail_reply.is_positive() {
            if data_reply.as_ref().is_some_and(|reply| reply.code == 354) {
                // RFC 2920: a `354` must be answered, even with nothing.
                self.send(b".\r\n").await?;
                self.reply().await?;
            }
            let _ = self.command("QUIT").await;
            return Ok(Relayed::Failed(mail_reply));
        }
        match data_reply {
            Some(data) if data.code == 354 => {
                let accepted = replies.iter().any(ServerReply::is_positive);
                let body = if accepted {
                    dot_stuff(outgoing.message, None)
                } else {
                    b".\r\n".to_vec()
                };
                self.send(&body).await?;
                let end = self.reply().await?;
                if accepted {
                    for reply in replies.iter_mut().filter(|r| r.is_positive()) {
                        *reply = end.clone();
                    }
                }
            }
            Some(data) => {
                for reply in replies.iter_mut().filter(|r| r.is_positive()) {
                    *reply = data.clone();
                }
            }
            None => {}
        }
        let _ = self.command("QUIT").await;
        Ok(Relayed::Replies(replies))
    }
}

//! A small blocking SMTP client for relaying (step S8): one transaction per
//! destination, with a reply per recipient, so each recipient gets its own
//! outcome (`2xx` delivered, `4xx` retried, `5xx` failed).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::data::dot_stuff;

/// One reply: its code and its text (lines joined by spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    pub code: u16,
    pub text: String,
}

impl ServerReply {
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

/// The result of one relay transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relayed {
    /// The transaction ran: each recipient's final reply (the `RCPT` reply
    /// if refused there, else the reply to the end of data).
    Replies(Vec<ServerReply>),
    /// It failed before any recipient could be answered (connection,
    /// greeting, `EHLO`/`MAIL` refused, or the connection broke): the same
    /// reply, or a local `4xx`, for everyone.
    Failed(ServerReply),
}

struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    fn reply(&mut self) -> std::io::Result<ServerReply> {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            let line = line.trim_end();
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("not an SMTP reply: {line:?}"),
                    )
                })?;
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(ServerReply {
                    code,
                    text: text.join(" "),
                });
            }
        }
    }

    fn command(&mut self, line: &str) -> std::io::Result<ServerReply> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\r\n")?;
        self.reply()
    }
}

/// Relays `message` from `mail_from` to `recipients` through the server at
/// `address`, introducing itself as `hostname`.
pub fn relay(
    address: SocketAddr,
    hostname: &str,
    mail_from: &str,
    recipients: &[String],
    message: &[u8],
    timeout: Duration,
) -> Relayed {
    let attempt = || -> std::io::Result<Relayed> {
        let stream = TcpStream::connect_timeout(&address, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut connection = Connection {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let greeting = connection.reply()?;
        if !greeting.is_positive() {
            return Ok(Relayed::Failed(greeting));
        }
        let mut hello = connection.command(&format!("EHLO {hostname}"))?;
        if !hello.is_positive() {
            hello = connection.command(&format!("HELO {hostname}"))?;
            if !hello.is_positive() {
                return Ok(Relayed::Failed(hello));
            }
        }
        let mail = connection.command(&format!("MAIL FROM:<{mail_from}>"))?;
        if !mail.is_positive() {
            let _ = connection.command("QUIT");
            return Ok(Relayed::Failed(mail));
        }
        let mut replies = Vec::with_capacity(recipients.len());
        for recipient in recipients {
            replies.push(connection.command(&format!("RCPT TO:<{recipient}>"))?);
        }
        if replies.iter().any(ServerReply::is_positive) {
            let data = connection.command("DATA")?;
            let end = if data.code == 354 {
                connection.writer.write_all(&dot_stuff(message, None))?;
                connection.reply()?
            } else {
                data
            };
            for reply in replies.iter_mut().filter(|r| r.is_positive()) {
                *reply = end.clone();
            }
        }
        let _ = connection.command("QUIT");
        Ok(Relayed::Replies(replies))
    };
    attempt().unwrap_or_else(|error| {
        Relayed::Failed(ServerReply {
            code: 451,
            text: format!("4.4.1 cannot talk to {address}: {error}"),
        })
    })
}

//! The POP3 server (step S3's read side): users fetch their local mail.
//!
//! - [`session`]: one session, line by line, without network I/O.

pub mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use session::{Pop3Session, Pop3Shared};

/// The longest command line accepted (RFC 2449 allows 255 octets).
const LINE_LIMIT: usize = 512;

/// Accepts POP3 connections forever.
pub async fn listen(listener: TcpListener, shared: Arc<Pop3Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(error) = connection(stream, peer.ip(), shared).await {
                        tracing::debug!(%peer, "POP3 connection ended: {error}");
                    }
                });
            }
            Err(error) => {
                tracing::warn!("POP3 accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    client: std::net::IpAddr,
    shared: Arc<Pop3Shared>,
) -> std::io::Result<()> {
    let timeout = Duration::from_secs(shared.config.server.command_timeout_secs.into());
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut session = Pop3Session::new(shared, client);
    writer.write_all(&session.greeting()).await?;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = tokio::time::timeout(
            timeout,
            (&mut reader)
                .take(LINE_LIMIT as u64 + 2)
                .read_until(b'\n', &mut line),
        )
        .await;
        let read = match read {
            Ok(read) => read?,
            Err(_) => {
                writer.write_all(b"-ERR timeout, closing\r\n").await?;
                return Ok(());
            }
        };
        if read == 0 {
            return Ok(());
        }
        if !line.ends_with(b"\n") {
            writer.write_all(b"-ERR line too long\r\n").await?;
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']).to_string();
        // Reading a message or a mailbox touches the disk: keep it off the
        // runtime's async workers.
        let response = tokio::task::block_in_place(|| session.command(&text));
        writer.write_all(&response.bytes).await?;
        if response.close {
            return Ok(());
        }
    }
}

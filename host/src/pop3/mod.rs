//! The POP3 server (step S3's read side): users fetch their local mail.
//!
//! - [`session`]: one session, line by line, without network I/O.

pub mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use session::{After, Pop3Session, Pop3Shared};

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
    let mut session = Pop3Session::new(shared.clone(), client);
    let mut stream = BufReader::new(stream);
    stream.write_all(&session.greeting()).await?;
    let Some(stream) = drive(&mut session, stream, &shared).await? else {
        return Ok(());
    };
    let Some(acceptor) = &shared.tls else {
        return Ok(());
    };
    let timeout = Duration::from_secs(shared.config.server.command_timeout_secs.into());
    // Input the client sent before the handshake is dropped with the
    // buffer: nothing can be injected in clear into the TLS session.
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream.into_inner())).await {
        Ok(Ok(tls)) => tls,
        _ => return Ok(()),
    };
    session.tls_started();
    drive(&mut session, BufReader::new(tls), &shared).await?;
    Ok(())
}

/// Answers commands over `stream` until the session ends (`None`) or asks
/// for TLS (the stream is handed back for the handshake).
async fn drive<S>(
    session: &mut Pop3Session,
    mut stream: BufReader<S>,
    shared: &Pop3Shared,
) -> std::io::Result<Option<BufReader<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = Duration::from_secs(shared.config.server.command_timeout_secs.into());
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = tokio::time::timeout(
            timeout,
            (&mut stream)
                .take(LINE_LIMIT as u64 + 2)
                .read_until(b'\n', &mut line),
        )
        .await;
        let read = match read {
            Ok(read) => read?,
            Err(_) => {
                stream.write_all(b"-ERR timeout, closing\r\n").await?;
                return Ok(None);
            }
        };
        if read == 0 {
            return Ok(None);
        }
        if !line.ends_with(b"\n") {
            stream.write_all(b"-ERR line too long\r\n").await?;
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']).to_string();
        // Reading a message or a mailbox touches the disk, and checking a
        // password is slow on purpose: keep both off the async workers.
        let response = tokio::task::block_in_place(|| session.command(&text));
        stream.write_all(&response.bytes).await?;
        match response.after {
            After::Continue => {}
            After::Close => return Ok(None),
            After::StartTls => {
                stream.flush().await?;
                return Ok(Some(stream));
            }
        }
    }
}

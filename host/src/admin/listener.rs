//! The console's connections: plain TCP on loopback, or TLS (with the SMTP
//! server's certificate) wherever it listens. Handshakes run in tasks of
//! their own, so one slow client never holds up the next.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections handed to the HTTP server before it takes them; past that,
/// accepting waits.
const BACKLOG: usize = 64;

/// A connection's byte stream, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// Who is on the other end of a request's connection.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub address: SocketAddr,
    /// Whether the connection is TLS (then the session cookie is `Secure`).
    pub tls: bool,
}

/// Accepted connections, ready for HTTP.
pub struct Incoming {
    local: SocketAddr,
    ready: mpsc::Receiver<(Box<dyn Stream>, Client)>,
    accepting: tokio::task::AbortHandle,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Incoming {
    /// Accepts on `listener`, through TLS if `tls` is given, until the
    /// returned value is dropped.
    pub fn new(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) -> Incoming {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let (sender, ready) = mpsc::channel(BACKLOG);
        let accepting = tokio::spawn(accept(listener, tls, sender)).abort_handle();
        Incoming {
            local,
            ready,
            accepting,
        }
    }
}

async fn accept(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ready: mpsc::Sender<(Box<dyn Stream>, Client)>,
) {
    loop {
        let (tcp, address) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: wait, then go on.
                tracing::warn!("console: cannot accept: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ready = ready.clone();
        match &tls {
            None => {
                let client = Client {
                    address,
                    tls: false,
                };
                if ready.send((Box::new(tcp), client)).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let handshake = acceptor.accept(tcp);
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(stream)) => {
                            let client = Client { address, tls: true };
                            let _ = ready.send((Box::new(stream), client)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%address, "console: TLS handshake failed: {error}")
                        }
                        Err(_) => tracing::debug!(%address, "console: TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

impl Listener for Incoming {
    type Io = Box<dyn Stream>;
    type Addr = Client;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task ends only when this is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Client {
            address: self.local,
            tls: false,
        })
    }
}

impl Connected<IncomingStream<'_, Incoming>> for Client {
    fn connect_info(stream: IncomingStream<'_, Incoming>) -> Self {
        *stream.remote_addr()
    }
}

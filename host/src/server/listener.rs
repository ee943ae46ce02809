//! The accept loop SMTP and POP3 share (mini-redis's `Listener`): one task
//! per connection, holding a permit of the session limit; a client beyond
//! the limit is told so in its protocol and closed; accept errors (out of
//! file descriptors, say) back off exponentially instead of spinning.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// The first wait after a failed accept; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A listening socket and its session limit.
pub struct Listener {
    /// The bound socket.
    tcp: TcpListener,
    /// One permit per session now running; none left means the next client
    /// is refused.
    sessions: Arc<Semaphore>,
    /// What a refused client is told before the connection closes
    /// (`421 …`, `-ERR [SYS/TEMP] …`).
    refusal: Arc<[u8]>,
    /// For the log: `SMTP`, `POP3`.
    protocol: &'static str,
}

impl Listener {
    pub fn new(
        tcp: TcpListener,
        max_sessions: u32,
        refusal: Vec<u8>,
        protocol: &'static str,
    ) -> Listener {
        Listener {
            tcp,
            sessions: Arc::new(Semaphore::new(max_sessions as usize)),
            refusal: refusal.into(),
            protocol,
        }
    }

    /// Accepts connections forever, running `serve` for each one within
    /// the session limit.
    pub async fn run<F, S>(self, serve: F)
    where
        F: Fn(TcpStream, SocketAddr) -> S,
        S: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let protocol = self.protocol;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let (stream, peer) = match self.tcp.accept().await {
                Ok(accepted) => {
                    backoff = FIRST_BACKOFF;
                    accepted
                }
                Err(error) => {
                    tracing::warn!("{protocol} accept failed: {error}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            match self.sessions.clone().try_acquire_owned() {
                Ok(permit) => {
                    let session = serve(stream, peer);
                    tokio::spawn(async move {
                        if let Err(error) = session.await {
                            tracing::debug!(%peer, "{protocol} connection ended: {error}");
                        }
                        drop(permit);
                    });
                }
                Err(_) => {
                    tracing::debug!(%peer, "{protocol}: too many sessions, client refused");
                    let refusal = self.refusal.clone();
                    tokio::spawn(async move {
                        let mut stream = stream;
                        let _ = stream.write_all(&refusal).await;
                        let _ = stream.shutdown().await;
                    });
                }
            }
        }
    }
}

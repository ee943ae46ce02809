//! The call channel: the TCP (or TLS over TCP) connection negotiated in SDP.
//! The callee takes a listener on a port from the configured range and
//! accepts exactly one connection from the negotiated peer on it; the
//! caller connects to the answered address.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::tls::ChannelIdentity;

/// The negotiated channel: a byte stream to the other end of the call.
pub struct Channel {
    stream: Stream,
    peer: SocketAddr,
}

enum Stream {
    Tcp(TcpStream),
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Channel {
    /// The other end's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the channel runs TLS.
    pub fn is_tls(&self) -> bool {
        !matches!(self.stream, Stream::Tcp(_))
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("peer", &self.peer)
            .field("tls", &self.is_tls())
            .finish()
    }
}

impl AsyncRead for Channel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsClient(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsServer(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Channel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsClient(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsServer(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsClient(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsServer(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsClient(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsServer(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Why the channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("no free channel port in {0:?}")]
    NoFreePort(RangeInclusive<u16>),
    #[error("channel listener: {0}")]
    Listen(io::Error),
    #[error("no connection from {0} in time")]
    AcceptTimeout(IpAddr),
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, io::Error),
    #[error("no connection to {0} in time")]
    ConnectTimeout(SocketAddr),
    #[error("TLS with {0}: {1}")]
    Tls(SocketAddr, String),
}

/// Hands out channel listeners on ports from the configured range, round
/// robin, and counts those handed out (for `Stats`).
///
/// A listener comes back when its call is done with it: after its one
/// connection was accepted, or when the call ended before any came (BYE,
/// CANCEL). The next call takes it instead of binding a new one: opening
/// and closing a listener per call cost about a tenth of the callee's CPU.
/// One whose wait timed out is closed instead, since its caller may still
/// be connecting; a returned one unused for `IDLE` is closed too.
pub(crate) struct PortPool {
    range: RangeInclusive<u16>,
    next: AtomicU16,
    open: Arc<AtomicUsize>,
    idle: Arc<Idle>,
}

/// Listeners waiting for their next call, each with its address (kept, not
/// asked of the socket again) and when it came back.
type Idle = Mutex<Vec<(TcpListener, SocketAddr, Instant)>>;

/// How long a returned listener waits for its next call.
const IDLE: Duration = Duration::from_secs(2);

/// At most this many wait: a burst's worth, not the whole range.
const MOST_IDLE: usize = 128;

impl PortPool {
    pub fn new(range: RangeInclusive<u16>) -> Self {
        let idle = Arc::new(Idle::default());
        tokio::spawn(close_idle(Arc::downgrade(&idle)));
        PortPool {
            next: AtomicU16::new(*range.start()),
            range,
            open: Arc::new(AtomicUsize::new(0)),
            idle,
        }
    }

    pub fn open_listeners(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A returned listener on `address`, else a new one on the first free
    /// port after the last one bound.
    pub async fn listen(&self, address: IpAddr) -> Result<ChannelListener, ChannelError> {
        let (listener, bound) = match self.returned(address) {
            Some(returned) => returned,
            None => self.bind(address).await?,
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(ChannelListener {
            listener: Some(listener),
            bound,
            open: self.open.clone(),
            idle: Arc::downgrade(&self.idle),
        })
    }

    fn returned(&self, address: IpAddr) -> Option<(TcpListener, SocketAddr)> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let at = idle
            .iter()
            .rposition(|(_, bound, _)| bound.ip() == address)?;
        let (listener, bound, _) = idle.swap_remove(at);
        drop(idle);
        // A connection that came after its last call ended is nobody's.
        let mut context = Context::from_waker(std::task::Waker::noop());
        while let Poll::Ready(Ok(_)) = listener.poll_accept(&mut context) {}
        Some((listener, bound))
    }

    async fn bind(&self, address: IpAddr) -> Result<(TcpListener, SocketAddr), ChannelError> {
        let (first, last) = (*self.range.start(), *self.range.end());
        let count = usize::from(last - first) + 1;
        for _ in 0..count {
            let port = self
                .next
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                    Some(if p >= last { first } else { p + 1 })
                })
                .unwrap_or(first);
            let bound = SocketAddr::new(address, port);
            match TcpListener::bind(bound).await {
                Ok(listener) => return Ok((listener, bound)),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(ChannelError::Listen(e)),
            }
        }
        Err(ChannelError::NoFreePort(self.range.clone()))
    }
}

/// Closes the listeners unused for `IDLE`, until the pool is gone.
async fn close_idle(idle: Weak<Idle>) {
    loop {
        tokio::time::sleep(IDLE / 2).await;
        let Some(idle) = idle.upgrade() else {
            return;
        };
        let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(_, _, since)| since.elapsed() < IDLE);
    }
}

/// A listener for one call's channel: it accepts one connection, from the
/// negotiated peer; dropped, it goes back to its pool (see `PortPool`).
pub(crate) struct ChannelListener {
    /// None once closed for good.
    listener: Option<TcpListener>,
    bound: SocketAddr,
    open: Arc<AtomicUsize>,
    idle: Weak<Idle>,
}

impl Drop for ChannelListener {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        let (Some(listener), Some(idle)) = (self.listener.take(), self.idle.upgrade()) else {
            return;
        };
        let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MOST_IDLE {
            idle.push((listener, self.bound, Instant::now()));
        }
    }
}

impl ChannelListener {
    fn listener(&self) -> &TcpListener {
        self.listener
            .as_ref()
            .expect("closed only when dropped or timed out")
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.bound
    }

    /// Accepts the first connection from one of `peers` (the offer's
    /// address first) within `timeout`; others are closed at once. With
    /// TLS, the caller must show the certificate whose fingerprint it
    /// offered.
    pub async fn accept(
        mut self,
        peers: &[IpAddr],
        tls: Option<(&ChannelIdentity, [u8; 32])>,
        timeout: Duration,
    ) -> Result<Channel, ChannelError> {
        let offered = peers[0];
        let deadline = tokio::time::Instant::now() + timeout;
        let (stream, from) = loop {
            let accepted = tokio::time::timeout_at(deadline, self.listener().accept()).await;
            let Ok(accepted) = accepted else {
                // Closed, not reused: the caller may still be connecting.
                self.listener = None;
                return Err(ChannelError::AcceptTimeout(offered));
            };
            match accepted {
                Ok((stream, from)) if peers.iter().any(|&peer| same_host(from.ip(), peer)) => {
                    break (stream, from)
                }
                Ok((_, from)) => {
                    tracing::warn!(%from, expected = ?peers, "channel connection from a stranger closed")
                }
                Err(e) => {
                    self.listener = None;
                    return Err(ChannelError::Listen(e));
                }
            }
        };
        stream.set_nodelay(true).ok();
        let stream = match tls {
            None => Stream::Tcp(stream),
            Some((identity, expected)) => {
                let acceptor = identity
                    .acceptor(expected)
                    .map_err(|e| ChannelError::Tls(from, e))?;
                // Boxed: a handshake's state is large, and most channels have none.
                let handshake = Box::pin(acceptor.accept(stream));
                let tls = tokio::time::timeout_at(deadline, handshake)
                    .await
                    .map_err(|_| ChannelError::AcceptTimeout(offered))?
                    .map_err(|e| ChannelError::Tls(from, e.to_string()))?;
                Stream::TlsServer(Box::new(tls))
            }
        };
        Ok(Channel { stream, peer: from })
    }
}

/// Connects to the answered listener; with TLS, the callee must show the
/// certificate whose fingerprint it answered.
pub(crate) async fn connect(
    to: SocketAddr,
    tls: Option<(&ChannelIdentity, [u8; 32])>,
    timeout: Duration,
) -> Result<Channel, ChannelError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = tokio::time::timeout_at(deadline, TcpStream::connect(to))
        .await
        .map_err(|_| ChannelError::ConnectTimeout(to))?
        .map_err(|e| ChannelError::Connect(to, e))?;
    stream.set_nodelay(true).ok();
    let stream = match tls {
        None => Stream::Tcp(stream),
        Some((identity, expected)) => {
            let connector = identity
                .connector(expected)
                .map_err(|e| ChannelError::Tls(to, e))?;
            let tls = tokio::time::timeout_at(
                deadline,
                connector.connect(ChannelIdentity::server_name(), stream),
            )
            .await
            .map_err(|_| ChannelError::ConnectTimeout(to))?
            .map_err(|e| ChannelError::Tls(to, e.to_string()))?;
            Stream::TlsClient(Box::new(tls))
        }
    };
    Ok(Channel { stream, peer: to })
}

/// IPv4 peers may show up as IPv4-mapped IPv6 on a dual-stack listener.
fn same_host(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const SECOND: Duration = Duration::from_secs(5);

    async fn echo_once(mut channel: Channel) {
        let mut buf = [0u8; 5];
        channel.read_exact(&mut buf).await.unwrap();
        channel.write_all(&buf).await.unwrap();
        channel.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn tcp_channel_carries_bytes_both_ways_and_the_listener_is_counted() {
        let pool = PortPool::new(32100..=32109);
        let listener = pool.listen(LOOPBACK).await.unwrap();
        assert_eq!(pool.open_listeners(), 1);
        let addr = listener.local_addr();
        assert!((32100..=32109).contains(&addr.port()));
        let callee = tokio::spawn(async move {
            echo_once(listener.accept(&[LOOPBACK], None, SECOND).await.unwrap()).await
        });
        let mut channel = connect(addr, None, SECOND).await.unwrap();
        assert!(!channel.is_tls());
        channel.write_all(b"hello").await.unwrap();
        let mut back = Vec::new();
        channel.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello");
        callee.await.unwrap();
        assert_eq!(pool.open_listeners(), 0);
    }

    #[tokio::test]
    async fn tls_channel_checks_both_fingerprints() {
        let caller = ChannelIdentity::generate().unwrap();
        let callee = Arc::new(ChannelIdentity::generate().unwrap());
        let pool = PortPool::new(32110..=32119);
        let listener = pool.listen(LOOPBACK).await.unwrap();
        let addr = listener.local_addr();
        let expected = caller.fingerprint;
        let identity = callee.clone();
        let task = tokio::spawn(async move {
            let channel = listener
                .accept(&[LOOPBACK], Some((&identity, expected)), SECOND)
                .await
                .unwrap();
            assert!(channel.is_tls());
            echo_once(channel).await
        });
        let mut channel = connect(addr, Some((&caller, callee.fingerprint)), SECOND)
            .await
            .unwrap();
        channel.write_all(b"olleh").await.unwrap();
        let mut back = Vec::new();
        channel.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"olleh");
        task.await.unwrap();

        // A certificate other than the answered one is refused.
        let listener = pool.listen(LOOPBACK).await.unwrap();
        let addr = listener.local_addr();
        let identity = callee.clone();
        let task = tokio::spawn(async move {
            listener
                .accept(&[LOOPBACK], Some((&identity, expected)), SECOND)
                .await
                .map(|_| ())
        });
        let wrong = [0u8; 32];
        let error = connect(addr, Some((&caller, wrong)), SECOND)
            .await
            .unwrap_err();
        assert!(matches!(error, ChannelError::Tls(..)), "{error}");
        assert!(task.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn only_the_negotiated_peer_gets_the_channel() {
        let pool = PortPool::new(32140..=32149);
        let listener = pool.listen(LOOPBACK).await.unwrap();
        let addr = listener.local_addr();
        let accepted =
            tokio::spawn(async move { listener.accept(&[LOOPBACK], None, SECOND).await.unwrap() });
        // A stranger (127.0.0.2) connects first and is closed at once.
        let stranger = tokio::net::TcpSocket::new_v4().unwrap();
        stranger.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stranger = stranger.connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(SECOND, stranger.read(&mut buf))
            .await
            .unwrap();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "the stranger's connection is closed"
        );
        let channel = connect(addr, None, SECOND).await.unwrap();
        assert_eq!(channel.peer(), addr);
        let accepted = accepted.await.unwrap();
        assert_eq!(accepted.peer().ip(), LOOPBACK);
    }

    #[tokio::test]
    async fn nobody_connecting_times_out_and_frees_the_port() {
        let pool = PortPool::new(32120..=32120);
        let listener = pool.listen(LOOPBACK).await.unwrap();
        let error = listener
            .accept(&[LOOPBACK], None, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(error, ChannelError::AcceptTimeout(_)));
        assert_eq!(pool.open_listeners(), 0);
        // The one port of the range is free again.
        pool.listen(LOOPBACK).await.unwrap();
    }

    #[tokio::test]
    async fn a_listener_comes_back_for_the_next_call_unless_its_wait_timed_out() {
        let pool = PortPool::new(32150..=32159);
        // Ended before any connection came (the caller's BYE): back to the pool.
        let first = pool.listen(LOOPBACK).await.unwrap();
        let port = first.local_addr().port();
        drop(first);
        let second = pool.listen(LOOPBACK).await.unwrap();
        assert_eq!(second.local_addr().port(), port, "taken again");
        // A connection left over from its last call is nobody's: closed,
        // and the next caller's is the one accepted.
        let mut stale = TcpStream::connect(SocketAddr::new(LOOPBACK, port))
            .await
            .unwrap();
        drop(second);
        let third = pool.listen(LOOPBACK).await.unwrap();
        assert_eq!(third.local_addr().port(), port);
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(SECOND, stale.read(&mut buf))
            .await
            .unwrap();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "the stale connection is closed"
        );
        let accepted = tokio::spawn(async move { third.accept(&[LOOPBACK], None, SECOND).await });
        let _channel = connect(SocketAddr::new(LOOPBACK, port), None, SECOND)
            .await
            .unwrap();
        let accepted = accepted.await.unwrap().unwrap();
        assert_eq!(accepted.peer().ip(), LOOPBACK);
        // One whose wait timed out is closed: its caller may still come.
        let waited = pool.listen(LOOPBACK).await.unwrap();
        let waited_port = waited.local_addr().port();
        assert_eq!(waited_port, port, "back after its accepted connection");
        let error = waited
            .accept(&[LOOPBACK], None, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert!(matches!(error, ChannelError::AcceptTimeout(_)));
        let next = pool.listen(LOOPBACK).await.unwrap();
        assert_ne!(next.local_addr().port(), port, "a new one");
    }

    #[tokio::test]
    async fn a_full_range_is_reported() {
        let pool = PortPool::new(32130..=32130);
        let _held = pool.listen(LOOPBACK).await.unwrap();
        let error = pool.listen(LOOPBACK).await.err().unwrap();
        assert!(matches!(error, ChannelError::NoFreePort(_)), "{error}");
    }
}

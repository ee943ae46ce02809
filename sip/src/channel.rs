//! The call channel: the TCP (or TLS over TCP) connection negotiated in SDP.
//! The callee opens a one-shot listener from the configured port range and
//! accepts exactly one connection from the negotiated peer; the caller
//! connects to the answered address.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

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

/// Hands out channel ports from the configured range, round robin, and
/// counts the listeners open (for `Stats`).
pub(crate) struct PortPool {
    range: RangeInclusive<u16>,
    next: AtomicU16,
    open: Arc<AtomicUsize>,
}

impl PortPool {
    pub fn new(range: RangeInclusive<u16>) -> Self {
        PortPool {
            next: AtomicU16::new(*range.start()),
            range,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn open_listeners(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Binds a listener on the first free port after the last one handed out.
    pub async fn listen(&self, address: IpAddr) -> Result<ChannelListener, ChannelError> {
        let (first, last) = (*self.range.start(), *self.range.end());
        let count = usize::from(last - first) + 1;
        for _ in 0..count {
            let port = self
                .next
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                    Some(if p >= last { first } else { p + 1 })
                })
                .unwrap_or(first);
            match TcpListener::bind(SocketAddr::new(address, port)).await {
                Ok(listener) => {
                    self.open.fetch_add(1, Ordering::Relaxed);
                    return Ok(ChannelListener {
                        listener,
                        open: self.open.clone(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(ChannelError::Listen(e)),
            }
        }
        Err(ChannelError::NoFreePort(self.range.clone()))
    }
}

/// A one-shot listener: it accepts one connection, from the negotiated
/// peer, and closes when dropped.
pub(crate) struct ChannelListener {
    listener: TcpListener,
    open: Arc<AtomicUsize>,
}

impl Drop for ChannelListener {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ChannelListener {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Accepts the first connection from one of `peers` (the offer's
    /// address first) within `timeout`; others are closed at once. With
    /// TLS, the caller must show the certificate whose fingerprint it
    /// offered.
    pub async fn accept(
        self,
        peers: &[IpAddr],
        tls: Option<(&ChannelIdentity, [u8; 32])>,
        timeout: Duration,
    ) -> Result<Channel, ChannelError> {
        let offered = peers[0];
        let deadline = tokio::time::Instant::now() + timeout;
        let (stream, from) = loop {
            let accepted = tokio::time::timeout_at(deadline, self.listener.accept())
                .await
                .map_err(|_| ChannelError::AcceptTimeout(offered))?;
            match accepted {
                Ok((stream, from)) if peers.iter().any(|&peer| same_host(from.ip(), peer)) => {
                    break (stream, from)
                }
                Ok((_, from)) => {
                    tracing::warn!(%from, expected = ?peers, "channel connection from a stranger closed")
                }
                Err(e) => return Err(ChannelError::Listen(e)),
            }
        };
        stream.set_nodelay(true).ok();
        let stream = match tls {
            None => Stream::Tcp(stream),
            Some((identity, expected)) => {
                let acceptor = identity
                    .acceptor(expected)
                    .map_err(|e| ChannelError::Tls(from, e))?;
                let tls = tokio::time::timeout_at(deadline, acceptor.accept(stream))
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
        let pool = PortPool::new(46100..=46109);
        let listener = pool.listen(LOOPBACK).await.unwrap();
        assert_eq!(pool.open_listeners(), 1);
        let addr = listener.local_addr();
        assert!((46100..=46109).contains(&addr.port()));
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
        let pool = PortPool::new(46110..=46119);
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
        let pool = PortPool::new(46140..=46149);
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
        let pool = PortPool::new(46120..=46120);
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
    async fn a_full_range_is_reported() {
        let pool = PortPool::new(46130..=46130);
        let _held = pool.listen(LOOPBACK).await.unwrap();
        let error = pool.listen(LOOPBACK).await.err().unwrap();
        assert!(matches!(error, ChannelError::NoFreePort(_)), "{error}");
    }
}

//! Our sockets under rsipstack's transaction layer.
//!
//! - UDP: rsipstack reads datagrams through `ScreenedUdp`, which answers or
//!   drops what the `screen` refuses before rsipstack's parser sees it.
//! - Streams (TCP, TLS), incoming: we accept, set TCP_NODELAY (without it
//!   every exchange waits out Nagle and delayed ACK, about 40 ms), shake
//!   hands for TLS, cut messages by Content-Length, screen them, and bridge
//!   each connection to rsipstack through one of its in-memory channel
//!   connections.
//! - Outgoing: `Outgoing::connect` opens the connection to a next hop
//!   (TCP_NODELAY; for TLS the handshake with the target's name checked)
//!   and hands it to rsipstack before it would open one itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rsipstack::sip::Transport as SipTransport;
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transport::channel::ChannelConnection;
use rsipstack::transport::tcp::TcpConnection;
use rsipstack::transport::{SipAddr, SipConnection, TransportEvent};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::framing::{next_frame, Frame, PONG};
use crate::screen::{self, Framing, Verdict};
use crate::sips::SignallingTls;

/// How long a TLS handshake may take, either way.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A UDP socket that screens what it receives.
pub(crate) struct ScreenedUdp {
    socket: UdpSocket,
    /// Big enough for any datagram, so an oversized one is seen whole
    /// (one receive at a time: rsipstack runs one receive loop).
    buffer: tokio::sync::Mutex<Box<[u8]>>,
}

impl ScreenedUdp {
    pub fn new(socket: UdpSocket) -> Self {
        ScreenedUdp {
            socket,
            buffer: tokio::sync::Mutex::new(vec![0u8; 65_536].into_boxed_slice()),
        }
    }
}

#[async_trait::async_trait]
impl rsipstack::platform::net::UdpSocket for ScreenedUdp {
    async fn recv_from(&self, buf: &mut [u8]) -> rsipstack::Result<(usize, SocketAddr)> {
        let mut buffer = self.buffer.lock().await;
        loop {
            let (read, source) = self.socket.recv_from(&mut buffer).await?;
            let datagram = &buffer[..read];
            // Keep-alives and stray blank lines: rsipstack knows them.
            let len = if datagram.iter().all(u8::is_ascii_whitespace) {
                read.min(buf.len())
            } else {
                match screen::screen(datagram, Framing::Datagram, source) {
                    Verdict::Pass {
                        normal: Some(normal),
                        ..
                    } if normal.len() <= buf.len() => {
                        buf[..normal.len()].copy_from_slice(&normal);
                        return Ok((normal.len(), source));
                    }
                    Verdict::Pass { len, .. } => len,
                    Verdict::Answer {
                        response,
                        status,
                        why,
                        to_port,
                    } => {
                        info!(%source, "{status} to a request over UDP: {why}");
                        let to = SocketAddr::new(source.ip(), to_port);
                        if let Err(e) = self.socket.send_to(&response, to).await {
                            debug!(%to, "answering a refused request: {e}");
                        }
                        continue;
                    }
                    Verdict::Drop { why } => {
                        debug!(%source, "dropped a message over UDP: {why}");
                        continue;
                    }
                }
            };
            buf[..len].copy_from_slice(&buffer[..len]);
            return Ok((len, source));
        }
    }

    async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> rsipstack::Result<usize> {
        Ok(self.socket.send_to(buf, addr).await?)
    }

    fn local_addr(&self) -> rsipstack::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }
}

/// Accepts SIP over TCP, or over TLS with `tls`, until `cancel`.
pub(crate) async fn serve_streams(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    endpoint: EndpointInnerRef,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = cancel.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                stream.set_nodelay(true).ok();
                let (endpoint, cancel) = (endpoint.clone(), cancel.child_token());
                let Some(tls) = tls.clone() else {
                    tokio::spawn(serve_stream(
                        stream,
                        peer,
                        SipTransport::Tcp,
                        endpoint,
                        cancel,
                    ));
                    continue;
                };
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_stream(stream, peer, SipTransport::Tls, endpoint, cancel).await
                        }
                        Ok(Err(e)) => info!(%peer, "SIP over TLS: handshake failed: {e}"),
                        Err(_) => info!(%peer, "SIP over TLS: handshake timed out"),
                    }
                });
            }
            Err(e) => {
                debug!("accepting SIP over TCP: {e}");
                // Out of descriptors, say: don't spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection, accepted or opened by us: messages cut and screened
/// here, handed to rsipstack as if from its own transport; what it sends
/// comes back through the channel connection and is written here.
async fn serve_stream<S>(
    stream: S,
    peer: SocketAddr,
    transport: SipTransport,
    endpoint: EndpointInnerRef,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let (to_stack, from_peer) = tokio::sync::mpsc::unbounded_channel();
    let (to_peer, mut from_stack) = tokio::sync::mpsc::unbounded_channel();
    let remote = SipAddr {
        r#type: Some(transport),
        addr: peer.into(),
    };
    let Ok(bridge) = ChannelConnection::create_connection(
        from_peer,
        to_peer,
        remote.clone(),
        Some(cancel.clone()),
    )
    .await
    else {
        return;
    };
    let connection = SipConnection::Channel(bridge);
    // rsipstack serves it (and retires it, cancelling `cancel`, once we
    // stop feeding it).
    endpoint.transport_layer.add_connection(connection.clone());

    let write_cancel = cancel.clone();
    let write_half = writer.clone();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                event = from_stack.recv() => event,
                () = write_cancel.cancelled() => None,
            };
            match event {
                Some(TransportEvent::Incoming(message, ..)) => {
                    if write(&write_half, &message.to_bytes()).await.is_err() {
                        break;
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        write_half.lock().await.shutdown().await.ok();
    });

    let idle = endpoint.transport_layer.stream_idle_timeout();
    let mut buffer = BytesMut::new();
    let mut chunk = vec![0u8; 16_384];
    // After a message we cannot frame, where the next starts is unknown:
    // what follows is discarded, while answers to earlier messages go out.
    let mut unframed = false;
    'reading: loop {
        let read = tokio::select! {
            read = tokio::time::timeout(idle, reader.read(&mut chunk)) => read,
            () = cancel.cancelled() => break,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_) => {
                debug!(%peer, "SIP over {transport} idle: closing");
                break;
            }
            Ok(Ok(_)) if unframed => continue,
            Ok(Ok(read)) => buffer.extend_from_slice(&chunk[..read]),
        }
        while let Some(frame) = next_frame(&mut buffer) {
            match frame {
                Frame::Ping => {
                    if write(&writer, PONG).await.is_err() {
                        break 'reading;
                    }
                }
                Frame::Message(bytes) => match screen::screen(&bytes, Framing::Stream, peer) {
                    Verdict::Pass { message, .. } => {
                        let message =
                            match SipConnection::update_msg_received(message, peer, transport) {
                                Ok(message) => message,
                                Err(e) => {
                                    debug!(%peer, "unusable Via: {e}");
                                    continue;
                                }
                            };
                        let event =
                            TransportEvent::Incoming(message, connection.clone(), remote.clone());
                        if to_stack.send(event).is_err() {
                            break 'reading;
                        }
                    }
                    Verdict::Answer {
                        response,
                        status,
                        why,
                        ..
                    } => {
                        info!(%peer, "{status} to a request over {transport}: {why}");
                        if write(&writer, &response).await.is_err() {
                            break 'reading;
                        }
                    }
                    Verdict::Drop { why } => {
                        debug!(%peer, "dropped a message over {transport}: {why}")
                    }
                },
                Frame::Unframed { head, status, why } => {
                    info!(%peer, "{status} over {transport}, reading no further: {why}");
                    if let Verdict::Answer { response, .. } =
                        screen::refuse(&head, status, why, peer, Framing::Stream)
                    {
                        write(&writer, &response).await.ok();
                    }
                    unframed = true;
                    buffer.clear();
                    break;
                }
            }
        }
    }
    // rsipstack's serve loop ends with our sender; it retires the
    // connection, which cancels `cancel` and so stops the writer.
    drop(to_stack);
    cancel.cancel();
}

async fn write<S: AsyncWrite>(
    writer: &tokio::sync::Mutex<WriteHalf<S>>,
    bytes: &[u8],
) -> std::io::Result<()> {
    writer.lock().await.write_all(bytes).await
}

/// Outgoing connections we opened, by transport and next hop; a cancelled
/// token means rsipstack retired the connection.
#[derive(Default)]
pub(crate) struct Outgoing {
    open: Mutex<HashMap<(bool, SocketAddr), CancellationToken>>,
}

/// Where a stream connection goes, and how.
pub(crate) struct StreamTarget<'a> {
    pub address: SocketAddr,
    /// TLS, checking the server is this name (RFC 5922); plain TCP if none.
    pub tls: Option<(&'a SignallingTls, &'a str)>,
    /// Our listener of that transport, named in Via so a peer may open its
    /// own connection back.
    pub our_listener: Option<SocketAddr>,
}

impl Outgoing {
    /// Opens a connection to `target` and gives it to rsipstack, unless
    /// one we opened is still up; says why when it cannot.
    pub async fn connect(
        &self,
        target: StreamTarget<'_>,
        endpoint: &EndpointInnerRef,
        cancel: &CancellationToken,
        timeout: Duration,
    ) -> Result<(), String> {
        let key = (target.tls.is_some(), target.address);
        let up = |open: &HashMap<(bool, SocketAddr), CancellationToken>| {
            open.get(&key).is_some_and(|token| !token.is_cancelled())
        };
        if up(&self.open.lock().expect("not poisoned")) {
            return Ok(());
        }
        let address = target.address;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(format!("cannot connect to {address}: {e}")),
            Err(_) => return Err(format!("no connection to {address} in time")),
        };
        stream.set_nodelay(true).ok();
        let token = cancel.child_token();
        let connection = match target.tls {
            Some((tls, name)) => {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connect(stream, name));
                let stream = match handshake.await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return Err(format!("TLS with {address} ({name}): {e}")),
                    Err(_) => return Err(format!("TLS with {address}: handshake timed out")),
                };
                let serving = serve_stream(
                    stream,
                    address,
                    SipTransport::Tls,
                    endpoint.clone(),
                    token.clone(),
                );
                tokio::spawn(serving);
                None
            }
            None => {
                let Some(local) = target.our_listener.or_else(|| stream.local_addr().ok()) else {
                    return Ok(());
                };
                let local = SipAddr {
                    r#type: Some(SipTransport::Tcp),
                    addr: local.into(),
                };
                let Ok(connection) = TcpConnection::from_stream(stream, local, Some(token.clone()))
                else {
                    return Ok(());
                };
                Some(connection)
            }
        };
        let mut open = self.open.lock().expect("not poisoned");
        open.retain(|_, token| !token.is_cancelled());
        open.insert(key, token);
        if let Some(connection) = connection {
            endpoint
                .transport_layer
                .add_connection(SipConnection::Tcp(connection));
        }
        Ok(())
    }
}

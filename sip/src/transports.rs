//! Our sockets under rsipstack's transaction layer.
//!
//! - UDP: we read datagrams, answer or drop what the `screen` refuses, and
//!   hand the rest, parsed once, to rsipstack's endpoint; rsipstack sends
//!   through the same socket (`UdpSender`).
//! - Streams (TCP, TLS), incoming: we accept, set TCP_NODELAY (without it
//!   every exchange waits out Nagle and delayed ACK, about 40 ms), shake
//!   hands for TLS, cut messages by Content-Length, screen them, and hand
//!   them to rsipstack's endpoint as from one of its in-memory channel
//!   connections, through which it answers.
//! - Outgoing: `Outgoing::connect` opens the connection to a next hop
//!   (TCP_NODELAY; for TLS the handshake with the target's name checked)
//!   and hands it to rsipstack before it would open one itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rsipstack::sip::{SipMessage, Transport as SipTransport};
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transport::channel::ChannelConnection;
use rsipstack::transport::tcp::TcpConnection;
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::{SipAddr, SipConnection, TransportEvent};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::framing::{next_frame, Frame, PING, PONG};
use crate::screen::{self, Framing, Passed, Rejected};
use crate::sips::SignallingTls;
use crate::uas::{Answering, Arrival, Invite, Path, Take};

/// How long a TLS handshake may take, either way.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Our UDP socket as rsipstack sees it: it sends through it, but receiving
/// is ours (`serve_udp`), so its own receive loop waits until cancelled.
pub(crate) struct UdpSender(pub Arc<UdpSocket>);

#[async_trait::async_trait]
impl rsipstack::platform::net::UdpSocket for UdpSender {
    async fn recv_from(&self, _: &mut [u8]) -> rsipstack::Result<(usize, SocketAddr)> {
        std::future::pending().await
    }

    async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> rsipstack::Result<usize> {
        Ok(self.0.send_to(buf, addr).await?)
    }

    fn local_addr(&self) -> rsipstack::Result<SocketAddr> {
        Ok(self.0.local_addr()?)
    }
}

/// Reads datagrams until `cancel`, answers or drops what the `screen`
/// refuses, and hands the rest to the endpoint as parsed by the screen:
/// one parse, and no hop through rsipstack's receive loop and its queue.
pub(crate) async fn serve_udp(
    socket: Arc<UdpSocket>,
    connection: UdpConnection,
    endpoint: EndpointInnerRef,
    answering: Arc<Answering>,
    cancel: CancellationToken,
) {
    // Big enough for any datagram, so an oversized one is seen whole.
    let mut buffer = vec![0u8; 65_536];
    let mut arrival = Arrival {
        transport: SipTransport::Udp,
        peer: SocketAddr::from(([0, 0, 0, 0], 0)),
        path: Path::Datagram(socket.clone()),
        connection: SipConnection::Udp(connection.clone()),
    };
    // Made once, and polled first: not a new waiter per datagram.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        let received = tokio::select! {
            biased;
            () = &mut cancelled => return,
            received = socket.recv_from(&mut buffer) => received,
        };
        let (read, source) = match received {
            Ok(received) => received,
            Err(e) => {
                debug!("receiving over UDP: {e}");
                continue;
            }
        };
        let datagram = &buffer[..read];
        if datagram == PING {
            socket.send_to(PONG, source).await.ok();
            continue;
        }
        // Pongs and stray blank lines.
        if datagram.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        arrival.peer = source;
        let message = match screen::check(datagram, Framing::Datagram, source)
            .and_then(|passed| for_stack(&passed, &arrival, &answering))
        {
            Ok(Some(message)) => message,
            // A request of a call we answer: answered.
            Ok(None) => continue,
            Err(Rejected::Answer {
                response,
                status,
                why,
                to_port,
            }) => {
                info!(%source, "{status} to a request over UDP: {why}");
                let to = SocketAddr::new(source.ip(), to_port);
                if let Err(e) = socket.send_to(&response, to).await {
                    debug!(%to, "answering a refused request: {e}");
                }
                continue;
            }
            Err(Rejected::Drop { why }) => {
                debug!(%source, "dropped a message over UDP: {why}");
                continue;
            }
        };
        let message = match SipConnection::update_msg_received(message, source, SipTransport::Udp) {
            Ok(message) => message,
            Err(e) => {
                debug!(%source, "unusable Via: {e}");
                continue;
            }
        };
        let from = SipAddr {
            r#type: Some(SipTransport::Udp),
            addr: source.into(),
        };
        let connection = SipConnection::Udp(connection.clone());
        if let Err(e) = endpoint
            .on_received_message(message, connection, &from)
            .await
        {
            debug!(%source, "SIP over UDP: {e}");
        }
    }
}

/// What rsipstack gets of a message that passed the screen: nothing of the
/// requests of the calls we answer (`uas` answers them, and starts new
/// calls); the rest parsed, or the screen's answer when it cannot be.
pub(crate) fn for_stack(
    passed: &Passed,
    arrival: &Arrival,
    answering: &Arc<Answering>,
) -> Result<Option<SipMessage>, Rejected> {
    match answering.take(passed, arrival) {
        Take::Done => Ok(None),
        Take::NewCall(call) => {
            let invite = Invite::read(passed)
                .map_err(|why| passed.unreadable(&why, arrival.peer, arrival.framing()))?;
            answering.begin(*call, invite, arrival);
            Ok(None)
        }
        Take::Pass => passed.parse(arrival.peer, arrival.framing()).map(Some),
    }
}

/// Accepts SIP over TCP, or over TLS with `tls`, until `cancel`.
pub(crate) async fn serve_streams(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    endpoint: EndpointInnerRef,
    answering: Arc<Answering>,
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
                let answering = answering.clone();
                let Some(tls) = tls.clone() else {
                    let peer = (peer, SipTransport::Tcp, OpenedBy::Peer);
                    tokio::spawn(serve_stream(stream, peer, endpoint, answering, cancel));
                    continue;
                };
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let peer = (peer, SipTransport::Tls, OpenedBy::Peer);
                            serve_stream(stream, peer, endpoint, answering, cancel).await
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

/// What one read from a stream asks room for.
const READ_CHUNK: usize = 16_384;

/// How often a connection we opened is pinged (RFC 5626 §4.4.1 CRLF
/// keep-alive): a proxy closes an idle one (Kamailio after 120 s), NATs
/// forget it, and rsipstack cannot open a TLS connection again by itself
/// when the next REGISTER is due.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Who opened a stream connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OpenedBy {
    Peer,
    /// We did: we keep it alive.
    Us,
}

/// One connection, accepted or opened by us: messages are cut and screened
/// here and handed straight to rsipstack's endpoint, as from the in-memory
/// channel connection it knows the peer by; what it sends comes back
/// through that connection and is written here.
async fn serve_stream<S>(
    stream: S,
    (peer, transport, opened_by): (SocketAddr, SipTransport, OpenedBy),
    endpoint: EndpointInnerRef,
    answering: Arc<Answering>,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    // Nothing is sent on `lifeline`: rsipstack serves the connection until
    // it is dropped, then retires it (which cancels `cancel`).
    let (lifeline, from_peer) = tokio::sync::mpsc::unbounded_channel();
    let (to_peer, from_stack) = tokio::sync::mpsc::unbounded_channel();
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
    endpoint.transport_layer.add_connection(connection.clone());
    // Our answers in the calls we answer take the same writer.
    let (answers, from_answering) = tokio::sync::mpsc::unbounded_channel();
    let arrival = Arrival {
        transport,
        peer,
        path: Path::Stream(answers),
        connection: connection.clone(),
    };
    let queues = (from_stack, from_answering);
    tokio::spawn(write_from_stack(queues, writer.clone(), cancel.clone()));
    if opened_by == OpenedBy::Us {
        tokio::spawn(keep_alive(writer.clone(), KEEP_ALIVE, cancel.clone()));
    }

    let idle = endpoint.transport_layer.stream_idle_timeout();
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    // After a message we cannot frame, where the next starts is unknown:
    // what follows is discarded, while answers to earlier messages go out.
    let mut unframed = false;
    'reading: loop {
        buffer.reserve(READ_CHUNK);
        let read = tokio::select! {
            read = tokio::time::timeout(idle, reader.read_buf(&mut buffer)) => read,
            () = cancel.cancelled() => break,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_) => {
                debug!(%peer, "SIP over {transport} idle: closing");
                break;
            }
            Ok(Ok(_)) if unframed => buffer.clear(),
            Ok(Ok(_)) => {}
        }
        while let Some(frame) = next_frame(&mut buffer) {
            match frame {
                Frame::Ping => {
                    if write(&writer, PONG).await.is_err() {
                        break 'reading;
                    }
                }
                Frame::Message(bytes) => {
                    let checked = screen::check(&bytes, Framing::Stream, peer);
                    match checked.and_then(|passed| for_stack(&passed, &arrival, &answering)) {
                        Ok(Some(message)) => {
                            let message = match SipConnection::update_msg_received(
                                message, peer, transport,
                            ) {
                                Ok(message) => message,
                                Err(e) => {
                                    debug!(%peer, "unusable Via: {e}");
                                    continue;
                                }
                            };
                            let received =
                                endpoint.on_received_message(message, connection.clone(), &remote);
                            if let Err(e) = received.await {
                                debug!(%peer, "SIP over {transport}: {e}");
                            }
                        }
                        // A request of a call we answer: answered.
                        Ok(None) => {}
                        Err(Rejected::Answer {
                            response,
                            status,
                            why,
                            ..
                        }) => {
                            info!(%peer, "{status} to a request over {transport}: {why}");
                            if write(&writer, &response).await.is_err() {
                                break 'reading;
                            }
                        }
                        Err(Rejected::Drop { why }) => {
                            debug!(%peer, "dropped a message over {transport}: {why}")
                        }
                    }
                }
                Frame::Unframed { head, status, why } => {
                    info!(%peer, "{status} over {transport}, reading no further: {why}");
                    if let Rejected::Answer { response, .. } =
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
    drop(lifeline);
    cancel.cancel();
}

/// Writes what rsipstack and `Answering` send on one connection, until
/// `cancel`; what is queued at once goes out in one write (one system
/// call, not one each).
async fn write_from_stack<S: AsyncWrite>(
    (mut from_stack, mut from_answering): (
        tokio::sync::mpsc::UnboundedReceiver<TransportEvent>,
        tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    ),
    writer: Arc<tokio::sync::Mutex<WriteHalf<S>>>,
    cancel: CancellationToken,
) {
    let mut out = Vec::new();
    loop {
        out.clear();
        tokio::select! {
            event = from_stack.recv() => match event {
                Some(event) => append_message(&mut out, event),
                None => break,
            },
            Some(answer) = from_answering.recv() => out.extend_from_slice(&answer),
            () = cancel.cancelled() => break,
        }
        while let Ok(event) = from_stack.try_recv() {
            append_message(&mut out, event);
        }
        while let Ok(answer) = from_answering.try_recv() {
            out.extend_from_slice(&answer);
        }
        if !out.is_empty() && write(&writer, &out).await.is_err() {
            break;
        }
    }
    writer.lock().await.shutdown().await.ok();
}

fn append_message(out: &mut Vec<u8>, event: TransportEvent) {
    if let TransportEvent::Incoming(message, ..) = event {
        out.extend_from_slice(&message.to_bytes());
    }
}

/// Pings the peer `every` so often until `cancel` or a failed write; its
/// pong is skipped by the framing like any blank line.
async fn keep_alive<S: AsyncWrite>(
    writer: Arc<tokio::sync::Mutex<WriteHalf<S>>>,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = cancel.cancelled() => return,
        }
        if write(&writer, PING).await.is_err() {
            return;
        }
    }
}

async fn write<S: AsyncWrite>(
    writer: &tokio::sync::Mutex<WriteHalf<S>>,
    bytes: &[u8],
) -> std::io::Result<()> {
    writer.lock().await.write_all(bytes).await
}

/// Outgoing connections we opened, by transport (TLS or not) and next hop.
#[derive(Default)]
pub(crate) struct Outgoing {
    open: Mutex<HashMap<(bool, SocketAddr), Arc<OpenSlot>>>,
}

/// The connection to one next hop: its token, cancelled once rsipstack
/// retired it. Held while connecting, so that calls starting together
/// share one connection instead of each opening its own.
type OpenSlot = tokio::sync::Mutex<Option<CancellationToken>>;

fn is_up(token: &Option<CancellationToken>) -> bool {
    token.as_ref().is_some_and(|token| !token.is_cancelled())
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
        answering: &Arc<Answering>,
        cancel: &CancellationToken,
        timeout: Duration,
    ) -> Result<(), String> {
        let key = (target.tls.is_some(), target.address);
        let slot = {
            let mut open = self.open.lock().expect("not poisoned");
            // Forget retired connections nobody is opening again.
            open.retain(|_, slot| {
                Arc::strong_count(slot) > 1 || slot.try_lock().map_or(true, |token| is_up(&token))
            });
            open.entry(key).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if is_up(&slot) {
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
                    (address, SipTransport::Tls, OpenedBy::Us),
                    endpoint.clone(),
                    answering.clone(),
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
        *slot = Some(token);
        if let Some(connection) = connection {
            endpoint
                .transport_layer
                .add_connection(SipConnection::Tcp(connection));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_we_opened_is_pinged_until_it_is_cancelled() {
        let every = Duration::from_millis(100);
        let (ours, mut peer) = tokio::io::duplex(64);
        let (_, writer) = tokio::io::split(ours);
        let cancel = CancellationToken::new();
        let pinging = tokio::spawn(keep_alive(
            Arc::new(tokio::sync::Mutex::new(writer)),
            every,
            cancel.clone(),
        ));
        let mut ping = [0u8; 4];
        // Not at once: after `every`, then again.
        let early = tokio::time::timeout(every / 2, peer.read_exact(&mut ping)).await;
        assert!(early.is_err(), "pinged at once");
        for _ in 0..2 {
            tokio::time::timeout(every * 20, peer.read_exact(&mut ping))
                .await
                .expect("a ping in time")
                .unwrap();
            assert_eq!(ping, PING);
        }
        cancel.cancel();
        pinging.await.unwrap();
    }
}

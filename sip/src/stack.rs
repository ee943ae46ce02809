//! The SIP stack underneath: rsipstack's transports (UDP, TCP, TLS), its
//! transaction endpoint and its dialog layer, set up from our settings, on
//! our own sockets (`transports`).
//! Only this module, `caller`, `callee`, `uas`, `register` and `locate`
//! see rsipstack types.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::sip::uri::ParamsExt;
use rsipstack::sip::{Param, Transport as SipTransport, Uri};
use rsipstack::transaction::endpoint::{Endpoint, EndpointInnerRef, EndpointOption};
use rsipstack::transaction::TransactionReceiver;
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::{SipAddr, TransportLayer};
use rsipstack::EndpointBuilder;
use tokio_util::sync::CancellationToken;

use crate::config::{SipSettings, Transport};
use crate::locate::NextHop;
use crate::screen::ALLOWED_METHODS;
use crate::sips::SignallingTls;
use crate::transports::{serve_streams, serve_udp, Outgoing, StreamTarget, UdpSender};
use crate::uas::Answering;
use crate::SipError;

/// rsipstack's endpoint and dialog layer, with the addresses we listen on.
pub(crate) struct Stack {
    pub endpoint: Arc<Endpoint>,
    pub dialogs: Arc<DialogLayer>,
    /// Stops the endpoint, its transports and its timers.
    pub cancel: CancellationToken,
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    /// Named instead of our listeners' address in Via and Contact (NAT).
    external: Option<IpAddr>,
    signalling_tls: SignallingTls,
    pub domain: String,
    pub transport: Transport,
    outgoing: Outgoing,
    connect_timeout: std::time::Duration,
    /// The calls we answer (`uas`): their requests never reach rsipstack.
    pub answering: Arc<Answering>,
}

impl Stack {
    /// Binds the transports; the caller must run `serve` and read `incoming`.
    pub async fn bind(settings: &SipSettings) -> Result<(Stack, TransactionReceiver), SipError> {
        let cancel = CancellationToken::new();
        let answering = Answering::start(cancel.clone());
        let transports = TransportLayer::new(cancel.clone());
        let mut udp = None;
        let mut udp_receiving = None;
        if let Some(address) = settings.udp_listen {
            let bind_error = |e: &dyn std::fmt::Display| SipError::Bind(address, e.to_string());
            let socket = bind_udp(address).map_err(|e| bind_error(&e))?;
            let socket = Arc::new(socket);
            let bound = socket.local_addr().map_err(|e| bind_error(&e))?;
            // Behind NAT, Via names the external address (rsipstack takes
            // the UDP transport's address for every Via it writes).
            let external = settings
                .external_address
                .map(|ip| SocketAddr::new(ip, bound.port()));
            let connection = UdpConnection::from_socket(
                Arc::new(UdpSender(socket.clone())),
                external,
                Some(cancel.child_token()),
            )
            .await
            .map_err(|e| bind_error(&e))?;
            udp = Some(SocketAddr::new(address.ip(), bound.port()));
            transports.add_transport(connection.clone().into());
            udp_receiving = Some((socket, connection));
        }
        let tcp_listener = match settings.tcp_listen {
            // Port 0 takes the UDP port if free for TCP too, else any port.
            Some(address) => Some(bind_stream(address, udp)?),
            None => None,
        };
        let tls_listener = match settings.tls_listen {
            Some(address) => Some(bind_stream(address, None)?),
            None => None,
        };
        let local_addr = |listener: &Option<tokio::net::TcpListener>| {
            listener
                .as_ref()
                .map(|listener| listener.local_addr())
                .transpose()
                .map_err(|e| SipError::Stack(e.to_string()))
        };
        let (tcp, tls) = (local_addr(&tcp_listener)?, local_addr(&tls_listener)?);
        let signalling_tls = SignallingTls::new(settings)?;
        // Call-IDs rsipstack makes itself (REGISTER) name our domain too.
        let option = EndpointOption {
            callid_suffix: Some(settings.domain.clone()),
            ..EndpointOption::default()
        };
        let endpoint = EndpointBuilder::new()
            .with_option(option)
            .with_cancel_token(cancel.clone())
            .with_transport_layer(transports)
            .with_user_agent(concat!("mailcall/", env!("CARGO_PKG_VERSION")))
            .with_allows(ALLOWED_METHODS.to_vec())
            .with_inspector(Box::new(crate::digest::AlgorithmNames))
            .build();
        let incoming = endpoint
            .incoming_transactions()
            .map_err(|e| SipError::Stack(e.to_string()))?;
        let dialogs = Arc::new(DialogLayer::new(endpoint.inner.clone()));
        if let Some((socket, connection)) = udp_receiving {
            let (inner, answering) = (endpoint.inner.clone(), answering.clone());
            tokio::spawn(serve_udp(
                socket,
                connection,
                inner,
                answering,
                cancel.clone(),
            ));
        }
        for (listener, acceptor) in [
            (tcp_listener, None),
            (tls_listener, signalling_tls.acceptor.clone()),
        ] {
            if let Some(listener) = listener {
                let (inner, answering) = (endpoint.inner.clone(), answering.clone());
                let serving = serve_streams(listener, acceptor, inner, answering, cancel.clone());
                tokio::spawn(serving);
            }
        }
        let stack = Stack {
            endpoint: Arc::new(endpoint),
            dialogs,
            cancel,
            udp,
            tcp,
            tls,
            external: settings.external_address,
            signalling_tls,
            domain: settings.domain.clone(),
            transport: settings.transport,
            outgoing: Outgoing::default(),
            connect_timeout: settings.channel_connect_timeout(),
            answering,
        };
        Ok((stack, incoming))
    }

    pub fn inner(&self) -> EndpointInnerRef {
        self.endpoint.inner.clone()
    }

    /// Runs the endpoint (receiving, timers) until `cancel`.
    pub async fn serve(endpoint: Arc<Endpoint>) {
        endpoint.serve().await
    }

    /// Transactions the endpoint still tracks, and the calls we answer
    /// still remembered (each an INVITE transaction at least).
    pub fn transactions(&self) -> usize {
        let rsipstack = self
            .endpoint
            .inner
            .get_running_transactions()
            .map_or(0, |keys| keys.len());
        rsipstack + self.answering.remembered()
    }

    /// Our own Call-ID (rsipstack's default names another domain).
    pub fn new_call_id(&self) -> String {
        format!("{}@{}", uuid::Uuid::new_v4().simple(), self.domain)
    }

    /// Our Contact for `user` on `transport`: the listener of that transport,
    /// so a peer's in-dialog requests reach us (rsipstack would put the
    /// outgoing connection's port, or the UDP port, there); behind NAT,
    /// with the external address.
    pub fn contact(&self, user: &str, transport: SipTransport) -> Uri {
        let tcp = |address| (address, vec![Param::Transport(SipTransport::Tcp)]);
        let tls = |address| (address, vec![Param::Transport(SipTransport::Tls)]);
        let (mut address, params) = match (transport, self.tls, self.tcp, self.udp) {
            (SipTransport::Tls, Some(address), _, _) => tls(address),
            (SipTransport::Tcp, _, Some(address), _) => tcp(address),
            (_, _, _, Some(udp)) => (udp, Vec::new()),
            (_, _, Some(address), None) => tcp(address),
            (_, Some(address), None, None) => tls(address),
            (_, None, None, None) => unreachable!("settings validated: one transport at least"),
        };
        if let Some(external) = self.external {
            address.set_ip(external);
        }
        Uri {
            scheme: Some(rsipstack::sip::Scheme::Sip),
            auth: Some(rsipstack::sip::Auth {
                user: user.to_string(),
                password: None,
            }),
            host_with_port: address.into(),
            params,
            ..Default::default()
        }
    }

    /// A URI from the settings, with our preferred transport unless it names one.
    pub fn target(&self, text: &str) -> Result<Uri, String> {
        let mut uri = Uri::try_from(text).map_err(|e| format!("{text:?}: {e}"))?;
        let has_transport = uri.params.iter().any(|p| matches!(p, Param::Transport(_)));
        if !has_transport && self.transport == Transport::Tcp {
            uri.params.push(Param::Transport(SipTransport::Tcp));
        }
        Ok(uri)
    }

    /// Opens the connection a request to `hop` will take, over TCP or TLS
    /// (nothing to open for UDP); a peer that cannot be reached is known
    /// at once, so the caller tries the next hop without waiting for the
    /// INVITE to time out.
    pub async fn prepare(&self, hop: &NextHop) -> Result<(), String> {
        let address_name = hop.address.ip().to_string();
        let (tls, our_listener) = match hop.transport {
            SipTransport::Tcp => (None, self.tcp),
            SipTransport::Tls => {
                // RFC 5922 §4: the target's domain; an address for an IP target.
                let name = hop.server_name.as_deref().unwrap_or(&address_name);
                (Some((&self.signalling_tls, name)), self.tls)
            }
            _ => return Ok(()),
        };
        let target = StreamTarget {
            address: hop.address,
            tls,
            our_listener,
        };
        self.outgoing
            .connect(
                target,
                &self.endpoint.inner,
                &self.answering,
                &self.cancel,
                self.connect_timeout,
            )
            .await
    }

    /// Where rsipstack sends a request for `hop`.
    pub fn destination(hop: &NextHop) -> SipAddr {
        SipAddr {
            r#type: Some(hop.transport),
            addr: hop.address.into(),
        }
    }

    /// Runs `work` unless the stack stops first (then None): once stopped,
    /// no answer can arrive and no timer fires to end the wait.
    pub async fn unless_stopped<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::select! {
            done = work => Some(done),
            () = self.cancel.cancelled() => None,
        }
    }

    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

/// The transport a URI asks for (UDP when it names none).
pub(crate) fn transport_of(uri: &Uri) -> SipTransport {
    uri.transport().cloned().unwrap_or(SipTransport::Udp)
}

/// The IP address in a URI's host, if it is a literal one.
pub(crate) fn ip_of(text: &str) -> Option<IpAddr> {
    let uri = Uri::try_from(text).ok()?;
    match uri.host_with_port.host {
        rsipstack::sip::Host::IpAddr(ip) => Some(ip),
        rsipstack::sip::Host::Domain(_) => None,
    }
}

/// What a UDP socket's buffers are asked to hold (the kernel caps it at
/// net.core.rmem_max / wmem_max): the default, about 200 KiB, overflows
/// in bursts of a few hundred calls, and a request lost there waits for
/// its retransmission, half a second later.
const UDP_BUFFER: usize = 1 << 20;

/// Binds the UDP socket, with room for bursts.
fn bind_udp(address: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    // Best effort: a smaller buffer is no reason not to run.
    socket.set_recv_buffer_size(UDP_BUFFER).ok();
    socket.set_send_buffer_size(UDP_BUFFER).ok();
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// Binds a stream listener; port 0 takes `udp`'s port when it is free for
/// TCP too (one port for both, as peers expect), else any port.
fn bind_stream(
    mut address: SocketAddr,
    udp: Option<SocketAddr>,
) -> Result<tokio::net::TcpListener, SipError> {
    match (address.port(), udp) {
        (0, Some(udp)) => {
            address.set_port(udp.port());
            std::net::TcpListener::bind(address).or_else(|_| {
                address.set_port(0);
                std::net::TcpListener::bind(address)
            })
        }
        _ => std::net::TcpListener::bind(address),
    }
    .and_then(|listener| {
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    })
    .map_err(|e| SipError::Bind(address, e.to_string()))
}

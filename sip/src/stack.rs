//! The SIP stack underneath: rsipstack's transports (UDP, TCP), its
//! transaction endpoint and its dialog layer, set up from our settings.
//! Only this module, `caller`, `callee` and `register` see rsipstack types.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::sip::uri::ParamsExt;
use rsipstack::sip::{Method, Param, Transport as SipTransport, Uri};
use rsipstack::transaction::endpoint::{Endpoint, EndpointInnerRef, EndpointOption};
use rsipstack::transaction::TransactionReceiver;
use rsipstack::transport::tcp_listener::TcpListenerConnection;
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::TransportLayer;
use rsipstack::EndpointBuilder;
use tokio_util::sync::CancellationToken;

use crate::config::{SipSettings, Transport};
use crate::SipError;

/// The methods we answer; advertised in `Allow`.
pub(crate) const ALLOWED_METHODS: [Method; 5] = [
    Method::Invite,
    Method::Ack,
    Method::Cancel,
    Method::Bye,
    Method::Options,
];

/// rsipstack's endpoint and dialog layer, with the addresses we listen on.
pub(crate) struct Stack {
    pub endpoint: Arc<Endpoint>,
    pub dialogs: Arc<DialogLayer>,
    /// Stops the endpoint, its transports and its timers.
    pub cancel: CancellationToken,
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub domain: String,
    pub transport: Transport,
}

impl Stack {
    /// Binds the transports; the caller must run `serve` and read `incoming`.
    pub async fn bind(settings: &SipSettings) -> Result<(Stack, TransactionReceiver), SipError> {
        let cancel = CancellationToken::new();
        let transports = TransportLayer::new(cancel.clone());
        let mut udp = None;
        if let Some(address) = settings.udp_listen {
            let connection =
                UdpConnection::create_connection(address, None, Some(cancel.child_token()))
                    .await
                    .map_err(|e| SipError::Bind(address, e.to_string()))?;
            let bound = connection
                .get_addr()
                .get_socketaddr()
                .map_err(|e| SipError::Bind(address, e.to_string()))?;
            udp = Some(SocketAddr::new(address.ip(), bound.port()));
            transports.add_transport(connection.into());
        }
        let mut tcp = None;
        if let Some(mut address) = settings.tcp_listen {
            // rsipstack binds the listener later and only logs a failure:
            // bind once here so a taken port is an error at start. Port 0
            // takes the UDP port if free for TCP too, else any port.
            let probe = match (address.port(), udp) {
                (0, Some(udp)) => {
                    address.set_port(udp.port());
                    std::net::TcpListener::bind(address).or_else(|_| {
                        address.set_port(0);
                        std::net::TcpListener::bind(address)
                    })
                }
                _ => std::net::TcpListener::bind(address),
            }
            .map_err(|e| SipError::Bind(address, e.to_string()))?;
            let address = probe
                .local_addr()
                .map_err(|e| SipError::Bind(address, e.to_string()))?;
            drop(probe);
            let listener = TcpListenerConnection::new(address, None)
                .await
                .map_err(|e| SipError::Bind(address, e.to_string()))?;
            transports.add_transport(listener.into());
            tcp = Some(address);
        }
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
        let stack = Stack {
            endpoint: Arc::new(endpoint),
            dialogs,
            cancel,
            udp,
            tcp,
            domain: settings.domain.clone(),
            transport: settings.transport,
        };
        Ok((stack, incoming))
    }

    /// rsipstack binds its TCP listener once serving: wait (bounded) until
    /// it accepts, so a started agent is reachable at once.
    pub async fn wait_listening(address: SocketAddr) -> Result<(), SipError> {
        let mut target = address;
        if target.ip().is_unspecified() {
            target.set_ip(if address.is_ipv4() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            });
        }
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(target).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Err(SipError::Bind(
            address,
            "the TCP listener did not start".into(),
        ))
    }

    pub fn inner(&self) -> EndpointInnerRef {
        self.endpoint.inner.clone()
    }

    /// Runs the endpoint (receiving, timers) until `cancel`.
    pub async fn serve(endpoint: Arc<Endpoint>) {
        endpoint.serve().await
    }

    /// Transactions the endpoint still tracks.
    pub fn transactions(&self) -> usize {
        self.endpoint
            .inner
            .get_running_transactions()
            .map_or(0, |keys| keys.len())
    }

    /// Our own Call-ID (rsipstack's default names another domain).
    pub fn new_call_id(&self) -> String {
        format!("{}@{}", uuid::Uuid::new_v4().simple(), self.domain)
    }

    /// Our Contact for `user` on `transport`: the listener of that transport,
    /// so a peer's in-dialog requests reach us (rsipstack would put the
    /// outgoing connection's port, or the UDP port, there).
    pub fn contact(&self, user: &str, transport: SipTransport) -> Uri {
        let (address, params) = match (transport, self.tcp, self.udp) {
            (SipTransport::Tcp, Some(tcp), _) => (tcp, vec![Param::Transport(SipTransport::Tcp)]),
            (_, _, Some(udp)) => (udp, Vec::new()),
            (_, Some(tcp), None) => (tcp, vec![Param::Transport(SipTransport::Tcp)]),
            (_, None, None) => unreachable!("settings validated: one transport at least"),
        };
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

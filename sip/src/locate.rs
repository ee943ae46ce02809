//! PLACEHOLDER until the locate branch merges: routes and the outbound proxy
//! only, IP-literal next hops.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use rsipstack::sip::uri::ParamsExt;
use rsipstack::sip::{Param, Transport as SipTransport, Uri};

use crate::config::Transport;
use crate::ladder::{Label, Ladder};

pub(crate) struct LocateSettings {
    pub routes: BTreeMap<String, String>,
    pub enum_suffixes: Vec<String>,
    pub outbound_proxy: Option<String>,
    pub domain: String,
    pub default_transport: Transport,
    pub dns_servers: Vec<SocketAddr>,
    pub country_code: String,
    pub trunk_prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LocateError {
    #[error("no route to number {0}")]
    NoRoute(String),
    #[error("cannot locate {uri}: {why}")]
    Unresolvable { uri: String, why: String },
}

pub(crate) struct Locator {
    settings: LocateSettings,
}

pub(crate) struct Target {
    pub request_uri: Uri,
    pub proxy: Option<Uri>,
}

#[derive(Debug, Clone)]
pub(crate) struct NextHop {
    pub address: SocketAddr,
    pub transport: SipTransport,
    pub server_name: Option<String>,
}

impl Locator {
    pub fn new(settings: LocateSettings) -> Result<Locator, LocateError> {
        Ok(Locator { settings })
    }

    fn uri(&self, text: &str) -> Option<Uri> {
        let mut uri = Uri::try_from(text).ok()?;
        let has_transport = uri.params.iter().any(|p| matches!(p, Param::Transport(_)));
        if !has_transport && self.settings.default_transport == Transport::Tcp {
            uri.params.push(Param::Transport(SipTransport::Tcp));
        }
        Some(uri)
    }

    pub async fn target(&self, number: &str, ladder: &Ladder) -> Result<Target, LocateError> {
        let settings = &self.settings;
        let no_route = || LocateError::NoRoute(number.to_string());
        if let Some(route) = settings
            .routes
            .get(number)
            .or_else(|| settings.routes.get("*"))
        {
            let mut request_uri = self.uri(route).ok_or_else(no_route)?;
            if request_uri.auth.is_none() {
                request_uri.auth = Some(rsipstack::sip::Auth {
                    user: number.to_string(),
                    password: None,
                });
            }
            ladder.step(Label::L, format!("route: {request_uri}"));
            return Ok(Target {
                request_uri,
                proxy: None,
            });
        }
        let proxy = settings.outbound_proxy.as_ref().ok_or_else(no_route)?;
        let mut proxy = self.uri(proxy).ok_or_else(no_route)?;
        if !proxy.params.iter().any(|p| matches!(p, Param::Lr)) {
            proxy.params.push(Param::Lr);
        }
        let request_uri =
            Uri::try_from(format!("sip:{number}@{};user=phone", settings.domain).as_str())
                .map_err(|_| no_route())?;
        ladder.step(Label::L, format!("outbound proxy {proxy}"));
        Ok(Target {
            request_uri,
            proxy: Some(proxy),
        })
    }

    pub async fn next_hops(
        &self,
        uri: &Uri,
        _ladder: &Ladder,
    ) -> Result<Vec<NextHop>, LocateError> {
        let rsipstack::sip::Host::IpAddr(ip) = uri.host_with_port.host else {
            return Err(LocateError::Unresolvable {
                uri: uri.to_string(),
                why: "placeholder".into(),
            });
        };
        let secure = uri.scheme == Some(rsipstack::sip::Scheme::Sips);
        let transport = uri.transport().cloned().unwrap_or(if secure {
            SipTransport::Tls
        } else {
            SipTransport::Udp
        });
        let default_port = if transport == SipTransport::Tls {
            5061
        } else {
            5060
        };
        let port = uri.host_with_port.port.map_or(default_port, |p| p.value());
        Ok(vec![NextHop {
            address: SocketAddr::new(ip, port),
            transport,
            server_name: None,
        }])
    }
}

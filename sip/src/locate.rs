//! From a number to where its INVITE goes, before the call (ladder `L`):
//! a `[sip.routes]` entry, else ENUM (`enum_dns`), else the outbound
//! proxy; then the servers of the URI the INVITE goes to first, by
//! RFC 3263 (`next_hops`). Every step is a rung of the call's ladder.

mod enum_dns;
mod next_hops;
mod substitution;

pub use substitution::Substitution;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use rsipstack::sip::{Auth, Param, Scheme, Transport as SipTransport, Uri};

use crate::config::Transport;
use crate::ladder::{Label, Ladder};
use enum_dns::NumberingPlan;

/// What the locator needs, from `[sip]` and `[numbering_plan]`.
pub(crate) struct LocateSettings {
    /// Number (or `*`) → `sip:`/`sips:` URI text.
    pub routes: BTreeMap<String, String>,
    /// ENUM trees to ask, in order; empty turns ENUM off.
    pub enum_suffixes: Vec<String>,
    /// `sip:host:port;transport=tcp`, or None.
    pub outbound_proxy: Option<String>,
    /// Our SIP domain: the request URI's host when calling via the proxy.
    pub domain: String,
    /// Routes and the proxy without `transport=` get `;transport=tcp`
    /// when it is TCP; `sip:` URIs whose domain does not say take it.
    pub default_transport: Transport,
    /// Empty: the system's resolver (resolv.conf).
    pub dns_servers: Vec<SocketAddr>,
    /// The numbering plan, e.g. "81" and "0".
    pub country_code: String,
    pub trunk_prefix: String,
}

/// Finds targets and next hops; holds one resolver for all calls.
pub(crate) struct Locator {
    /// Routes by number (or `*`), parsed and with the default transport.
    routes: BTreeMap<String, Uri>,
    enum_suffixes: Vec<String>,
    /// With `;lr` (loose routing) and the default transport.
    outbound_proxy: Option<Uri>,
    domain: String,
    default_transport: SipTransport,
    plan: NumberingPlan,
    resolver: TokioResolver,
}

/// Where the INVITE for a number goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub request_uri: Uri,
    /// The proxy it goes through (a Route header), if any.
    pub proxy: Option<Uri>,
    pub source: Source,
}

/// Which step found the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    Route,
    Enum { suffix: String },
    OutboundProxy,
}

/// One server to send the INVITE to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NextHop {
    pub address: SocketAddr,
    /// UDP, TCP or TLS.
    pub transport: SipTransport,
    /// The name the peer's certificate must carry (RFC 5922 §4): the
    /// URI's domain, not the SRV target; None for an IP literal.
    pub server_name: Option<String>,
}

/// Why there is no target or no next hop.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LocateError {
    #[error("no route to number {0}")]
    NoRoute(String),
    #[error("cannot locate {uri}: {why}")]
    Unresolvable { uri: String, why: String },
    #[error("invalid [sip] settings: {0}")]
    Settings(String),
    #[error("no DNS resolver: {0}")]
    Resolver(String),
}

impl Locator {
    /// Parses the routes and the proxy (a bad one fails here, not per
    /// call) and builds the resolver.
    pub fn new(settings: LocateSettings) -> Result<Locator, LocateError> {
        let default_transport = match settings.default_transport {
            Transport::Udp => SipTransport::Udp,
            Transport::Tcp => SipTransport::Tcp,
        };
        let uri = |text: &str| with_transport(text, default_transport);
        let routes = settings
            .routes
            .iter()
            .map(|(number, text)| Ok((number.clone(), uri(text)?)))
            .collect::<Result<_, LocateError>>()?;
        let outbound_proxy = settings
            .outbound_proxy
            .as_deref()
            .map(|text| {
                let mut proxy = uri(text)?;
                if !proxy.params.iter().any(|p| matches!(p, Param::Lr)) {
                    proxy.params.push(Param::Lr);
                }
                Ok::<_, LocateError>(proxy)
            })
            .transpose()?;
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if !digits(&settings.country_code) || !digits(&settings.trunk_prefix) {
            return Err(LocateError::Settings(format!(
                "the numbering plan's country code {:?} and trunk prefix {:?} must be digits",
                settings.country_code, settings.trunk_prefix
            )));
        }
        Ok(Locator {
            routes,
            enum_suffixes: settings.enum_suffixes,
            outbound_proxy,
            domain: settings.domain,
            default_transport,
            plan: NumberingPlan {
                country_code: settings.country_code,
                trunk_prefix: settings.trunk_prefix,
            },
            resolver: dns_resolver(&settings.dns_servers)
                .map_err(|error| LocateError::Resolver(error.to_string()))?,
        })
    }

    /// A route, then ENUM, then the outbound proxy.
    pub async fn target(&self, number: &str, ladder: &Ladder) -> Result<Target, LocateError> {
        let no_route = || LocateError::NoRoute(number.to_string());
        // Exact number first, then the catch-all.
        if let Some(route) = self.routes.get(number).or_else(|| self.routes.get("*")) {
            let mut request_uri = route.clone();
            if request_uri.auth.is_none() {
                request_uri.auth = Some(Auth {
                    user: number.to_string(),
                    password: None,
                });
            }
            ladder.step(Label::L, format!("route {number} → {request_uri}"));
            return Ok(Target {
                request_uri,
                proxy: None,
                source: Source::Route,
            });
        }
        ladder.step(Label::L, format!("no route for {number}"));
        if let Some(target) = self.enum_target(number, ladder).await {
            return Ok(target);
        }
        let Some(proxy) = &self.outbound_proxy else {
            ladder.step(Label::L, format!("no outbound proxy: {number} unreachable"));
            return Err(no_route());
        };
        let request_uri =
            Uri::try_from(format!("sip:{number}@{};user=phone", self.domain).as_str())
                .map_err(|_| no_route())?;
        ladder.step(
            Label::L,
            format!("outbound proxy {proxy} for {request_uri}"),
        );
        Ok(Target {
            request_uri,
            proxy: Some(proxy.clone()),
            source: Source::OutboundProxy,
        })
    }

    /// ENUM's target for `number`, if on and it has one.
    async fn enum_target(&self, number: &str, ladder: &Ladder) -> Option<Target> {
        if self.enum_suffixes.is_empty() {
            ladder.step(Label::L, "ENUM off (no enum_suffixes)");
            return None;
        }
        let e164 = match self.plan.e164(number) {
            Ok(e164) => e164,
            Err(why) => {
                ladder.step(Label::L, format!("ENUM skipped: {why}"));
                return None;
            }
        };
        ladder.step(Label::L, format!("ENUM {number} is {e164}"));
        let found = enum_dns::lookup(&self.resolver, &self.enum_suffixes, &e164, ladder).await?;
        Some(Target {
            request_uri: found.uri,
            proxy: None,
            source: Source::Enum {
                suffix: found.suffix,
            },
        })
    }

    /// RFC 3263 for `uri` (the proxy if any, else the request URI): the
    /// servers to try, in order.
    pub async fn next_hops(&self, uri: &Uri, ladder: &Ladder) -> Result<Vec<NextHop>, LocateError> {
        let query = next_hops::Query {
            resolver: &self.resolver,
            default_transport: self.default_transport,
            uri,
            ladder,
        };
        let hops = query
            .next_hops()
            .await
            .map_err(|why| LocateError::Unresolvable {
                uri: uri.to_string(),
                why,
            })?;
        // An address is its own next hop: its one step said so already.
        if !matches!(uri.host_with_port.host, rsipstack::sip::Host::IpAddr(_)) {
            let listed: Vec<String> = hops
                .iter()
                .map(|hop| format!("{} {}", hop.address, hop.transport))
                .collect();
            ladder.step(
                Label::L,
                format!("next hops for {uri}: {}", listed.join(", ")),
            );
        }
        Ok(hops)
    }
}

/// A route or proxy URI; `;transport=tcp` added to a `sip:` one without a
/// transport when ours is TCP (a `sips:` one is TLS anyway).
fn with_transport(text: &str, default: SipTransport) -> Result<Uri, LocateError> {
    let mut uri =
        Uri::try_from(text).map_err(|error| LocateError::Settings(format!("{text:?}: {error}")))?;
    if !matches!(uri.scheme, Some(Scheme::Sip) | Some(Scheme::Sips)) {
        return Err(LocateError::Settings(format!(
            "{text:?} is not a sip: or sips: URI"
        )));
    }
    let has_transport = uri.params.iter().any(|p| matches!(p, Param::Transport(_)));
    if !has_transport && default == SipTransport::Tcp && uri.scheme == Some(Scheme::Sip) {
        uri.params.push(Param::Transport(SipTransport::Tcp));
    }
    Ok(uri)
}

/// The system's resolver, or one asking `servers` (UDP, then TCP); the
/// host's MX look-ups use it too.
pub fn dns_resolver(servers: &[SocketAddr]) -> Result<TokioResolver, NetError> {
    if servers.is_empty() {
        return TokioResolver::builder_tokio().and_then(|builder| builder.build());
    }
    let servers = servers
        .iter()
        .map(|server| {
            let mut udp = ConnectionConfig::udp();
            udp.port = server.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = server.port();
            NameServerConfig::new(server.ip(), true, vec![udp, tcp])
        })
        .collect();
    let config = ResolverConfig::from_parts(None, Vec::new(), servers);
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default()).build()
}

/// An NAPTR record (RFC 3403 §4.1), as text.
#[derive(Debug, Clone)]
struct Naptr {
    order: u16,
    preference: u16,
    flags: String,
    services: String,
    regexp: String,
    replacement: String,
}

impl std::fmt::Display for Naptr {
    /// As in a zone file: `10 100 "u" "E2U+sip" "!^.*$!sip:a@b!" .`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} \"{}\" \"{}\" \"{}\" {}",
            self.order, self.preference, self.flags, self.services, self.regexp, self.replacement
        )
    }
}

/// The NAPTR records at `domain` (absolute, without the trailing dot).
async fn naptr_records(resolver: &TokioResolver, domain: &str) -> Result<Vec<Naptr>, NetError> {
    let lookup = resolver
        .lookup(format!("{domain}."), RecordType::NAPTR)
        .await?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Ok(lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::NAPTR(naptr) => Some(Naptr {
                order: naptr.order,
                preference: naptr.preference,
                flags: text(&naptr.flags),
                services: text(&naptr.services),
                regexp: text(&naptr.regexp),
                replacement: naptr.replacement.to_ascii(),
            }),
            _ => None,
        })
        .collect())
}

/// Why a question got no records, for the ladder: the name does not
/// exist, it has none of that type, or the look-up itself failed.
fn why_none(error: &NetError) -> String {
    if error.is_nx_domain() {
        "NXDOMAIN".into()
    } else if error.is_no_records_found() {
        "no records".into()
    } else {
        format!("look-up failed: {error}")
    }
}

//! Where a domain's mail goes when it is relayed (S8): a static route for
//! the domain, the smarthost (`*`), or the domain's MX hosts in order of
//! preference, each at every address it has (RFC 5321 §5.1). A domain
//! without MX records takes its mail at its own address (the implicit MX);
//! a null MX (RFC 7505) or a domain that does not exist fails for good.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use crate::config::Config;

/// One server to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Its host name (for TLS and the log), or the address as text.
    pub name: String,
    pub address: SocketAddr,
}

/// The servers of a domain, or why there are none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// In the order to try them.
    Servers(Vec<Server>),
    /// No server now; `permanent` fails the recipients, else they wait.
    Unreachable { permanent: bool, detail: String },
}

/// Finds the servers for a domain.
pub struct Router {
    /// Static routes by lower-case domain, `*` for the smarthost.
    routes: BTreeMap<String, SocketAddr>,
    resolver: Option<TokioResolver>,
    mx_port: u16,
}

impl Router {
    /// Uses the configuration's routes and name servers (or the system's).
    /// Without a usable resolver, only static routes work; domains without
    /// one wait (and the log says why).
    pub fn new(config: &Config) -> Router {
        let routes = config
            .routes
            .iter()
            .map(|(domain, address)| (domain.trim_end_matches('.').to_lowercase(), *address))
            .collect();
        let resolver = mailcall_sip::dns_resolver(&config.relay.dns_servers);
        let resolver = resolver
            .inspect_err(|error| tracing::error!("no DNS resolver, MX look-up is off: {error}"))
            .ok();
        Router {
            routes,
            resolver,
            mx_port: config.relay.mx_port,
        }
    }

    /// The servers that take mail for `domain`.
    pub async fn destination(&self, domain: &str) -> Destination {
        let domain = domain.trim_end_matches('.').to_lowercase();
        if let Some(address) = self.routes.get(&domain).or_else(|| self.routes.get("*")) {
            return Destination::Servers(vec![Server {
                name: address.ip().to_string(),
                address: *address,
            }]);
        }
        // An address literal, `user@[192.0.2.1]`.
        if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let literal = literal.strip_prefix("ipv6:").unwrap_or(literal);
            return match literal.parse::<IpAddr>() {
                Ok(ip) => Destination::Servers(vec![Server {
                    name: ip.to_string(),
                    address: SocketAddr::new(ip, self.mx_port),
                }]),
                Err(_) => unreachable_for_good(format!("5.1.2 bad address literal {domain}")),
            };
        }
        let Some(resolver) = &self.resolver else {
            return Destination::Unreachable {
                permanent: false,
                detail: "4.4.3 no DNS resolver".into(),
            };
        };
        let fqdn = format!("{domain}.");
        let mut exchanges: Vec<(u16, String)> = match resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect(),
            Err(error) if error.is_nx_domain() => {
                return unreachable_for_good(format!("5.1.2 domain {domain} does not exist"));
            }
            Err(error) if error.is_no_records_found() => Vec::new(),
            Err(error) => return lookup_failed(&domain, "MX", &error),
        };
        if exchanges.iter().any(|(_, exchange)| exchange == ".") {
            return unreachable_for_good(format!(
                "5.1.10 domain {domain} accepts no mail (null MX)"
            ));
        }
        if exchanges.is_empty() {
            // RFC 5321 §5.1: the implicit MX.
            exchanges.push((0, fqdn));
        }
        exchanges.sort_by_key(|(preference, _)| *preference);
        let mut servers = Vec::new();
        let mut last_error = None;
        for (_, exchange) in &exchanges {
            match resolver.lookup_ip(exchange.as_str()).await {
                Ok(addresses) => servers.extend(addresses.iter().map(|ip| Server {
                    name: exchange.trim_end_matches('.').to_string(),
                    address: SocketAddr::new(ip, self.mx_port),
                })),
                Err(error) => last_error = Some(error),
            }
        }
        if !servers.is_empty() {
            return Destination::Servers(servers);
        }
        match last_error {
            Some(error) if error.is_nx_domain() || error.is_no_records_found() => {
                unreachable_for_good(format!("5.1.2 no address for the mail servers of {domain}"))
            }
            Some(error) => lookup_failed(&domain, "address", &error),
            None => unreachable_for_good(format!("5.1.2 no mail server for {domain}")),
        }
    }
}

fn unreachable_for_good(detail: String) -> Destination {
    Destination::Unreachable {
        permanent: true,
        detail,
    }
}

fn lookup_failed(domain: &str, what: &str, error: &NetError) -> Destination {
    Destination::Unreachable {
        permanent: false,
        detail: format!("4.4.3 {what} look-up for {domain} failed: {error}"),
    }
}

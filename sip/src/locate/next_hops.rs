//! RFC 3263: the servers a SIP URI reaches, in the order to try them —
//! transport by NAPTR (§4.1), then port and addresses by SRV and A/AAAA
//! (§4.2). The caller fails over along the list.

use std::cmp::Reverse;
use std::net::SocketAddr;

use hickory_resolver::TokioResolver;
use rsipstack::sip::uri::ParamsExt;
use rsipstack::sip::{Host, Scheme, Transport as SipTransport, Uri};

use super::{naptr_records, why_none, NextHop};
use crate::ladder::{Label, Ladder};

/// One SRV name to ask and the transport its servers speak.
#[derive(Debug, Clone)]
struct Service {
    transport: SipTransport,
    srv_name: String,
}

/// How to locate one URI: what it says itself and what we prefer.
pub(crate) struct Query<'a> {
    pub resolver: &'a TokioResolver,
    /// Ours for `sip:` URIs that name no transport and whose domain does
    /// not say (no NAPTR); `sips:` ones always take TLS.
    pub default_transport: SipTransport,
    pub uri: &'a Uri,
    pub ladder: &'a Ladder,
}

impl Query<'_> {
    /// The next hops in order; Err says why there are none.
    pub(crate) async fn next_hops(&self) -> Result<Vec<NextHop>, String> {
        let uri = self.uri;
        let secure = matches!(uri.scheme, Some(Scheme::Sips));
        let asked = uri
            .transport()
            .map(|transport| transport_asked(*transport, secure))
            .transpose()?;
        // §4.1: a URI's own transport; else TLS for sips:, else ours.
        let plain = asked.unwrap_or(if secure {
            SipTransport::Tls
        } else {
            self.default_transport
        });
        let port = uri.host_with_port.port.as_ref().map(|port| port.value());
        let domain = match &uri.host_with_port.host {
            Host::IpAddr(ip) => {
                // §4.2: a literal address is used as it is.
                let hop = NextHop {
                    address: SocketAddr::new(*ip, port.unwrap_or(default_port(plain))),
                    transport: plain,
                    server_name: None,
                };
                self.step(format!("{uri}: address {} {}", hop.address, plain));
                return Ok(vec![hop]);
            }
            Host::Domain(domain) => domain.to_string().trim_end_matches('.').to_lowercase(),
        };
        if let Some(port) = port {
            // §4.2: an explicit port means no SRV, only A/AAAA.
            self.step(format!("{uri}: port {port} given, {plain}"));
            return self.addresses(&domain, &domain, port, plain).await;
        }
        let services = match asked {
            // §4.1: a transport param means no NAPTR; SRV for it alone.
            Some(transport) => vec![Service::conventional(transport, &domain)],
            None => match self.naptr_services(&domain, secure).await {
                found if !found.is_empty() => found,
                _ => self.conventional_services(&domain, secure),
            },
        };
        let mut hops = Vec::new();
        let mut any_srv = false;
        for service in &services {
            let targets = self.srv_targets(&service.srv_name).await;
            any_srv |= !targets.is_empty();
            for (target, port) in targets {
                if let Ok(found) = self
                    .addresses(&target, &domain, port, service.transport)
                    .await
                {
                    hops.extend(found);
                }
            }
        }
        if !any_srv {
            // §4.2: no SRV records, the domain's own addresses.
            let transport = services.first().map_or(plain, |s| s.transport);
            return self
                .addresses(&domain, &domain, default_port(transport), transport)
                .await;
        }
        if hops.is_empty() {
            return Err("no SRV target has an address".into());
        }
        Ok(hops)
    }

    fn step(&self, text: String) {
        self.ladder.step(Label::L, format!("RFC 3263 {text}"));
    }

    /// §4.1: the domain's NAPTR records for SIP (flag `s`), by order
    /// and preference; only `SIPS+D2T` for a sips: URI. Empty when
    /// there are none we can use.
    async fn naptr_services(&self, domain: &str, secure: bool) -> Vec<Service> {
        let mut records = match naptr_records(self.resolver, domain).await {
            Ok(records) => records,
            Err(error) => {
                self.step(format!("NAPTR {domain}: {}", why_none(&error)));
                return Vec::new();
            }
        };
        records.sort_by_key(|record| (record.order, record.preference));
        let services: Vec<Service> = records
            .iter()
            .filter(|record| record.flags.eq_ignore_ascii_case("s"))
            .filter_map(|record| {
                let transport = match record.services.to_ascii_uppercase().as_str() {
                    "SIPS+D2T" => SipTransport::Tls,
                    "SIP+D2T" if !secure => SipTransport::Tcp,
                    "SIP+D2U" if !secure => SipTransport::Udp,
                    _ => return None,
                };
                Some(Service {
                    transport,
                    srv_name: record.replacement.trim_end_matches('.').to_lowercase(),
                })
            })
            .collect();
        let listed: Vec<String> = services
            .iter()
            .map(|s| format!("{} {}", s.transport, s.srv_name))
            .collect();
        self.step(format!(
            "NAPTR {domain}: {} records, for SIP: [{}]",
            records.len(),
            listed.join(", ")
        ));
        services
    }

    /// §4.1 without NAPTR: SRV for each transport we support — ours first,
    /// then the other plain one, then TLS; only TLS for sips:.
    fn conventional_services(&self, domain: &str, secure: bool) -> Vec<Service> {
        let order = match (secure, self.default_transport) {
            (true, _) => vec![SipTransport::Tls],
            (false, SipTransport::Tcp) => {
                vec![SipTransport::Tcp, SipTransport::Udp, SipTransport::Tls]
            }
            (false, _) => vec![SipTransport::Udp, SipTransport::Tcp, SipTransport::Tls],
        };
        order
            .into_iter()
            .map(|transport| Service::conventional(transport, domain))
            .collect()
    }

    /// The targets and ports of an SRV name, by priority, then weight
    /// (heaviest first: a fixed order instead of RFC 2782's weighted
    /// random pick, so a failover is reproducible). Empty if there are none.
    async fn srv_targets(&self, srv_name: &str) -> Vec<(String, u16)> {
        let lookup = match self
            .resolver
            .lookup(
                format!("{srv_name}."),
                hickory_resolver::proto::rr::RecordType::SRV,
            )
            .await
        {
            Ok(lookup) => lookup,
            Err(error) => {
                self.step(format!("SRV {srv_name}: {}", why_none(&error)));
                return Vec::new();
            }
        };
        let mut records: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                hickory_resolver::proto::rr::RData::SRV(srv) => Some(srv.clone()),
                _ => None,
            })
            .collect();
        records.sort_by_key(|srv| (srv.priority, Reverse(srv.weight)));
        let listed: Vec<String> = records
            .iter()
            .map(|srv| {
                let target = srv.target.to_ascii();
                format!(
                    "{} {}:{}",
                    srv.priority,
                    target.trim_end_matches('.'),
                    srv.port
                )
            })
            .collect();
        self.step(format!("SRV {srv_name}: {}", listed.join(", ")));
        records
            .into_iter()
            // RFC 2782: a target of "." means no service here.
            .filter(|srv| !srv.target.is_root())
            .map(|srv| {
                let target = srv.target.to_ascii();
                (target.trim_end_matches('.').to_lowercase(), srv.port)
            })
            .collect()
    }

    /// A next hop for each address of `host`. `server_name` is the URI's
    /// domain: RFC 5922 §4 checks the certificate against it, not against
    /// the SRV target.
    async fn addresses(
        &self,
        host: &str,
        server_name: &str,
        port: u16,
        transport: SipTransport,
    ) -> Result<Vec<NextHop>, String> {
        match self.resolver.lookup_ip(format!("{host}.")).await {
            Ok(found) => {
                let hops: Vec<NextHop> = found
                    .iter()
                    .map(|ip| NextHop {
                        address: SocketAddr::new(ip, port),
                        transport,
                        server_name: Some(server_name.to_string()),
                    })
                    .collect();
                let listed: Vec<String> = hops.iter().map(|h| h.address.to_string()).collect();
                self.step(format!("A/AAAA {host}: {} {transport}", listed.join(", ")));
                Ok(hops)
            }
            Err(error) => {
                let why = format!("A/AAAA {host}: {}", why_none(&error));
                self.step(why.clone());
                Err(why)
            }
        }
    }
}

impl Service {
    /// The SRV name RFC 3263 §4.1 builds for a transport.
    fn conventional(transport: SipTransport, domain: &str) -> Service {
        let prefix = match transport {
            SipTransport::Tls => "_sips._tcp",
            SipTransport::Tcp => "_sip._tcp",
            _ => "_sip._udp",
        };
        Service {
            transport,
            srv_name: format!("{prefix}.{domain}"),
        }
    }
}

/// The transport a `transport=` param asks for; TCP under sips: is TLS
/// (RFC 3261 §26.2.2), and UDP cannot carry sips: at all.
fn transport_asked(transport: SipTransport, secure: bool) -> Result<SipTransport, String> {
    match (transport, secure) {
        (SipTransport::Udp, false) => Ok(SipTransport::Udp),
        (SipTransport::Tcp, false) => Ok(SipTransport::Tcp),
        (SipTransport::Tcp | SipTransport::Tls, true) | (SipTransport::Tls, false) => {
            Ok(SipTransport::Tls)
        }
        (SipTransport::Udp, true) => Err("sips: over UDP".into()),
        (other, _) => Err(format!("transport {other} is not supported")),
    }
}

/// §4.2: 5061 for TLS, else 5060.
fn default_port(transport: SipTransport) -> u16 {
    transport.default_port().value()
}

//! The `[sip]` section of the configuration file: where the user agent
//! listens, which numbers it answers, and how it reaches other numbers.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::network::Network;

/// `[sip]`: the SIP user agent and its call channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipSettings {
    /// SIP over UDP; none to not listen on UDP.
    pub udp_listen: Option<SocketAddr>,
    /// SIP over TCP; none to not listen on TCP. Port 0 takes the UDP port
    /// when it is free for TCP too.
    pub tcp_listen: Option<SocketAddr>,
    /// SIP over TLS (RFC 3261 §26): `address:port`, or an address alone
    /// for port 5061; none to not listen on TLS. Shows `tls_certificate`
    /// (mailcall: the SMTP server's certificate unless set).
    #[serde(deserialize_with = "tls_listen_address")]
    pub tls_listen: Option<SocketAddr>,
    /// Our certificate chain and its key (PEM files), shown to peers that
    /// connect to `tls_listen`.
    pub tls_certificate: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Trust anchors (PEM) for the servers we connect to over TLS; default:
    /// the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Check that a TLS peer's certificate is valid for the target's name
    /// (RFC 5922). `false` only for tests and labs: anyone on the path can
    /// then read and change the call's SDP, fingerprint included.
    pub tls_verify: bool,
    /// The address peers reach us on when we are behind NAT: named in Via,
    /// Contact and (unless `channel_external_address` says otherwise) the
    /// SDP, while the sockets listen on the internal address. Ports are the
    /// listening ones: forward them unchanged.
    pub external_address: Option<IpAddr>,
    /// The address the SDP names for our channel, if it differs from
    /// `external_address` (channels forwarded through another address).
    pub channel_external_address: Option<IpAddr>,
    /// ENUM (RFC 6116) trees a number is looked up in, in order; empty turns
    /// ENUM off. Private trees are common.
    pub enum_suffixes: Vec<String>,
    /// Name servers for ENUM and SIP look-ups (`address:port`); default: the
    /// system's.
    pub dns_servers: Vec<SocketAddr>,
    /// Our SIP domain: the host part of our numbers' addresses.
    pub domain: String,
    /// Our own numbers: calls to them are answered, and registered when a
    /// registrar is set.
    pub numbers: Vec<String>,
    /// The registrar our numbers are registered with (`sip:host:port`).
    pub registrar: Option<String>,
    /// Digest user name for the registrar and the proxy (default: the number).
    pub username: Option<String>,
    /// Digest password for the registrar and the proxy.
    pub password: Option<String>,
    /// Registration lifetime asked for; refreshed before it runs out.
    pub register_expires_secs: u32,
    /// Every call goes through this proxy (`sip:host:port;transport=tcp`),
    /// unless `routes` names the number.
    pub outbound_proxy: Option<String>,
    /// Direct mode, without a SIP server: number to SIP URI
    /// (`sip:127.0.0.1:5070`); `*` for any number.
    pub routes: BTreeMap<String, String>,
    /// Addresses and networks (`10.0.0.0/8`) allowed to call us; the
    /// outbound proxy and the registrar are allowed implicitly.
    pub allowed_sources: Vec<Network>,
    /// The ports our channel listeners take (`40000-40099`), one call's at a time.
    pub channel_ports: String,
    /// The address in our SDP (answer and offer); default: the SIP listen address.
    pub channel_address: Option<IpAddr>,
    /// Offer and accept the channel as TCP/TLS, bound to the call by the
    /// certificate fingerprint in the SDP.
    pub channel_tls: bool,
    /// The transport of requests we send, unless a URI names one.
    pub transport: Transport,
    /// Seconds an INVITE may go without a final answer before we CANCEL it.
    pub invite_timeout_secs: u32,
    /// Seconds the caller waits to connect the channel.
    pub channel_connect_timeout_secs: u32,
    /// Seconds the callee waits for the caller to connect the channel.
    pub channel_accept_timeout_secs: u32,
    /// Seconds a session on the channel may last, at either end.
    pub session_timeout_secs: u32,
    /// `[call] require_tls`: place and answer calls only over TLS
    /// signalling, so the channel's fingerprint travels protected.
    #[serde(skip)]
    pub require_tls: bool,
    /// `[numbering_plan]`: how a national number becomes E.164 for ENUM.
    #[serde(skip)]
    pub numbering: E164Plan,
}

/// What turns a national number into E.164 (`0501234` → `+81501234`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E164Plan {
    /// Without `+` (`81`).
    pub country_code: String,
    /// Dropped from national numbers (`0`).
    pub trunk_prefix: String,
}

impl Default for E164Plan {
    fn default() -> Self {
        E164Plan {
            country_code: "81".into(),
            trunk_prefix: "0".into(),
        }
    }
}

/// The SIP transport of outgoing requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
}

impl Default for SipSettings {
    /// Loopback only, answering no number, calling nobody.
    fn default() -> Self {
        SipSettings {
            udp_listen: Some(([127, 0, 0, 1], 5060).into()),
            tcp_listen: Some(([127, 0, 0, 1], 5060).into()),
            tls_listen: None,
            tls_certificate: None,
            tls_key: None,
            tls_ca_file: None,
            tls_verify: true,
            external_address: None,
            channel_external_address: None,
            enum_suffixes: vec!["e164.arpa".into()],
            dns_servers: Vec::new(),
            domain: "localhost".into(),
            numbers: Vec::new(),
            registrar: None,
            username: None,
            password: None,
            register_expires_secs: 600,
            outbound_proxy: None,
            routes: BTreeMap::new(),
            allowed_sources: vec!["127.0.0.0/8".parse().expect("a network")],
            channel_ports: "40000-40099".into(),
            channel_address: None,
            channel_tls: false,
            transport: Transport::Udp,
            invite_timeout_secs: 32,
            channel_connect_timeout_secs: 10,
            channel_accept_timeout_secs: 10,
            session_timeout_secs: 600,
            require_tls: false,
            numbering: E164Plan::default(),
        }
    }
}

impl SipSettings {
    /// Semantic checks, with a message naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.udp_listen.is_none() && self.tcp_listen.is_none() && self.tls_listen.is_none() {
            return Err("[sip] needs udp_listen, tcp_listen or tls_listen".into());
        }
        if self.tls_certificate.is_some() != self.tls_key.is_some() {
            return Err("[sip] tls_certificate and tls_key go together".into());
        }
        if self.require_tls && self.tls_listen.is_none() && !self.numbers.is_empty() {
            return Err(
                "[call] require_tls: [sip] must listen on TLS (tls_listen) to answer calls".into(),
            );
        }
        for suffix in &self.enum_suffixes {
            if suffix.is_empty() || suffix.starts_with('.') || suffix.contains(char::is_whitespace)
            {
                return Err(format!("[sip] enum_suffixes: {suffix:?} is not a domain"));
            }
        }
        if self.domain.is_empty() {
            return Err("[sip] domain must not be empty".into());
        }
        for number in &self.numbers {
            if !is_user_part(number) {
                return Err(format!("[sip] numbers: {number:?} is not a SIP user part"));
            }
        }
        for (field, uri) in [
            ("registrar", &self.registrar),
            ("outbound_proxy", &self.outbound_proxy),
        ] {
            if let Some(uri) = uri {
                check_sip_uri(uri).map_err(|why| format!("[sip] {field}: {why}"))?;
            }
        }
        for (number, uri) in &self.routes {
            if number != "*" && !is_user_part(number) {
                return Err(format!("[sip] routes: {number:?} is not a number or *"));
            }
            check_sip_uri(uri).map_err(|why| format!("[sip] routes.{number}: {why}"))?;
        }
        self.channel_port_range()?;
        if self.sdp_address().is_unspecified() {
            return Err(
                "[sip] channel_address (or external_address) must be set when SIP listens on an unspecified address"
                    .into(),
            );
        }
        if self.register_expires_secs < 60 {
            return Err("[sip] register_expires_secs must be at least 60".into());
        }
        for (name, value) in [
            ("invite_timeout_secs", self.invite_timeout_secs),
            (
                "channel_connect_timeout_secs",
                self.channel_connect_timeout_secs,
            ),
            (
                "channel_accept_timeout_secs",
                self.channel_accept_timeout_secs,
            ),
            ("session_timeout_secs", self.session_timeout_secs),
        ] {
            if value == 0 {
                return Err(format!("[sip] {name} must be at least 1"));
            }
        }
        Ok(())
    }

    /// The channel port range, parsed.
    pub fn channel_port_range(&self) -> Result<RangeInclusive<u16>, String> {
        let invalid = || {
            format!(
                "[sip] channel_ports: {:?} is not first-last (1-65535)",
                self.channel_ports
            )
        };
        let (first, last) = self.channel_ports.split_once('-').ok_or_else(invalid)?;
        let first: u16 = first.trim().parse().map_err(|_| invalid())?;
        let last: u16 = last.trim().parse().map_err(|_| invalid())?;
        if first == 0 || first > last {
            return Err(invalid());
        }
        Ok(first..=last)
    }

    /// The address SIP listens on (UDP first).
    pub(crate) fn listen_address(&self) -> IpAddr {
        self.udp_listen
            .or(self.tcp_listen)
            .or(self.tls_listen)
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }

    /// The address our channel listeners bind to.
    pub(crate) fn channel_bind_address(&self) -> IpAddr {
        self.channel_address
            .filter(|a| !a.is_unspecified())
            .unwrap_or_else(|| self.listen_address())
    }

    /// The address our SDP names for the channel: the external one behind
    /// NAT, else where the listeners bind.
    pub(crate) fn sdp_address(&self) -> IpAddr {
        self.channel_external_address
            .or(self.external_address)
            .unwrap_or_else(|| self.channel_bind_address())
    }

    pub(crate) fn invite_timeout(&self) -> Duration {
        Duration::from_secs(self.invite_timeout_secs.into())
    }

    pub(crate) fn channel_connect_timeout(&self) -> Duration {
        Duration::from_secs(self.channel_connect_timeout_secs.into())
    }

    pub(crate) fn channel_accept_timeout(&self) -> Duration {
        Duration::from_secs(self.channel_accept_timeout_secs.into())
    }

    pub(crate) fn session_timeout(&self) -> Duration {
        Duration::from_secs(self.session_timeout_secs.into())
    }
}

/// The port of SIP over TLS (RFC 3261 §26) when `tls_listen` names none.
const SIPS_PORT: u16 = 5061;

/// `tls_listen`: `address:port`, or an address for port 5061.
fn tls_listen_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse::<SocketAddr>()
        .or_else(|_| {
            let address = text.trim_start_matches('[').trim_end_matches(']');
            address
                .parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, SIPS_PORT))
        })
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("{text:?} is not address[:port]")))
}

/// RFC 3261 `user` characters, without escapes: enough for numbers and names.
fn is_user_part(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c))
}

fn check_sip_uri(uri: &str) -> Result<(), String> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .ok_or_else(|| format!("{uri:?} does not start with sip: or sips:"))?;
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(format!("{uri:?} has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SipSettings, String> {
        let settings: SipSettings = toml::from_str(text).map_err(|e| e.to_string())?;
        settings.validate()?;
        Ok(settings)
    }

    #[test]
    fn defaults_listen_on_loopback_5060_and_validate() {
        let settings = parse("").unwrap();
        assert_eq!(settings.udp_listen, Some(([127, 0, 0, 1], 5060).into()));
        assert_eq!(settings.tcp_listen, Some(([127, 0, 0, 1], 5060).into()));
        assert_eq!(settings.channel_port_range().unwrap(), 40000..=40099);
        assert_eq!(settings.sdp_address(), IpAddr::from([127, 0, 0, 1]));
    }

    #[test]
    fn a_full_section_parses() {
        let settings = parse(
            r#"
            udp_listen = "127.0.0.1:5070"
            tcp_listen = "127.0.0.1:5070"
            domain = "a.example"
            numbers = ["0501111"]
            registrar = "sip:127.0.0.1:5080"
            username = "a"
            password = "secret"
            outbound_proxy = "sip:127.0.0.1:5080;transport=tcp"
            routes = { "0502222" = "sip:127.0.0.1:5072", "*" = "sip:127.0.0.1:5074" }
            allowed_sources = ["10.0.0.0/8", "192.0.2.1"]
            channel_ports = "41000-41009"
            channel_address = "127.0.0.1"
            channel_tls = true
            transport = "tcp"
            invite_timeout_secs = 5
            "#,
        )
        .unwrap();
        assert_eq!(settings.transport, Transport::Tcp);
        assert_eq!(settings.routes.len(), 2);
        assert!(settings.channel_tls);
    }

    #[test]
    fn tls_listens_on_5061_unless_told_otherwise() {
        let settings =
            parse("tls_listen = \"192.0.2.10\"\ntls_certificate = \"c\"\ntls_key = \"k\"").unwrap();
        assert_eq!(
            settings.tls_listen,
            Some("192.0.2.10:5061".parse().unwrap())
        );
        let settings =
            parse("tls_listen = \"[::1]\"\ntls_certificate = \"c\"\ntls_key = \"k\"").unwrap();
        assert_eq!(settings.tls_listen, Some("[::1]:5061".parse().unwrap()));
        let settings = parse("tls_listen = \"127.0.0.1:5071\"").unwrap();
        assert_eq!(settings.tls_listen, Some("127.0.0.1:5071".parse().unwrap()));
        assert!(parse("tls_listen = \"host.example\"").is_err());
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("bogus = 1", "unknown field"),
            ("udp_listen = \"nowhere\"", "invalid"),
            ("channel_ports = \"5-1\"", "channel_ports"),
            ("channel_ports = \"40000\"", "channel_ports"),
            ("registrar = \"http://x\"", "registrar"),
            ("routes = { \"05 0\" = \"sip:x\" }", "routes"),
            ("allowed_sources = [\"10.0.0.0/33\"]", "allowed_sources"),
            ("numbers = [\"\"]", "numbers"),
            (
                "udp_listen = \"0.0.0.0:5060\"\ntcp_listen = \"0.0.0.0:5060\"",
                "channel_address",
            ),
            ("invite_timeout_secs = 0", "invite_timeout_secs"),
            ("transport = \"sctp\"", "unknown variant"),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn the_two_host_example_is_valid_and_routes_each_to_the_other() {
        let mut sections = Vec::new();
        for host in ["a", "b"] {
            let path = format!(
                "{}/../examples/sip-two-hosts/{host}.toml",
                env!("CARGO_MANIFEST_DIR")
            );
            let file: toml::Table =
                toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let sip = toml::to_string(&file["sip"]).unwrap();
            sections.push(parse(&sip).unwrap_or_else(|e| panic!("{host}.toml: {e}")));
        }
        let (a, b) = (&sections[0], &sections[1]);
        let a_to_b = &a.routes[&b.numbers[0]];
        assert!(
            a_to_b.ends_with(&b.udp_listen.unwrap().to_string()),
            "{a_to_b}"
        );
        let b_to_a = &b.routes[&a.numbers[0]];
        assert!(
            b_to_a.ends_with(&a.udp_listen.unwrap().to_string()),
            "{b_to_a}"
        );
        let (a_ports, b_ports) = (
            a.channel_port_range().unwrap(),
            b.channel_port_range().unwrap(),
        );
        assert!(
            a_ports.end() < b_ports.start(),
            "the hosts' channel ports overlap"
        );
    }
}

//! The `[sip]` section of the configuration file: where the user agent
//! listens, which numbers it answers, and how it reaches other numbers.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;

/// `[sip]`: the SIP user agent and its call channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipSettings {
    /// SIP over UDP; none to not listen on UDP.
    pub udp_listen: Option<SocketAddr>,
    /// SIP over TCP; none to not listen on TCP. Port 0 takes the UDP port
    /// when it is free for TCP too.
    pub tcp_listen: Option<SocketAddr>,
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
    pub allowed_sources: Vec<String>,
    /// The ports our one-shot channel listeners take (`40000-40099`).
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
            domain: "localhost".into(),
            numbers: Vec::new(),
            registrar: None,
            username: None,
            password: None,
            register_expires_secs: 600,
            outbound_proxy: None,
            routes: BTreeMap::new(),
            allowed_sources: vec!["127.0.0.0/8".into()],
            channel_ports: "40000-40099".into(),
            channel_address: None,
            channel_tls: false,
            transport: Transport::Udp,
            invite_timeout_secs: 32,
            channel_connect_timeout_secs: 10,
            channel_accept_timeout_secs: 10,
            session_timeout_secs: 600,
        }
    }
}

impl SipSettings {
    /// Semantic checks, with a message naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.udp_listen.is_none() && self.tcp_listen.is_none() {
            return Err("[sip] needs udp_listen or tcp_listen".into());
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
        for source in &self.allowed_sources {
            parse_network(source).map_err(|why| format!("[sip] allowed_sources: {why}"))?;
        }
        self.channel_port_range()?;
        if self.channel_address.is_none_or(|a| a.is_unspecified())
            && self.listen_address().is_unspecified()
        {
            return Err(
                "[sip] channel_address must be set when SIP listens on an unspecified address"
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
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }

    /// The address our SDP names for the channel.
    pub(crate) fn sdp_address(&self) -> IpAddr {
        self.channel_address
            .filter(|a| !a.is_unspecified())
            .unwrap_or_else(|| self.listen_address())
    }

    /// The allowed sources, parsed (validated before use).
    pub(crate) fn allowed_networks(&self) -> Vec<(IpAddr, u8)> {
        self.allowed_sources
            .iter()
            .filter_map(|n| parse_network(n).ok())
            .collect()
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
        .ok_or_else(|| format!("{uri:?} does not start with sip:"))?;
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(format!("{uri:?} has no host"));
    }
    Ok(())
}

/// Parses `address/prefix` (a bare address is a host: /32 or /128).
pub(crate) fn parse_network(text: &str) -> Result<(IpAddr, u8), String> {
    let invalid = || format!("{text:?} is not address/prefix");
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let address: IpAddr = address.trim().parse().map_err(|_| invalid())?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(prefix) => prefix.trim().parse::<u8>().map_err(|_| invalid())?,
        None => max,
    };
    if prefix > max {
        return Err(invalid());
    }
    Ok((address, prefix))
}

/// Whether `address` lies in `network`.
pub(crate) fn in_network(address: IpAddr, (network, prefix): (IpAddr, u8)) -> bool {
    let address = match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(address),
        v4 => v4,
    };
    match (address, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
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

    #[test]
    fn networks_match_by_prefix() {
        let net = parse_network("10.1.0.0/16").unwrap();
        assert!(in_network("10.1.2.3".parse().unwrap(), net));
        assert!(!in_network("10.2.0.1".parse().unwrap(), net));
        assert!(in_network("::ffff:10.1.0.9".parse().unwrap(), net));
        assert!(in_network(
            "1.2.3.4".parse().unwrap(),
            parse_network("0.0.0.0/0").unwrap()
        ));
        let host = parse_network("::1").unwrap();
        assert!(in_network("::1".parse().unwrap(), host));
        assert!(!in_network("127.0.0.1".parse().unwrap(), host));
    }
}

//! An address range from the configuration (`10.0.0.0/8`, or a bare
//! address for one host), parsed once when the file is read. The host's
//! relay and synchronous networks and SIP's allowed sources share it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// A network, as `address/prefix` or a bare address (/32, /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(IpNet);

impl Network {
    /// Whether `address` lies in it; an IPv4-mapped IPv6 address (a dual
    /// stack socket's view of an IPv4 peer) counts as its IPv4 address.
    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.contains(&address.to_canonical())
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Network, String> {
        let text = text.trim();
        let parsed = match text.contains('/') {
            true => text.parse::<IpNet>().ok(),
            false => text.parse::<IpAddr>().ok().map(IpNet::from),
        };
        parsed
            .map(|network| Network(network.trunc()))
            .ok_or_else(|| format!("{text:?} is not a network (address/prefix)"))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Network, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(text: &str) -> Network {
        text.parse().unwrap()
    }

    #[test]
    fn networks_match_by_prefix() {
        let net = network("10.1.0.0/16");
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(network("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        let host = network("::1");
        assert!(host.contains("::1".parse().unwrap()));
        assert!(!host.contains("127.0.0.1".parse().unwrap()));
        // Host bits are dropped: 10.1.2.3/16 is 10.1.0.0/16.
        assert_eq!(network("10.1.2.3/16"), net);
        assert_eq!(network(" 192.0.2.1 ").to_string(), "192.0.2.1/32");
    }

    #[test]
    fn what_is_not_a_network_is_named() {
        for text in [
            "10.0.0.0/33",
            "10.0.0",
            "",
            "host.example",
            "::1/129",
            "1.2.3.4/x",
        ] {
            let error = text.parse::<Network>().unwrap_err();
            assert!(error.contains("is not a network"), "{text}: {error}");
        }
    }
}

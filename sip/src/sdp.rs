//! SDP offer and answer for the call channel (RFC 4145 TCP-based media,
//! RFC 4572/8122 fingerprints): the caller offers `m=application 9 TCP smtp`
//! and connects (`a=setup:active`); the callee answers with the address and
//! port of the call's listener (`a=setup:passive`).

use std::net::{IpAddr, SocketAddr};

/// The protocol the channel carries: the one format in the `m=` line.
pub const FORMAT: &str = "smtp";

/// One side's channel description, as offered or answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelDescription {
    /// The address to connect to (answer) or connect from (offer).
    pub address: IpAddr,
    /// The listener's port in an answer; 9 (discard) in an active offer;
    /// 0 when the answer declines the channel.
    pub port: u16,
    /// `TCP/TLS` instead of `TCP`.
    pub tls: bool,
    /// Who connects.
    pub setup: Setup,
    /// The SHA-256 fingerprint of this side's certificate, with TLS.
    pub fingerprint: Option<[u8; 32]>,
}

/// RFC 4145 `a=setup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Active,
    Passive,
    ActPass,
}

/// Why a description was not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP is not UTF-8")]
    NotText,
    #[error("SDP has no c= line")]
    NoConnection,
    #[error("SDP has no m=application line for TCP or TCP/TLS with format smtp")]
    NoChannel,
    #[error("SDP line {0:?} is malformed")]
    Malformed(String),
    #[error("SDP TCP/TLS channel without a sha-256 fingerprint")]
    NoFingerprint,
}

impl ChannelDescription {
    /// The caller's offer: we connect, from `address`.
    pub fn offer(address: IpAddr, fingerprint: Option<[u8; 32]>) -> Self {
        ChannelDescription {
            address,
            port: 9,
            tls: fingerprint.is_some(),
            setup: Setup::Active,
            fingerprint,
        }
    }

    /// The callee's answer: connect to `listener`.
    pub fn answer(listener: SocketAddr, fingerprint: Option<[u8; 32]>) -> Self {
        ChannelDescription {
            address: listener.ip(),
            port: listener.port(),
            tls: fingerprint.is_some(),
            setup: Setup::Passive,
            fingerprint,
        }
    }

    /// Where the answerer listens.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    /// The SDP body; `session_id` keeps the `o=` line unique per call.
    pub fn to_sdp(&self, session_id: u64) -> String {
        let family = if self.address.is_ipv4() { "IP4" } else { "IP6" };
        let protocol = if self.tls { "TCP/TLS" } else { "TCP" };
        let setup = match self.setup {
            Setup::Active => "active",
            Setup::Passive => "passive",
            Setup::ActPass => "actpass",
        };
        let mut sdp = format!(
            "v=0\r\n\
             o=mailcall {session_id} 1 IN {family} {address}\r\n\
             s=mailcall\r\n\
             c=IN {family} {address}\r\n\
             t=0 0\r\n\
             m=application {port} {protocol} {FORMAT}\r\n\
             a=setup:{setup}\r\n\
             a=connection:new\r\n",
            address = self.address,
            port = self.port,
        );
        if let Some(fingerprint) = &self.fingerprint {
            sdp.push_str(&format!(
                "a=fingerprint:sha-256 {}\r\n",
                format_fingerprint(fingerprint)
            ));
        }
        sdp
    }

    /// Reads the channel from an SDP body: the first `m=application` line
    /// over TCP or TCP/TLS that names `smtp`.
    pub fn parse(body: &[u8]) -> Result<Self, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotText)?;
        let mut session_address = None;
        let mut media: Option<ChannelDescription> = None;
        let mut media_address = None;
        // Attributes after an unusable m= line belong to that line.
        let mut in_channel = false;
        for line in text.lines().map(str::trim_end) {
            let Some((kind, value)) = line.split_once('=') else {
                continue;
            };
            match kind {
                "c" => {
                    let address = parse_connection(value)?;
                    if media.is_none() {
                        session_address = Some(address);
                    } else if in_channel {
                        media_address = Some(address);
                    }
                }
                "m" => {
                    if media.is_some() {
                        in_channel = false;
                        continue;
                    }
                    in_channel = parse_media(value)?.is_some_and(|(port, tls)| {
                        media = Some(ChannelDescription {
                            address: IpAddr::from([0, 0, 0, 0]),
                            port,
                            tls,
                            setup: Setup::Active,
                            fingerprint: None,
                        });
                        true
                    });
                }
                "a" if in_channel => {
                    let channel = media.as_mut().expect("in_channel implies media");
                    if let Some(setup) = value.strip_prefix("setup:") {
                        channel.setup = match setup.trim() {
                            "active" => Setup::Active,
                            "passive" => Setup::Passive,
                            "actpass" => Setup::ActPass,
                            _ => return Err(SdpError::Malformed(line.into())),
                        };
                    } else if let Some(fingerprint) = value.strip_prefix("fingerprint:") {
                        if let Some(hex) = fingerprint.trim().strip_prefix("sha-256 ") {
                            channel.fingerprint = Some(
                                parse_fingerprint(hex)
                                    .ok_or_else(|| SdpError::Malformed(line.into()))?,
                            );
                        }
                    }
                }
                _ => {}
            }
        }
        let mut channel = media.ok_or(SdpError::NoChannel)?;
        channel.address = media_address
            .or(session_address)
            .ok_or(SdpError::NoConnection)?;
        if channel.tls && channel.fingerprint.is_none() {
            return Err(SdpError::NoFingerprint);
        }
        Ok(channel)
    }
}

/// `IN IP4 192.0.2.1` to the address.
fn parse_connection(value: &str) -> Result<IpAddr, SdpError> {
    let malformed = || SdpError::Malformed(format!("c={value}"));
    let mut fields = value.split_whitespace();
    let (Some("IN"), Some(_family), Some(address)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(malformed());
    };
    // A multicast TTL suffix (`/127`) has no place here, but tolerate it.
    let address = address.split('/').next().unwrap_or(address);
    address.parse().map_err(|_| malformed())
}

/// `application 9 TCP smtp` to (port, tls); None for any other media.
fn parse_media(value: &str) -> Result<Option<(u16, bool)>, SdpError> {
    let mut fields = value.split_whitespace();
    let (Some(media), Some(port), Some(protocol)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(SdpError::Malformed(format!("m={value}")));
    };
    let port: u16 = port
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| SdpError::Malformed(format!("m={value}")))?;
    let tls = match protocol {
        "TCP" => false,
        "TCP/TLS" => true,
        _ => return Ok(None),
    };
    let names_smtp = fields.any(|format| format.eq_ignore_ascii_case(FORMAT));
    Ok((media == "application" && names_smtp).then_some((port, tls)))
}

/// `AB:CD:...` (RFC 8122: uppercase hex pairs joined by colons).
pub fn format_fingerprint(fingerprint: &[u8; 32]) -> String {
    fingerprint
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let mut fingerprint = [0u8; 32];
    let mut pairs = text.trim().split(':');
    for byte in fingerprint.iter_mut() {
        *byte = u8::from_str_radix(pairs.next()?, 16).ok()?;
    }
    pairs.next().is_none().then_some(fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn the_offer_is_rfc_4145_active_tcp_smtp() {
        let sdp = ChannelDescription::offer(LOOPBACK, None).to_sdp(7);
        assert!(sdp.contains("c=IN IP4 127.0.0.1\r\n"), "{sdp}");
        assert!(sdp.contains("m=application 9 TCP smtp\r\n"), "{sdp}");
        assert!(sdp.contains("a=setup:active\r\n"), "{sdp}");
        assert!(sdp.contains("a=connection:new\r\n"), "{sdp}");
        assert!(!sdp.contains("fingerprint"), "{sdp}");
    }

    #[test]
    fn the_answer_names_the_listener_passively_and_round_trips() {
        let listener: SocketAddr = "127.0.0.1:40007".parse().unwrap();
        let answer = ChannelDescription::answer(listener, None);
        let sdp = answer.to_sdp(1);
        assert!(sdp.contains("m=application 40007 TCP smtp\r\n"), "{sdp}");
        assert!(sdp.contains("a=setup:passive\r\n"), "{sdp}");
        assert_eq!(ChannelDescription::parse(sdp.as_bytes()).unwrap(), answer);
        assert_eq!(answer.socket_addr(), listener);
    }

    #[test]
    fn tls_carries_a_sha256_fingerprint() {
        let fingerprint: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let offer = ChannelDescription::offer(LOOPBACK, Some(fingerprint));
        let sdp = offer.to_sdp(1);
        assert!(sdp.contains("m=application 9 TCP/TLS smtp\r\n"), "{sdp}");
        assert!(sdp.contains("a=fingerprint:sha-256 00:07:0E:15:"), "{sdp}");
        assert_eq!(ChannelDescription::parse(sdp.as_bytes()).unwrap(), offer);
    }

    #[test]
    fn other_media_are_skipped_and_media_level_c_wins() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                   m=audio 4000 RTP/AVP 0\r\na=setup:passive\r\n\
                   m=application 5000 TCP smtp lmtp\r\nc=IN IP4 192.0.2.9\r\na=setup:passive\r\n";
        let channel = ChannelDescription::parse(sdp.as_bytes()).unwrap();
        assert_eq!(channel.socket_addr(), "192.0.2.9:5000".parse().unwrap());
        assert_eq!(channel.setup, Setup::Passive);
    }

    #[test]
    fn unusable_sdp_is_refused_with_a_reason() {
        let cases: [(&[u8], SdpError); 5] = [
            (b"\xff\xfe", SdpError::NotText),
            (
                b"v=0\r\nm=application 9 TCP smtp\r\n",
                SdpError::NoConnection,
            ),
            (
                b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 9 RTP/AVP 0\r\n",
                SdpError::NoChannel,
            ),
            (
                b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=application 9 TCP/TLS smtp\r\n",
                SdpError::NoFingerprint,
            ),
            (
                b"v=0\r\nc=IN IP4 nowhere\r\n",
                SdpError::Malformed("c=IN IP4 nowhere".into()),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(ChannelDescription::parse(body), Err(expected));
        }
        assert_eq!(
            ChannelDescription::parse(
                b"c=IN IP4 1.2.3.4\r\nm=application 9 TCP smtp\r\na=setup:sideways\r\n"
            ),
            Err(SdpError::Malformed("a=setup:sideways".into()))
        );
    }
}

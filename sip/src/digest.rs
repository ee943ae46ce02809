//! Digest algorithm names on the wire. rsipstack computes MD5, SHA-256 and
//! SHA-512 digests but names them `SHA256`/`SHA512`, while RFC 7616 (and
//! Kamailio) say `SHA-256`/`SHA-512-256`…: it refuses a challenge naming
//! `SHA-256`. This inspector renames them as messages come and go.

use rsipstack::sip::{Header, SipMessage};
use rsipstack::transaction::endpoint::MessageInspector;
use rsipstack::transport::SipAddr;

/// RFC 7616 name, rsipstack name.
const NAMES: [(&str, &str); 4] = [
    ("SHA-256-sess", "SHA256-sess"),
    ("SHA-256", "SHA256"),
    ("SHA-512-256-sess", "SHA512-sess"),
    ("SHA-512-256", "SHA512"),
];

pub(crate) struct AlgorithmNames;

impl MessageInspector for AlgorithmNames {
    fn before_send(&self, mut message: SipMessage, _to: Option<&SipAddr>) -> SipMessage {
        if let SipMessage::Request(request) = &mut message {
            for header in request.headers.iter_mut() {
                match header {
                    Header::Authorization(h) => h.replace(rename(h.value(), true)),
                    Header::ProxyAuthorization(h) => h.replace(rename(h.value(), true)),
                    _ => {}
                }
            }
        }
        message
    }

    fn after_received(&self, mut message: SipMessage, _from: Option<&SipAddr>) -> SipMessage {
        if let SipMessage::Response(response) = &mut message {
            for header in response.headers.iter_mut() {
                match header {
                    Header::WwwAuthenticate(h) => h.replace(rename(h.value(), false)),
                    Header::ProxyAuthenticate(h) => h.replace(rename(h.value(), false)),
                    _ => {}
                }
            }
        }
        message
    }
}

/// Renames the `algorithm=` parameter of a digest header value, to the
/// RFC 7616 name (`to_wire`) or to rsipstack's.
fn rename(value: &str, to_wire: bool) -> String {
    let Some(start) = value.to_ascii_lowercase().find("algorithm=") else {
        return value.to_string();
    };
    let start = start + "algorithm=".len();
    let rest = &value[start..];
    let quoted = rest.starts_with('"');
    let body = rest.trim_start_matches('"');
    let end = body.find([',', '"', ' ']).unwrap_or(body.len());
    let name = &body[..end];
    let renamed = NAMES.iter().find_map(|(wire, ours)| {
        let (from, to) = if to_wire { (ours, wire) } else { (wire, ours) };
        name.eq_ignore_ascii_case(from).then_some(*to)
    });
    match renamed {
        Some(renamed) => {
            let prefix = &value[..start + usize::from(quoted)];
            format!("{prefix}{renamed}{}", &body[end..])
        }
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::rename;

    #[test]
    fn sha256_is_renamed_both_ways_and_md5_left_alone() {
        let challenge = r#"Digest realm="x", nonce="n", qop="auth", algorithm=SHA-256"#;
        assert_eq!(
            rename(challenge, false),
            r#"Digest realm="x", nonce="n", qop="auth", algorithm=SHA256"#
        );
        let answer = r#"Digest username="a", algorithm="SHA256-sess", response="r""#;
        assert_eq!(
            rename(answer, true),
            r#"Digest username="a", algorithm="SHA-256-sess", response="r""#
        );
        let md5 = r#"Digest realm="x", algorithm=MD5, nonce="n""#;
        assert_eq!(rename(md5, false), md5);
        assert_eq!(rename("Digest realm=\"x\"", true), "Digest realm=\"x\"");
    }
}

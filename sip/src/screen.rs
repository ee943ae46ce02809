//! The screen every received SIP message passes before rsipstack sees it.
//!
//! rsipstack's parser drops what it cannot read (an unknown method, a
//! broken line) without a word and takes the body whatever Content-Length
//! says. RFC 3261 wants answers instead: 501 for a method we do not know
//! (§21.5.2), 400 with the reason for a malformed request (§8.2.2, §18.3),
//! 505 for another SIP version, 513 for a message too large, and silence
//! only for what cannot be answered (no Via, an ACK, a response).
//! This module decides, from the bytes of one message, which of these it
//! gets; `transports` sends the answer. It also holds what every answer
//! of ours says about methods: `ALLOWED_METHODS` and `allow_header`.

use std::net::SocketAddr;

use rsipstack::sip::{Method, SipMessage};

/// The methods we answer; advertised in `Allow` (RFC 3261 §20.5).
pub(crate) const ALLOWED_METHODS: [Method; 5] = [
    Method::Invite,
    Method::Ack,
    Method::Cancel,
    Method::Bye,
    Method::Options,
];

/// The value of our `Allow` header: every answer that lists our methods
/// (200 to OPTIONS, 405, 501) says the same.
pub(crate) fn allow_header() -> String {
    let methods: Vec<String> = ALLOWED_METHODS.iter().map(|m| m.to_string()).collect();
    methods.join(", ")
}

/// The largest SIP message we take: rsipstack's own limit for streams, and
/// far above any INVITE we exchange (UDP datagrams are further limited by
/// rsipstack's receive buffer, see `MAX_DATAGRAM`).
pub(crate) const MAX_MESSAGE: usize = 65_535;

/// rsipstack reads UDP datagrams into a buffer of this size; a longer one
/// would reach it cut short, so we answer 513 instead (RFC 3261 §18.1.1:
/// large requests go over TCP).
pub(crate) const MAX_DATAGRAM: usize = 8_192;

/// How a message came: alone in a datagram, or framed in a stream by its
/// Content-Length (RFC 3261 §18.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Datagram,
    Stream,
}

/// What to do with one received message.
#[derive(Debug)]
pub enum Verdict {
    /// Hand the first `len` bytes (the body cut to its Content-Length) to
    /// rsipstack, which parses them as `message`.
    Pass { len: usize, message: SipMessage },
    /// Answer with this response instead; `to_port` is where a datagram
    /// answer goes on the source's address (RFC 3261 §18.2.2, RFC 3581).
    Answer {
        response: Vec<u8>,
        status: u16,
        why: String,
        to_port: u16,
    },
    /// Ignore it, as RFC 3261 says for what cannot be answered.
    Drop { why: String },
}

/// Screens one message from `source`. `bytes` is the whole datagram, or
/// one message cut from a stream (head, blank line, Content-Length bytes).
pub fn screen(bytes: &[u8], framing: Framing, source: SocketAddr) -> Verdict {
    let head = Head::read(bytes);
    let refuse = |status: u16, why: String| head.refuse(status, why, source, framing);
    if head.start.starts_with(b"SIP/") {
        // A response nobody can parse is discarded (RFC 3261 §18.1.2).
        return match pass(bytes, &head, framing) {
            Ok(verdict) => verdict,
            Err((_, why)) => Verdict::Drop { why },
        };
    }
    let line = match RequestLine::read(&head.start) {
        Ok(line) => line,
        Err(why) => return refuse(400, why),
    };
    if line.version != "SIP/2.0" {
        return match line.version.starts_with("SIP/") {
            true => refuse(505, format!("only SIP/2.0, not {}", line.version)),
            false => refuse(400, format!("bad SIP version {:?}", line.version)),
        };
    }
    if let Some(why) = &head.broken {
        return refuse(400, why.clone());
    }
    for name in ["via", "from", "to", "call-id", "cseq"] {
        if head.value(name).is_none() {
            return refuse(400, format!("missing {} header", display_name(name)));
        }
    }
    let method = line.method;
    match cseq_method(head.value("cseq").unwrap_or_default()) {
        Ok(cseq) if cseq == method => {}
        Ok(_) => return refuse(400, "CSeq method does not match".into()),
        Err(why) => return refuse(400, why),
    }
    if method.parse::<Method>().is_err() {
        return refuse(501, format!("{method} is not a method we know"));
    }
    match pass(bytes, &head, framing) {
        Ok(verdict) => verdict,
        Err((status, why)) => refuse(status, why),
    }
}

/// `screen`'s answer with `status`, when a stream message cannot even be
/// framed (its head only).
pub(crate) fn refuse(
    head: &[u8],
    status: u16,
    why: String,
    source: SocketAddr,
    framing: Framing,
) -> Verdict {
    Head::read(head).refuse(status, why, source, framing)
}

/// The Content-Length a message head gives, if any.
pub(crate) fn content_length(head: &[u8]) -> Result<Option<usize>, String> {
    Head::read(head).content_length()
}

/// The message as rsipstack gets it, if its length and syntax are right.
/// What is wrong otherwise: the status to answer and why.
fn pass(bytes: &[u8], head: &Head, framing: Framing) -> Result<Verdict, (u16, String)> {
    let length = head.content_length().map_err(|why| (400, why))?;
    let len = match (length, framing) {
        (Some(length), Framing::Datagram) => {
            // A length near usize::MAX must not overflow.
            let end = head.body_start.saturating_add(length);
            if end > bytes.len() {
                let body = bytes.len().saturating_sub(head.body_start);
                let why = format!("Content-Length {length} exceeds the {body} bytes of body");
                return Err((400, why));
            }
            // Bytes after the body are discarded (RFC 3261 §18.3).
            end
        }
        _ => bytes.len(),
    };
    if framing == Framing::Datagram && len > MAX_DATAGRAM {
        return Err((513, format!("{len} bytes is too much for UDP: use TCP")));
    }
    let message =
        SipMessage::try_from(&bytes[..len]).map_err(|e| (400, format!("unreadable: {e}")))?;
    Ok(Verdict::Pass { len, message })
}

/// The request line, `Method SP Request-URI SP SIP-Version`.
struct RequestLine<'a> {
    method: &'a str,
    version: &'a str,
}

impl<'a> RequestLine<'a> {
    fn read(start: &'a [u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(start).map_err(|_| "Request-Line is not UTF-8")?;
        let parts: Vec<&str> = text.split(' ').collect();
        let [method, uri, version] = parts[..] else {
            return Err(format!("bad Request-Line {text:?}"));
        };
        if method.is_empty() || !method.bytes().all(is_token_byte) {
            return Err(format!("bad method {method:?}"));
        }
        if uri.is_empty() || !uri.contains(':') {
            return Err(format!("bad Request-URI {uri:?}"));
        }
        Ok(RequestLine { method, version })
    }
}

/// RFC 3261 §25.1 `token`.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&byte)
}

/// `CSeq: 1*DIGIT LWS Method`, with a number below 2**31 (§8.1.1.5).
fn cseq_method(value: &str) -> Result<&str, String> {
    let bad = || format!("bad CSeq {value:?}");
    let mut parts = value.split_whitespace();
    let (Some(number), Some(method), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    match number.parse::<u32>() {
        Ok(n) if n < 1 << 31 && number.bytes().all(|b| b.is_ascii_digit()) => Ok(method),
        _ => Err(bad()),
    }
}

/// The start line and headers, read leniently: enough to judge a message
/// and to copy what an answer must echo.
struct Head {
    start: Vec<u8>,
    /// (lower-case full name, value unfolded) in order.
    headers: Vec<(String, String)>,
    body_start: usize,
    /// The first thing wrong with the header section itself.
    broken: Option<String>,
}

impl Head {
    fn read(bytes: &[u8]) -> Head {
        let (section, body_start, mut broken) = match find(bytes, b"\r\n\r\n") {
            Some(at) => (&bytes[..at], at + 4, None),
            None => (
                bytes,
                bytes.len(),
                Some("no blank line after the headers".to_string()),
            ),
        };
        let mut lines = section.split(|&b| b == b'\n').map(|line| match line {
            [rest @ .., b'\r'] => rest,
            line => line,
        });
        let start = lines.next().unwrap_or_default().to_vec();
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            let text = String::from_utf8_lossy(line);
            if broken.is_none() && std::str::from_utf8(line).is_err() {
                broken = Some("a header line is not UTF-8".into());
            }
            if let (Some(b' ' | b'\t'), Some((_, value))) = (line.first(), headers.last_mut()) {
                // Folded: a continuation of the previous value (§7.3.1).
                value.push(' ');
                value.push_str(text.trim());
                continue;
            }
            match text.split_once(':') {
                Some((name, value)) if !name.trim().is_empty() => {
                    let name = full_name(name.trim());
                    headers.push((name, value.trim().to_string()));
                }
                _ => {
                    broken.get_or_insert_with(|| format!("header line without a name: {text:?}"));
                }
            }
        }
        Head {
            start,
            headers,
            body_start,
            broken,
        }
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Content-Length, if given; every copy must agree and be a number.
    fn content_length(&self) -> Result<Option<usize>, String> {
        let mut found = None;
        for (_, value) in self.headers.iter().filter(|(n, _)| n == "content-length") {
            let length: usize = value
                .parse()
                .map_err(|_| format!("Content-Length {value:?} is not a number"))?;
            if found.is_some_and(|f| f != length) {
                return Err("two different Content-Lengths".into());
            }
            found = Some(length);
        }
        Ok(found)
    }

    /// Our answer (or silence, where there is nobody to answer).
    fn refuse(&self, status: u16, why: String, source: SocketAddr, framing: Framing) -> Verdict {
        let is_ack = self.start.starts_with(b"ACK ");
        let vias: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == "via")
            .map(|(_, v)| v.as_str())
            .collect();
        if is_ack || vias.is_empty() {
            // No answer to an ACK (§17.2.1); none without a Via to send it by (§8.2.6.2).
            return Verdict::Drop { why };
        }
        let (top, to_port) = received(vias[0], source, framing);
        let mut response = format!("SIP/2.0 {status} {}\r\n", reason_phrase(status));
        response.push_str(&format!("Via: {top}\r\n"));
        for via in &vias[1..] {
            response.push_str(&format!("Via: {via}\r\n"));
        }
        for name in ["from", "to", "call-id", "cseq"] {
            if let Some(value) = self.value(name) {
                let value = match name == "to" && !has_param(value, "tag") {
                    true => format!("{value};tag={}", uuid::Uuid::new_v4().simple()),
                    false => value.to_string(),
                };
                response.push_str(&format!("{}: {value}\r\n", display_name(name)));
            }
        }
        if status == 501 || status == 405 {
            response.push_str(&format!("Allow: {}\r\n", allow_header()));
        }
        // The reason, for people reading traces (§20.43).
        let warning = why.replace(['"', '\\'], "'").replace(['\r', '\n'], " ");
        response.push_str(&format!("Warning: 399 mailcall \"{warning}\"\r\n"));
        response.push_str(concat!(
            "Server: mailcall/",
            env!("CARGO_PKG_VERSION"),
            "\r\n"
        ));
        response.push_str("Content-Length: 0\r\n\r\n");
        Verdict::Answer {
            response: response.into_bytes(),
            status,
            why,
            to_port,
        }
    }
}

/// The top Via as the answer carries it (`received`, and `rport` filled in
/// when asked for: RFC 3581), and the port a datagram answer goes to.
fn received(via: &str, source: SocketAddr, framing: Framing) -> (String, u16) {
    // Several Via values may share one line: only the first is ours to mark.
    let (first, rest) = match via.split_once(',') {
        Some((first, rest)) => (first, Some(rest)),
        None => (via, None),
    };
    let mut parts = first.split(';');
    let sent_by = parts.next().unwrap_or_default().trim().to_string();
    let mut params: Vec<String> = Vec::new();
    let mut rport = false;
    for param in parts.map(str::trim) {
        let name = param.split('=').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("rport") {
            rport = true;
        } else if !name.eq_ignore_ascii_case("received") {
            params.push(param.to_string());
        }
    }
    params.push(format!("received={}", source.ip()));
    if rport {
        params.push(format!("rport={}", source.port()));
    }
    let port = match (rport, framing) {
        (true, _) | (_, Framing::Stream) => source.port(),
        // `SIP/2.0/UDP host[:port]`: the sent-by port, else 5060.
        (false, Framing::Datagram) => {
            let host_port = sent_by.split_whitespace().last().unwrap_or_default();
            // `[v6]` alone has colons but no port.
            let port = match host_port.ends_with(']') {
                true => None,
                false => host_port.rsplit_once(':').map(|(_, port)| port),
            };
            port.and_then(|port| port.parse().ok()).unwrap_or(5060)
        }
    };
    let mut top = format!("{sent_by};{}", params.join(";"));
    if let Some(rest) = rest {
        top.push(',');
        top.push_str(rest);
    }
    (top, port)
}

fn has_param(value: &str, name: &str) -> bool {
    // Parameters follow the name-addr's closing '>' (or the bare URI).
    let params = value.rsplit_once('>').map_or(value, |(_, after)| after);
    params.split(';').skip(1).any(|p| {
        p.split('=')
            .next()
            .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
    })
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        405 => "Method Not Allowed",
        501 => "Not Implemented",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        _ => "Error",
    }
}

/// Compact header forms (RFC 3261 §7.3.3) to full lower-case names.
fn full_name(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    let full = match name.as_str() {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "l" => "content-length",
        "m" => "contact",
        "c" => "content-type",
        _ => return name,
    };
    full.to_string()
}

fn display_name(name: &str) -> &str {
    match name {
        "via" => "Via",
        "from" => "From",
        "to" => "To",
        "call-id" => "Call-ID",
        "cseq" => "CSeq",
        other => other,
    }
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "192.0.2.7:5072";

    fn options(extra_header: &str, body: &str) -> String {
        format!(
            "OPTIONS sip:200@127.0.0.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK1;rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:peer@192.0.2.7>;tag=p1\r\n\
             To: <sip:200@127.0.0.1>\r\n\
             Call-ID: c1@test\r\n\
             CSeq: 1 OPTIONS\r\n\
             {extra_header}\
             \r\n{body}"
        )
    }

    fn verdict(message: &str, framing: Framing) -> Verdict {
        screen(message.as_bytes(), framing, SOURCE.parse().unwrap())
    }

    /// The status line and the response, or "pass"/"drop".
    fn outcome(message: &str) -> (String, String) {
        match verdict(message, Framing::Datagram) {
            Verdict::Pass { .. } => ("pass".into(), String::new()),
            Verdict::Drop { .. } => ("drop".into(), String::new()),
            Verdict::Answer { response, .. } => {
                let text = String::from_utf8(response).unwrap();
                (text.lines().next().unwrap().to_string(), text)
            }
        }
    }

    #[test]
    fn a_good_request_passes_whole() {
        let message = options("Content-Length: 0\r\n", "");
        match verdict(&message, Framing::Datagram) {
            Verdict::Pass {
                len,
                message: SipMessage::Request(request),
            } => {
                assert_eq!(len, message.len());
                assert_eq!(request.method, Method::Options);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn folded_and_compact_headers_pass() {
        let message = "OPTIONS sip:200@127.0.0.1 SIP/2.0\r\n\
                       v: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK1\r\n\
                       f: <sip:peer@192.0.2.7>\r\n ;tag=p1\r\n\
                       t: <sip:200@127.0.0.1>\r\ni: c1@test\r\n\
                       CSeq: 1\r\n\tOPTIONS\r\nl: 0\r\n\r\n";
        assert_eq!(outcome(message).0, "pass");
    }

    #[test]
    fn an_unknown_method_gets_501_with_allow() {
        let message = options("", "")
            .replace("OPTIONS sip", "FROBNICATE sip")
            .replace("1 OPTIONS", "1 FROBNICATE");
        let (status, response) = outcome(&message);
        assert_eq!(status, "SIP/2.0 501 Not Implemented");
        assert!(response.contains("\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"));
        // Via marked with where it came from (RFC 3581), To given our tag.
        assert!(response.contains(
            "Via: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK1;received=192.0.2.7;rport=5072\r\n"
        ));
        assert!(response.contains("To: <sip:200@127.0.0.1>;tag="));
        assert!(response.contains("Call-ID: c1@test\r\nCSeq: 1 FROBNICATE\r\n"));
        assert!(response.contains("Warning: 399 mailcall \"FROBNICATE is not a method we know\""));
        assert!(response.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn answers_go_to_rport_else_the_via_port() {
        let with_rport = options("", "");
        let unknown = |m: &str| {
            m.replace("OPTIONS sip", "FOO sip")
                .replace("1 OPTIONS", "1 FOO")
        };
        let port = |m: &str| match verdict(m, Framing::Datagram) {
            Verdict::Answer { to_port, .. } => to_port,
            other => panic!("{other:?}"),
        };
        assert_eq!(port(&unknown(&with_rport)), 5072);
        assert_eq!(port(&unknown(&with_rport.replace(";rport", ""))), 5070);
        let no_port = with_rport
            .replace("192.0.2.7:5070;", "192.0.2.7;")
            .replace(";rport", "");
        assert_eq!(port(&unknown(&no_port)), 5060);
        let v6 = no_port.replace("192.0.2.7;", "[2001:db8::7]:5071;");
        assert_eq!(port(&unknown(&v6)), 5071);
        let v6_no_port = v6.replace("]:5071;", "];");
        assert_eq!(port(&unknown(&v6_no_port)), 5060);
    }

    #[test]
    fn each_malformed_request_gets_its_answer() {
        let good = options("Content-Length: 0\r\n", "");
        let cases = [
            (
                good.replace("Call-ID: c1@test\r\n", ""),
                "SIP/2.0 400 Bad Request",
                "missing Call-ID header",
            ),
            (
                good.replace("CSeq: 1 OPTIONS\r\n", ""),
                "SIP/2.0 400 Bad Request",
                "missing CSeq header",
            ),
            (
                good.replace("To: <sip:200@127.0.0.1>\r\n", ""),
                "SIP/2.0 400 Bad Request",
                "missing To header",
            ),
            (
                good.replace("CSeq: 1 OPTIONS", "CSeq: -1 OPTIONS"),
                "SIP/2.0 400 Bad Request",
                "bad CSeq",
            ),
            (
                good.replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE"),
                "SIP/2.0 400 Bad Request",
                "CSeq method does not match",
            ),
            (
                good.replace("SIP/2.0\r\n", "SIP/7.1\r\n"),
                "SIP/2.0 505 Version Not Supported",
                "only SIP/2.0",
            ),
            (
                good.replace("Content-Length: 0", "Content-Length: 40"),
                "SIP/2.0 400 Bad Request",
                "exceeds the 0 bytes of body",
            ),
            (
                good.replace("Content-Length: 0", "Content-Length: lots"),
                "SIP/2.0 400 Bad Request",
                "is not a number",
            ),
            (
                good.replace("Content-Length: 0", "Content-Length: 0\r\nl: 3"),
                "SIP/2.0 400 Bad Request",
                "two different",
            ),
            (
                good.replace("Max-Forwards: 70\r\n", "Max-Forwards 70\r\n"),
                "SIP/2.0 400 Bad Request",
                "without a name",
            ),
            (
                good.replace("peer@", "p\u{e9}er@")
                    .replace('\u{e9}', "\u{fffd}"),
                "pass",
                "",
            ),
            (
                good.replace(" sip:200@127.0.0.1 ", "  sip:200@127.0.0.1 "),
                "SIP/2.0 400 Bad Request",
                "bad Request-Line",
            ),
        ];
        for (message, status, why) in cases {
            let (got, response) = outcome(&message);
            assert_eq!(got, status, "{message}");
            assert!(response.contains(why), "{why}: {response}");
        }
    }

    #[test]
    fn a_content_length_near_usize_max_is_refused_not_overflowed() {
        let huge = options(&format!("Content-Length: {}\r\n", usize::MAX), "");
        let (status, response) = outcome(&huge);
        assert_eq!(status, "SIP/2.0 400 Bad Request");
        assert!(
            response.contains("exceeds the 0 bytes of body"),
            "{response}"
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_get_400() {
        let mut message = options("", "").into_bytes();
        let at = message.windows(4).position(|w| w == b"peer").unwrap();
        message[at] = 0xff;
        match screen(&message, Framing::Datagram, SOURCE.parse().unwrap()) {
            Verdict::Answer { status, why, .. } => {
                assert_eq!(status, 400);
                assert_eq!(why, "a header line is not UTF-8");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unanswerable_messages_are_dropped() {
        let good = options("", "");
        let no_via = good.replace(
            "Via: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK1;rport\r\n",
            "",
        );
        assert_eq!(
            outcome(&no_via.replace("Call-ID: c1@test\r\n", "")).0,
            "drop"
        );
        let bad_ack = good
            .replace("OPTIONS", "ACK")
            .replace("Call-ID: c1@test\r\n", "");
        assert_eq!(outcome(&bad_ack).0, "drop");
        assert_eq!(outcome("SIP/2.0 99999 Odd\r\n\r\n").0, "drop");
        assert_eq!(outcome("\u{1}\u{2} not SIP at all \r\n\r\n").0, "drop");
    }

    #[test]
    fn the_body_is_cut_to_content_length_in_a_datagram_only() {
        let message = options("Content-Length: 2\r\n", "hi and more");
        let cut = message.len() - " and more".len();
        assert!(
            matches!(verdict(&message, Framing::Datagram), Verdict::Pass { len, .. } if len == cut)
        );
        // In a stream the framer already cut it: nothing to check here.
        let message = options("Content-Length: 2\r\n", "hi");
        assert!(matches!(
            verdict(&message, Framing::Stream),
            Verdict::Pass { .. }
        ));
    }

    #[test]
    fn a_datagram_too_large_for_rsipstack_gets_513() {
        let subject = format!("Subject: {}\r\n", "x".repeat(MAX_DATAGRAM));
        let (status, response) = outcome(&options(&subject, ""));
        assert_eq!(status, "SIP/2.0 513 Message Too Large");
        assert!(response.contains("use TCP"));
        let within = format!("Subject: {}\r\n", "x".repeat(MAX_DATAGRAM - 400));
        assert_eq!(outcome(&options(&within, "")).0, "pass");
    }
}

//! The screen every received SIP message passes before rsipstack sees it.
//!
//! rsipstack's parser drops what it cannot read (an unknown method, a
//! broken line) without a word, takes the body whatever Content-Length
//! says, and accepts much that RFC 3261's grammar forbids. RFC 3261 wants
//! answers instead, each the one it names, in the order of §8.2: 501 for a
//! method we do not know (§21.5.2), 400 with the reason for a malformed
//! request (§8.2.2, §18.3), 416 for a Request-URI scheme we do not serve
//! (§8.2.2.1), 420 with `Unsupported` for a `Require` we lack (§8.2.2.3),
//! 505 for another SIP version, 513 for a message too large, and silence
//! only for what cannot be answered (no Via, an ACK, a response).
//! This module decides, from the bytes of one message, which of these it
//! gets; `transports` sends the answer. It also holds what every answer
//! of ours says about methods: `ALLOWED_METHODS` and `allow_header`.
//!
//! What RFC 3261 allows must pass. rsipstack's parser takes compact and
//! oddly cased names, escapes and unknown headers, but not folded lines or
//! LWS around `;`, `=`, `,` and `/`: a header section with those is handed
//! on in normal form (`Head::normal_form`), which means the same (§7.3.1,
//! §25.1), and costs a copy only when present. 405 for methods we know but
//! do not serve is the callee's, after rsipstack (§8.2.1).
//!
//! The RFC 4475 torture messages (`sip/tests/torture/`) are its test
//! corpus, over UDP and TCP (`sip/tests/torture.rs`).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use rsipstack::sip::{Method, SipMessage};

use crate::text;

/// The methods we answer; advertised in `Allow` (RFC 3261 §20.5).
pub(crate) const ALLOWED_METHODS: [Method; 5] = [
    Method::Invite,
    Method::Ack,
    Method::Cancel,
    Method::Bye,
    Method::Options,
];

/// The methods rsipstack knows (`Method`), as RFC 3261 and its extensions
/// spell them: any other gets 501, one of these that we do not serve 405.
const KNOWN_METHODS: [&str; 14] = [
    "ACK",
    "BYE",
    "CANCEL",
    "INFO",
    "INVITE",
    "MESSAGE",
    "NOTIFY",
    "OPTIONS",
    "PRACK",
    "PUBLISH",
    "REFER",
    "REGISTER",
    "SUBSCRIBE",
    "UPDATE",
];

/// The value of our `Allow` header: every answer that lists our methods
/// (200 to OPTIONS, 405, 501) says the same, built once.
pub(crate) fn allow_header() -> &'static str {
    static ALLOW: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ALLOW.get_or_init(|| {
        let methods: Vec<String> = ALLOWED_METHODS.iter().map(|m| m.to_string()).collect();
        methods.join(", ")
    })
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
    /// Hand `message` to rsipstack: the first `len` bytes (the body cut to
    /// its Content-Length), parsed, in normal form where the header section
    /// needed it (RFC 3261 §7.3.1: folding and LWS change no meaning).
    Pass { len: usize, message: SipMessage },
    /// Answer it or drop it instead.
    Refused(Rejected),
}

/// A message the screen does not pass: answered, or dropped.
#[derive(Debug)]
pub enum Rejected {
    /// Answer with this response; `to_port` is where a datagram answer goes
    /// on the source's address (RFC 3261 §18.2.2, RFC 3581).
    Answer {
        response: Vec<u8>,
        status: u16,
        why: String,
        to_port: u16,
    },
    /// Ignore it, as RFC 3261 says for what cannot be answered.
    Drop { why: String },
}

/// Why a request is refused: the status, the reason (our Warning), and a
/// header the status calls for (`Allow` with 501, `Unsupported` with 420).
struct Refusal {
    status: u16,
    why: String,
    header: Option<(&'static str, String)>,
}

impl Refusal {
    fn new(status: u16, why: impl Into<String>) -> Refusal {
        Refusal {
            status,
            why: why.into(),
            header: None,
        }
    }

    fn bad(why: impl Into<String>) -> Refusal {
        Refusal::new(400, why)
    }

    fn with(self, name: &'static str, value: String) -> Refusal {
        Refusal {
            header: Some((name, value)),
            ..self
        }
    }
}

/// Screens one message from `source`. `bytes` is the whole datagram, or
/// one message cut from a stream (head, blank line, Content-Length bytes).
pub fn screen(bytes: &[u8], framing: Framing, source: SocketAddr) -> Verdict {
    let passed = check(bytes, framing, source);
    match passed.and_then(|passed| Ok((passed.len, passed.parse(source, framing)?))) {
        Ok((len, message)) => Verdict::Pass { len, message },
        Err(rejected) => Verdict::Refused(rejected),
    }
}

/// `screen` short of rsipstack's parse: a message that passed is read only
/// as far as its start line and headers (`Passed`), which is all the
/// requests of the calls we answer need (`uas`); the rest is parsed.
pub(crate) fn check(
    bytes: &[u8],
    framing: Framing,
    source: SocketAddr,
) -> Result<Passed<'_>, Rejected> {
    let head = Head::read(bytes);
    if head.start.starts_with(b"SIP/") {
        // A response nobody can read is discarded (RFC 3261 §18.1.2).
        return match length(bytes, &head, framing) {
            Ok(len) => Ok(Passed { head, bytes, len }),
            Err(refusal) => Err(Rejected::Drop { why: refusal.why }),
        };
    }
    match judge(&head).and_then(|()| length(bytes, &head, framing)) {
        Ok(len) => Ok(Passed { head, bytes, len }),
        Err(refusal) => Err(head.answer(refusal, source, framing)),
    }
}

/// A message that passed the screen: its start line and headers (names in
/// lower case, full forms), and its length.
pub(crate) struct Passed<'a> {
    head: Head<'a>,
    bytes: &'a [u8],
    len: usize,
}

impl Passed<'_> {
    /// The request's method (a response's version).
    pub fn method(&self) -> &str {
        let start = self.head.start;
        let end = start.iter().position(|&b| b == b' ').unwrap_or(start.len());
        std::str::from_utf8(&start[..end]).unwrap_or_default()
    }

    /// Every header, (lower-case full name, value), in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.head
            .headers
            .iter()
            .map(|(name, value)| (name.as_ref(), value.as_ref()))
    }

    /// The first value of header `name` (lower case, full form).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.head.value(name)
    }

    /// The top Via as an answer carries it (`received`, and `rport` when
    /// asked for: RFC 3581), and the port a datagram answer goes to.
    pub fn answer_via(&self, source: SocketAddr, framing: Framing) -> Option<(String, u16)> {
        let top = self.head.value("via")?;
        Some(received(top, source, framing))
    }

    /// A request's Request-URI, as it came (`screen` read the line).
    pub fn request_uri(&self) -> &str {
        let start = std::str::from_utf8(self.head.start).unwrap_or_default();
        start.split(' ').nth(1).unwrap_or_default()
    }

    /// The body (up to Content-Length).
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.head.body_start.min(self.len)..self.len]
    }

    /// The message as rsipstack's parser reads it: the normal form, where
    /// the header section needed it (RFC 3261 §7.3.1: folding and LWS
    /// change no meaning); only an abnormal message costs a copy.
    pub fn readable(&self) -> Cow<'_, [u8]> {
        match self.head.abnormal {
            true => Cow::Owned(self.head.normal_form(self.bytes, self.len)),
            false => Cow::Borrowed(&self.bytes[..self.len]),
        }
    }

    /// rsipstack's parse (of `readable`).
    pub fn parse(&self, source: SocketAddr, framing: Framing) -> Result<SipMessage, Rejected> {
        SipMessage::try_from(&self.readable()[..])
            .map_err(|e| self.unreadable(&e.to_string(), source, framing))
    }

    /// Our 400 to a message that passed the screen but that rsipstack
    /// cannot read (`why`).
    pub fn unreadable(&self, why: &str, source: SocketAddr, framing: Framing) -> Rejected {
        let refusal = Refusal::bad(format!("unreadable: {why}"));
        self.head.answer(refusal, source, framing)
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
) -> Rejected {
    Head::read(head).answer(Refusal::new(status, why), source, framing)
}

/// A request's grammar and what a UA must refuse before looking further,
/// in the order of RFC 3261 §8.2: method (§8.2.1), headers (§8.2.2).
fn judge(head: &Head) -> Result<(), Refusal> {
    let line = RequestLine::read(head.start).map_err(Refusal::bad)?;
    if line.version != "SIP/2.0" {
        return Err(match line.version.starts_with("SIP/") {
            true => Refusal::new(505, format!("only SIP/2.0, not {}", line.version)),
            false => Refusal::bad(format!("bad SIP version {:?}", line.version)),
        });
    }
    if let Some(why) = &head.broken {
        return Err(Refusal::bad(why.clone()));
    }
    for name in MANDATORY {
        match head.values(name).count() {
            0 => {
                return Err(Refusal::bad(format!(
                    "missing {} header",
                    display_name(name)
                )))
            }
            1 => {}
            // Via may repeat; the others are single values (§7.3.1, RFC 4475 §3.3.8).
            _ if name == "via" => {}
            _ => {
                return Err(Refusal::bad(format!(
                    "more than one {} header",
                    display_name(name)
                )))
            }
        }
    }
    let method = line.method;
    // Methods are case-sensitive (§7.1): `invite` is an extension method.
    if !KNOWN_METHODS.contains(&method) {
        let why = format!("{method} is not a method we know");
        return Err(Refusal::new(501, why).with("Allow", allow_header().to_string()));
    }
    let cseq = cseq_method(head.value("cseq").unwrap_or_default()).map_err(Refusal::bad)?;
    if cseq != method {
        return Err(Refusal::bad("CSeq method does not match"));
    }
    // RFC 2543 let From go without a tag; RFC 3261 does not (§8.1.1.3), and
    // neither does rsipstack, which keys transactions by it. Those wanting
    // RFC 2543 compatibility may take such requests (RFC 4475 §3.4): we
    // say why we do not rather than let the client retransmit into silence.
    if !has_param(head.value("from").unwrap_or_default(), "tag") {
        return Err(Refusal::bad("From has no tag: RFC 2543 is not served"));
    }
    check_headers(head).map_err(Refusal::bad)?;
    if !line.scheme.eq_ignore_ascii_case("sip") && !line.scheme.eq_ignore_ascii_case("sips") {
        return Err(Refusal::new(
            416,
            format!("we serve no {} URIs", line.scheme),
        ));
    }
    // Require does not apply to ACK and CANCEL (§8.2.2.3).
    if method != "ACK" && method != "CANCEL" {
        let required: Vec<&str> = head
            .values("require")
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|tag| !tag.is_empty())
            .collect();
        if !required.is_empty() {
            let tags = required.join(", ");
            let why = format!("we support none of {tags}");
            return Err(Refusal::new(420, why).with("Unsupported", tags));
        }
    }
    Ok(())
}

/// The headers every request must carry (RFC 3261 §8.1.1). Max-Forwards is
/// left out: it matters to proxies, and a UAS answers without it.
const MANDATORY: [&str; 5] = ["via", "from", "to", "call-id", "cseq"];

/// How much of `bytes` is the message: all of a stream message (framed by
/// its Content-Length already), a datagram up to its Content-Length.
fn length(bytes: &[u8], head: &Head, framing: Framing) -> Result<usize, Refusal> {
    let length = head.content_length().map_err(Refusal::bad)?;
    let len = match (length, framing) {
        (Some(length), Framing::Datagram) => {
            // A length near usize::MAX must not overflow.
            let end = head.body_start.saturating_add(length);
            if end > bytes.len() {
                let body = bytes.len().saturating_sub(head.body_start);
                let why = format!("Content-Length {length} exceeds the {body} bytes of body");
                return Err(Refusal::bad(why));
            }
            // Bytes after the body are discarded (RFC 3261 §18.3).
            end
        }
        _ => bytes.len(),
    };
    if framing == Framing::Datagram && len > MAX_DATAGRAM {
        let why = format!("{len} bytes is too much for UDP: use TCP");
        return Err(Refusal::new(513, why));
    }
    Ok(len)
}

/// The request line, `Method SP Request-URI SP SIP-Version`.
struct RequestLine<'a> {
    method: &'a str,
    /// The Request-URI's scheme.
    scheme: &'a str,
    version: &'a str,
}

impl<'a> RequestLine<'a> {
    fn read(start: &'a [u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(start).map_err(|_| "Request-Line is not UTF-8")?;
        // Exactly one SP between the three parts, none after (§7.1, RFC 4475 §3.1.2.9-10).
        let mut parts = text.split(' ');
        let (Some(method), Some(uri), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("bad Request-Line {text:?}"));
        };
        if method.is_empty() || !method.bytes().all(is_token_byte) {
            return Err(format!("bad method {method:?}"));
        }
        let scheme = uri_scheme(uri).ok_or_else(|| format!("bad Request-URI {uri:?}"))?;
        // No headers in a Request-URI (§19.1.1, RFC 4475 §3.1.2.11).
        let is_sip = scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips");
        // (`?` may appear in the user part: only after the host do headers start.)
        let after_user = uri.rsplit_once('@').map_or(uri, |(_, host)| host);
        if is_sip && after_user.contains('?') {
            return Err(format!("headers in the Request-URI {uri:?}"));
        }
        Ok(RequestLine {
            method,
            scheme,
            version,
        })
    }
}

/// `scheme ":" ...` with `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`
/// (RFC 3261 §25.1), of a URI free of what only surrounds one (`<>`, quotes).
fn uri_scheme(uri: &str) -> Option<&str> {
    let (scheme, rest) = uri.split_once(':')?;
    let mut bytes = scheme.bytes();
    let first_alpha = bytes.next().is_some_and(|b| b.is_ascii_alphabetic());
    let scheme_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    let no_delimiters = !uri
        .bytes()
        .any(|b| b"<>\"".contains(&b) || b.is_ascii_control());
    (first_alpha && scheme_ok && !rest.is_empty() && no_delimiters).then_some(scheme)
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

/// The grammar of the headers a UA reads (RFC 3261 §20, §25.1): Via,
/// Max-Forwards, the name-addr headers, Date. Others are left to those
/// who read them; unknown ones are opaque (RFC 4475 §3.1.1.1).
///
/// One pass over the headers; a message with several faults is refused
/// for the first in this order: Via, Max-Forwards, the addresses (From,
/// To, Contact, Route, Record-Route, Reply-To), Date.
fn check_headers(head: &Head) -> Result<(), String> {
    let mut fault: Option<(usize, String)> = None;
    let mut note = |rank: usize, why: String| {
        if fault.as_ref().is_none_or(|(first, _)| rank < *first) {
            fault = Some((rank, why));
        }
    };
    let (mut hops_seen, mut date_seen) = (false, false);
    for (name, value) in &head.headers {
        let value = value.as_ref();
        match name.as_ref() {
            "via" => {
                if let Err(why) = check_via(value) {
                    note(0, why);
                }
            }
            // The first Max-Forwards: 1*DIGIT, and 0-255 in practice
            // (§20.22, RFC 4475 §3.1.2.4).
            "max-forwards" if !hops_seen => {
                hops_seen = true;
                if value.is_empty()
                    || !value.bytes().all(|b| b.is_ascii_digit())
                    || value.parse::<u8>().is_err()
                {
                    note(1, format!("bad Max-Forwards {value:?}"));
                }
            }
            // The first Date: rfc1123-date, always in GMT (§20.17, RFC 4475 §3.1.2.12).
            "date" if !date_seen => {
                date_seen = true;
                if !value.ends_with(" GMT") {
                    note(8, format!("Date {value:?} is not in GMT"));
                }
            }
            name => {
                let Some(rank) = ADDRESS_HEADERS.iter().position(|n| *n == name) else {
                    continue;
                };
                // From and To hold one address: a comma outside quotes and <> is wrong there.
                let many = rank >= 2;
                if let Err(why) = check_addresses(value, many) {
                    note(2 + rank, format!("bad {}: {why}", display_name(name)));
                }
            }
        }
    }
    match fault {
        Some((_, why)) => Err(why),
        None => Ok(()),
    }
}

/// The headers of `name-addr / addr-spec` values, in the order their
/// faults are reported.
const ADDRESS_HEADERS: [&str; 6] = ["from", "to", "contact", "route", "record-route", "reply-to"];

/// `Via: sent-protocol LWS sent-by *( SEMI via-params )`, comma-separated
/// (§20.42): no empty values, no empty parameters (RFC 4475 §3.1.2.1).
fn check_via(value: &str) -> Result<(), String> {
    let bad = || format!("bad Via {value:?}");
    for via in text::split(value, b',') {
        let mut params = text::split(via, b';');
        let sent = params.next().unwrap_or_default();
        // `SIP / 2.0 / UDP host`: LWS may surround the slashes (§20.42).
        let Some((protocol, sent_by)) = text::rsplit_once(sent.trim(), b'/') else {
            return Err(bad());
        };
        // transport, then host [":" port] (LWS may surround the colon).
        let mut words = text::words(sent_by);
        let (Some(_transport), Some(_host)) = (words.next(), words.next()) else {
            return Err(bad());
        };
        if text::split(protocol, b'/').count() != 2 {
            return Err(bad());
        }
        for param in params {
            let name = text::split(param, b'=').next().unwrap_or_default().trim();
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(bad());
            }
        }
    }
    Ok(())
}

/// A header of `name-addr / addr-spec` values (§20.10, §25.1), one or many:
/// quotes closed, `<>` around a URI with no LWS inside, a display name
/// quoted unless all tokens, and `?` or `,` only inside `<>` (§20).
fn check_addresses(value: &str, many: bool) -> Result<(), &'static str> {
    let bytes = value.as_bytes();
    let mut at = 0;
    // Where this value's display name (what precedes a '<') starts.
    let mut display_start = 0;
    let mut in_params = false;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => {
                // A quoted string, with quoted-pairs.
                at += 1;
                loop {
                    match bytes.get(at) {
                        None => return Err("unterminated quoted string"),
                        Some(b'\\') => at += 2,
                        Some(b'"') => break,
                        Some(_) => at += 1,
                    }
                }
            }
            b'<' => {
                let Some(close) = text::find(&value[at..], b'>') else {
                    return Err("'<' without '>'");
                };
                if memchr::memchr2(b' ', b'\t', &bytes[at..at + close]).is_some() {
                    return Err("LWS inside <>");
                }
                let display = value[display_start..at].trim();
                let tokens = display
                    .split_whitespace()
                    .all(|word| word.bytes().all(is_token_byte));
                if !display.starts_with('"') && !tokens {
                    return Err("display name neither quoted nor tokens");
                }
                at += close;
                in_params = true;
            }
            b',' if !many => return Err("',' outside quotes and <>"),
            b',' => {
                display_start = at + 1;
                in_params = false;
            }
            b';' => in_params = true,
            b'?' if !in_params => return Err("'?' in a URI outside <>"),
            _ => {}
        }
        at += 1;
    }
    Ok(())
}

/// The lines of a header section, each as bytes and as text: borrowed
/// when the section is UTF-8 (checked once, as a whole), else each line
/// made readable (a line that is not UTF-8 is refused, `Head::broken`).
enum Lines<'a> {
    Text(text::Split<'a>),
    Bytes(std::slice::Split<'a, u8, fn(&u8) -> bool>),
}

impl<'a> Lines<'a> {
    fn of(section: &'a [u8]) -> Lines<'a> {
        match std::str::from_utf8(section) {
            Ok(section) => Lines::Text(text::split(section, b'\n')),
            Err(_) => Lines::Bytes(section.split(|&b| b == b'\n')),
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = (&'a [u8], Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Lines::Text(lines) => {
                let line = lines.next()?;
                let line = line.strip_suffix('\r').unwrap_or(line);
                Some((line.as_bytes(), Cow::Borrowed(line)))
            }
            Lines::Bytes(lines) => {
                let line = lines.next()?;
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                Some((line, String::from_utf8_lossy(line)))
            }
        }
    }
}

/// The start line and headers, read leniently: enough to judge a message
/// and to copy what an answer must echo. Borrowed from the message: only a
/// folded or abnormal value, or a name not in lower case, is a copy.
struct Head<'a> {
    start: &'a [u8],
    /// (lower-case full name, value unfolded) in order.
    headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    body_start: usize,
    /// The first thing wrong with the header section itself.
    broken: Option<String>,
    /// Whether the header section differs from its normal form (folding,
    /// LWS before a colon or around separators): rsipstack's parser reads
    /// only the normal form, so it gets that (see `normal_form`).
    abnormal: bool,
}

impl<'a> Head<'a> {
    fn read(bytes: &'a [u8]) -> Head<'a> {
        let (section, body_start, mut broken) = match find_blank_line(bytes) {
            Some(at) => (&bytes[..at], at + 4, None),
            None => (
                bytes,
                bytes.len(),
                Some("no blank line after the headers".to_string()),
            ),
        };
        let mut lines = Lines::of(section);
        let start = lines.next().map(|(line, _)| line).unwrap_or_default();
        let mut headers: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::with_capacity(16);
        let mut abnormal = false;
        for (line, text) in lines {
            if broken.is_none() && matches!(text, Cow::Owned(_)) {
                broken = Some("a header line is not UTF-8".into());
            }
            if let (Some(b' ' | b'\t'), Some((_, value))) = (line.first(), headers.last_mut()) {
                // Folded: a continuation of the previous value (§7.3.1).
                let value = value.to_mut();
                if !value.is_empty() {
                    value.push(' ');
                }
                value.push_str(text.trim_ascii());
                abnormal = true;
                continue;
            }
            let Some(colon) = text.bytes().position(|b| b == b':') else {
                broken.get_or_insert_with(|| format!("header line without a name: {text:?}"));
                continue;
            };
            let given = &text[..colon];
            let name = given.trim_ascii_end();
            if !is_header_name(name) {
                broken.get_or_insert_with(|| format!("header line without a name: {text:?}"));
                continue;
            }
            abnormal |= given.len() != name.len();
            let (name, value) = match text {
                Cow::Borrowed(text) => {
                    let name = header_name(&text[..name.len()]);
                    (name, Cow::Borrowed(text[colon + 1..].trim_ascii()))
                }
                Cow::Owned(ref text) => {
                    let name = Cow::Owned(header_name(name).into_owned());
                    (name, Cow::Owned(text[colon + 1..].trim_ascii().to_string()))
                }
            };
            headers.push((name, value));
        }
        for (name, value) in &mut headers {
            if let Some(normal) = normal_value(name, value) {
                *value = Cow::Owned(normal);
                abnormal = true;
            }
        }
        Head {
            start,
            headers,
            body_start,
            broken,
            abnormal,
        }
    }

    /// The message in normal form: each header on one line as `name: value`,
    /// values without LWS around their separators; the body as it came.
    fn normal_form(&self, bytes: &[u8], len: usize) -> Vec<u8> {
        let mut normal = Vec::with_capacity(len);
        normal.extend_from_slice(self.start);
        for (name, value) in &self.headers {
            normal.extend_from_slice(b"\r\n");
            normal.extend_from_slice(name.as_bytes());
            normal.extend_from_slice(b": ");
            normal.extend_from_slice(value.as_bytes());
        }
        normal.extend_from_slice(b"\r\n\r\n");
        normal.extend_from_slice(&bytes[self.body_start.min(len)..len]);
        normal
    }

    fn values<'b>(&'b self, name: &'b str) -> impl Iterator<Item = &'b str> + 'b {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// Content-Length, if given; every copy must agree and be a number.
    fn content_length(&self) -> Result<Option<usize>, String> {
        let mut found = None;
        for value in self.values("content-length") {
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
    fn answer(&self, refusal: Refusal, source: SocketAddr, framing: Framing) -> Rejected {
        let Refusal {
            status,
            why,
            header,
        } = refusal;
        let vias: Vec<&str> = self.values("via").collect();
        if self.start.starts_with(b"SIP/") {
            // Responses are never answered (§18.1.2).
            return Rejected::Drop { why };
        }
        if self.start.starts_with(b"ACK ") || vias.is_empty() {
            // No answer to an ACK (§17.2.1); none without a Via to send it by (§8.2.6.2).
            return Rejected::Drop { why };
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
        if let Some((name, value)) = header {
            response.push_str(&format!("{name}: {value}\r\n"));
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
        Rejected::Answer {
            response: response.into_bytes(),
            status,
            why,
            to_port,
        }
    }
}

/// Headers whose grammar puts `SWS` around `;`, `=`, `,` and `/` (§25.1:
/// SEMI, EQUAL, COMMA, SLASH), which rsipstack's parser does not take.
const SEPARATED: [&str; 8] = [
    "via",
    "from",
    "to",
    "contact",
    "route",
    "record-route",
    "content-type",
    "cseq",
];

/// `value` without LWS around its separators (outside quotes and `<>`) and
/// with runs of LWS made one SP, if that differs from `value`.
fn normal_value(name: &str, value: &str) -> Option<String> {
    if !SEPARATED.contains(&name) {
        return None;
    }
    let is_lws = |b: u8| b == b' ' || b == b'\t';
    let separators: &[u8] = match name {
        "via" => b";=,/",
        _ => b";=,",
    };
    let bytes = value.as_bytes();
    // Cheap test first: most values have nothing to change, and every
    // change is at an LWS (a tab, or one next to LWS or a separator).
    let changes = memchr::memchr2_iter(b' ', b'\t', bytes).any(|at| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + 1).copied();
        bytes[at] == b'\t'
            || after.is_some_and(|b| is_lws(b) || separators.contains(&b))
            || before.is_some_and(|b| separators.contains(&b))
    });
    if !changes {
        return None;
    }
    let mut normal = String::with_capacity(value.len());
    let (mut quoted, mut bracketed, mut escaped) = (false, false, false);
    for c in value.chars() {
        let literal = quoted || bracketed;
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' && !bracketed {
            quoted = !quoted;
        } else if c == '<' && !quoted {
            bracketed = true;
        } else if c == '>' && !quoted {
            bracketed = false;
        }
        let is_separator = c.is_ascii() && separators.contains(&(c as u8));
        if !literal && (c == ' ' || c == '\t') {
            // Dropped after a separator or another LWS; kept as one SP otherwise.
            let after_separator = normal
                .bytes()
                .last()
                .is_some_and(|b| separators.contains(&b) || b == b' ');
            if !after_separator {
                normal.push(' ');
            }
            continue;
        }
        if !literal && is_separator && normal.ends_with(' ') {
            normal.pop();
        }
        normal.push(c);
    }
    (normal != value).then_some(normal)
}

/// A header name: a token, with LWS allowed before the colon (§7.3.1).
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_token_byte)
}

/// The top Via as the answer carries it (`received`, and `rport` filled in
/// when asked for: RFC 3581), and the port a datagram answer goes to.
fn received(via: &str, source: SocketAddr, framing: Framing) -> (String, u16) {
    // Several Via values may share one line: only the first is ours to mark.
    let (first, rest) = match text::split_once(via, b',') {
        Some((first, rest)) => (first, Some(rest)),
        None => (via, None),
    };
    let mut parts = text::split(first, b';');
    let sent_by = parts.next().unwrap_or_default().trim();
    let mut top = String::with_capacity(via.len() + 48);
    top.push_str(sent_by);
    let mut rport = false;
    for param in parts.map(str::trim) {
        let name = text::split(param, b'=').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("rport") {
            rport = true;
        } else if !name.eq_ignore_ascii_case("received") {
            top.push(';');
            top.push_str(param);
        }
    }
    top.push_str(";received=");
    push_ip(&mut top, source.ip());
    if rport {
        top.push_str(";rport=");
        top.push_str(itoa::Buffer::new().format(source.port()));
    }
    let port = match (rport, framing) {
        (true, _) | (_, Framing::Stream) => source.port(),
        // `SIP/2.0/UDP host[:port]`: the sent-by port, else 5060.
        (false, Framing::Datagram) => {
            let host_port = text::words(sent_by).last().unwrap_or_default();
            // `[v6]` alone has colons but no port.
            let port = match host_port.ends_with(']') {
                true => None,
                false => text::rsplit_once(host_port, b':').map(|(_, port)| port),
            };
            port.and_then(|port| port.parse().ok()).unwrap_or(5060)
        }
    };
    if let Some(rest) = rest {
        top.push(',');
        top.push_str(rest);
    }
    (top, port)
}

/// `ip` as text, an IPv4 address without the formatting machinery (every
/// answer carries the source's).
pub(crate) fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut numbers = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(numbers.format(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn has_param(value: &str, name: &str) -> bool {
    // Parameters follow the name-addr's closing '>' (or the bare URI).
    let params = text::rsplit_once(value, b'>').map_or(value, |(_, after)| after);
    text::split(params, b';').skip(1).any(|p| {
        text::split(p, b'=')
            .next()
            .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
    })
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        501 => "Not Implemented",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        _ => "Error",
    }
}

/// Compact header forms (RFC 3261 §7.3.3, and those extensions register
/// in IANA's SIP header table) to full lower-case names.
fn compact_form(name: &str) -> Option<&'static str> {
    let [letter] = name.as_bytes() else {
        return None;
    };
    Some(match letter.to_ascii_lowercase() {
        b'a' => "accept-contact",
        b'b' => "referred-by",
        b'c' => "content-type",
        b'd' => "request-disposition",
        b'e' => "content-encoding",
        b'f' => "from",
        b'i' => "call-id",
        b'j' => "reject-contact",
        b'k' => "supported",
        b'l' => "content-length",
        b'm' => "contact",
        b'n' => "identity-info",
        b'o' => "event",
        b'r' => "refer-to",
        b's' => "subject",
        b't' => "to",
        b'u' => "allow-events",
        b'v' => "via",
        b'x' => "session-expires",
        b'y' => "identity",
        _ => return None,
    })
}

/// The headers nearly every message has, in lower case: their names are
/// not copied.
const COMMON: [&str; 18] = [
    "via",
    "from",
    "to",
    "call-id",
    "cseq",
    "contact",
    "max-forwards",
    "content-type",
    "content-length",
    "user-agent",
    "server",
    "allow",
    "supported",
    "route",
    "record-route",
    "expires",
    "require",
    "date",
];

/// A header's full name in lower case (compact forms expanded).
fn header_name(name: &str) -> Cow<'_, str> {
    if let Some(full) = compact_form(name) {
        return Cow::Borrowed(full);
    }
    // Compared in lower case, on the stack: every message has a dozen names.
    let mut lower = [0u8; 16];
    if let Some(lower) = lower.get_mut(..name.len()) {
        lower.copy_from_slice(name.as_bytes());
        lower.make_ascii_lowercase();
        if let Some(common) = COMMON.iter().find(|common| common.as_bytes() == lower) {
            return Cow::Borrowed(common);
        }
    }
    match name.bytes().any(|b| b.is_ascii_uppercase()) {
        true => Cow::Owned(name.to_ascii_lowercase()),
        false => Cow::Borrowed(name),
    }
}

fn display_name(name: &str) -> &str {
    match name {
        "via" => "Via",
        "from" => "From",
        "to" => "To",
        "call-id" => "Call-ID",
        "cseq" => "CSeq",
        "contact" => "Contact",
        "route" => "Route",
        "record-route" => "Record-Route",
        "reply-to" => "Reply-To",
        other => other,
    }
}

/// Where the header section ends (the blank line's CRLF CRLF), with a
/// searcher built once rather than at every message.
pub(crate) fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    static BLANK_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    BLANK_LINE.find(bytes)
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
            Verdict::Refused(Rejected::Drop { .. }) => ("drop".into(), String::new()),
            Verdict::Refused(Rejected::Answer { response, .. }) => {
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
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.20.3.4",
            "::1",
            "2001:db8::5",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut written = String::new();
            push_ip(&mut written, ip);
            assert_eq!(written, ip.to_string());
        }
    }

    #[test]
    fn the_known_methods_are_rsipstacks() {
        let mut theirs: Vec<String> = Method::all().iter().map(|m| m.to_string()).collect();
        theirs.sort();
        assert_eq!(theirs, KNOWN_METHODS);
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
            Verdict::Refused(Rejected::Answer { to_port, .. }) => to_port,
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
            (
                good.replace(" sip:200@127.0.0.1 ", " <sip:200@127.0.0.1> "),
                "SIP/2.0 400 Bad Request",
                "bad Request-URI",
            ),
            (
                good.replace(" sip:200@127.0.0.1 ", " sip:200@127.0.0.1?Route=x "),
                "SIP/2.0 400 Bad Request",
                "headers in the Request-URI",
            ),
            (
                good.replace(
                    "CSeq: 1 OPTIONS\r\n",
                    "CSeq: 1 OPTIONS\r\nCSeq: 2 OPTIONS\r\n",
                ),
                "SIP/2.0 400 Bad Request",
                "more than one CSeq header",
            ),
            (
                good.replace(";tag=p1", ""),
                "SIP/2.0 400 Bad Request",
                "From has no tag",
            ),
            (
                good.replace(";branch=z9hG4bK1;rport", ";branch=z9hG4bK1;;rport"),
                "SIP/2.0 400 Bad Request",
                "bad Via",
            ),
            (
                good.replace("Max-Forwards: 70", "Max-Forwards: 300"),
                "SIP/2.0 400 Bad Request",
                "bad Max-Forwards",
            ),
            (
                good.replace("To: <sip:200", "To: \"Two <sip:200"),
                "SIP/2.0 400 Bad Request",
                "bad To: unterminated quoted string",
            ),
            (
                good.replace("To: <sip:200@127.0.0.1>", "To: < sip:200@127.0.0.1 >"),
                "SIP/2.0 400 Bad Request",
                "bad To: LWS inside <>",
            ),
            (
                good.replace("From: <sip:peer", "From: Peer, The <sip:peer"),
                "SIP/2.0 400 Bad Request",
                "bad From: ',' outside quotes and <>",
            ),
            (
                good.replace("From: <sip:peer", "From: Peer@Home <sip:peer"),
                "SIP/2.0 400 Bad Request",
                "bad From: display name neither quoted nor tokens",
            ),
            (
                good.replace(
                    "Max-Forwards",
                    "Contact: sip:peer@192.0.2.7?Route=x\r\nMax-Forwards",
                ),
                "SIP/2.0 400 Bad Request",
                "bad Contact: '?' in a URI outside <>",
            ),
            (
                good.replace(
                    "Max-Forwards",
                    "Date: Fri, 01 Jan 2010 16:00:00 EST\r\nMax-Forwards",
                ),
                "SIP/2.0 400 Bad Request",
                "is not in GMT",
            ),
            // Unknown before mismatched: 501 (RFC 4475 §3.1.2.18).
            (
                good.replace("OPTIONS sip", "NEWMETHOD sip"),
                "SIP/2.0 501 Not Implemented",
                "NEWMETHOD is not a method we know",
            ),
            // Methods are case-sensitive.
            (
                good.replace("OPTIONS sip", "options sip")
                    .replace("1 OPTIONS", "1 options"),
                "SIP/2.0 501 Not Implemented",
                "options is not a method we know",
            ),
        ];
        for (message, status, why) in cases {
            let (got, response) = outcome(&message);
            assert_eq!(got, status, "{message}");
            assert!(response.contains(why), "{why}: {response}");
        }
    }

    #[test]
    fn folding_and_lws_around_separators_are_put_in_normal_form() {
        let message = "OPTIONS sip:200@127.0.0.1 SIP/2.0\r\n\
                       Via  : SIP  /  2.0\r\n /UDP 192.0.2.7 ; branch = z9hG4bK1\r\n\
                       From: \"A  ;B\"   <sip:peer@192.0.2.7>\r\n ;tag=p1\r\n\
                       To: <sip:200@127.0.0.1>\r\nCall-ID: c1@test\r\nCSeq: 1  OPTIONS\r\n\
                       Content-Length: 2\r\n\r\nhi";
        let Verdict::Pass { message, .. } = verdict(message, Framing::Datagram) else {
            panic!("not passed");
        };
        let text = message.to_string().to_lowercase();
        assert!(
            text.contains("\r\nvia: sip/2.0/udp 192.0.2.7;branch=z9hg4bk1\r\n"),
            "{text}"
        );
        // Quoted text stays as it is.
        assert!(
            text.contains("\r\nfrom: \"a  ;b\" <sip:peer@192.0.2.7>;tag=p1\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\ncseq: 1 options\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nhi"), "{text}");
    }

    #[test]
    fn require_gets_420_with_unsupported_but_not_in_ack_or_cancel() {
        let require = options("Require: 100rel, timer\r\n", "");
        let (status, response) = outcome(&require);
        assert_eq!(status, "SIP/2.0 420 Bad Extension");
        assert!(response.contains("\r\nUnsupported: 100rel, timer\r\n"));
        // Proxy-Require is for proxies: a UA does not look at it.
        assert_eq!(outcome(&options("Proxy-Require: x\r\n", "")).0, "pass");
        let cancel = require.replace("OPTIONS", "CANCEL");
        assert_eq!(outcome(&cancel).0, "pass");
    }

    #[test]
    fn a_request_uri_scheme_we_do_not_serve_gets_416() {
        let tel = options("", "").replace("OPTIONS sip:200@127.0.0.1", "OPTIONS tel:+1555");
        assert_eq!(outcome(&tel).0, "SIP/2.0 416 Unsupported URI Scheme");
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
            Verdict::Refused(Rejected::Answer { status, why, .. }) => {
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
        // A response is never answered, even one we cannot frame.
        let response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP a;branch=z9hG4bK1\r\n\r\n";
        let source = SOURCE.parse().unwrap();
        assert!(matches!(
            refuse(response, 400, "no length".into(), source, Framing::Stream),
            Rejected::Drop { .. }
        ));
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

//! How an answer to a request of one of our calls is made, and where it
//! goes: the lines it copies from the request (RFC 3261 §8.2.6.2), the
//! datagram destination (§18.2.2, RFC 3581) or the stream it came on.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use rsipstack::sip::{SipMessage, StatusCode, Transport as SipTransport};
use rsipstack::transport::SipConnection;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::UnboundedSender;
use tracing::debug;

use crate::screen::{Framing, Passed};
use crate::text;

/// Our server identity in every answer.
pub(super) const SERVER: &str = concat!("mailcall/", env!("CARGO_PKG_VERSION"));

/// How an answer goes back: as a datagram, or over the stream the request
/// came on (written in order with what rsipstack sends on it).
#[derive(Clone)]
pub(crate) enum Path {
    Datagram(Arc<UdpSocket>),
    Stream(UnboundedSender<Bytes>),
    /// A connection rsipstack serves itself (TCP ones we opened).
    Stack(SipConnection),
}

/// Where and how one request arrived.
pub(crate) struct Arrival {
    pub transport: SipTransport,
    /// The datagram's source, or the stream's other end.
    pub peer: SocketAddr,
    pub path: Path,
    /// rsipstack's connection, for the requests we send in the call (BYE).
    pub connection: SipConnection,
}

impl Arrival {
    pub fn framing(&self) -> Framing {
        match self.path {
            Path::Datagram(_) => Framing::Datagram,
            Path::Stream(_) | Path::Stack(_) => Framing::Stream,
        }
    }
}

/// Where one call's answers go.
#[derive(Clone)]
pub(super) struct Reply {
    path: Path,
    /// For a datagram: the source's address at the port RFC 3581 / §18.2.2 say.
    to: SocketAddr,
}

impl Reply {
    /// Where answers to `request` go, and its top Via as they carry it.
    pub(super) fn of(arrival: &Arrival, request: &Passed) -> (Reply, String) {
        let (top_via, port) = request
            .answer_via(arrival.peer, arrival.framing())
            .unwrap_or_else(|| (String::new(), arrival.peer.port()));
        let to = SocketAddr::new(arrival.peer.ip(), port);
        let reply = Reply {
            path: arrival.path.clone(),
            to,
        };
        (reply, top_via)
    }

    pub(super) fn reliable(&self) -> bool {
        !matches!(self.path, Path::Datagram(_))
    }

    /// Sends without waiting: a datagram the socket cannot take now is
    /// lost like any other (retransmissions cover it); a stream queues it.
    pub(super) fn send(&self, message: &Bytes) {
        match &self.path {
            Path::Datagram(socket) => {
                // Straight to the (non-blocking) socket: tokio's try_send_to
                // would not even try before its reactor has seen the socket
                // writable once.
                let socket = socket2::SockRef::from(socket.as_ref());
                if let Err(e) = socket.send_to(message, &self.to.into()) {
                    debug!(to = %self.to, "answer not sent: {e}");
                }
            }
            Path::Stream(stream) => {
                stream.send(message.clone()).ok();
            }
            Path::Stack(connection) => {
                let (connection, message) = (connection.clone(), message.clone());
                tokio::spawn(async move {
                    let sent = match SipMessage::try_from(&message[..]) {
                        Ok(message) => connection
                            .send(message, None)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = sent {
                        debug!("answer not sent: {e}");
                    }
                });
            }
        }
    }
}

/// What identifies a request's call and transaction.
pub(super) struct Ids<'a> {
    pub call_id: &'a str,
    pub from_tag: &'a str,
    pub to_tag: Option<&'a str>,
    /// The top Via's branch (RFC 2543 peers send none: such a call is told
    /// apart by Call-ID and tag alone).
    pub branch: &'a str,
    pub cseq: u32,
}

impl<'a> Ids<'a> {
    pub(super) fn of(request: &'a Passed) -> Option<Ids<'a>> {
        Some(Ids {
            call_id: request.value("call-id")?,
            from_tag: param(header_params(request.value("from")?), "tag")?,
            to_tag: param(header_params(request.value("to")?), "tag"),
            branch: param(via_params(request.value("via")?), "branch").unwrap_or_default(),
            cseq: text::words(request.value("cseq")?).next()?.parse().ok()?,
        })
    }
}

/// The parameters of a From/To/Contact value: after the URI's `>` in a
/// name-addr, else after the bare URI (whose own parameters are then the
/// header's, §20.10).
pub(super) fn header_params(value: &str) -> &str {
    let rest = after_display_name(value);
    match text::find(rest, b'<') {
        Some(open) => text::find(&rest[open..], b'>').map_or("", |close| &rest[open + close + 1..]),
        None => text::find(rest, b';').map_or("", |semi| &rest[semi..]),
    }
}

/// The URI of a From/To/Contact value: inside the `<>` of a name-addr,
/// else the addr-spec up to the header's parameters (§20.10).
pub(super) fn address(value: &str) -> &str {
    let rest = after_display_name(value);
    match text::find(rest, b'<') {
        Some(open) => {
            let uri = &rest[open + 1..];
            text::find(uri, b'>').map_or(uri, |close| &uri[..close])
        }
        None => text::split(rest, b';').next().unwrap_or_default().trim(),
    }
}

/// A From/To/Contact value past its quoted display name, if it has one
/// (a quoted string may hold anything, `<` and `;` too).
fn after_display_name(value: &str) -> &str {
    let rest = value.trim_start();
    let Some(quoted) = rest.strip_prefix('"') else {
        return rest;
    };
    let mut escaped = false;
    let end = quoted.char_indices().find_map(|(i, c)| {
        let end = !escaped && c == '"';
        escaped = !escaped && c == '\\';
        end.then_some(i)
    });
    end.map_or("", |end| &quoted[end + 1..])
}

/// The parameters of the first Via value.
pub(super) fn via_params(value: &str) -> &str {
    let first = text::split(value, b',').next().unwrap_or_default();
    text::find(first, b';').map_or("", |semi| &first[semi..])
}

/// A parameter's value from `;name=value;…` (an empty one for a flag).
pub(super) fn param<'a>(params: &'a str, name: &str) -> Option<&'a str> {
    text::split(params, b';').skip(1).find_map(|param| {
        let (key, value) = text::split_once(param, b'=').unwrap_or((param, ""));
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// A header for an answer.
pub(crate) type Extra<'a> = (&'a str, &'a str);

/// The lines an answer copies from its request (§8.2.6.2): Via (the top
/// one as `top_via`), From, To (with `to_tag` when it has none), Call-ID
/// and CSeq; and apart, its Record-Route, which a dialog-making answer
/// copies too (§12.1.1).
pub(super) fn copied_lines(request: &Passed, top_via: &str, to_tag: &str) -> (String, String) {
    let mut head = String::with_capacity(384);
    let mut record_route = String::new();
    let mut top = true;
    for (name, value) in request.headers() {
        let (name, out) = match name {
            "via" => ("Via", &mut head),
            "from" => ("From", &mut head),
            "to" => ("To", &mut head),
            "call-id" => ("Call-ID", &mut head),
            "cseq" => ("CSeq", &mut head),
            "record-route" => ("Record-Route", &mut record_route),
            _ => continue,
        };
        let value = match name == "Via" && std::mem::take(&mut top) {
            true => top_via,
            false => value,
        };
        let _ = write!(out, "{name}: {value}");
        if name == "To" && param(header_params(value), "tag").is_none() {
            let _ = write!(out, ";tag={to_tag}");
        }
        out.push_str("\r\n");
    }
    (head, record_route)
}

/// An answer: the status line, the copied lines, `extra`, the body.
pub(super) fn answer_with(
    status: StatusCode,
    copied: &[&str],
    extra: &[Extra],
    body: Option<(&str, &[u8])>,
) -> Bytes {
    let mut out = String::with_capacity(640);
    let _ = write!(out, "SIP/2.0 {status}\r\n");
    for lines in copied {
        out.push_str(lines);
    }
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(out, "Server: {SERVER}\r\n");
    let body = match body {
        Some((content_type, body)) => {
            let _ = write!(out, "Content-Type: {content_type}\r\n");
            body
        }
        None => &[],
    };
    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes.into()
}

/// An answer to a request other than the INVITE: no Record-Route.
pub(super) fn response(
    request: &Passed,
    top_via: &str,
    status: StatusCode,
    to_tag: &str,
    extra: &[Extra],
) -> Bytes {
    let (head, _) = copied_lines(request, top_via, to_tag);
    answer_with(status, &[&head], extra, None)
}

/// The reason for a refusal, for people reading traces (§20.43).
pub(crate) fn warning(why: &str) -> String {
    format!("399 mailcall \"{}\"", why.replace(['"', '\\'], "'"))
}

/// A new tag: 64 random bits (§19.3 asks for 32 at least).
pub(super) fn new_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

//! The callee's answers to requests written by hand, one line per
//! exchange: OPTIONS, sources not allowed, numbers not ours, methods we do
//! not serve, stray in-dialog requests, retransmissions, re-INVITE; then
//! malformed and tortuous messages over UDP and TCP, after each of which
//! the user agent still answers OPTIONS.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{init_logs, settings, settle, Echo};
use mailcall_sip::{SipSettings, Stats, UserAgent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const PORTS: u16 = 46000;
const QUIET: Duration = Duration::from_millis(400);

static OFFER: &str = "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                      m=application 9 TCP smtp\r\na=setup:active\r\na=connection:new\r\n";

/// A request from a peer at `from`, with `extra` headers and `body`.
fn request(
    method: &str,
    number: &str,
    from: SocketAddr,
    branch: &str,
    extra: &str,
    body: &str,
) -> Vec<u8> {
    format!(
        "{method} sip:{number}@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bK{branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:peer@127.0.0.1>;tag=peer{branch}\r\n\
         To: <sip:{number}@127.0.0.1>\r\n\
         Call-ID: {branch}@test\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:peer@{from}>\r\n\
         {extra}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A peer speaking raw SIP over UDP.
struct Peer {
    socket: UdpSocket,
    to: SocketAddr,
}

impl Peer {
    async fn new(agent: &UserAgent) -> Peer {
        Peer {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            to: agent.local_addrs().0.unwrap(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    /// Sends `message`, returns its answers within QUIET: those with its
    /// Call-ID (a final answer to an earlier INVITE we never ACK is sent
    /// again meanwhile, RFC 3261 §17.2.1).
    async fn exchange(&self, message: &[u8]) -> Vec<String> {
        self.socket.send_to(message, self.to).await.unwrap();
        let sent = String::from_utf8_lossy(message);
        let call_id = header(&sent, "Call-ID").or_else(|| header(&sent, "i"));
        let mut responses = self.responses().await;
        responses.retain(|response| header(response, "Call-ID") == call_id);
        responses
    }

    async fn responses(&self) -> Vec<String> {
        let mut responses = Vec::new();
        let mut buffer = vec![0u8; 65536];
        while let Ok(Ok(read)) = tokio::time::timeout(QUIET, self.socket.recv(&mut buffer)).await {
            responses.push(String::from_utf8_lossy(&buffer[..read]).into_owned());
            if responses.len() > 20 {
                break;
            }
        }
        responses
    }

    async fn options(&self, branch: &str) -> Vec<String> {
        self.exchange(&request("OPTIONS", "200", self.addr(), branch, "", ""))
            .await
    }
}

fn status_lines(responses: &[String]) -> Vec<&str> {
    responses.iter().filter_map(|r| r.lines().next()).collect()
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

async fn callee(settings: SipSettings) -> UserAgent {
    init_logs();
    UserAgent::start(settings, Some(Arc::new(Echo::default())))
        .await
        .unwrap()
}

#[tokio::test]
async fn options_tells_what_we_do() {
    let agent = callee(settings(PORTS, &["200"])).await;
    let peer = Peer::new(&agent).await;
    let responses = peer.options("opt1").await;
    assert_eq!(status_lines(&responses), ["SIP/2.0 200 OK"]);
    let allow = header(&responses[0], "Allow").unwrap();
    for method in ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"] {
        assert!(allow.contains(method), "Allow: {allow}");
    }
    assert_eq!(header(&responses[0], "Accept"), Some("application/sdp"));
    assert!(
        header(&responses[0], "Supported").is_some(),
        "{}",
        responses[0]
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn invites_we_do_not_take_are_refused_with_a_reason() {
    let mut settings = settings(PORTS, &["200"]);
    let agent = callee(settings.clone()).await;
    let peer = Peer::new(&agent).await;
    let from = peer.addr();

    let responses = peer
        .exchange(&request(
            "INVITE",
            "999",
            from,
            "nf1",
            "Content-Type: application/sdp\r\n",
            OFFER,
        ))
        .await;
    assert!(
        status_lines(&responses).contains(&"SIP/2.0 404 Not Found"),
        "{responses:?}"
    );
    let not_found = responses
        .iter()
        .find(|r| r.starts_with("SIP/2.0 404"))
        .unwrap();
    assert!(header(not_found, "Warning")
        .unwrap()
        .contains("not our number"));

    let no_channel = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n";
    let responses = peer
        .exchange(&request(
            "INVITE",
            "200",
            from,
            "na1",
            "Content-Type: application/sdp\r\n",
            no_channel,
        ))
        .await;
    assert!(
        status_lines(&responses).contains(&"SIP/2.0 488 Not Acceptable Here"),
        "{responses:?}"
    );

    let responses = peer
        .exchange(&request("REGISTER", "200", from, "reg1", "", ""))
        .await;
    assert_eq!(status_lines(&responses), ["SIP/2.0 405 Method Not Allowed"]);
    assert!(header(&responses[0], "Allow").unwrap().contains("INVITE"));

    let responses = peer
        .exchange(&request("BYE", "200", from, "bye1", "", ""))
        .await;
    assert_eq!(
        status_lines(&responses),
        ["SIP/2.0 481 Call/Transaction Does Not Exist"]
    );

    agent.shutdown().await;

    // Only 10.0.0.0/8 may call: 127.0.0.1 gets 403.
    settings.allowed_sources = vec!["10.0.0.0/8".parse().unwrap()];
    let agent = callee(settings).await;
    let peer = Peer::new(&agent).await;
    let responses = peer
        .exchange(&request(
            "INVITE",
            "200",
            peer.addr(),
            "fb1",
            "Content-Type: application/sdp\r\n",
            OFFER,
        ))
        .await;
    assert!(
        status_lines(&responses).contains(&"SIP/2.0 403 Forbidden"),
        "{responses:?}"
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn a_retransmitted_invite_is_one_call_and_a_reinvite_is_refused() {
    let agent = callee(settings(PORTS, &["200"])).await;
    let peer = Peer::new(&agent).await;
    let invite = request(
        "INVITE",
        "200",
        peer.addr(),
        "rt1",
        "Content-Type: application/sdp\r\n",
        OFFER,
    );
    let first = peer.exchange(&invite).await;
    let ok = first
        .iter()
        .find(|r| r.starts_with("SIP/2.0 200"))
        .expect("200 to the INVITE")
        .clone();
    // The same INVITE again (same branch): the 200 again, same dialog.
    let again = peer.exchange(&invite).await;
    let ok_again = again
        .iter()
        .find(|r| r.starts_with("SIP/2.0 200"))
        .expect("the 200 retransmitted");
    assert_eq!(header(&ok, "To"), header(ok_again, "To"));
    assert_eq!(agent.stats().calls, 1, "one call, not two");

    let to = header(&ok, "To").unwrap();
    let in_dialog = |method: &str, cseq: u32, branch: &str, body: &str| {
        format!(
            "{method} sip:200@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:peer@127.0.0.1>;tag=peerrt1\r\nTo: {to}\r\nCall-ID: rt1@test\r\n\
             CSeq: {cseq} {method}\r\nContact: <sip:peer@{from}>\r\nContent-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len(),
            from = peer.addr()
        )
        .into_bytes()
    };
    let ack = in_dialog("ACK", 1, "rt1ack", "");
    peer.socket.send_to(&ack, peer.to).await.unwrap();
    let responses = peer.exchange(&in_dialog("INVITE", 2, "rt2", OFFER)).await;
    assert!(
        status_lines(&responses).contains(&"SIP/2.0 488 Not Acceptable Here"),
        "{responses:?}"
    );
    peer.socket
        .send_to(&in_dialog("ACK", 2, "rt2", ""), peer.to)
        .await
        .unwrap();
    let responses = peer.exchange(&in_dialog("BYE", 3, "rt3", "")).await;
    assert!(
        status_lines(&responses).contains(&"SIP/2.0 200 OK"),
        "{responses:?}"
    );
    assert_eq!(
        settle(&agent, Duration::from_secs(10)).await,
        Stats::default()
    );
    agent.shutdown().await;
}

/// What a tortuous or malformed message must get.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Valid, only odd: answered like any OPTIONS.
    Ok,
    /// This status line, and a Warning saying this.
    Status(&'static str, &'static str),
    /// No answer: nothing to send it by (no Via), or not SIP at all; over
    /// TCP also a body still to come.
    Nothing,
}

/// A torture: its name, what it gets over UDP and over TCP, its bytes.
type Torture = (&'static str, Expect, Expect, Vec<u8>);

/// Malformed and tortuous messages (an OPTIONS bent out of shape).
fn tortures(from: SocketAddr) -> Vec<Torture> {
    use Expect::*;
    const BAD: &str = "SIP/2.0 400 Bad Request";
    let valid = String::from_utf8(request("OPTIONS", "200", from, "ok", "", "")).unwrap();
    let both = |name, expect, message: String| (name, expect, expect, message.into_bytes());
    let mut cases: Vec<Torture> = vec![
        both(
            "folded header",
            Ok,
            valid.replace("Max-Forwards: 70\r\n", "Max-Forwards:\r\n  70\r\n"),
        ),
        both(
            "odd whitespace",
            Ok,
            valid.replace("CSeq: 1 OPTIONS", "CSeq:\t 1   \t OPTIONS "),
        ),
        both(
            "compact header names",
            Ok,
            valid
                .replace("Call-ID:", "i:")
                .replace("From:", "f:")
                .replace("Content-Length:", "l:"),
        ),
        both(
            "escaped URI",
            Ok,
            valid.replace("sip:200@127.0.0.1 ", "sip:%32%30%30@127.0.0.1;x=%41 "),
        ),
        both(
            "no Call-ID",
            Status(BAD, "missing Call-ID header"),
            valid.replace("Call-ID: ok@test\r\n", ""),
        ),
        both(
            "no CSeq",
            Status(BAD, "missing CSeq header"),
            valid.replace("CSeq: 1 OPTIONS\r\n", ""),
        ),
        both(
            "no Via",
            Nothing,
            valid.replace(
                &format!("Via: SIP/2.0/UDP {from};branch=z9hG4bKok;rport\r\n"),
                "",
            ),
        ),
        both(
            "no From",
            Status(BAD, "missing From header"),
            valid.replace("From: <sip:peer@127.0.0.1>;tag=peerok\r\n", ""),
        ),
        both(
            "header line without a colon",
            Status(BAD, "header line without a name"),
            valid.replace("Max-Forwards: 70", "Max-Forwards 70"),
        ),
        (
            "Content-Length too long",
            Status(BAD, "Content-Length 400 exceeds the 0 bytes of body"),
            // Over TCP the rest of the body may still come.
            Nothing,
            valid
                .replace("Content-Length: 0", "Content-Length: 400")
                .into_bytes(),
        ),
        both(
            "Content-Length too short",
            // The bytes after it are not part of the message (RFC 3261 §18.3).
            Ok,
            valid.clone() + "trailing bytes",
        ),
        both(
            "Content-Length not a number",
            Status(BAD, "Content-Length 'lots' is not a number"),
            valid.replace("Content-Length: 0", "Content-Length: lots"),
        ),
        both(
            "negative CSeq",
            Status(BAD, "bad CSeq"),
            valid.replace("CSeq: 1 OPTIONS", "CSeq: -1 OPTIONS"),
        ),
        both(
            "CSeq method differs",
            Status(BAD, "CSeq method does not match"),
            valid.replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE"),
        ),
        both(
            "unknown method",
            Status(
                "SIP/2.0 501 Not Implemented",
                "FROBNICATE is not a method we know",
            ),
            valid
                .replace("OPTIONS sip:", "FROBNICATE sip:")
                .replace("1 OPTIONS", "1 FROBNICATE"),
        ),
        both(
            "bad version",
            Status("SIP/2.0 505 Version Not Supported", "only SIP/2.0"),
            valid.replace("SIP/2.0\r\n", "SIP/7.1\r\n"),
        ),
        both(
            "no request line",
            // Its Via became the start line: no Via left to answer by.
            Nothing,
            valid.split_once("\r\n").unwrap().1.to_string(),
        ),
        (
            "huge header",
            Status("SIP/2.0 513 Message Too Large", "use TCP"),
            Ok,
            valid
                .replace(
                    "Max-Forwards: 70\r\n",
                    &format!("Subject: {}\r\nMax-Forwards: 70\r\n", "x".repeat(60_000)),
                )
                .into_bytes(),
        ),
        (
            "many headers",
            Status("SIP/2.0 513 Message Too Large", "use TCP"),
            Ok,
            valid
                .replace("Max-Forwards: 70\r\n", &"X-A: b\r\n".repeat(3000))
                .into_bytes(),
        ),
        both(
            "garbage",
            Nothing,
            "\u{0}\u{1}\u{2} not SIP at all \r\n\r\n".to_string(),
        ),
        // Over TCP these are keep-alive pings, answered with CRLF pongs.
        both("empty lines", Nothing, "\r\n\r\n\r\n\r\n".to_string()),
    ];
    let mut non_utf8 = valid.into_bytes();
    let at = non_utf8.windows(4).position(|w| w == b"peer").unwrap();
    non_utf8[at] = 0xff;
    non_utf8[at + 1] = 0xfe;
    let not_utf8 = Status(BAD, "a header line is not UTF-8");
    cases.push(("non-UTF-8 bytes", not_utf8, not_utf8, non_utf8));
    // Each its own transaction: a shared branch would make them retransmissions.
    for (i, (.., message)) in cases.iter_mut().enumerate() {
        *message = replace_bytes(message, b"z9hG4bKok", format!("z9hG4bKok{i}").as_bytes());
    }
    cases
}

/// Replaces the first `from` in `bytes`, which need not be UTF-8.
fn replace_bytes(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    match bytes.windows(from.len()).position(|w| w == from) {
        Some(at) => [&bytes[..at], to, &bytes[at + from.len()..]].concat(),
        None => bytes.to_vec(),
    }
}

fn check(name: &str, expect: Expect, responses: &[String]) {
    let lines = status_lines(responses);
    match expect {
        Expect::Ok => assert_eq!(lines, ["SIP/2.0 200 OK"], "{name}"),
        Expect::Status(line, why) => {
            assert_eq!(lines, [line], "{name}");
            let warning = header(&responses[0], "Warning").unwrap_or_default();
            assert!(warning.contains(why), "{name}: Warning: {warning}");
        }
        Expect::Nothing => assert!(lines.is_empty(), "{name}: {lines:?}"),
    }
}

#[tokio::test]
async fn malformed_messages_over_udp_never_stop_the_agent() {
    let agent = callee(settings(PORTS, &["200"])).await;
    let peer = Peer::new(&agent).await;
    for (i, (name, expect, _, message)) in tortures(peer.addr()).into_iter().enumerate() {
        let responses = peer.exchange(&message).await;
        check(name, expect, &responses);
        let responses = peer.options(&format!("after{i}")).await;
        assert_eq!(status_lines(&responses), ["SIP/2.0 200 OK"], "after {name}");
    }
    agent.shutdown().await;
}

/// What a stream says within QUIET of the last thing it said.
async fn read_quietly(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut chunk = vec![0u8; 65536];
    while let Ok(Ok(read @ 1..)) = tokio::time::timeout(QUIET, stream.read(&mut chunk)).await {
        answer.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn malformed_messages_over_tcp_never_stop_the_agent() {
    let agent = callee(settings(PORTS, &["200"])).await;
    let tcp = agent.local_addrs().1.unwrap();
    let udp_peer = Peer::new(&agent).await;
    for (i, (name, _, expect, message)) in tortures("127.0.0.1:9".parse().unwrap())
        .into_iter()
        .enumerate()
    {
        let message = replace_bytes(&message, b"SIP/2.0/UDP", b"SIP/2.0/TCP");
        let mut stream = TcpStream::connect(tcp).await.unwrap();
        stream.write_all(&message).await.ok();
        let answer = read_quietly(&mut stream).await;
        // Blank-line pings get blank-line pongs (RFC 5626 keep-alive).
        if name == "empty lines" {
            assert!(
                answer.bytes().all(|b| b == b'\r' || b == b'\n'),
                "{answer:?}"
            );
        }
        let responses: Vec<String> = Some(answer)
            .filter(|a| a.starts_with("SIP/"))
            .into_iter()
            .collect();
        check(name, expect, &responses);
        drop(stream);
        // A fresh connection, and UDP, still get answers.
        let mut stream = TcpStream::connect(tcp).await.unwrap();
        let options = String::from_utf8(request(
            "OPTIONS",
            "200",
            "127.0.0.1:9".parse().unwrap(),
            &format!("t{i}"),
            "",
            "",
        ))
        .unwrap()
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
        stream.write_all(options.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("no answer over TCP after {name}"))
            .unwrap();
        assert!(
            answer[..read].starts_with(b"SIP/2.0 200 OK"),
            "after {name}"
        );
        let responses = udp_peer.options(&format!("u{i}")).await;
        assert_eq!(status_lines(&responses), ["SIP/2.0 200 OK"], "after {name}");
    }
    agent.shutdown().await;
}

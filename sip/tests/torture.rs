//! RFC 4475's torture messages (`torture/*.dat`, all 49), each sent to a
//! running user agent over UDP and over TCP, each with the answer RFC 3261
//! names for a UA that serves only the number 200 (so `user@example.com`
//! gets 404, §8.2.2.1, before its body is looked at, §8.2.3), or silence;
//! afterwards OPTIONS still gets 200 on both transports.
//!
//! Over UDP our answers go where RFC 3261 §18.2.2 sends them: the source
//! address, at the port the top Via names (5060 when it names none). So the
//! peer sends from 127.0.0.2:5060 and also listens on 127.0.0.2:5050, the
//! one other port a Via here names (quotbal).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{init_logs, settings, Echo};
use mailcall_sip::UserAgent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const PORTS: u16 = 46800;
const QUIET: Duration = Duration::from_millis(400);

/// One answer: its status line, and text each named header must contain.
type Answer = (&'static str, &'static [(&'static str, &'static str)]);

/// A torture message and the final answers (1xx left out) it gets over UDP
/// and over TCP; none where RFC 3261 says to be silent.
struct Case {
    name: &'static str,
    udp: &'static [Answer],
    tcp: &'static [Answer],
}

const OK: &[Answer] = &[(
    "SIP/2.0 200 OK",
    &[("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS")],
)];
const NOT_OURS: &[Answer] = &[("SIP/2.0 404 Not Found", &[("Warning", "is not our number")])];
const NOT_ALLOWED: &[Answer] = &[(
    "SIP/2.0 405 Method Not Allowed",
    &[("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS")],
)];
const UNKNOWN_METHOD: &[Answer] = &[(
    "SIP/2.0 501 Not Implemented",
    &[
        ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS"),
        ("Warning", "not a method we know"),
    ],
)];
const UNKNOWN_SCHEME: &[Answer] = &[(
    "SIP/2.0 416 Unsupported URI Scheme",
    &[("Warning", "we serve no")],
)];
const SILENCE: &[Answer] = &[];
/// A request with a To tag belongs to a dialog, and we have none (§12.2.2).
const NO_DIALOG: &[Answer] = &[("SIP/2.0 481 Call/Transaction Does Not Exist", &[])];

/// 400 with a Warning saying `why`.
macro_rules! bad {
    ($why:literal) => {
        &[("SIP/2.0 400 Bad Request", &[("Warning", $why)])]
    };
}

/// Both transports alike.
const fn both(name: &'static str, answers: &'static [Answer]) -> Case {
    Case {
        name,
        udp: answers,
        tcp: answers,
    }
}

/// RFC 4475 in its order: §3.1.1 valid, §3.1.2 invalid, §3.2, §3.3, §3.4.
const CASES: &[Case] = &[
    // Well-formed; its To tag makes it a re-INVITE of a dialog we lack.
    both("wsinv", NO_DIALOG),
    // Endpoints answer 501 listing what they understand (§3.1.1.2).
    both("intmeth", UNKNOWN_METHOD),
    both("esc01", NOT_OURS),
    both("escnull", NOT_ALLOWED),
    // RE%47IST%45R is not REGISTER (§3.1.1.5).
    both("esc02", UNKNOWN_METHOD),
    both("lwsdisp", OK),
    both("longreq", NOT_OURS),
    // One REGISTER, the rest of the datagram ignored (§18.3). In a stream
    // the INVITE after it is a message of its own; the bytes after that
    // have no Content-Length ("m =video" makes the body 153 octets, not
    // 150) and no Via: unanswerable, and nothing more is read.
    Case {
        name: "dblreq",
        udp: NOT_ALLOWED,
        tcp: &[NOT_ALLOWED[0], NOT_OURS[0]],
    },
    both("semiuri", OK),
    both("transports", OK),
    both("mpart01", NOT_ALLOWED),
    // Responses to nothing we sent: dropped (§17.1.3, §18.1.2).
    both("unreason", SILENCE),
    both("noreason", SILENCE),
    both("badinv01", bad!("bad Via")),
    // In a stream the rest of the 9999 bytes may still come (§3.1.2.2).
    Case {
        name: "clerr",
        udp: bad!("Content-Length 9999 exceeds the 154 bytes of body"),
        tcp: SILENCE,
    },
    both("ncl", bad!("Content-Length \'-999\' is not a number")),
    both("scalar02", bad!("bad CSeq")),
    both("scalarlg", SILENCE),
    both("quotbal", bad!("bad To: unterminated quoted string")),
    both("ltgtruri", bad!("bad Request-URI")),
    both("lwsruri", bad!("bad Request-Line")),
    both("lwsstart", bad!("bad Request-Line")),
    both("trws", bad!("bad Request-Line")),
    both("escruri", bad!("headers in the Request-URI")),
    both("baddate", bad!("is not in GMT")),
    both("regbadct", bad!("bad Contact: '?' in a URI outside <>")),
    both("badaspec", bad!("bad To: LWS inside <>")),
    both("baddn", bad!("bad From: ',' outside quotes and <>")),
    both(
        "badvers",
        &[(
            "SIP/2.0 505 Version Not Supported",
            &[("Warning", "only SIP/2.0")],
        )],
    ),
    both("mismatch01", bad!("CSeq method does not match")),
    // 501 rather than 400: the better choice for the future (§3.1.2.18).
    both("mismatch02", UNKNOWN_METHOD),
    both("bigcode", SILENCE),
    // z9hG4bK alone is a branch still (§3.2.1).
    both("badbranch", OK),
    both("insuf", bad!("missing From header")),
    both("unkscm", UNKNOWN_SCHEME),
    both("novelsc", UNKNOWN_SCHEME),
    // We are no registrar: REGISTER is refused before its URIs are read.
    both("unksm2", NOT_ALLOWED),
    both(
        "bext01",
        &[(
            "SIP/2.0 420 Bad Extension",
            &[(
                "Unsupported",
                "nothingSupportsThis, nothingSupportsThisEither",
            )],
        )],
    ),
    both("invut", NOT_OURS),
    both("regaut01", NOT_ALLOWED),
    both("multi01", bad!("more than one")),
    both("mcl01", bad!("two different Content-Lengths")),
    both("bcast", SILENCE),
    // Max-Forwards 0 stops proxies, not the UAS it reaches (§3.3.11).
    both("zeromf", OK),
    both("cparam01", NOT_ALLOWED),
    both("cparam02", NOT_ALLOWED),
    both("regescrt", NOT_ALLOWED),
    both("sdp01", NOT_OURS),
    // Taken by elements that want RFC 2543 compatibility (§3.4); we do not
    // (its From has no tag). A stream needs Content-Length too (§18.3).
    Case {
        name: "inv2543",
        udp: bad!("From has no tag"),
        tcp: bad!("no Content-Length in a stream"),
    },
];

fn message(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/torture/{name}.dat", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value of the first header called `name` (or its compact form).
fn header<'a>(message: &'a str, names: &[&str]) -> Option<&'a str> {
    let head = message.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        let key = key.trim();
        names
            .iter()
            .any(|name| key.eq_ignore_ascii_case(name))
            .then(|| value.trim())
    })
}

fn call_id(message: &str) -> Option<&str> {
    header(message, &["Call-ID", "i"])
}

/// The final answers among `responses`, each once (a UAS retransmits its
/// final answer to an INVITE until ACKed); over UDP only those with the
/// Call-ID of `sent` (earlier cases' retransmissions arrive there too).
fn finals<'a>(responses: &'a [String], sent: &str, over: &str) -> Vec<&'a str> {
    let mut finals: Vec<&str> = Vec::new();
    for response in responses {
        let status = response.lines().next().unwrap_or_default();
        let provisional = status.starts_with("SIP/2.0 1");
        let ours = over == "TCP" || call_id(response) == call_id(sent);
        if ours && !provisional && !finals.iter().any(|r| r.lines().next() == Some(status)) {
            finals.push(response);
        }
    }
    finals
}

/// What is wrong with `responses` to `sent`, if anything.
fn check(
    name: &str,
    over: &str,
    expected: &[Answer],
    responses: &[String],
    sent: &[u8],
) -> Option<String> {
    // In any order: answers to separate requests in one stream need not come
    // in the order the requests did (RFC 3261 orders none).
    let status = |response: &&str| response.lines().next().unwrap_or_default().to_string();
    let mut got = finals(responses, &String::from_utf8_lossy(sent), over);
    got.sort_by_key(status);
    let mut expected = expected.to_vec();
    expected.sort_by_key(|(line, _)| *line);
    let lines: Vec<&str> = got
        .iter()
        .map(|r| r.lines().next().unwrap_or_default())
        .collect();
    let want: Vec<&str> = expected.iter().map(|(line, _)| *line).collect();
    if lines != want {
        return Some(format!(
            "{name} over {over}: {lines:?}, not {want:?}: {got:#?}"
        ));
    }
    for (response, (_, headers)) in got.iter().zip(&expected) {
        for (header_name, text) in *headers {
            let value = header(response, &[header_name]).unwrap_or_default();
            if !value.contains(text) {
                return Some(format!(
                    "{name} over {over}: {header_name}: {value:?} lacks {text:?}"
                ));
            }
        }
    }
    None
}

/// A peer at 127.0.0.2 sending from port 5060 and listening on 5050 too.
struct Peer {
    sockets: [UdpSocket; 2],
    to: SocketAddr,
}

impl Peer {
    async fn new(agent: &UserAgent) -> Peer {
        let bind = |port| UdpSocket::bind(("127.0.0.2", port));
        Peer {
            sockets: [bind(5060).await.unwrap(), bind(5050).await.unwrap()],
            to: agent.local_addrs().0.unwrap(),
        }
    }

    /// Sends `message`, returns every response on either socket within QUIET.
    async fn exchange(&self, message: &[u8]) -> Vec<String> {
        self.sockets[0].send_to(message, self.to).await.unwrap();
        let mut responses = Vec::new();
        let mut buffers = [vec![0u8; 65536], vec![0u8; 65536]];
        loop {
            let [first, second] = &mut buffers;
            let read = tokio::time::timeout(QUIET, async {
                tokio::select! {
                    read = self.sockets[0].recv(first) => read.map(|n| first[..n].to_vec()),
                    read = self.sockets[1].recv(second) => read.map(|n| second[..n].to_vec()),
                }
            })
            .await;
            match read {
                Ok(Ok(bytes)) => responses.push(String::from_utf8_lossy(&bytes).into_owned()),
                _ => return responses,
            }
        }
    }
}

/// Sends `message` on a fresh connection; the responses said within QUIET.
async fn exchange_tcp(to: SocketAddr, message: &[u8]) -> Vec<String> {
    let mut stream = TcpStream::connect(to).await.unwrap();
    stream.write_all(message).await.unwrap();
    let mut said = Vec::new();
    let mut chunk = vec![0u8; 65536];
    while let Ok(Ok(read @ 1..)) = tokio::time::timeout(QUIET, stream.read(&mut chunk)).await {
        said.extend_from_slice(&chunk[..read]);
    }
    // Our answers carry no body: each ends at its blank line.
    String::from_utf8_lossy(&said)
        .split_inclusive("\r\n\r\n")
        .map(str::to_string)
        .collect()
}

fn options(via: &str, branch: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:200@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{via};branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:peer@127.0.0.2>;tag={branch}\r\nTo: <sip:200@127.0.0.1>\r\n\
         Call-ID: {branch}@torture\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn every_rfc4475_message_gets_its_answer_over_udp_and_tcp() {
    init_logs();
    let agent = UserAgent::start(settings(PORTS, &["200"]), Some(Arc::new(Echo::default())))
        .await
        .unwrap();
    let peer = Peer::new(&agent).await;
    let tcp = agent.local_addrs().1.unwrap();
    assert_eq!(CASES.len(), 49, "RFC 4475 has 49 messages");
    // Each waits QUIET for a reply it should not get. The UDP ones in turn
    // (one peer), then the TCP ones all at once (a connection each): not
    // both together, as a message is the same transaction over either.
    let mut wrong = Vec::new();
    for case in CASES {
        let bytes = message(case.name);
        // All fit a datagram: the largest, longreq, is 3.5 kB.
        let responses = peer.exchange(&bytes).await;
        wrong.extend(check(case.name, "UDP", case.udp, &responses, &bytes));
    }
    let mut over_tcp = tokio::task::JoinSet::new();
    for case in CASES {
        over_tcp.spawn(async move {
            let bytes = message(case.name);
            let responses = exchange_tcp(tcp, &bytes).await;
            check(case.name, "TCP", case.tcp, &responses, &bytes)
        });
    }
    for wrong_over_tcp in over_tcp.join_all().await {
        wrong.extend(wrong_over_tcp);
    }
    // The server keeps answering.
    let after = peer.exchange(&options("UDP 127.0.0.2:5060", "after")).await;
    wrong.extend(check(
        "OPTIONS after",
        "UDP",
        OK,
        &after,
        &options("UDP x", "after"),
    ));
    let after = exchange_tcp(tcp, &options("TCP 127.0.0.2:9", "aftertcp")).await;
    wrong.extend(check(
        "OPTIONS after",
        "TCP",
        OK,
        &after,
        &options("TCP x", "aftertcp"),
    ));
    agent.shutdown().await;
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

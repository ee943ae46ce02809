//! The calls we answer, against a peer on a real UDP socket: each request
//! goes through the screen and `for_stack` as the transports send it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rsipstack::sip::{Transport as SipTransport, Uri};
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::SipConnection;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::answer::{header_params, param, via_params};
use super::timers::Timer;
use super::*;
use crate::ladder::Label;
use crate::screen::{self, Framing};
use crate::transports::{for_stack, UdpSender};

/// Our Contact, as the callee gives it (`contact_value`).
fn contact() -> String {
    contact_value(&Uri::try_from("sip:200@127.0.0.1:5060;transport=tcp").unwrap())
}

/// Our socket, the peer's, and the calls `Answering` begins.
struct Bed {
    answering: Arc<Answering>,
    arrival: Arrival,
    peer: UdpSocket,
    calls: UnboundedReceiver<ServerInvite>,
    _stop: tokio_util::sync::DropGuard,
}

impl Bed {
    async fn new() -> Bed {
        let cancel = CancellationToken::new();
        let answering = Answering::start(cancel.clone());
        let (begun, calls) = tokio::sync::mpsc::unbounded_channel();
        answering.on_call(move |invite| {
            begun.send(invite).ok();
        });
        let ours = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sender = Arc::new(UdpSender(ours.clone()));
        let connection = UdpConnection::from_socket(sender, None, Some(cancel.child_token()))
            .await
            .unwrap();
        let arrival = Arrival {
            transport: SipTransport::Udp,
            peer: peer.local_addr().unwrap(),
            path: Path::Datagram(ours),
            connection: SipConnection::Udp(connection),
        };
        Bed {
            answering,
            arrival,
            peer,
            calls,
            _stop: cancel.drop_guard(),
        }
    }

    /// A request from the peer; whether it was left for rsipstack.
    fn send(&self, request: &str) -> bool {
        let passed = screen::check(request.as_bytes(), Framing::Datagram, self.arrival.peer)
            .unwrap_or_else(|_| panic!("screened out: {request}"));
        match for_stack(&passed, &self.arrival, &self.answering) {
            Ok(left) => left.is_some(),
            Err(_) => panic!("unreadable: {request}"),
        }
    }

    /// The next answer the peer gets.
    async fn answer(&self) -> String {
        let mut buffer = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(3), self.peer.recv(&mut buffer))
            .await
            .expect("an answer in time")
            .unwrap();
        String::from_utf8(buffer[..read].to_vec()).unwrap()
    }

    /// Asserts the peer gets nothing for `quiet`.
    async fn nothing_for(&self, quiet: Duration) {
        let mut buffer = vec![0u8; 4096];
        if let Ok(read) = tokio::time::timeout(quiet, self.peer.recv(&mut buffer)).await {
            let read = read.unwrap();
            panic!("unexpected: {}", String::from_utf8_lossy(&buffer[..read]));
        }
    }

    async fn begun(&mut self) -> ServerInvite {
        tokio::time::timeout(Duration::from_secs(3), self.calls.recv())
            .await
            .expect("a call begun")
            .unwrap()
    }

    fn peer(&self) -> SocketAddr {
        self.arrival.peer
    }
}

/// A request of call `call` from `peer`, CSeq `cseq`, on branch `branch`,
/// with our tag `to_tag` if any.
fn request(
    method: &str,
    peer: SocketAddr,
    call: &str,
    branch: &str,
    cseq: u32,
    to_tag: Option<&str>,
) -> String {
    let to_tag = to_tag.map(|tag| format!(";tag={tag}")).unwrap_or_default();
    format!(
        "{method} sip:200@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {peer};branch=z9hG4bK{branch};rport\r\n\
         Record-Route: <sip:proxy.example;lr>\r\n\
         From: \"A; <caller>\" <sip:a@example.com>;tag=a1\r\n\
         To: <sip:200@127.0.0.1>{to_tag}\r\n\
         Call-ID: {call}\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:a@{peer}>\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn status(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[tokio::test]
async fn an_invite_is_rung_and_its_200_sent_again_until_the_ack() {
    let mut bed = Bed::new().await;
    let invite = request("INVITE", bed.peer(), "c1", "i1", 1, None);
    assert!(!bed.send(&invite), "a new call is ours");
    let call = bed.begun().await;
    assert!(call.ring(&contact()));
    let ringing = bed.answer().await;
    assert_eq!(status(&ringing), "SIP/2.0 180 Ringing", "{ringing}");
    let to = header(&ringing, "To").unwrap();
    assert!(to.ends_with(&format!(";tag={}", call.tag())), "{ringing}");
    // Our answers copy the Record-Route, mark the Via (RFC 3581), name us.
    assert_eq!(
        header(&ringing, "Record-Route"),
        Some("<sip:proxy.example;lr>")
    );
    let via = header(&ringing, "Via").unwrap();
    let port = bed.peer().port();
    assert!(via.contains(&format!("rport={port}")), "{via}");
    // In <>: the transport is the URI's (§20.10).
    assert_eq!(
        header(&ringing, "Contact"),
        Some("<sip:200@127.0.0.1:5060;transport=TCP>")
    );

    assert!(call.accept(&contact(), b"v=0\r\n"));
    let ok = bed.answer().await;
    assert_eq!(status(&ok), "SIP/2.0 200 OK", "{ok}");
    assert_eq!(header(&ok, "Content-Type"), Some("application/sdp"));
    assert!(ok.ends_with("\r\n\r\nv=0\r\n"), "{ok}");
    // Not ACKed: the 200 again after T1 (§13.3.1.4), and for the INVITE again.
    assert_eq!(bed.answer().await, ok);
    assert!(!bed.send(&invite));
    assert_eq!(bed.answer().await, ok);

    let ack = request("ACK", bed.peer(), "c1", "a1", 1, Some(call.tag()));
    assert!(!bed.send(&ack));
    assert!(call
        .ladder()
        .rungs()
        .iter()
        .any(|rung| rung.label == Label::T2));
    // ACKed: no more 200s (the next would be due after 2*T1).
    bed.nothing_for(Duration::from_millis(1300)).await;
    assert_eq!(call.ending(), None);
}

#[tokio::test]
async fn a_cancel_while_ringing_gets_200_and_the_invite_487() {
    let mut bed = Bed::new().await;
    let invite = request("INVITE", bed.peer(), "c2", "i2", 1, None);
    bed.send(&invite);
    let call = bed.begun().await;
    call.ring(&contact());
    assert_eq!(status(&bed.answer().await), "SIP/2.0 180 Ringing");
    // CANCEL: the INVITE's branch and CSeq number, no To tag (§9.1).
    let cancel = request("CANCEL", bed.peer(), "c2", "i2", 1, None);
    assert!(!bed.send(&cancel));
    let answers = [bed.answer().await, bed.answer().await];
    let cseqs: Vec<_> = answers
        .iter()
        .map(|a| (status(a), header(a, "CSeq").unwrap()))
        .collect();
    assert_eq!(
        cseqs,
        [
            ("SIP/2.0 200 OK", "1 CANCEL"),
            ("SIP/2.0 487 Request Terminated", "1 INVITE")
        ]
    );
    assert_eq!(call.ended().await, Ending::Cancel);
    assert!(!call.accept(&contact(), b""), "no 200 after the 487");
    // The 487 is sent again until ACKed; the ACK ends that.
    assert_eq!(bed.answer().await, answers[1]);
    let ack = request("ACK", bed.peer(), "c2", "i2", 1, Some(call.tag()));
    assert!(!bed.send(&ack));
    bed.nothing_for(Duration::from_millis(1300)).await;
}

#[tokio::test]
async fn a_bye_ends_the_call_and_is_answered_again_when_sent_again() {
    let mut bed = Bed::new().await;
    let invite = request("INVITE", bed.peer(), "c3", "i3", 1, None);
    bed.send(&invite);
    let call = bed.begun().await;
    call.accept(&contact(), b"");
    bed.answer().await;
    bed.send(&request("ACK", bed.peer(), "c3", "a3", 1, Some(call.tag())));
    let bye = request("BYE", bed.peer(), "c3", "b3", 2, Some(call.tag()));
    assert!(!bed.send(&bye));
    let ok = bed.answer().await;
    assert_eq!(status(&ok), "SIP/2.0 200 OK");
    assert_eq!(header(&ok, "CSeq"), Some("2 BYE"));
    assert_eq!(call.ended().await, Ending::Bye);
    let labels: Vec<Label> = call
        .ladder()
        .rungs()
        .iter()
        .map(|rung| rung.label)
        .collect();
    assert_eq!(labels, [Label::T2, Label::T7, Label::R4]);
    // Remembered (over UDP, for 64*T1): the BYE again gets its 200 again,
    // the INVITE again is absorbed.
    assert!(!bed.send(&bye));
    assert_eq!(bed.answer().await, ok);
    assert!(!bed.send(&invite));
    bed.nothing_for(Duration::from_millis(300)).await;
    assert_eq!(bed.answering.running(), 0);
    assert_eq!(bed.answering.remembered(), 1);
}

#[tokio::test]
async fn requests_in_the_call_get_the_answers_rfc_3261_names() {
    let mut bed = Bed::new().await;
    bed.send(&request("INVITE", bed.peer(), "c4", "i4", 1, None));
    let call = bed.begun().await;
    call.accept(&contact(), b"");
    bed.answer().await;
    let tag = Some(call.tag());
    let cases = [
        ("INVITE", "SIP/2.0 488 Not Acceptable Here"),
        ("OPTIONS", "SIP/2.0 200 OK"),
        ("INFO", "SIP/2.0 405 Method Not Allowed"),
    ];
    for (n, (method, expected)) in cases.into_iter().enumerate() {
        let cseq = n as u32 + 2;
        assert!(!bed.send(&request(
            method,
            bed.peer(),
            "c4",
            &format!("x{n}"),
            cseq,
            tag
        )));
        let answer = bed.answer().await;
        assert_eq!(status(&answer), expected, "{method}: {answer}");
    }
    // Another call's requests, and requests outside calls, are rsipstack's.
    assert!(bed.send(&request("BYE", bed.peer(), "other", "o1", 2, Some("x"))));
    assert!(bed.send(&request("OPTIONS", bed.peer(), "c5", "o2", 1, None)));
    // Same call, a new INVITE transaction: merged (§8.2.2.2).
    assert!(!bed.send(&request("INVITE", bed.peer(), "c4", "i4-again", 1, None)));
    assert_eq!(status(&bed.answer().await), "SIP/2.0 482 Loop Detected");
}

#[tokio::test]
async fn an_invite_dropped_unanswered_gets_500() {
    let mut bed = Bed::new().await;
    bed.send(&request("INVITE", bed.peer(), "c6", "i6", 1, None));
    drop(bed.begun().await);
    let answer = bed.answer().await;
    assert_eq!(
        status(&answer),
        "SIP/2.0 500 Server Internal Error",
        "{answer}"
    );
    assert!(
        header(&answer, "Warning").unwrap().contains("dropped"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_200_never_acked_ends_the_call() {
    let mut bed = Bed::new().await;
    bed.send(&request("INVITE", bed.peer(), "c7", "i7", 1, None));
    let call = bed.begun().await;
    call.accept(&contact(), b"");
    // 64*T1 later (the timer, fired now).
    let until = tokio::time::Instant::now();
    bed.answering
        .fire(call.call.clone(), Timer::AwaitAck { every: None, until });
    assert_eq!(call.ended().await, Ending::NoAck);
}

#[test]
fn tags_and_branches_are_read_past_quoted_names_and_uri_parameters() {
    let from = r#""A; <b>" <sip:a@x;transport=tcp>;tag=t1;x=y"#;
    assert_eq!(param(header_params(from), "tag"), Some("t1"));
    assert_eq!(param(header_params("<sip:b@x;tag=uri>"), "tag"), None);
    assert_eq!(param(header_params("sip:b@x;tag=t2"), "tag"), Some("t2"));
    let via = "SIP/2.0/UDP h:5060;rport;branch=z9hG4bK1, SIP/2.0/UDP p;branch=z9hG4bK2";
    assert_eq!(param(via_params(via), "branch"), Some("z9hG4bK1"));
    assert_eq!(param(via_params(via), "rport"), Some(""));
}

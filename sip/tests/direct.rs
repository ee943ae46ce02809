//! Direct mode, without a SIP server: two user agents with static routes
//! call each other over UDP and over TCP, plain and with TLS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{init_logs, send_and_read_back, settings, settle, udp_of, Echo};
use mailcall_sip::{
    Admission, AdmitFuture, CallFailure, CallHandler, CallInfo, Channel, FailureKind,
    HandlerFuture, Label, Ladder, SipSettings, Stage, Stats, Transport, UserAgent,
};

const PORTS: u16 = 42000;

/// B answers number 200 with an echo; A routes 200 to B.
async fn pair(transport: Transport, tls: bool) -> (UserAgent, UserAgent, Echo) {
    let echo = Echo::default();
    let b = UserAgent::start(
        SipSettings {
            channel_tls: tls,
            ..settings(PORTS, &["200"])
        },
        Some(Arc::new(echo.clone())),
    )
    .await
    .unwrap();
    let mut a_settings = settings(PORTS, &["100"]);
    a_settings.transport = transport;
    a_settings.channel_tls = tls;
    a_settings
        .routes
        .insert("200".into(), format!("sip:{}", udp_of(&b)));
    let a = UserAgent::start(a_settings, None).await.unwrap();
    (a, b, echo)
}

async fn round_trip(transport: Transport, tls: bool) {
    init_logs();
    let (a, b, echo) = pair(transport, tls).await;
    let message = b"EHLO a.example\r\nQUIT\r\n".to_vec();
    let sent = message.clone();
    let ladder = Ladder::new();
    let call = a
        .call("200", &ladder, move |channel, info| async move {
            assert_eq!(channel.is_tls(), tls);
            assert_eq!(info.number, "200");
            info.ladder.step(Label::T5, "echo");
            send_and_read_back(channel, sent).await
        })
        .await
        .unwrap();
    // Fig. 4, as A recorded it (R1, 100/180, only when seen before the 200).
    let labels: Vec<String> = ladder
        .rungs()
        .iter()
        .map(|rung| rung.label.to_string())
        .filter(|label| label != "R1")
        .collect();
    // First where to call (L: here the route and its address), then the INVITE.
    let (located, labels) = labels.split_at(labels.iter().position(|l| l == "T1").unwrap());
    assert_eq!(located, ["L", "L"], "{:?}", ladder.rungs());
    // Either end may hang up first: A's BYE and its answer, or B's BYE.
    let (steps, hang_up) = labels.split_at(8);
    assert_eq!(
        steps,
        ["T1", "T3", "R2", "T2", "R3", "T4", "T5", "T6"],
        "{:?}",
        ladder.rungs()
    );
    assert!(
        hang_up == ["T7", "R4"] || hang_up == ["R4"],
        "{:?}",
        ladder.rungs()
    );
    let rungs = ladder.rungs();
    assert!(
        rungs[0].text.starts_with("route 200 → sip:200@"),
        "{rungs:?}"
    );
    assert!(rungs[2].text.starts_with("INVITE sip:200@"), "{rungs:?}");
    assert!(rungs.windows(2).all(|w| w[0].at_us <= w[1].at_us));
    assert_eq!(call.sip_status, 200);
    assert_eq!(call.output, message, "the echo came back");
    let received = echo.sessions(1).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].1, message, "the callee's handler got the bytes");
    assert_eq!(received[0].0.call_id, call.call_id);
    assert_eq!(received[0].0.number, "200");
    assert!(
        call.call_id.ends_with("@localhost"),
        "our own Call-ID: {}",
        call.call_id
    );

    // The BYE ended the call at both ends.
    idle_then_stop(a, b).await;
}

#[tokio::test]
async fn call_over_udp() {
    round_trip(Transport::Udp, false).await;
}

#[tokio::test]
async fn call_over_tcp() {
    round_trip(Transport::Tcp, false).await;
}

#[tokio::test]
async fn call_over_udp_with_a_tls_channel() {
    round_trip(Transport::Udp, true).await;
}

#[tokio::test]
async fn unknown_numbers_and_missing_routes_fail_typed() {
    init_logs();
    let (a, b, _) = pair(Transport::Udp, false).await;
    let error = a
        .call("999", &Ladder::new(), |_, _| async {})
        .await
        .unwrap_err();
    assert_eq!(error.kind, FailureKind::NoRoute("999".into()));
    assert_eq!(error.call_id(), None);
    a.shutdown().await;

    // A route to B for a number B does not have: 404.
    let a = UserAgent::start(routed_to(&b), None).await.unwrap();
    let ladder = Ladder::new();
    let error = a.call("999", &ladder, |_, _| async {}).await.unwrap_err();
    assert!(
        matches!(
            error,
            CallFailure {
                kind: FailureKind::NotFound(404),
                ..
            }
        ),
        "{error}"
    );
    // Where the call stopped: the 404, and no channel.
    let last = ladder.rungs().pop().unwrap();
    assert_eq!(last.label, Label::R2);
    assert!(last.text.starts_with("404"), "{last:?}");
    assert!(!ladder.rungs().iter().any(|r| r.label == Label::T4));
    assert!(error.call_id().is_some());
    a.shutdown().await;
    b.shutdown().await;

    // A callee with no handler for calls is unavailable: 480.
    let c = UserAgent::start(settings(PORTS, &["300"]), None)
        .await
        .unwrap();
    let a = UserAgent::start(routed_to(&c), None).await.unwrap();
    let error = a
        .call("300", &Ladder::new(), |_, _| async {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            CallFailure {
                kind: FailureKind::Unavailable(480),
                ..
            }
        ),
        "{error}"
    );
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_never_answers_times_out() {
    init_logs();
    // A socket nobody reads: no answer, and no ICMP error either.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut settings = settings(PORTS, &["100"]);
    settings.invite_timeout_secs = 1;
    settings
        .routes
        .insert("*".into(), format!("sip:{}", silent.local_addr().unwrap()));
    let a = UserAgent::start(settings, None).await.unwrap();
    let error = a
        .call("200", &Ladder::new(), |_, _| async {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            CallFailure {
                kind: FailureKind::Timeout(Stage::Answer),
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(settle(&a, Duration::from_secs(10)).await, Stats::default());
    a.shutdown().await;
}

/// A callee whose session ends at once: it hangs up while the caller's
/// session (which ignores the closed channel) would go on.
struct HangsUp;

impl CallHandler for HangsUp {
    fn handle(&self, _channel: Channel, _call: CallInfo) -> HandlerFuture {
        Box::pin(async {})
    }
}

#[tokio::test]
async fn the_caller_ends_its_session_when_the_callee_hangs_up() {
    init_logs();
    let b = UserAgent::start(settings(PORTS, &["200"]), Some(Arc::new(HangsUp)))
        .await
        .unwrap();
    let a = UserAgent::start(routed_to(&b), None).await.unwrap();
    let ladder = Ladder::new();
    let call = a.call("200", &ladder, |channel, _| async move {
        // A session stuck on something other than the channel.
        let _held = channel;
        std::future::pending::<()>().await
    });
    // Without the BYE it would run until session_timeout_secs.
    let error = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call ended when the callee hung up")
        .unwrap_err();
    assert!(
        matches!(&error.kind, FailureKind::Channel(reason) if reason.contains("hung up")),
        "{error}"
    );
    idle_then_stop(a, b).await;
}

#[tokio::test]
async fn the_callee_ends_its_session_when_the_caller_hangs_up() {
    init_logs();
    let (a, b, echo) = pair(Transport::Udp, false).await;
    // A hangs up but keeps its end of the channel open: B's handler,
    // reading until the channel closes, would wait on.
    let kept = Arc::new(std::sync::Mutex::new(None));
    let keeper = kept.clone();
    a.call("200", &Ladder::new(), move |channel, _| async move {
        *keeper.lock().unwrap() = Some(channel);
    })
    .await
    .unwrap();
    // Without ending the session on BYE, B would hold the call until
    // session_timeout_secs.
    assert_eq!(settle(&b, Duration::from_secs(15)).await, Stats::default());
    assert!(kept.lock().unwrap().is_some(), "A's end is still open");
    assert!(
        echo.received.lock().unwrap().is_empty(),
        "the handler was ended"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Busy: a callee that takes no more calls just now.
struct Full;

impl CallHandler for Full {
    fn admit(&self, _number: &str, _from: &str) -> AdmitFuture {
        Box::pin(async { Admission::Busy("the queue is full".into()) })
    }

    fn handle(&self, _channel: Channel, _call: CallInfo) -> HandlerFuture {
        unreachable!("never admitted")
    }
}

#[tokio::test]
async fn a_callee_may_refuse_a_ringing_call() {
    init_logs();
    let b = UserAgent::start(settings(PORTS, &["200"]), Some(Arc::new(Full)))
        .await
        .unwrap();
    let a = UserAgent::start(routed_to(&b), None).await.unwrap();
    let error = a
        .call("200", &Ladder::new(), |_, _| async {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            CallFailure {
                kind: FailureKind::Busy(486),
                ..
            }
        ),
        "{error}"
    );
    idle_then_stop(a, b).await;
}

/// Both agents end with nothing left (the call ended at both ends), then stop.
async fn idle_then_stop(a: UserAgent, b: UserAgent) {
    for agent in [&a, &b] {
        assert_eq!(
            settle(agent, Duration::from_secs(10)).await,
            Stats::default()
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Number 100, every call routed to `callee`.
fn routed_to(callee: &UserAgent) -> SipSettings {
    let mut settings = settings(PORTS, &["100"]);
    settings
        .routes
        .insert("*".into(), format!("sip:{}", udp_of(callee)));
    settings
}

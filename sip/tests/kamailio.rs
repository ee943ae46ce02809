//! Kamailio as registrar and proxy: two user agents register their
//! numbers, one calls the other through Kamailio (Record-Route, loose
//! routing), with and without digest authentication; registrations are
//! refreshed before they expire and removed on shutdown.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{init_logs, send_and_read_back, settings, settle, Echo};
use mailcall_sip::{CallFailure, FailureKind, Ladder, SipSettings, Stats, Transport, UserAgent};
use mailcall_testbed::{Kamailio, KamailioAuth as Auth};

const PORTS: u16 = 43000;

/// The Kamailio URI for `transport`.
fn uri(kamailio: &Kamailio, transport: Transport) -> String {
    kamailio.uri(transport == Transport::Tcp)
}

fn through(
    kamailio: &Kamailio,
    number: &str,
    transport: Transport,
    password: Option<&str>,
) -> SipSettings {
    SipSettings {
        registrar: Some(uri(kamailio, transport)),
        outbound_proxy: Some(uri(kamailio, transport)),
        password: password.map(String::from),
        register_expires_secs: 60,
        transport,
        ..settings(PORTS, &[number])
    }
}

/// Calls `number` until Kamailio knows it (registration is asynchronous).
async fn call_when_registered(a: &UserAgent, number: &str, message: &[u8]) -> Vec<u8> {
    for _ in 0..40 {
        let sent = message.to_vec();
        match a
            .call(number, &Ladder::new(), move |channel, _| {
                send_and_read_back(channel, sent)
            })
            .await
        {
            Ok(call) => return call.output,
            Err(CallFailure {
                kind: FailureKind::NotFound(_),
                ..
            }) => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(e) => panic!("call through kamailio failed: {e}"),
        }
    }
    panic!("{number} never registered");
}

async fn call_through_kamailio(auth: Auth, transport: Transport, check_refresh: bool) {
    init_logs();
    let kamailio = Kamailio::start(auth);
    let password = (auth != Auth::None).then_some("secret");
    let echo = Echo::default();
    let b = UserAgent::start(
        through(&kamailio, "200", transport, password),
        Some(Arc::new(echo.clone())),
    )
    .await
    .unwrap();
    let a = UserAgent::start(through(&kamailio, "100", transport, password), None)
        .await
        .unwrap();

    let message = b"MAIL FROM:<a@a.example>\r\n".to_vec();
    assert_eq!(call_when_registered(&a, "200", &message).await, message);
    let received = echo.sessions(1).await;
    assert_eq!(received.last().unwrap().1, message);
    assert!(
        received.last().unwrap().0.from.contains("100"),
        "{:?}",
        received
    );

    // Kamailio grants 10 s: the binding outlives that only if refreshed.
    if check_refresh {
        tokio::time::sleep(Duration::from_secs(12)).await;
        let sent = message.clone();
        let call = a
            .call("200", &Ladder::new(), move |channel, _| {
                send_and_read_back(channel, sent)
            })
            .await
            .expect("still registered after the granted expiry");
        assert_eq!(call.output, message);
    }

    // Unregistered on shutdown: Kamailio no longer finds 200.
    assert_eq!(settle(&b, Duration::from_secs(10)).await, Stats::default());
    b.shutdown().await;
    let error = a
        .call("200", &Ladder::new(), |_, _| async {})
        .await
        .unwrap_err();
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
    a.shutdown().await;
}

#[tokio::test]
async fn register_and_call_through_kamailio_over_udp() {
    call_through_kamailio(Auth::None, Transport::Udp, true).await;
}

#[tokio::test]
async fn register_and_call_through_kamailio_with_digest_over_tcp() {
    call_through_kamailio(Auth::Md5, Transport::Tcp, true).await;
}

#[tokio::test]
async fn register_and_call_through_kamailio_with_sha256_digest() {
    call_through_kamailio(Auth::Sha256, Transport::Udp, false).await;
}

#[tokio::test]
async fn shutdown_in_the_middle_of_a_call_still_unregisters() {
    init_logs();
    let kamailio = Kamailio::start(Auth::None);
    let b = UserAgent::start(
        through(&kamailio, "200", Transport::Udp, None),
        Some(Arc::new(Echo::default())),
    )
    .await
    .unwrap();
    let a = UserAgent::start(through(&kamailio, "100", Transport::Udp, None), None)
        .await
        .unwrap();
    let message = b"NOOP\r\n".to_vec();
    assert_eq!(call_when_registered(&a, "200", &message).await, message);
    // A is registered too: B reaches it (A has no handler: 480).
    let error = b
        .call("100", &Ladder::new(), |_, _| async {})
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

    // A shuts down while its call to B is in its session.
    let (running, is_running) = tokio::sync::oneshot::channel();
    let stopped = Arc::new(tokio::sync::Notify::new());
    let until_stopped = stopped.clone();
    let ladder = Ladder::new();
    let call = a.call("200", &ladder, move |channel, _| async move {
        running.send(()).ok();
        until_stopped.notified().await;
        drop(channel);
    });
    let stop = async {
        is_running.await.unwrap();
        a.shutdown().await;
        stopped.notify_one();
    };
    let (_, ()) = tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(call, stop) })
        .await
        .expect("the call and the shutdown ended");
    // Kamailio no longer knows 100.
    let error = b
        .call("100", &Ladder::new(), |_, _| async {})
        .await
        .unwrap_err();
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
    b.shutdown().await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_by_kamailio() {
    init_logs();
    let kamailio = Kamailio::start(Auth::Md5);
    let a = UserAgent::start(
        through(&kamailio, "100", Transport::Udp, Some("wrong")),
        None,
    )
    .await
    .unwrap();
    let error = a
        .call("200", &Ladder::new(), |_, _| async {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            CallFailure {
                kind: FailureKind::Rejected { code: 407, .. },
                ..
            } | CallFailure {
                kind: FailureKind::Rejected { code: 403, .. },
                ..
            }
        ),
        "{error}"
    );
    a.shutdown().await;
}

//! sipp as the far end: sipp calls our callee with a channel offer, and
//! our caller calls sipp scenarios that answer busy, 404, 503, never
//! answer, and answer then hang up.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{free_port, init_logs, settings, settle, udp_of, Echo};
use mailcall_sip::{
    Admission, AdmitFuture, CallFailure, CallHandler, CallInfo, Channel, FailureKind,
    HandlerFuture, Ladder, SipSettings, Stage, Stats, UserAgent,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORTS: u16 = 44000;

/// A scenario in tests/sipp (or, given an absolute path, that file).
fn scenario(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(name)
        .display()
        .to_string()
}

/// sipp's arguments for one call on `port`, bounded by `timeout`.
fn sipp(name: &str, port: u16, extra: &[&str]) -> Command {
    let mut command = Command::new("timeout");
    command
        .args(["30", "sipp", "-sf", &scenario(name), "-m", "1", "-nostdin"])
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-mp", &free_port().to_string()])
        .args([
            "-timeout",
            "20s",
            "-timeout_error",
            "-max_recv_loops",
            "100",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn explain(output: &Output) -> String {
    format!(
        "sipp exit {:?}\n{}\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Starts a sipp UAS and waits (bounded) until it holds its UDP port.
async fn sipp_uas(name: &str, extra: &[&str]) -> (u16, tokio::task::JoinHandle<Output>) {
    let port = free_port();
    let mut command = sipp(name, port, extra);
    let running = tokio::task::spawn_blocking(move || command.output().unwrap());
    for _ in 0..100 {
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
            return (port, running);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sipp did not start: {}", explain(&running.await.unwrap()));
}

fn caller_to(port: u16) -> SipSettings {
    let mut settings = settings(PORTS, &["100"]);
    settings
        .routes
        .insert("*".into(), format!("sip:127.0.0.1:{port}"));
    settings.invite_timeout_secs = 2;
    settings
}

#[tokio::test]
async fn sipp_calls_our_callee_with_a_channel_offer() {
    init_logs();
    let echo = Echo::default();
    let callee = UserAgent::start(settings(PORTS, &["200"]), Some(Arc::new(echo.clone())))
        .await
        .unwrap();
    let target = udp_of(&callee).to_string();
    let mut command = sipp("uac_offer.xml", free_port(), &["-s", "200", &target]);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "{}", explain(&output));
    // sipp opened no channel and hung up: the handler never ran.
    assert_eq!(
        settle(&callee, Duration::from_secs(10)).await,
        Stats::default()
    );
    assert!(echo.received.lock().unwrap().is_empty());
    callee.shutdown().await;
}

/// Takes a minute to decide: meanwhile the caller hears ringing.
#[derive(Clone, Default)]
struct Hesitant {
    asked: Arc<AtomicUsize>,
    handled: Arc<AtomicUsize>,
}

impl CallHandler for Hesitant {
    fn admit(&self, _number: &str, _from: &str) -> AdmitFuture {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Admission::Answer
        })
    }

    fn handle(&self, _channel: Channel, _call: CallInfo) -> HandlerFuture {
        self.handled.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {})
    }
}

#[tokio::test]
async fn sipp_cancels_while_our_callee_rings() {
    init_logs();
    let handler = Hesitant::default();
    let callee = UserAgent::start(settings(PORTS, &["200"]), Some(Arc::new(handler.clone())))
        .await
        .unwrap();
    let target = udp_of(&callee).to_string();
    let mut command = sipp("uac_cancel.xml", free_port(), &["-s", "200", &target]);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    // sipp checked 180, then 200 to its CANCEL and 487 to its INVITE.
    assert!(output.status.success(), "{}", explain(&output));
    assert_eq!(handler.asked.load(Ordering::SeqCst), 1);
    // Nothing answered, nothing left: no listener, dialog or task.
    assert_eq!(
        settle(&callee, Duration::from_secs(10)).await,
        Stats::default()
    );
    assert_eq!(handler.handled.load(Ordering::SeqCst), 0);
    callee.shutdown().await;
}

async fn rejected_by_sipp(code: &str, reason: &str) -> CallFailure {
    init_logs();
    let template = std::fs::read_to_string(scenario("uas_reject.xml")).unwrap();
    let path = std::env::temp_dir().join(format!("mailcall-uas-reject-{code}.xml"));
    std::fs::write(
        &path,
        template.replace("@CODE@", code).replace("@REASON@", reason),
    )
    .unwrap();
    let (port, sipp) = sipp_uas(path.to_str().unwrap(), &[]).await;
    let caller = UserAgent::start(caller_to(port), None).await.unwrap();
    let error = caller
        .call("300", &Ladder::new(), |_, _| async {})
        .await
        .unwrap_err();
    let output = sipp.await.unwrap();
    assert!(output.status.success(), "{}", explain(&output));
    assert_eq!(
        settle(&caller, Duration::from_secs(10)).await,
        Stats::default()
    );
    caller.shutdown().await;
    error
}

#[tokio::test]
async fn busy_from_sipp() {
    let error = rejected_by_sipp("486", "Busy Here").await;
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
}

#[tokio::test]
async fn not_found_from_sipp() {
    let error = rejected_by_sipp("404", "Not Found").await;
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
}

#[tokio::test]
async fn unavailable_from_sipp() {
    let error = rejected_by_sipp("503", "Service Unavailable").await;
    assert!(
        matches!(
            error,
            CallFailure {
                kind: FailureKind::Unavailable(503),
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn other_rejections_keep_their_code() {
    let error = rejected_by_sipp("415", "Unsupported Media Type").await;
    assert!(
        matches!(
            error,
            CallFailure {
                kind: FailureKind::Rejected { code: 415, .. },
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn no_answer_from_sipp_times_out_and_cancels() {
    init_logs();
    let (port, sipp) = sipp_uas("uas_no_answer.xml", &[]).await;
    let caller = UserAgent::start(caller_to(port), None).await.unwrap();
    let error = caller
        .call("300", &Ladder::new(), |_, _| async {})
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
    // sipp's scenario passes only if our CANCEL came and its 487 was ACKed.
    let output = sipp.await.unwrap();
    assert!(output.status.success(), "{}", explain(&output));
    assert_eq!(
        settle(&caller, Duration::from_secs(10)).await,
        Stats::default()
    );
    caller.shutdown().await;
}

#[tokio::test]
async fn sipp_answers_then_hangs_up() {
    init_logs();
    // sipp cannot open a TCP channel: the test holds the listener it names.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let channel_port = listener.local_addr().unwrap().port().to_string();
    let (port, sipp) = sipp_uas(
        "uas_answer_then_bye.xml",
        &["-set", "chport", &channel_port],
    )
    .await;
    let far_end = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let output = sipp.await.unwrap();
        // The channel closes once sipp has hung up.
        stream.shutdown().await.ok();
        drop(stream);
        output
    });
    let caller = UserAgent::start(caller_to(port), None).await.unwrap();
    let call = caller
        .call("300", &Ladder::new(), |mut channel, _| async move {
            let mut rest = Vec::new();
            channel.read_to_end(&mut rest).await.map(|_| rest.len())
        })
        .await
        .unwrap();
    assert_eq!(call.sip_status, 200);
    assert_eq!(call.output.unwrap(), 0, "the far end sent nothing");
    let output = far_end.await.unwrap();
    assert!(
        output.status.success(),
        "our 200 to sipp's BYE: {}",
        explain(&output)
    );
    assert_eq!(
        settle(&caller, Duration::from_secs(10)).await,
        Stats::default()
    );
    caller.shutdown().await;
}

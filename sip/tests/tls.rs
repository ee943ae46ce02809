//! SIP over TLS (RFC 3261 §26) with Kamailio (`kamailio-tls-modules`) as
//! registrar and proxy: both user agents register over TLS, with and
//! without digest, and call each other with `require_tls`; a call over
//! plain UDP to a user agent that requires TLS is refused; a caller that
//! requires TLS does not place a call it cannot make over TLS; a `sips:`
//! route is called over TLS with the callee's certificate checked; and a proxy
//! whose certificate does not name the target is refused unless
//! `tls_verify = false`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{init_logs, send_and_read_back, settings, udp_of, Echo};
use mailcall_sip::{CallFailure, FailureKind, Label, Ladder, SipSettings, UserAgent};
use mailcall_testbed::pki::{Issued, Pki};
use mailcall_testbed::{Kamailio, KamailioAuth as Auth};

const PORTS: u16 = 47000;

/// A user agent registered with `kamailio` over TLS, calling through it,
/// answering and placing calls only over TLS.
fn over_tls(kamailio: &Kamailio, pki: &Pki, number: &str, password: Option<&str>) -> SipSettings {
    let Issued { certificate, key } = pki.issue(number, &["127.0.0.1"]);
    SipSettings {
        tls_listen: Some("127.0.0.1:0".parse().unwrap()),
        tls_certificate: Some(certificate),
        tls_key: Some(key),
        tls_ca_file: Some(pki.ca_file.clone()),
        registrar: Some(kamailio.tls_uri()),
        outbound_proxy: Some(kamailio.tls_uri()),
        password: password.map(String::from),
        register_expires_secs: 60,
        require_tls: true,
        channel_tls: true,
        ..settings(PORTS, &[number])
    }
}

/// Calls `number` until Kamailio knows it (registration is asynchronous).
async fn call_when_registered(a: &UserAgent, number: &str) -> Result<Ladder, CallFailure> {
    let message = b"EHLO a.example\r\n".to_vec();
    for _ in 0..40 {
        let (sent, ladder) = (message.clone(), Ladder::new());
        match a
            .call(number, &ladder, move |channel, _| {
                send_and_read_back(channel, sent)
            })
            .await
        {
            Ok(call) => {
                assert_eq!(call.output, message, "the echo came back");
                return Ok(ladder);
            }
            Err(CallFailure {
                kind: FailureKind::NotFound(_),
                ..
            }) => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(e) => return Err(e),
        }
    }
    panic!("{number} never registered");
}

async fn register_and_call_over_tls(auth: Auth) {
    init_logs();
    let folder = tempfile::tempdir().unwrap();
    let pki = Pki::new(folder.path());
    let kamailio = Kamailio::with_tls(auth, &pki.issue("kamailio", &["127.0.0.1"]));
    let password = (auth != Auth::None).then_some("secret");
    let echo = Echo::default();
    let b = UserAgent::start(
        over_tls(&kamailio, &pki, "200", password),
        Some(Arc::new(echo.clone())),
    )
    .await
    .unwrap();
    let a = UserAgent::start(over_tls(&kamailio, &pki, "100", password), None)
        .await
        .unwrap();
    let ladder = call_when_registered(&a, "200").await.unwrap();
    let rungs = ladder.rungs();
    let invite = rungs.iter().find(|rung| rung.label == Label::T1).unwrap();
    assert!(invite.text.contains("to TLS 127.0.0.1"), "{rungs:?}");
    // B answered, so its INVITE came over TLS (it requires it).
    assert_eq!(echo.sessions(1).await.len(), 1);
    for agent in [&a, &b] {
        let registrations = agent.registrations();
        assert_eq!(registrations.len(), 1);
        assert!(
            matches!(
                registrations[0].standing,
                mailcall_sip::Standing::Registered(200)
            ),
            "{registrations:?}"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn register_and_call_over_tls_without_digest() {
    register_and_call_over_tls(Auth::None).await;
}

#[tokio::test]
async fn register_and_call_over_tls_with_digest() {
    register_and_call_over_tls(Auth::Md5).await;
}

#[tokio::test]
async fn a_call_over_plain_udp_to_a_callee_that_requires_tls_is_refused() {
    init_logs();
    let folder = tempfile::tempdir().unwrap();
    let pki = Pki::new(folder.path());
    let Issued { certificate, key } = pki.issue("b", &["127.0.0.1"]);
    let b = UserAgent::start(
        SipSettings {
            tls_listen: Some("127.0.0.1:0".parse().unwrap()),
            tls_certificate: Some(certificate),
            tls_key: Some(key),
            require_tls: true,
            ..settings(PORTS + 200, &["200"])
        },
        Some(Arc::new(Echo::default())),
    )
    .await
    .unwrap();
    let mut a_settings = settings(PORTS + 200, &["100"]);
    let b_udp = format!("sip:127.0.0.1:{}", udp_of(&b).port());
    a_settings.routes.insert("200".into(), b_udp.clone());
    let a = UserAgent::start(a_settings, None).await.unwrap();
    let error = a
        .call("200", &Ladder::new(), |_, _| async {})
        .await
        .unwrap_err();
    assert_eq!(error.sip_status(), Some(403), "{error}");
    assert!(error.call_id().is_some());

    // A caller that requires TLS does not even send it (one that answers
    // no number needs no TLS listener).
    a.shutdown().await;
    let mut strict = settings(PORTS + 200, &[]);
    strict.routes.insert("200".into(), b_udp);
    strict.require_tls = true;
    let a = UserAgent::start(strict, None).await.unwrap();
    let ladder = Ladder::new();
    let error = a.call("200", &ladder, |_, _| async {}).await.unwrap_err();
    assert!(matches!(error.kind, FailureKind::NotSecure(_)), "{error}");
    assert_eq!(error.call_id(), None, "no INVITE went out");
    assert!(ladder.rungs().iter().all(|rung| rung.label == Label::L));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_proxy_certificate_for_another_name_is_refused_unless_verification_is_off() {
    init_logs();
    let folder = tempfile::tempdir().unwrap();
    let pki = Pki::new(folder.path());
    // Kamailio shows a certificate for another name than 127.0.0.1.
    let kamailio = Kamailio::with_tls(Auth::None, &pki.issue("kamailio", &["other.test"]));
    let lab = |number| SipSettings {
        tls_verify: false,
        ..over_tls(&kamailio, &pki, number, None)
    };
    let b = UserAgent::start(lab("200"), Some(Arc::new(Echo::default())))
        .await
        .unwrap();
    let a = UserAgent::start(
        SipSettings {
            registrar: None,
            ..over_tls(&kamailio, &pki, "100", None)
        },
        None,
    )
    .await
    .unwrap();
    let error = a
        .call("200", &Ladder::new(), |_, _| async {})
        .await
        .unwrap_err();
    assert!(
        matches!(&error.kind, FailureKind::Transport(why) if why.contains("certificate")),
        "{error}"
    );
    a.shutdown().await;

    let a = UserAgent::start(
        SipSettings {
            registrar: None,
            ..lab("100")
        },
        None,
    )
    .await
    .unwrap();
    call_when_registered(&a, "200").await.unwrap();
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_sips_route_is_called_over_tls_with_the_callees_name_checked() {
    init_logs();
    let folder = tempfile::tempdir().unwrap();
    let pki = Pki::new(folder.path());
    let Issued { certificate, key } = pki.issue("b", &["127.0.0.1"]);
    let echo = Echo::default();
    let b = UserAgent::start(
        SipSettings {
            tls_listen: Some("127.0.0.1:0".parse().unwrap()),
            tls_certificate: Some(certificate),
            tls_key: Some(key),
            require_tls: true,
            channel_tls: true,
            ..settings(PORTS + 400, &["200"])
        },
        Some(Arc::new(echo.clone())),
    )
    .await
    .unwrap();
    let mut a_settings = SipSettings {
        tls_ca_file: Some(pki.ca_file.clone()),
        channel_tls: true,
        require_tls: true,
        ..settings(PORTS + 400, &[])
    };
    let b_tls = b.tls_addr().unwrap();
    a_settings
        .routes
        .insert("200".into(), format!("sips:127.0.0.1:{}", b_tls.port()));
    let a = UserAgent::start(a_settings, None).await.unwrap();
    let ladder = Ladder::new();
    let message = b"EHLO a.example\r\n".to_vec();
    let sent = message.clone();
    let call = a
        .call("200", &ladder, move |channel, _| {
            send_and_read_back(channel, sent)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", ladder.rungs()));
    assert_eq!(call.output, message);
    let rungs = ladder.rungs();
    assert!(
        rungs
            .iter()
            .any(|rung| rung.label == Label::T1 && rung.text.contains(&format!("to TLS {b_tls}"))),
        "{rungs:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

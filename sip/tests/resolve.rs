//! Calls placed by what DNS says, against a name server on loopback: a
//! number found in a private ENUM tree is called at the URI its NAPTR
//! record gives (the regexp's back-reference applied), located by RFC 3263
//! (NAPTR, SRV for two hosts, A), and the call fails over from the dead
//! host to the live one; a number without ENUM records goes to the
//! outbound proxy. Every step is in the ladder. A registrar known only by
//! its SRV records gets the REGISTERs (Kamailio).

mod common;

use std::sync::Arc;

use common::{free_port, init_logs, send_and_read_back, settings, Echo};
use mailcall_sip::{FailureKind, Label, Ladder, SipSettings, Standing, UserAgent};
use mailcall_testbed::dns::{NameServer, Record};
use mailcall_testbed::{Kamailio, KamailioAuth};

const PORTS: u16 = 47400;
const SUFFIX: &str = "e164.private.test";
/// `+815022220000` under SUFFIX.
const ENUM_NAME: &str = "0.0.0.0.2.2.2.2.0.5.1.8.e164.private.test";

fn resolving(dns: &NameServer, numbers: &[&str]) -> SipSettings {
    SipSettings {
        enum_suffixes: vec![SUFFIX.into()],
        dns_servers: vec![dns.address],
        ..settings(PORTS, numbers)
    }
}

fn texts(ladder: &Ladder) -> Vec<String> {
    ladder
        .rungs()
        .iter()
        .filter(|rung| rung.label == Label::L)
        .map(|rung| rung.text.clone())
        .collect()
}

#[tokio::test]
async fn an_enum_number_is_called_where_dns_says_failing_over_to_the_live_host() {
    init_logs();
    let echo = Echo::default();
    // B answers 05022220000 on TCP; nothing listens on `dead`.
    let b = UserAgent::start(
        SipSettings {
            udp_listen: None,
            ..settings(PORTS, &["05022220000"])
        },
        Some(Arc::new(echo.clone())),
    )
    .await
    .unwrap();
    let live = b.local_addrs().1.unwrap().port();
    let dead = free_port();
    let dns = NameServer::start(vec![
        // Order beats preference: the first record wins although less preferred.
        Record::naptr(
            ENUM_NAME,
            (10, 50),
            "u",
            "E2U+sip",
            r"!^\+81(.*)$!sip:0\1@b.example.test!",
            ".",
        ),
        Record::naptr(
            ENUM_NAME,
            (20, 10),
            "u",
            "E2U+sip",
            "!^.*$!sip:wrong@b.example.test!",
            ".",
        ),
        // RFC 3263: TCP by NAPTR, two hosts by SRV, the better one dead.
        Record::naptr(
            "b.example.test",
            (10, 10),
            "s",
            "SIP+D2T",
            "",
            "_sip._tcp.b.example.test",
        ),
        Record::srv(
            "_sip._tcp.b.example.test",
            10,
            0,
            dead,
            "dead.b.example.test",
        ),
        Record::srv(
            "_sip._tcp.b.example.test",
            20,
            0,
            live,
            "live.b.example.test",
        ),
        Record::a("dead.b.example.test", [127, 0, 0, 1]),
        Record::a("live.b.example.test", [127, 0, 0, 1]),
    ]);
    let a = UserAgent::start(resolving(&dns, &[]), None).await.unwrap();
    let ladder = Ladder::new();
    let message = b"EHLO a.example\r\n".to_vec();
    let sent = message.clone();
    let call = a
        .call("05022220000", &ladder, move |channel, _| {
            send_and_read_back(channel, sent)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", ladder.rungs()));
    assert_eq!(call.output, message);
    assert_eq!(echo.sessions(1).await[0].0.number, "05022220000");

    let steps = texts(&ladder).join("\n");
    for expected in [
        "ENUM 05022220000 is +815022220000".to_string(),
        format!("ENUM NAPTR {ENUM_NAME}: 2 records"),
        "→ sip:05022220000@b.example.test".to_string(),
        format!(
            "SRV _sip._tcp.b.example.test: 10 dead.b.example.test:{dead}, \
             20 live.b.example.test:{live}"
        ),
        format!("next hops for sip:05022220000@b.example.test: 127.0.0.1:{dead} TCP, 127.0.0.1:{live} TCP"),
        "trying the next target".to_string(),
    ] {
        assert!(steps.contains(&expected), "{expected:?} not in\n{steps}");
    }
    // Two INVITEs: the dead host, then the live one.
    let invites: Vec<String> = ladder
        .rungs()
        .iter()
        .filter(|rung| rung.label == Label::T1 && rung.text.starts_with("INVITE"))
        .map(|rung| rung.text.clone())
        .collect();
    assert_eq!(invites.len(), 2, "{invites:?}");
    assert!(
        invites[0].ends_with(&format!("to TCP 127.0.0.1:{dead}")),
        "{invites:?}"
    );
    assert!(
        invites[1].ends_with(&format!("to TCP 127.0.0.1:{live}")),
        "{invites:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_number_without_enum_records_goes_to_the_outbound_proxy() {
    init_logs();
    let dns = NameServer::start(Vec::new());
    // The "proxy" is a user agent that does not serve the number: its 404
    // shows the INVITE reached it.
    let proxy = UserAgent::start(settings(PORTS, &["200"]), None)
        .await
        .unwrap();
    let proxy_uri = format!("sip:{}", proxy.local_addrs().0.unwrap());
    let a = UserAgent::start(
        SipSettings {
            outbound_proxy: Some(proxy_uri.clone()),
            ..resolving(&dns, &[])
        },
        None,
    )
    .await
    .unwrap();
    let ladder = Ladder::new();
    let error = a
        .call("05033330000", &ladder, |_, _| async {})
        .await
        .unwrap_err();
    assert_eq!(error.kind, FailureKind::NotFound(404), "{error}");
    let steps = texts(&ladder).join("\n");
    assert!(
        steps.contains("ENUM NAPTR 0.0.0.0.3.3.3.3.0.5.1.8.e164.private.test:"),
        "{steps}"
    );
    assert!(
        steps.contains(&format!("outbound proxy {proxy_uri};lr")),
        "{steps}"
    );
    assert!(
        dns.asked()
            .contains(&"NAPTR 0.0.0.0.3.3.3.3.0.5.1.8.e164.private.test".to_string()),
        "{:?}",
        dns.asked()
    );
    a.shutdown().await;
    proxy.shutdown().await;
}

/// Answers every request on a UDP socket of its own with `503 Service
/// Unavailable` (RFC 3263 §4.3: the caller then tries the next target).
fn overloaded_server() -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        while let Ok((read, from)) = socket.recv_from(&mut buffer) {
            let request = String::from_utf8_lossy(&buffer[..read]).to_string();
            if !request.starts_with("INVITE") {
                continue; // its ACK
            }
            let copied: String = request
                .lines()
                .filter(|line| {
                    let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
                    ["via", "from", "to", "call-id", "cseq"].contains(&name.as_str())
                })
                .map(|line| {
                    // Our To gets a tag: a final answer makes a (failed) dialog.
                    if line.to_ascii_lowercase().starts_with("to:") {
                        format!("{line};tag=overloaded\r\n")
                    } else {
                        format!("{line}\r\n")
                    }
                })
                .collect();
            let answer =
                format!("SIP/2.0 503 Service Unavailable\r\n{copied}Content-Length: 0\r\n\r\n");
            socket.send_to(answer.as_bytes(), from).ok();
        }
    });
    address
}

#[tokio::test]
async fn a_503_sends_the_call_to_the_next_target() {
    init_logs();
    let echo = Echo::default();
    let b = UserAgent::start(
        settings(PORTS, &["05022220000"]),
        Some(Arc::new(echo.clone())),
    )
    .await
    .unwrap();
    let live = b.local_addrs().0.unwrap().port();
    let overloaded = overloaded_server().port();
    let dns = NameServer::start(vec![
        Record::srv(
            "_sip._udp.b.example.test",
            10,
            0,
            overloaded,
            "busy.b.example.test",
        ),
        Record::srv(
            "_sip._udp.b.example.test",
            20,
            0,
            live,
            "live.b.example.test",
        ),
        Record::a("busy.b.example.test", [127, 0, 0, 1]),
        Record::a("live.b.example.test", [127, 0, 0, 1]),
    ]);
    let mut a_settings = resolving(&dns, &[]);
    a_settings
        .routes
        .insert("*".into(), "sip:b.example.test".into());
    let a = UserAgent::start(a_settings, None).await.unwrap();
    let ladder = Ladder::new();
    a.call("05022220000", &ladder, |_, _| async {})
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", ladder.rungs()));
    let rungs = ladder.rungs();
    let answers: Vec<&str> = rungs
        .iter()
        .filter(|rung| rung.label == Label::R2)
        .map(|rung| rung.text.as_str())
        .collect();
    assert_eq!(answers.len(), 2, "{rungs:?}");
    assert!(answers[0].starts_with("503"), "{rungs:?}");
    assert!(answers[1].starts_with("200"), "{rungs:?}");
    assert!(
        texts(&ladder)
            .iter()
            .any(|text| text.contains("unavailable (503)") && text.contains("next target")),
        "{rungs:?}"
    );
    assert_eq!(echo.sessions(1).await.len(), 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_registrar_known_by_its_srv_records_gets_the_registers() {
    init_logs();
    let kamailio = Kamailio::start(KamailioAuth::None);
    let dns = NameServer::start(vec![
        Record::srv(
            "_sip._udp.registrar.test",
            10,
            0,
            kamailio.port,
            "proxy.registrar.test",
        ),
        Record::a("proxy.registrar.test", [127, 0, 0, 1]),
    ]);
    let agent = UserAgent::start(
        SipSettings {
            registrar: Some("sip:registrar.test".into()),
            register_expires_secs: 60,
            ..resolving(&dns, &["100"])
        },
        None,
    )
    .await
    .unwrap();
    let registered = async {
        loop {
            let registrations = agent.registrations();
            if let [state] = &registrations[..] {
                if state.standing != Standing::Pending {
                    return state.standing.clone();
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let standing = tokio::time::timeout(std::time::Duration::from_secs(10), registered)
        .await
        .expect("no answer from the registrar");
    assert_eq!(standing, Standing::Registered(200));
    assert!(
        dns.asked()
            .contains(&"SRV _sip._udp.registrar.test".to_string()),
        "{:?}",
        dns.asked()
    );
    agent.shutdown().await;
}

//! The locator against a name server on loopback: ENUM under a private
//! tree, the fallbacks, and RFC 3263, with the ladder each leaves.

use std::collections::BTreeMap;

use mailcall_testbed::dns::{NameServer, Record};
use rsipstack::sip::{Transport as SipTransport, Uri};

use super::*;

/// The ENUM domain of +815022220000 under the private tree.
const PRIVATE: &str = "0.0.0.0.2.2.2.2.0.5.1.8.e164.example.test";
/// The same number under the public tree.
const PUBLIC: &str = "0.0.0.0.2.2.2.2.0.5.1.8.e164.arpa";

fn settings(dns: &NameServer) -> LocateSettings {
    LocateSettings {
        routes: BTreeMap::new(),
        enum_suffixes: vec!["e164.example.test".into(), "e164.arpa".into()],
        outbound_proxy: None,
        domain: "a.example.test".into(),
        default_transport: Transport::Udp,
        dns_servers: vec![dns.address],
        country_code: "81".into(),
        trunk_prefix: "0".into(),
    }
}

fn locator(settings: LocateSettings) -> Locator {
    Locator::new(settings).expect("a locator")
}

fn uri(text: &str) -> Uri {
    Uri::try_from(text).expect("a URI")
}

/// The ladder's texts; all of them are the caller's own steps.
fn steps(ladder: &Ladder) -> Vec<String> {
    let rungs = ladder.rungs();
    assert!(rungs.iter().all(|r| r.label == Label::L), "{rungs:?}");
    rungs.into_iter().map(|r| r.text).collect()
}

fn enum_target(user: &str, host: &str, suffix: &str) -> Target {
    Target {
        request_uri: uri(&format!("sip:{user}@{host}")),
        proxy: None,
        source: Source::Enum {
            suffix: suffix.into(),
        },
    }
}

#[tokio::test]
async fn enum_under_a_private_tree_picks_the_terminal_sip_record() {
    let dns = NameServer::start(vec![
        Record::naptr(
            PRIVATE,
            (100, 10),
            "u",
            "E2U+sip",
            "!^.*$!sip:late@c.example.test!",
            ".",
        ),
        Record::naptr(
            PRIVATE,
            (10, 20),
            "u",
            "E2U+sip",
            "!^.*$!sip:worse@c.example.test!",
            ".",
        ),
        Record::naptr(
            PRIVATE,
            (10, 10),
            "u",
            "E2U+sip",
            r"!^\+81(.*)$!sip:\1@b.example.test!",
            ".",
        ),
        Record::naptr(PRIVATE, (10, 5), "", "E2U+sip", "", "next.example.test"),
        Record::naptr(
            PRIVATE,
            (10, 1),
            "u",
            "E2U+email:mailto",
            "!^.*$!mailto:a@b.example.test!",
            ".",
        ),
        Record::naptr(
            PUBLIC,
            (1, 1),
            "u",
            "E2U+sip",
            "!^.*$!sip:public@d.example.test!",
            ".",
        ),
    ]);
    let ladder = Ladder::new();
    let target = locator(settings(&dns))
        .target("05022220000", &ladder)
        .await
        .unwrap();
    assert_eq!(
        target,
        enum_target("5022220000", "b.example.test", "e164.example.test")
    );
    // The first suffix with a usable record wins: the public tree is not asked.
    assert_eq!(dns.asked(), [format!("NAPTR {PRIVATE}")]);
    assert_eq!(
        steps(&ladder),
        [
            "no route for 05022220000".to_string(),
            "ENUM 05022220000 is +815022220000".into(),
            format!("ENUM NAPTR {PRIVATE}: 5 records"),
            r#"ENUM skipped 10 5 "" "E2U+sip" "" next.example.test.: flags "": only terminal "u" is followed"#.into(),
            r#"ENUM chose 10 10 "u" "E2U+sip" "!^\+81(.*)$!sip:\1@b.example.test!" . → sip:5022220000@b.example.test"#.into(),
        ]
    );
}

#[tokio::test]
async fn a_lower_order_beats_a_better_preference_and_suffixes_go_in_turn() {
    let dns = NameServer::start(vec![
        Record::naptr(
            PUBLIC,
            (20, 1),
            "U",
            "E2U+sip",
            "!^.*$!sip:higher-order@c.example.test!",
            ".",
        ),
        Record::naptr(
            PUBLIC,
            (10, 100),
            "u",
            "e2u+SIP",
            "!^.*$!sip:lower-order@b.example.test!",
            ".",
        ),
    ]);
    let ladder = Ladder::new();
    let target = locator(settings(&dns))
        .target("+81-50-2222-0000", &ladder)
        .await
        .unwrap();
    assert_eq!(
        target,
        enum_target("lower-order", "b.example.test", "e164.arpa")
    );
    let steps = steps(&ladder);
    assert!(
        steps.contains(&format!("ENUM NAPTR {PRIVATE}: NXDOMAIN")),
        "{steps:?}"
    );
    assert!(
        steps.contains(&format!("ENUM NAPTR {PUBLIC}: 2 records")),
        "{steps:?}"
    );
}

#[tokio::test]
async fn without_enum_records_the_outbound_proxy_takes_the_call_or_nobody() {
    // The public tree has the number, but only for mail.
    let dns = NameServer::start(vec![Record::naptr(
        PUBLIC,
        (10, 10),
        "u",
        "E2U+email:mailto",
        "!^.*$!mailto:a@b.example.test!",
        ".",
    )]);
    let mut with_proxy = settings(&dns);
    with_proxy.outbound_proxy = Some("sip:proxy.example.test:5070".into());
    let ladder = Ladder::new();
    let target = locator(with_proxy)
        .target("05022220000", &ladder)
        .await
        .unwrap();
    assert_eq!(
        target,
        Target {
            request_uri: uri("sip:05022220000@a.example.test;user=phone"),
            proxy: Some(uri("sip:proxy.example.test:5070;lr")),
            source: Source::OutboundProxy,
        }
    );
    let taken = steps(&ladder);
    for expected in [
        format!("ENUM NAPTR {PRIVATE}: NXDOMAIN"),
        format!("ENUM {PUBLIC}: no usable SIP record"),
        "outbound proxy sip:proxy.example.test:5070;lr for sip:05022220000@a.example.test;user=phone"
            .into(),
    ] {
        assert!(taken.contains(&expected), "{expected} in {taken:?}");
    }

    let ladder = Ladder::new();
    let error = locator(settings(&dns))
        .target("05022220000", &ladder)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, LocateError::NoRoute(number) if number == "05022220000"),
        "{error}"
    );
    assert_eq!(
        steps(&ladder).last().map(String::as_str),
        Some("no outbound proxy: 05022220000 unreachable")
    );

    // Not national and not international: ENUM is not asked at all.
    let asked_before = dns.asked().len();
    let ladder = Ladder::new();
    assert!(locator(settings(&dns))
        .target("5022220000", &ladder)
        .await
        .is_err());
    assert_eq!(dns.asked().len(), asked_before);
    assert!(steps(&ladder).contains(
        &r#"ENUM skipped: 5022220000 has neither + nor the trunk prefix "0""#.to_string()
    ));
}

#[tokio::test]
async fn a_route_beats_enum_without_asking_dns() {
    let dns = NameServer::start(vec![Record::naptr(
        PRIVATE,
        (10, 10),
        "u",
        "E2U+sip",
        "!^.*$!sip:enum@b.example.test!",
        ".",
    )]);
    let mut routes = settings(&dns);
    routes.default_transport = Transport::Tcp;
    routes.routes = BTreeMap::from([
        ("05022220000".into(), "sip:gw.example.test:5080".into()),
        (
            "*".into(),
            "sip:other@fallback.example.test;transport=udp".into(),
        ),
    ]);
    let locator = locator(routes);
    let ladder = Ladder::new();
    let target = locator.target("05022220000", &ladder).await.unwrap();
    assert_eq!(
        target,
        Target {
            request_uri: uri("sip:05022220000@gw.example.test:5080;transport=tcp"),
            proxy: None,
            source: Source::Route,
        }
    );
    let target = locator.target("0311112222", &ladder).await.unwrap();
    assert_eq!(
        target.request_uri,
        uri("sip:other@fallback.example.test;transport=udp")
    );
    assert!(dns.asked().is_empty(), "{:?}", dns.asked());
    assert_eq!(
        steps(&ladder),
        [
            "route 05022220000 → sip:05022220000@gw.example.test:5080;transport=TCP",
            "route 0311112222 → sip:other@fallback.example.test;transport=UDP",
        ]
    );
}

fn hop(address: &str, transport: SipTransport, server_name: Option<&str>) -> NextHop {
    NextHop {
        address: address.parse().expect("an address"),
        transport,
        server_name: server_name.map(String::from),
    }
}

/// The zone of the RFC 3263 tests.
fn servers() -> NameServer {
    NameServer::start(vec![
        // NAPTR, then SRV for two hosts, then their addresses.
        Record::naptr(
            "naptr.example.test",
            (20, 10),
            "s",
            "SIP+D2U",
            "",
            "_sip._udp.naptr.example.test",
        ),
        Record::naptr(
            "naptr.example.test",
            (10, 10),
            "s",
            "SIP+D2T",
            "",
            "_sip._tcp.naptr.example.test",
        ),
        Record::naptr(
            "naptr.example.test",
            (5, 10),
            "s",
            "SIP+D2W",
            "",
            "_sip._ws.naptr.example.test",
        ),
        Record::srv(
            "_sip._tcp.naptr.example.test",
            20,
            0,
            5070,
            "two.example.test",
        ),
        Record::srv(
            "_sip._tcp.naptr.example.test",
            10,
            0,
            5060,
            "one.example.test",
        ),
        Record::srv(
            "_sip._udp.naptr.example.test",
            10,
            0,
            5060,
            "one.example.test",
        ),
        Record::a("naptr.example.test", [127, 0, 0, 4]),
        Record::a("one.example.test", [127, 0, 0, 1]),
        Record::a("two.example.test", [127, 0, 0, 2]),
        // SRV only, and only for TCP.
        Record::srv(
            "_sip._tcp.srv.example.test",
            10,
            0,
            5062,
            "one.example.test",
        ),
        // An address only.
        Record::a("a-only.example.test", [127, 0, 0, 3]),
    ])
}

async fn next_hops(dns: &NameServer, text: &str) -> (Vec<NextHop>, Vec<String>) {
    let ladder = Ladder::new();
    let hops = locator(settings(dns))
        .next_hops(&uri(text), &ladder)
        .await
        .unwrap_or_else(|error| panic!("{text}: {error}"));
    (hops, steps(&ladder))
}

#[tokio::test]
async fn naptr_then_srv_then_addresses_in_order() {
    let dns = servers();
    let (hops, steps) = next_hops(&dns, "sip:5022220000@naptr.example.test").await;
    let name = Some("naptr.example.test");
    assert_eq!(
        hops,
        [
            hop("127.0.0.1:5060", SipTransport::Tcp, name),
            hop("127.0.0.2:5070", SipTransport::Tcp, name),
            hop("127.0.0.1:5060", SipTransport::Udp, name),
        ]
    );
    assert_eq!(
        steps,
        [
            "RFC 3263 NAPTR naptr.example.test: 3 records, for SIP: \
             [TCP _sip._tcp.naptr.example.test, UDP _sip._udp.naptr.example.test]",
            "RFC 3263 SRV _sip._tcp.naptr.example.test: \
             10 one.example.test:5060, 20 two.example.test:5070",
            "RFC 3263 A/AAAA one.example.test: 127.0.0.1:5060 TCP",
            "RFC 3263 A/AAAA two.example.test: 127.0.0.2:5070 TCP",
            "RFC 3263 SRV _sip._udp.naptr.example.test: 10 one.example.test:5060",
            "RFC 3263 A/AAAA one.example.test: 127.0.0.1:5060 UDP",
            "next hops for sip:5022220000@naptr.example.test: \
             127.0.0.1:5060 TCP, 127.0.0.2:5070 TCP, 127.0.0.1:5060 UDP",
        ]
    );
}

#[tokio::test]
async fn srv_without_naptr_tries_each_transport() {
    let dns = servers();
    let (hops, steps) = next_hops(&dns, "sip:srv.example.test").await;
    assert_eq!(
        hops,
        [hop(
            "127.0.0.1:5062",
            SipTransport::Tcp,
            Some("srv.example.test")
        )]
    );
    // Ours (UDP) first, then TCP, then TLS.
    let srv: Vec<&String> = steps.iter().filter(|s| s.contains(" SRV ")).collect();
    assert_eq!(
        srv,
        [
            "RFC 3263 SRV _sip._udp.srv.example.test: NXDOMAIN",
            "RFC 3263 SRV _sip._tcp.srv.example.test: 10 one.example.test:5062",
            "RFC 3263 SRV _sips._tcp.srv.example.test: NXDOMAIN",
        ]
    );
}

#[tokio::test]
async fn the_other_cases_of_rfc_3263() {
    let dns = servers();
    let a_only = Some("a-only.example.test");
    // Neither NAPTR nor SRV: the domain's address, the default port.
    let (hops, _) = next_hops(&dns, "sip:a-only.example.test").await;
    assert_eq!(hops, [hop("127.0.0.3:5060", SipTransport::Udp, a_only)]);
    // sips: TLS on 5061, named by the URI's domain.
    let (hops, steps) = next_hops(&dns, "sips:x@a-only.example.test").await;
    assert_eq!(hops, [hop("127.0.0.3:5061", SipTransport::Tls, a_only)]);
    assert!(steps.contains(&"RFC 3263 SRV _sips._tcp.a-only.example.test: NXDOMAIN".into()));
    // An IP literal: no DNS, no name to check.
    let asked = dns.asked().len();
    let (hops, _) = next_hops(&dns, "sip:127.0.0.9").await;
    assert_eq!(hops, [hop("127.0.0.9:5060", SipTransport::Udp, None)]);
    let (hops, _) = next_hops(&dns, "sip:127.0.0.9:5099;transport=tcp").await;
    assert_eq!(hops, [hop("127.0.0.9:5099", SipTransport::Tcp, None)]);
    assert_eq!(dns.asked().len(), asked);
    // An explicit port: only A/AAAA, though the domain has NAPTR records.
    let (hops, _) = next_hops(&dns, "sip:naptr.example.test:5080").await;
    assert_eq!(
        hops,
        [hop(
            "127.0.0.4:5080",
            SipTransport::Udp,
            Some("naptr.example.test")
        )]
    );
    assert!(dns.asked()[asked..]
        .iter()
        .all(|q| q.starts_with("A ") || q.starts_with("AAAA ")));
    // A transport param: SRV for it alone, no NAPTR.
    let (hops, _) = next_hops(&dns, "sip:naptr.example.test;transport=udp").await;
    assert_eq!(
        hops,
        [hop(
            "127.0.0.1:5060",
            SipTransport::Udp,
            Some("naptr.example.test")
        )]
    );
    // A name that does not exist.
    let error = locator(settings(&dns))
        .next_hops(&uri("sip:nowhere.example.test"), &Ladder::new())
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot locate sip:nowhere.example.test: A/AAAA nowhere.example.test: NXDOMAIN"
    );
}

#[tokio::test]
async fn bad_settings_are_refused_at_start() {
    let dns = NameServer::start(Vec::new());
    let mut mail_route = settings(&dns);
    mail_route.routes = BTreeMap::from([("*".into(), "mailto:a@b.example.test".into())]);
    let mut letters = settings(&dns);
    letters.trunk_prefix = "O".into();
    for bad in [mail_route, letters] {
        assert!(matches!(Locator::new(bad), Err(LocateError::Settings(_))));
    }
}

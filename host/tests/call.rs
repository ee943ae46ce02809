//! Delivery by call, end to end: two `mailcall serve` hosts on loopback, A
//! (`a.example`) and B (`b.example`). A rule at A finds B's number in the
//! message; A calls B over SIP (direct routes, no SIP server), runs SMTP on
//! the call's channel straight into B, and hangs up. When the call cannot
//! be made, A falls back to normal relay (here: Postfix's smtp-sink).

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::load::{self, Ledger};
use common::server::*;

const B_NUMBER: &str = "05022220000";

/// A host's configuration: SMTP, POP3 and SIP on free loopback ports.
struct Host {
    smtp: u16,
    pop3: u16,
    sip: u16,
}

impl Host {
    fn new() -> Host {
        Host {
            smtp: free_port(),
            pop3: free_port(),
            sip: free_port(),
        }
    }
}

/// Hanako's POP3 password at B.
const PASSWORD: &str = "secret pw";

/// B: the final server for `b.example` (Hanako, whose alias is B's
/// number), answering calls to its number from loopback, with its call
/// channels on `channel_ports`.
fn host_b(b: &Host, channel_ports: &str) -> ConfigFile {
    let sip = format!("127.0.0.1:{}", b.sip);
    ConfigFile::host("mx.b.example", b.smtp, b.pop3, &["b.example"])
        .set("users.hanako", "aliases", vec![B_NUMBER])
        .set("users.hanako", "password_hash", hash_password(PASSWORD))
        .set("sip", "udp_listen", sip.as_str())
        .set("sip", "tcp_listen", sip.as_str())
        .set("sip", "domain", "b.example")
        .set("sip", "numbers", vec![B_NUMBER])
        .set("sip", "allowed_sources", vec!["127.0.0.0/8"])
        .set("sip", "channel_ports", channel_ports)
        .set("admin", "enabled", false)
}

/// A: relays for loopback clients; the embedded-number rule (as built in
/// `build/rules`) finds numbers; `b.example` is relayed to `relay_port`
/// when a call fails. No SIP route yet: [`direct_to`] B, or a registrar.
fn host_a(a: &Host, relay_port: u16) -> ConfigFile {
    let sip = format!("127.0.0.1:{}", a.sip);
    let rules = common::repo().join("build/rules");
    relaying(ConfigFile::host(
        "mx.a.example",
        a.smtp,
        free_port(),
        &["a.example"],
    ))
    .section("users.taro")
    .set("routes", "b.example", format!("127.0.0.1:{relay_port}"))
    .set("policy", "rules_dir", rules.display().to_string())
    .set("policy", "chain", vec!["embedded-number"])
    // These tests are about calls: a rule slowed by a loaded machine
    // (the whole suite at once on 2 cores) must not turn a call into
    // a relay.
    .set("policy", "deadline_ms", 1000)
    .set("sip", "udp_listen", sip.as_str())
    .set("sip", "tcp_listen", sip.as_str())
    .set("sip", "domain", "a.example")
    .set("sip", "numbers", vec!["05011110000"])
    .set("sip", "invite_timeout_secs", 5)
    .set("admin", "enabled", false)
}

/// `file`'s calls go straight to `b_uri` (B's SIP address), without a SIP
/// server.
fn direct_to(file: ConfigFile, b_uri: &str) -> ConfigFile {
    file.set("sip.routes", "*", b_uri)
}

/// A calling B at `b_uri` directly, relaying to `relay_port` when a call
/// fails.
fn a_calling(a: &Host, b_uri: &str, relay_port: u16) -> ConfigFile {
    direct_to(host_a(a, relay_port), b_uri)
}

/// The log of the server in `dir`, for failure messages.
fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

/// Sends `message` from the A side with Python's smtplib (the exact bytes).
fn submit(server: &Server, recipients: &[&str], message: &str) {
    let script = format!(
        "import smtplib\ns = smtplib.SMTP('127.0.0.1', {port}, timeout=30)\nrefused = s.sendmail('taro@a.example', {recipients:?}, {message:?}.encode())\nassert refused == {{}}, refused\ns.quit()\n",
        port = server.address.port(),
    );
    python(&script);
}

#[test]
fn a_message_travels_over_a_call_to_the_final_server() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (Host::new(), Host::new());
    let unused_sink = sink(&a_dir.path().join("sink"), &[]);
    let _b = start_file(b_dir.path(), &host_b(&b, "42000-42009"));
    let b_uri = format!("sip:127.0.0.1:{}", b.sip);
    let a_server = start_file(a_dir.path(), &a_calling(&a, &b_uri, unused_sink.port));
    let message = "From: taro@a.example\r\nTo: hanako@b.example\r\nSubject: by call\r\nMessage-ID: <call-1@a.example>\r\n\r\nPlease call 050-2222-0000 back.\r\n.leading dot\r\n";
    submit(&a_server, &["hanako@b.example"], message);

    // At B, byte for byte, under the Return-Path of final delivery (A's
    // envelope sender) and the two trace headers (B's, then A's).
    let files = wait_for_files(b_dir.path(), "hanako", 1);
    assert_eq!(files.len(), 1, "nothing arrived at B");
    let stored = std::fs::read_to_string(&files[0]).unwrap();
    assert!(stored.ends_with(message), "{stored}");
    let trace = &stored[..stored.len() - message.len()];
    assert!(
        trace.starts_with(
            "Return-Path: <taro@a.example>\r\nReceived: from mx.a.example ([127.0.0.1])\r\n\tby mx.b.example"
        ),
        "{trace}"
    );
    assert_eq!(trace.matches("Received:").count(), 2, "{trace}");
    // And Hanako reads exactly that over POP3.
    let retrieved = python(&format!(
        r#"
import poplib, sys
pop = poplib.POP3("127.0.0.1", {port}, timeout=10)
pop.user("hanako")
pop.pass_("{PASSWORD}")
lines = pop.retr(1)[1]
pop.quit()
sys.stdout.buffer.write(b"".join(line + b"\r\n" for line in lines))
"#,
        port = b.pop3
    ));
    assert_eq!(retrieved, stored);

    // A's history: the call path, the number, the rule, the Call-ID.
    let attempts = wait_for_history(a_dir.path(), "hanako@b.example", "delivered");
    let delivered = attempts
        .iter()
        .find(|a| a["outcome"] == "delivered")
        .unwrap_or_else(|| panic!("{attempts:?}"));
    assert_eq!(delivered["path"], "call", "{delivered}");
    assert_eq!(delivered["number"], B_NUMBER, "{delivered}");
    assert_eq!(delivered["rule"], "embedded-number", "{delivered}");
    assert_eq!(delivered["sip_status"], 200, "{delivered}");
    assert_eq!(delivered["message_id"], "call-1@a.example", "{delivered}");
    let call_id = delivered["call_id"].as_str().unwrap().to_string();
    assert!(!call_id.is_empty());
    assert!(delivered["detail"].as_str().unwrap().starts_with("250"));
    // Nothing went the relay way.
    assert!(wait_for_dumps(&a_dir.path().join("sink"), 0).is_empty());

    // A's log reads as the ladder of that call.
    let log = std::fs::read_to_string(a_dir.path().join("server.log")).unwrap();
    for label in ["S2", "S4", "S5", "T1", "R2", "T2", "S6", "T7"] {
        assert!(
            log.lines()
                .any(|l| l.contains(label) && l.contains(&call_id))
                || (label.starts_with('S') && log.contains(label)),
            "{label} missing in the log:\n{log}"
        );
    }

    // And the attempt carries the ladder itself: `history --ladder`.
    let queue_id = delivered["queue_id"].as_str().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mailcall"))
        .args(["history", "--ladder", "--id", queue_id, "--config"])
        .arg(a_dir.path().join("mailcall.toml"))
        .output()
        .unwrap();
    let ladder = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{ladder}");
    assert!(ladder.contains(&call_id), "{ladder}");
    let labels: Vec<&str> = ladder
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|label| *label != "R1")
        .collect();
    // Where to call (L: the route, its address), then Fig. 4.
    assert_eq!(
        labels[..10],
        ["L", "L", "T1", "T3", "R2", "T2", "R3", "T4", "T5", "T5"],
        "{ladder}"
    );
    assert!(
        ladder.contains("T5 the final server: 250"),
        "the final server's reply: {ladder}"
    );

    // B recorded its own side of the same call in its own history: the
    // message it received, with the ladder as B saw it.
    let b_attempts = wait_for_history(b_dir.path(), "hanako@b.example", "received");
    let received = b_attempts
        .iter()
        .find(|a| a["outcome"] == "received")
        .unwrap();
    assert_eq!(received["path"], "call", "{received}");
    assert_eq!(received["call_id"], call_id.as_str(), "{received}");
    assert_eq!(received["number"], B_NUMBER, "{received}");
    let b_labels: Vec<&str> = received["ladder"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rung| rung["label"].as_str().unwrap())
        .collect();
    // B's view: INVITE in, offer, its 180/200 and answer; then the
    // channel, its session and its end, the ACK, and A's BYE with B's 200.
    // Those race (the ACK and the channel; A closes its side and says BYE
    // while B's session winds down), so only their causal order is fixed.
    assert_eq!(b_labels.len(), 11, "{received}");
    assert_eq!(b_labels[..5], ["T1", "T3", "R1", "R2", "R3"], "{received}");
    let mut rest: Vec<&str> = b_labels[5..].to_vec();
    rest.sort();
    assert_eq!(rest, ["R4", "T2", "T4", "T5", "T6", "T7"], "{received}");
    let at = |label: &str| b_labels.iter().position(|l| *l == label).unwrap();
    assert!(at("T4") < at("T5") && at("T5") < at("T6"), "{received}");
    assert!(at("T7") < at("R4"), "{received}");
}

#[test]
fn when_the_callee_cannot_be_reached_the_message_is_relayed() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = Host::new();
    let relay = sink(&a_dir.path().join("sink"), &[]);
    // B's SIP port has nobody behind it: the TCP connection is refused.
    let nobody = format!("sip:127.0.0.1:{};transport=tcp", free_port());
    let a_server = start_file(a_dir.path(), &a_calling(&a, &nobody, relay.port));
    let message = "From: taro@a.example\r\nTo: hanako@b.example\r\nSubject: fallback\r\n\r\nCall 050-2222-0000.\r\n";
    submit(&a_server, &["hanako@b.example"], message);
    let dumps = wait_for_dumps(&a_dir.path().join("sink"), 1);
    assert_eq!(dumps.len(), 1, "not relayed:\n{}", log_of(a_dir.path()));
    let attempts = wait_for_history(a_dir.path(), "hanako@b.example", "delivered");
    let paths: Vec<(&str, &str)> = attempts
        .iter()
        .map(|a| (a["path"].as_str().unwrap(), a["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        paths,
        [("call", "fell-back"), ("relay", "delivered")],
        "{attempts:?}"
    );
    assert_eq!(attempts[1]["rule"], "embedded-number");
}

#[test]
fn a_callee_that_requires_tls_refuses_a_plain_call_and_a_relays_it() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (Host::new(), Host::new());
    let relay = sink(&a_dir.path().join("sink"), &[]);
    // B answers only over TLS (its certificate: the server's generated one).
    let b_file = host_b(&b, "42070-42079")
        .set("sip", "tls_listen", format!("127.0.0.1:{}", free_port()))
        .set("call", "require_tls", true);
    let _b = start_file(b_dir.path(), &b_file);
    let b_uri = format!("sip:127.0.0.1:{}", b.sip);
    let a_server = start_file(a_dir.path(), &a_calling(&a, &b_uri, relay.port));
    let message = "From: taro@a.example\r\nTo: hanako@b.example\r\nSubject: in clear\r\n\r\nCall 050-2222-0000.\r\n";
    submit(&a_server, &["hanako@b.example"], message);
    let dumps = wait_for_dumps(&a_dir.path().join("sink"), 1);
    assert_eq!(dumps.len(), 1, "not relayed:\n{}", log_of(a_dir.path()));
    assert!(maildir_files(b_dir.path(), "hanako").is_empty());
    let attempts = wait_for_history(a_dir.path(), "hanako@b.example", "delivered");
    assert_eq!(attempts[0]["outcome"], "fell-back", "{attempts:?}");
    assert_eq!(attempts[0]["sip_status"], 403, "{attempts:?}");
    assert!(
        log_of(b_dir.path()).contains("require_tls: the INVITE came over UDP"),
        "{}",
        log_of(b_dir.path())
    );
}

#[test]
fn with_retry_a_failed_call_waits_in_the_queue() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = Host::new();
    let relay = sink(&a_dir.path().join("sink"), &[]);
    let nobody = format!("sip:127.0.0.1:{};transport=tcp", free_port());
    let a_server = start_file(
        a_dir.path(),
        &a_calling(&a, &nobody, relay.port).set("call", "on_failure", "retry"),
    );
    let message = "From: taro@a.example\r\nTo: hanako@b.example\r\nSubject: retry\r\n\r\nCall 050-2222-0000.\r\n";
    submit(&a_server, &["hanako@b.example"], message);
    let listing = wait_for_queue(a_dir.path(), &["hanako@b.example  deferred (1 attempts"]);
    assert!(
        listing.contains("hanako@b.example  deferred (1 attempts")
            && listing.contains("call to 05022220000 failed"),
        "{listing}\n{}",
        log_of(a_dir.path())
    );
    assert!(wait_for_dumps(&a_dir.path().join("sink"), 0).is_empty());
}

#[test]
fn mailcall_demo_delivers_every_sample_where_it_belongs() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mailcall"))
        .args(["demo", "--rules-dir"])
        .arg(common::repo().join("build/rules"))
        .arg("--dir")
        .arg(dir.path().join("demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("Every message ended where it should."),
        "{stdout}"
    );
    // The ladder of one call, as A recorded it with the attempt, in order.
    let ladder: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("The call ladder"))
        .take_while(|l| !l.trim().is_empty())
        .collect();
    let position = |needle: &str| {
        ladder
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} missing in\n{}", ladder.join("\n")))
    };
    assert!(position("A -> B  T1 INVITE") < position("A <- B  R2 200 OK"));
    assert!(position("A <- B  R2 200 OK") < position("A -> B  T2 ACK"));
    assert!(position("A -> B  T2 ACK") < position("A <- B  R3 answer: smtp at"));
    assert!(position("A -> B  T4 channel opened") < position("T5 the final server: 250"));
    assert!(position("T5 the final server: 250") < position("A -> B  T6 channel closed"));
    // Either end may hang up first once the session is over.
    assert!(position("A -> B  T6 channel closed") < position("  R4 "));
    // Every path is in the results table.
    for row in [
        "050-2222-0000@b.example  call",
        "someone@c.example        relay",
        "taro@a.example           local",
        "fell-back",
    ] {
        assert!(stdout.contains(row), "{row} missing in\n{stdout}");
    }
}

#[test]
fn the_final_servers_answers_come_back_as_notices_delivered_or_failed() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (Host::new(), Host::new());
    let relay = sink(&a_dir.path().join("sink"), &[]);
    let _b = start_file(b_dir.path(), &host_b(&b, "42010-42019"));
    let b_uri = format!("sip:127.0.0.1:{}", b.sip);
    let a_server = start_file(a_dir.path(), &a_calling(&a, &b_uri, relay.port));
    // One call for both recipients (same number); B knows only hanako.
    let script = format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port}, timeout=30)
message = b"Subject: two recipients\r\n\r\nCall 050-2222-0000.\r\n"
refused = s.sendmail("taro@a.example", ["hanako@b.example", "nobody@b.example"], message,
                     rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
assert refused == {{}}, refused
s.quit()
"#,
        port = a_server.address.port()
    );
    python(&script);

    assert_eq!(wait_for_files(b_dir.path(), "hanako", 1).len(), 1);
    let failed = wait_for_history(a_dir.path(), "nobody@b.example", "failed");
    assert!(
        failed.iter().any(|a| a["outcome"] == "failed"
            && a["path"] == "call"
            && a["detail"].as_str().unwrap().starts_with("550 5.1.1")),
        "{failed:?}\n{}",
        log_of(a_dir.path())
    );
    let delivered = wait_for_history(a_dir.path(), "hanako@b.example", "delivered");
    let call_ids: Vec<_> = [&failed, &delivered]
        .iter()
        .flat_map(|attempts| attempts.iter().map(|a| a["call_id"].clone()))
        .collect();
    assert!(
        call_ids.windows(2).all(|w| w[0] == w[1]),
        "one call: {call_ids:?}"
    );
    // Nothing was relayed: a 550 from the final server is final.
    assert!(wait_for_dumps(&a_dir.path().join("sink"), 0).is_empty());

    // The sender (local at A) hears of both in one report: "delivered"
    // (the final server took it, over the call) and "failed".
    let notices = wait_for_files(a_dir.path(), "taro", 1);
    let texts: Vec<String> = notices
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let all = texts.join("\n----\n");
    assert!(
        all.contains("Final-Recipient: rfc822; hanako@b.example\r\nAction: delivered"),
        "{all}"
    );
    assert!(
        all.contains(
            "Final-Recipient: rfc822; nobody@b.example\r\nAction: failed\r\nStatus: 5.1.1"
        ),
        "{all}"
    );
}

/// Waits (at most 10 s) for `needle` in the server log in `dir`.
fn wait_for_log(dir: &Path, needle: &str) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(10) {
        if log_of(dir).contains(needle) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

#[test]
fn through_kamailio_swaks_to_a_and_pop3_at_b() {
    let kamailio = Kamailio::start(KamailioAuth::None);
    let proxy = format!("sip:127.0.0.1:{}", kamailio.port);
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (Host::new(), Host::new());
    let unused_sink = sink(&a_dir.path().join("sink"), &[]);

    // B registers its number with Kamailio; A sends every call through it.
    let b_console = free_port();
    let registered = host_b(&b, "42020-42029")
        .set("sip", "registrar", proxy.as_str())
        .set("sip", "register_expires_secs", 60);
    let b_server = start_file(b_dir.path(), &console(registered, b_console));
    assert!(
        wait_for_log(b_dir.path(), "registered at"),
        "B did not register:\n{}",
        log_of(b_dir.path())
    );
    // B's console shows the registration, and no call yet.
    let (status, _, overview) = http(b_console, "GET", "/", None, "");
    assert_eq!(status, 200);
    let registration = &overview[overview.find("<table id=\"registrations\">").unwrap()..];
    assert!(
        registration.contains(B_NUMBER)
            && registration.contains(&proxy)
            && registration.contains("id=\"registration-0\">registered (200)<"),
        "{registration}"
    );
    assert!(
        overview.contains("<strong id=\"calls\">0</strong>"),
        "{overview}"
    );
    let through_proxy = host_a(&a, unused_sink.port)
        .set("sip", "registrar", proxy.as_str())
        .set("sip", "outbound_proxy", proxy.as_str());
    let a_server = start_file(a_dir.path(), &through_proxy);

    let (ok, transcript) = swaks(
        &a_server,
        &[
            "--from",
            "taro@a.example",
            "--to",
            "hanako@b.example",
            "--h-Subject",
            "through Kamailio",
            "--body",
            "Call me at 050-2222-0000.",
        ],
    );
    assert!(ok, "{transcript}");
    let attempts = wait_for_history(a_dir.path(), "hanako@b.example", "delivered");
    let delivered = attempts
        .iter()
        .find(|a| a["outcome"] == "delivered")
        .unwrap_or_else(|| panic!("{attempts:?}\n{}", log_of(a_dir.path())));
    assert_eq!(delivered["path"], "call", "{delivered}");
    assert_eq!(delivered["number"], B_NUMBER);
    let call_id = delivered["call_id"].as_str().unwrap();
    // The INVITE went to Kamailio, which found B by its registration.
    let a_log = log_of(a_dir.path());
    assert!(
        a_log
            .lines()
            .any(|l| l.contains("T1 INVITE") && l.contains(call_id) && l.contains(&proxy)),
        "{a_log}"
    );

    // Hanako reads it at B over POP3, as sent (plus the trace headers).
    let script = format!(
        r#"
import poplib
pop = poplib.POP3("127.0.0.1", {port}, timeout=10)
pop.user("hanako")
pop.pass_("{PASSWORD}")
lines = pop.retr(1)[1]
pop.quit()
print("\n".join(line.decode() for line in lines))
"#,
        port = b.pop3
    );
    let text = python(&script);
    assert!(
        text.starts_with("Return-Path: <taro@a.example>\nReceived: from mx.a.example"),
        "{text}"
    );
    assert!(text.contains("Subject: through Kamailio"), "{text}");
    assert!(text.contains("Call me at 050-2222-0000."), "{text}");

    // B stops (SIGTERM) and unregisters its number.
    let pid = b_server._process.child.id().to_string();
    let stopped = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(stopped.success());
    assert!(
        wait_for_log(b_dir.path(), "unregistered: 200"),
        "B did not unregister:\n{}",
        log_of(b_dir.path())
    );
}

/// A sipp UAS (Debian package `sip-tester`) on a free UDP port running a
/// scenario of the SIP crate's tests for one call; killed when dropped.
fn sipp_uas(scenario: &str, replacements: &[(&str, &str)]) -> (u16, Process, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    // The host's own scenarios, else the SIP crate's.
    let own = common::repo().join("host/tests/sipp").join(scenario);
    let source = if own.exists() {
        own
    } else {
        common::repo().join("sip/tests/sipp").join(scenario)
    };
    let template = std::fs::read_to_string(source).unwrap();
    let text = replacements
        .iter()
        .fold(template, |text, (from, to)| text.replace(from, to));
    let path = dir.path().join(scenario);
    std::fs::write(&path, text).unwrap();
    let port = free_port();
    let child = Command::new("sipp")
        .arg("-sf")
        .arg(&path)
        .args([
            "-m",
            "1",
            "-nostdin",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(["-mp", &free_port().to_string(), "-timeout", "30s"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sipp (scripts/setup installs sip-tester)");
    wait_until("sipp did not start", || {
        std::net::UdpSocket::bind(("127.0.0.1", port)).is_err()
    });
    (port, Process::of("sipp", child), dir)
}

#[test]
fn a_busy_callee_means_relay_at_once_by_default() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = Host::new();
    let relay = sink(&a_dir.path().join("sink"), &[]);
    let (port, _sipp, _scenario) = sipp_uas(
        "uas_reject.xml",
        &[("@CODE@", "486"), ("@REASON@", "Busy Here")],
    );
    let a_server = start_file(
        a_dir.path(),
        &a_calling(&a, &format!("sip:127.0.0.1:{port}"), relay.port),
    );
    let message = "Subject: busy\r\n\r\nCall 050-2222-0000.\r\n";
    submit(&a_server, &["hanako@b.example"], message);
    let attempts = wait_for_history(a_dir.path(), "hanako@b.example", "delivered");
    let steps: Vec<_> = attempts
        .iter()
        .map(|a| {
            (
                a["path"].clone(),
                a["outcome"].clone(),
                a["sip_status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("call".into(), "fell-back".into(), 486.into()),
            ("relay".into(), "delivered".into(), serde_json::Value::Null)
        ],
        "{attempts:?}\n{}",
        log_of(a_dir.path())
    );
    // The failed call's ladder ends where it stopped: B's 486.
    let ladder = attempts[0]["ladder"].as_array().unwrap();
    let last = ladder.last().unwrap();
    assert_eq!(last["label"], "R2", "{ladder:?}");
    assert!(
        last["text"].as_str().unwrap().starts_with("486"),
        "{ladder:?}"
    );
    assert!(attempts[1].get("ladder").is_none(), "a relay has no ladder");
    assert_eq!(wait_for_dumps(&a_dir.path().join("sink"), 1).len(), 1);
}

#[test]
fn a_callee_that_never_answers_is_cancelled_and_retried_later() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = Host::new();
    let relay = sink(&a_dir.path().join("sink"), &[]);
    let (port, _sipp, _scenario) = sipp_uas("uas_no_answer.xml", &[]);
    let retrying = a_calling(&a, &format!("sip:127.0.0.1:{port}"), relay.port)
        .set("call", "on_failure", "retry-then-relay")
        .set("call", "retries", 2);
    let a_server = start_file(a_dir.path(), &retrying);
    submit(
        &a_server,
        &["hanako@b.example"],
        "Subject: ringing\r\n\r\nCall 050-2222-0000.\r\n",
    );
    let listing = wait_for_queue(a_dir.path(), &["hanako@b.example  deferred (1 attempts"]);
    assert!(
        listing.contains("call to 05022220000 failed: timed out"),
        "{listing}\n{}",
        log_of(a_dir.path())
    );
    assert!(log_of(a_dir.path()).contains("T1 CANCEL"));
    assert!(wait_for_dumps(&a_dir.path().join("sink"), 0).is_empty());
}

#[test]
fn in_synchronous_mode_the_client_hears_the_final_servers_answer() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (Host::new(), Host::new());
    let relay = sink(&a_dir.path().join("sink"), &[]);
    let _b = start_file(b_dir.path(), &host_b(&b, "42030-42039"));
    let b_uri = format!("sip:127.0.0.1:{}", b.sip);
    let synchronous = a_calling(&a, &b_uri, relay.port).set(
        "server",
        "synchronous_networks",
        vec!["127.0.0.0/8"],
    );
    let a_server = start_file(a_dir.path(), &synchronous);
    let script = format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port}, timeout=60)
s.ehlo("client.test")
message = b"Subject: sync\r\n\r\nCall 050-2222-0000.\r\n"
for rcpt in ["hanako@b.example", "nobody@b.example"]:
    s.mail("taro@a.example")
    s.rcpt(rcpt)
    code, text = s.data(message)
    print(rcpt, code, text.decode())
s.quit()
"#,
        port = a_server.address.port()
    );
    let stdout = python(&script);
    assert!(
        stdout.contains("hanako@b.example 250 2.0.0 Ok: the final server took it over a call"),
        "{stdout}\n{}",
        log_of(a_dir.path())
    );
    assert!(
        stdout
            .contains("nobody@b.example 550 5.1.1 <nobody@b.example>: Recipient address rejected"),
        "{stdout}"
    );
    // The refusal was told in the session: no bounce as well.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(wait_for_files(a_dir.path(), "taro", 0).is_empty());
    assert_eq!(wait_for_files(b_dir.path(), "hanako", 1).len(), 1);
}

/// `module` with a custom section appended: another version of the same
/// rule (a different SHA-256), deciding alike.
fn another_version(module: &[u8], tag: u8) -> Vec<u8> {
    let name = b"mailcall-test-version";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.push(tag);
    let mut bytes = module.to_vec();
    bytes.push(0); // custom section
    bytes.push(section.len() as u8);
    bytes.extend_from_slice(&section);
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn rules_replaced_ten_times_under_load_lose_and_delay_nothing() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (Host::new(), Host::new());
    let relay = sink(&a_dir.path().join("sink"), &[]);
    let _b = start_file(b_dir.path(), &host_b(&b, "42040-42049"));
    // A's rules folder holds its own copy of the rule, rewritten below.
    let rules = a_dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    let original = std::fs::read(common::repo().join("build/rules/embedded-number.wasm")).unwrap();
    let versions: Vec<Vec<u8>> = (0..2).map(|tag| another_version(&original, tag)).collect();
    let digests: Vec<String> = versions.iter().map(|v| sha256_hex(v)).collect();
    let module = rules.join("embedded-number.wasm");
    std::fs::write(&module, &versions[0]).unwrap();
    let b_uri = format!("sip:127.0.0.1:{}", b.sip);
    let own_rules =
        a_calling(&a, &b_uri, relay.port).set("policy", "rules_dir", rules.display().to_string());
    let a_server = start_file(a_dir.path(), &own_rules);

    // A bounded stream: 40 messages, one every 100 ms, on one connection.
    const MESSAGES: usize = 40;
    let script = format!(
        r#"
import smtplib, time
s = smtplib.SMTP("127.0.0.1", {port}, timeout=30)
for n in range({MESSAGES}):
    message = ("Subject: load %d\r\n\r\nCall 050-2222-0000.\r\n" % n).encode()
    refused = s.sendmail("taro@a.example", ["hanako@b.example"], message)
    assert refused == {{}}, refused
    time.sleep(0.1)
s.quit()
"#,
        port = a_server.address.port()
    );
    let mut stream = Command::new("python3")
        .arg("-c")
        .arg(script)
        .spawn()
        .unwrap();
    // Meanwhile the rule is replaced ten times (write, then rename, as an
    // operator's deploy would).
    for n in 1..=10 {
        std::thread::sleep(std::time::Duration::from_millis(350));
        let staged = rules.join(".embedded-number.wasm.new");
        std::fs::write(&staged, &versions[n % 2]).unwrap();
        std::fs::rename(&staged, &module).unwrap();
    }
    assert!(stream.wait().unwrap().success());

    let files = wait_for_files(b_dir.path(), "hanako", MESSAGES);
    assert_eq!(files.len(), MESSAGES, "{}", log_of(a_dir.path()));
    let attempts: Vec<serde_json::Value> = history(a_dir.path());
    assert_eq!(
        attempts.len(),
        MESSAGES,
        "one attempt each, none deferred: {attempts:?}"
    );
    let mut seen = std::collections::BTreeSet::new();
    for attempt in &attempts {
        assert_eq!(attempt["outcome"], "delivered", "{attempt}");
        assert_eq!(attempt["path"], "call", "{attempt}");
        let version = attempt["rule_version"].as_str().unwrap().to_string();
        assert!(
            digests
                .iter()
                .any(|d| d.starts_with(&version) || version.starts_with(d.as_str())),
            "{version} is neither version"
        );
        seen.insert(version);
    }
    assert_eq!(
        seen.len(),
        2,
        "both versions decided some deliveries: {seen:?}"
    );
    let reloads = log_of(a_dir.path()).matches("policy reloaded").count();
    assert!(reloads >= 2, "{reloads} reloads");
}

/// A final server that breaks off in the middle of DATA: it greets, takes
/// the envelope, reads part of the message and closes the connection.
fn breaks_off_in_data() -> (u16, std::thread::JoinHandle<usize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        writer.write_all(b"220 fake final server\r\n").unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                return 0;
            }
            let reply: &[u8] = match line.get(..4).map(str::to_ascii_uppercase).as_deref() {
                Some("EHLO") => b"250 fake\r\n",
                Some("DATA") => b"354 go on\r\n",
                _ => b"250 ok\r\n",
            };
            writer.write_all(reply).unwrap();
            if reply.starts_with(b"354") {
                break;
            }
        }
        // A few bytes of the message, then the connection drops.
        let mut some = [0u8; 16];
        let read = reader.read(&mut some).unwrap_or(0);
        drop(writer);
        read
    });
    (port, server)
}

#[test]
fn a_final_server_that_breaks_off_in_data_means_relay_and_one_copy() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = Host::new();
    let relay = sink(&a_dir.path().join("sink"), &[]);
    let (channel_port, final_server) = breaks_off_in_data();
    let (port, _sipp, _scenario) =
        sipp_uas("uas_answer.xml", &[("@PORT@", &channel_port.to_string())]);
    let a_server = start_file(
        a_dir.path(),
        &a_calling(&a, &format!("sip:127.0.0.1:{port}"), relay.port),
    );
    submit(
        &a_server,
        &["hanako@b.example"],
        "Subject: broken off\r\n\r\nCall 050-2222-0000.\r\n",
    );
    assert!(final_server.join().unwrap() > 0, "the message had started");
    let attempts = wait_for_history(a_dir.path(), "hanako@b.example", "delivered");
    let steps: Vec<_> = attempts
        .iter()
        .map(|a| (a["path"].as_str().unwrap(), a["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [("call", "fell-back"), ("relay", "delivered")],
        "{attempts:?}\n{}",
        log_of(a_dir.path())
    );
    assert!(
        attempts[0]["detail"].as_str().unwrap().contains("4.4.2"),
        "{attempts:?}"
    );
    // Exactly one copy went on, by relay.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(wait_for_dumps(&a_dir.path().join("sink"), 1).len(), 1);
}

/// How many lines of the log in `dir` contain `needle`.
fn count_in_log(dir: &Path, needle: &str) -> usize {
    log_of(dir).lines().filter(|l| l.contains(needle)).count()
}

/// A's delivery concurrency in the crash tests, and so the most calls in
/// flight when A is killed.
const A_PARALLEL: usize = 4;

/// Prints the verdict of a crash test, and asserts nothing acknowledged
/// was lost or changed, and at most `duplicates` delivered twice.
fn assert_crash_verdict(verdict: &load::Verdict, duplicates: usize, a_dir: &Path, b_dir: &Path) {
    println!("{}", verdict.summary());
    if !verdict.duplicated.is_empty() {
        println!("duplicated: {:?}", verdict.duplicated);
    }
    let logs = || {
        let tail = |dir: &Path| {
            let log = log_of(dir);
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(25)..].join("\n")
        };
        format!("--- A ---\n{}\n--- B ---\n{}", tail(a_dir), tail(b_dir))
    };
    assert!(
        verdict.lost.is_empty() && verdict.corrupted.is_empty(),
        "{}\nlost {:?}\ncorrupted {:?}\n{}",
        verdict.summary(),
        verdict.lost,
        verdict.corrupted,
        logs()
    );
    assert!(
        verdict.refused_but_delivered.is_empty() && verdict.strangers == 0,
        "{}\n{}",
        verdict.summary(),
        logs()
    );
    assert!(
        verdict.duplicated.len() <= duplicates,
        "more than {duplicates} duplicates: {:?}\n{}",
        verdict.duplicated,
        logs()
    );
}

#[test]
fn a_caller_killed_mid_call_loses_nothing_and_duplicates_at_most_its_calls_in_flight() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (Host::new(), Host::new());
    let _b = start_file(b_dir.path(), &host_b(&b, "42050-42059"));
    let b_uri = format!("sip:127.0.0.1:{}", b.sip);
    // A failed call falls back to relay straight into B: every path ends
    // in B's Maildir, where the messages are counted.
    let parallel = a_calling(&a, &b_uri, b.smtp).set("relay", "max_parallel", A_PARALLEL as i64);
    let a_server = start_file(a_dir.path(), &parallel);

    // Bounded: 2 clients, at most 40 messages each, 30 s.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let clients = load::run(
        a_server.address,
        "c",
        "hanako@b.example",
        2,
        40,
        |n| 800 + (n * 7919) % 4000,
        ledger.clone(),
        Duration::from_secs(30),
    );
    // Kill A once B took a few messages over calls and another call's
    // SMTP has begun but not ended: A dies in the middle of a call.
    let started = Instant::now();
    loop {
        let accepted = count_in_log(b_dir.path(), "accepted");
        let begun = count_in_log(b_dir.path(), "SMTP over the call's channel");
        let ended = count_in_log(b_dir.path(), "SMTP session over the call");
        if (accepted >= 5 && begun > ended) || started.elapsed() > Duration::from_secs(30) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(a_server); // SIGKILL
    for client in clients {
        client.join().unwrap();
    }
    let ledger = Arc::try_unwrap(ledger).unwrap().into_inner().unwrap();
    assert!(
        ledger.accepted() >= 5,
        "load too slow: {}\n{}",
        ledger.accepted(),
        log_of(a_dir.path())
    );
    let calls_before = count_in_log(b_dir.path(), "SMTP over the call's channel");

    // A again: it finds its queue and calls for what was not delivered.
    let _a_server = start_file(a_dir.path(), &parallel);
    let maildir = b_dir.path().join("data/mail/hanako");
    let found = load::wait_delivered(&maildir, &ledger, Duration::from_secs(30));
    let verdict = load::check(&ledger, &found);
    print!(
        "caller killed mid-call ({} calls before the kill): ",
        calls_before
    );
    // A message can be doubled only if B took it (250) while A died
    // before recording that: at most the calls A had in flight.
    assert_crash_verdict(&verdict, A_PARALLEL, a_dir.path(), b_dir.path());
    let listing = wait_for_queue(a_dir.path(), &["the queue is empty"]);
    assert!(listing.contains("the queue is empty"), "{listing}");
}

#[test]
fn a_callee_killed_after_its_250_before_the_bye_loses_and_doubles_nothing() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (Host::new(), Host::new());
    let b_server = start_file(b_dir.path(), &host_b(&b, "42060-42069"));
    let b_uri = format!("sip:127.0.0.1:{}", b.sip);
    let a_server = start_file(a_dir.path(), &a_calling(&a, &b_uri, b.smtp));
    let mut ledger = Ledger::default();

    // One message at a time. As soon as B has begun SMTP over the call, A
    // is frozen (SIGSTOP) and then let run in slices of 200 µs until B has
    // accepted the message: A, frozen, cannot hang up, and B's 250 is on
    // its way. If B saw the BYE first (A finished within one slice), the
    // moment was missed and the next message tries again (bounded: 20
    // messages, 500 slices each).
    let a_pid = a_server._process.child.id() as libc::pid_t;
    let freeze = |stop: bool| {
        let signal = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on our own child; no memory is involved.
        assert_eq!(unsafe { libc::kill(a_pid, signal) }, 0);
    };
    let counts = || {
        (
            count_in_log(b_dir.path(), "accepted"),
            count_in_log(b_dir.path(), "SMTP over the call's channel"),
            count_in_log(b_dir.path(), "BYE from the peer"),
        )
    };
    let mut caught = None;
    for n in 0..20 {
        let (accepted, calls, byes) = counts();
        let token = format!("bye{n}");
        let text = load::message(&token, 1200);
        let answer = load::send(
            a_server.address,
            "taro@a.example",
            "hanako@b.example",
            &text,
        );
        assert_eq!(answer, load::Answer::Accepted);
        ledger.sent.insert(token.clone(), (text, answer));
        let started = Instant::now();
        while counts().1 == calls && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_micros(100));
        }
        freeze(true);
        for _ in 0..500 {
            // B (running) reads what A sent and answers it.
            std::thread::sleep(Duration::from_millis(20));
            let now = counts();
            if now.0 > accepted {
                if now.1 > calls && now.2 == byes {
                    caught = Some(token.clone());
                }
                break;
            }
            freeze(false);
            std::thread::sleep(Duration::from_micros(200));
            freeze(true);
        }
        if caught.is_some() {
            break;
        }
        freeze(false);
    }
    let Some(caught) = caught else {
        panic!(
            "never caught a call between B's 250 and the BYE in 20 tries\n{}",
            log_of(b_dir.path())
        );
    };
    // B's 250 reaches A's socket; then B dies.
    std::thread::sleep(Duration::from_millis(100));
    drop(b_server); // SIGKILL, the BYE not yet received
    freeze(false);

    // B again, on the same ports: what it had accepted is still queued.
    let _b_server = start_file(b_dir.path(), &host_b(&b, "42060-42069"));
    let maildir = b_dir.path().join("data/mail/hanako");
    let found = load::wait_delivered(&maildir, &ledger, Duration::from_secs(30));
    let verdict = load::check(&ledger, &found);
    print!("callee killed after its 250 for {caught}, before the BYE: ");
    // A got the 250: the message is delivered for A, which must not send
    // it again; B has it in its queue and delivers it once.
    assert_crash_verdict(&verdict, 0, a_dir.path(), b_dir.path());
    let listing = wait_for_queue(a_dir.path(), &["the queue is empty"]);
    assert!(
        listing.contains("the queue is empty"),
        "{listing}\n{}",
        log_of(a_dir.path())
    );
}

#[test]
fn the_console_draws_each_calls_ladder_and_the_metrics_count_what_was_sent() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (Host::new(), Host::new());
    let relay = sink(&a_dir.path().join("sink"), &[]);
    let _b = start_file(b_dir.path(), &host_b(&b, "42030-42039"));
    let b_uri = format!("sip:127.0.0.1:{}", b.sip);
    let console = free_port();
    let a_server = start_file(
        a_dir.path(),
        &common::server::console(a_calling(&a, &b_uri, relay.port), console),
    );
    // One message by each path: a call, a relay, a local mailbox.
    let mail = |subject: &str, body: &str| {
        format!("From: taro@a.example\r\nSubject: {subject}\r\n\r\n{body}\r\n")
    };
    submit(
        &a_server,
        &["hanako@b.example"],
        &mail("by call", "Call 050-2222-0000."),
    );
    submit(
        &a_server,
        &["someone@b.example"],
        &mail("by relay", "No number."),
    );
    submit(&a_server, &["taro@a.example"], &mail("local", "For me."));
    let mut call_id = String::new();
    let mut queue_id = String::new();
    for rcpt in ["hanako@b.example", "someone@b.example", "taro@a.example"] {
        let attempts = wait_for_history(a_dir.path(), rcpt, "delivered");
        let delivered = attempts
            .iter()
            .find(|a| a["outcome"] == "delivered")
            .unwrap_or_else(|| panic!("{rcpt}: {attempts:?}"));
        if rcpt.starts_with("hanako") {
            assert_eq!(delivered["path"], "call", "{delivered}");
            call_id = delivered["call_id"].as_str().unwrap().to_string();
            queue_id = delivered["queue_id"].as_str().unwrap().to_string();
        }
    }

    // /metrics: what promtool accepts, counting what was sent.
    let (status, _, metrics) = http(console, "GET", "/metrics", None, "");
    assert_eq!(status, 200, "{metrics}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/setup installs it)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(checked.status.success(), "promtool: {checked:?}\n{metrics}");
    for sample in [
        "mailcall_smtp_messages_total{result=\"accepted\"} 3\n",
        "mailcall_deliveries_total{path=\"call\",outcome=\"delivered\"} 1\n",
        "mailcall_deliveries_total{path=\"relay\",outcome=\"delivered\"} 1\n",
        "mailcall_deliveries_total{path=\"local\",outcome=\"delivered\"} 1\n",
        "mailcall_calls_total{status=\"200\"} 1\n",
        "mailcall_call_setup_seconds_count 1\n",
        "mailcall_delivery_seconds_count{path=\"call\"} 1\n",
        "mailcall_queue_messages 0\n",
        "mailcall_rule_decisions_total{rule=\"embedded-number\",kind=\"dial\"} 1\n",
        "mailcall_rule_failures_total{rule=\"embedded-number\",kind=\"timeout\"} 0\n",
        "mailcall_rule_evaluations_total{rule=\"embedded-number\"} ",
        "mailcall_policy_generation{generation=\"1-",
        "mailcall_rule_seconds_count{rule=\"embedded-number\"} ",
        "mailcall_calls_in_progress 0\n",
        "mailcall_queue_recipients{state=\"held\"} 0\n",
    ] {
        assert!(metrics.contains(sample), "{sample:?} missing:\n{metrics}");
    }
    // The call's channel carried the message both ways (A's side).
    let bytes = |direction: &str| -> u64 {
        let marker = format!("mailcall_channel_bytes_total{{direction=\"{direction}\"}} ");
        metrics[metrics
            .find(&marker)
            .unwrap_or_else(|| panic!("{marker}:\n{metrics}"))
            + marker.len()..]
            .split('\n')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(bytes("sent") > 200 && bytes("received") > 50, "{metrics}");

    // A real browser reads the pages; screenshots stay in the target
    // folder (target/tmp/console/).
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&shots).unwrap();
    let url = |path: &str| format!("http://127.0.0.1:{console}{path}");
    let detail = browse(
        &url(&format!("/deliveries/{queue_id}")),
        &shots.join("delivery.png"),
    );
    assert!(detail.contains(&call_id), "{detail}");
    assert!(detail.contains("<svg class=\"ladder\""), "{detail}");
    let labels: Vec<&str> = detail
        .split("data-label=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|label| *label != "R1")
        .collect();
    assert_eq!(
        labels[..10],
        ["L", "L", "T1", "T3", "R2", "T2", "R3", "T4", "T5", "T5"],
        "{detail}"
    );
    assert!(labels.contains(&"T7"), "no BYE: {labels:?}");
    assert!(detail.contains("T5 the final server: 250"), "{detail}");
    let list = browse(&url("/deliveries"), &shots.join("deliveries.png"));
    assert_eq!(list.matches("<tr class=\"attempt\">").count(), 3, "{list}");
    let calls = browse(&url("/deliveries?path=call"), &shots.join("calls.png"));
    assert_eq!(
        calls.matches("<tr class=\"attempt\">").count(),
        1,
        "{calls}"
    );
    let overview = browse(&url("/"), &shots.join("overview.png"));
    assert!(
        overview.contains("<strong id=\"accepted\">3</strong>"),
        "{overview}"
    );
    // The rules page: the chain's rule with the module that decided and
    // its counters (it dialed for the call).
    let rules = browse(&url("/rules"), &shots.join("rules.png"));
    let counter = |name: &str| -> u64 {
        let row = rules
            .split("data-rule=\"embedded-number\"")
            .nth(1)
            .unwrap_or_else(|| panic!("no embedded-number row in {rules}"));
        let marker = format!("data-counter=\"{name}\">");
        row[row.find(&marker).unwrap() + marker.len()..]
            .split('<')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(counter("dials") >= 1, "{rules}");
    assert!(counter("evaluations") >= counter("dials"), "{rules}");
    assert_eq!(counter("failures"), 0, "{rules}");
    assert!(rules.contains("in force"), "{rules}");
    // Its mode, and latency percentiles from its evaluations.
    let row = rules.split("data-rule=\"embedded-number\"").nth(1).unwrap();
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("<td data-mode=\"\">active</td>"), "{row}");
    assert!(row.contains("<td data-contract=\"\">0.2.0</td>"), "{row}");
    for quantile in ["p50", "p90", "p99"] {
        let marker = format!("data-latency=\"{quantile}\">≤ ");
        assert!(row.contains(&marker), "{quantile}: {row}");
    }
    // Bad requests get 4xx.
    assert_eq!(
        http(console, "GET", "/deliveries?path=nowhere", None, "").0,
        400
    );
    assert_eq!(
        http(console, "GET", "/deliveries/0000000000000000", None, "").0,
        404
    );
    assert_eq!(http(console, "GET", "/nothing-here", None, "").0, 404);
}

//! Delivery by call across NAT, with real address translation: A and B
//! run `mailcall serve` in two network namespaces joined by a veth pair
//! (10.77.0.1 and 10.77.0.2). B sits behind a port-forwarding NAT: its
//! sockets are on 10.77.0.2 while it is reached at 192.0.2.80, which it
//! advertises (`[sip] external_address`) in Via, Contact and the SDP.
//! In the second test A is behind a source NAT it does not know about
//! (198.51.100.7): its SDP names 10.77.0.1 while its connections come from
//! 198.51.100.7, which B accepts for the channel only because the call's
//! signalling came over TLS from that address and the channel proves the
//! offered fingerprint; the third test shows the same channel refused when
//! the signalling was plain UDP.
//!
//! Needs root (`ip netns`, `nft`); skipped with a message otherwise.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::server::*;
use mailcall_testbed::netns::{self, Netns};
use mailcall_testbed::pki::{Issued, Pki};

const B_NUMBER: &str = "05022220000";
const B_INSIDE: &str = "10.77.0.2";
const B_OUTSIDE: &str = "192.0.2.80";
const A_INSIDE: &str = "10.77.0.1";
const A_OUTSIDE: &str = "198.51.100.7";

/// The two namespaces, B behind its NAT; A behind one too with `a_natted`.
fn topology(tag: &str, a_natted: bool) -> (Netns, Netns) {
    let (a, b) = (
        Netns::new(&format!("a{tag}")),
        Netns::new(&format!("b{tag}")),
    );
    a.link(&format!("{A_INSIDE}/24"), &b, &format!("{B_INSIDE}/24"));
    // B's public address leads to B, where it is forwarded to B's socket.
    a.ip(&["route", "add", &format!("{B_OUTSIDE}/32"), "via", B_INSIDE]);
    b.nft(&format!(
        "table ip nat {{\n chain prerouting {{\n type nat hook prerouting priority dstnat;\n \
         ip daddr {B_OUTSIDE} dnat to {B_INSIDE}\n }}\n}}\n"
    ));
    if a_natted {
        // Everything A sends to B leaves as A_OUTSIDE.
        a.nft(&format!(
            "table ip nat {{\n chain postrouting {{\n type nat hook postrouting priority srcnat;\n \
             ip daddr {B_OUTSIDE} snat to {A_OUTSIDE}\n }}\n}}\n"
        ));
        b.ip(&["route", "add", &format!("{A_OUTSIDE}/32"), "via", A_INSIDE]);
    }
    (a, b)
}

/// B: the final server for `b.example`, SIP on its inside address, known
/// outside as B_OUTSIDE.
fn host_b(smtp: u16, tls: &Issued) -> ConfigFile {
    ConfigFile::host("mx.b.example", smtp, free_port(), &["b.example"])
        .set("users.hanako", "aliases", vec![B_NUMBER])
        .set("sip", "udp_listen", format!("{B_INSIDE}:5060"))
        .set("sip", "tcp_listen", format!("{B_INSIDE}:5060"))
        .set("sip", "tls_listen", format!("{B_INSIDE}:5061"))
        .set(
            "sip",
            "tls_certificate",
            tls.certificate.display().to_string(),
        )
        .set("sip", "tls_key", tls.key.display().to_string())
        .set("sip", "external_address", B_OUTSIDE)
        .set("sip", "domain", "b.example")
        .set("sip", "numbers", vec![B_NUMBER])
        .set("sip", "allowed_sources", vec!["10.77.0.0/24", A_OUTSIDE])
        .set("sip", "channel_ports", "40000-40009")
        .set("sip", "channel_tls", true)
        .set("admin", "enabled", false)
}

/// A: its rule finds B's number; it calls `b_uri`. A failed call is
/// relayed to a port where nobody listens, so it shows as not delivered.
fn host_a(smtp: u16, b_uri: &str, ca_file: &Path) -> ConfigFile {
    let rules = common::repo().join("build/rules");
    ConfigFile::host("mx.a.example", smtp, free_port(), &["a.example"])
        .set("server", "relay_networks", vec!["127.0.0.0/8"])
        .section("users.taro")
        .set("routes", "b.example", "127.0.0.1:9")
        .set("policy", "rules_dir", rules.display().to_string())
        .set("policy", "chain", vec!["embedded-number"])
        .set("policy", "deadline_ms", 1000)
        .set("sip", "udp_listen", format!("{A_INSIDE}:5060"))
        .set("sip", "tcp_listen", format!("{A_INSIDE}:5060"))
        .set("sip", "domain", "a.example")
        .set("sip", "invite_timeout_secs", 5)
        .set("sip", "channel_tls", true)
        .set("sip", "tls_ca_file", ca_file.display().to_string())
        .set("sip.routes", "*", b_uri)
        .set("admin", "enabled", false)
}

/// `mailcall serve` on `file` inside `netns`, its log in `dir/server.log`.
fn serve_in(netns: &Netns, dir: &Path, file: &ConfigFile, smtp: u16) -> Process {
    let path = dir.join("mailcall.toml");
    std::fs::write(&path, file.to_toml()).unwrap();
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let child = netns
        .command(env!("CARGO_BIN_EXE_mailcall"))
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir)
        .env(
            "RUST_LOG",
            std::env::var("NAT_LOG").unwrap_or("info,rsipstack=warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let process = Process::of("mailcall", child);
    let started = Instant::now();
    while !netns.listens(&format!("127.0.0.1:{smtp}")) {
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no server: {log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    process
}

/// A and B serving in their namespaces, A calling B at `b_uri`.
/// Fields drop in order: the servers stop before their namespaces go.
struct Scene {
    _servers: [Process; 2],
    a: Netns,
    _b: Netns,
    a_smtp: u16,
    a_dir: tempfile::TempDir,
    b_dir: tempfile::TempDir,
}

impl Scene {
    fn new(tag: &str, a_natted: bool, b_uri: &str) -> Scene {
        let (a, b) = topology(tag, a_natted);
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let pki = Pki::new(&b_dir.path().join("pki"));
        let (a_smtp, b_smtp) = (free_port(), free_port());
        let b_file = host_b(b_smtp, &pki.issue("b", &[B_OUTSIDE]));
        let b_server = serve_in(&b, b_dir.path(), &b_file, b_smtp);
        let a_file = host_a(a_smtp, b_uri, &pki.ca_file);
        let a_server = serve_in(&a, a_dir.path(), &a_file, a_smtp);
        Scene {
            _servers: [a_server, b_server],
            a,
            _b: b,
            a_smtp,
            a_dir,
            b_dir,
        }
    }

    /// Sends `message` (naming B's number) to A, inside A's namespace.
    fn submit(&self, message: &str) {
        let script = format!(
            "import smtplib\ns = smtplib.SMTP('127.0.0.1', {}, timeout=30)\ns.sendmail('taro@a.example', ['hanako@b.example'], {message:?}.encode())\ns.quit()\n",
            self.a_smtp
        );
        let output = self
            .a
            .command("python3")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    }

    fn log(dir: &tempfile::TempDir) -> String {
        std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
    }

    /// Submits a message and waits for it at B, delivered over the call.
    fn deliver(&self) {
        let message = "From: taro@a.example\r\nTo: hanako@b.example\r\nSubject: across NAT\r\n\r\nPlease call 050-2222-0000 back.\r\n";
        self.submit(message);
        let files = wait_for_files(self.b_dir.path(), "hanako", 1);
        let logs = || {
            format!(
                "A:\n{}\nB:\n{}",
                Scene::log(&self.a_dir),
                Scene::log(&self.b_dir)
            )
        };
        assert_eq!(
            files.len(),
            1,
            "nothing arrived at B over the call\n{}",
            logs()
        );
        let stored = std::fs::read_to_string(&files[0]).unwrap();
        assert!(stored.ends_with(message), "{stored}");
        let attempts = wait_for_history(self.a_dir.path(), "hanako@b.example", "delivered");
        let delivered = attempts
            .iter()
            .find(|attempt| attempt["outcome"] == "delivered")
            .unwrap_or_else(|| panic!("{attempts:?}\n{}", logs()));
        assert_eq!(delivered["path"], "call", "{delivered}");
    }
}

/// Runs `test` unless namespaces cannot be made here.
fn with_namespaces(test: impl FnOnce()) {
    match netns::unavailable() {
        Some(why) => eprintln!("SKIPPED: NAT tests need network namespaces: {why}"),
        None => test(),
    }
}

#[test]
fn a_callee_behind_nat_advertises_its_external_address() {
    with_namespaces(|| {
        // Plain UDP signalling: A knows B only by its public address.
        let scene = Scene::new("1", false, &format!("sip:{B_OUTSIDE}:5060"));
        scene.deliver();
        // B's answer named the public address, not the socket's.
        let a_log = Scene::log(&scene.a_dir);
        assert!(
            a_log.contains(&format!("answer: smtp at {B_OUTSIDE}:")),
            "{a_log}"
        );
    });
}

#[test]
fn a_caller_behind_nat_is_taken_over_tls_with_its_fingerprint() {
    with_namespaces(|| {
        // TLS signalling, B's certificate checked against its public address.
        let scene = Scene::new("2", true, &format!("sip:{B_OUTSIDE}:5061;transport=tls"));
        scene.deliver();
        let b_log = Scene::log(&scene.b_dir);
        assert!(
            b_log.contains(&format!("channel opened from {A_OUTSIDE}:")),
            "{b_log}"
        );
    });
}

#[test]
fn over_plain_signalling_a_natted_callers_channel_is_refused() {
    with_namespaces(|| {
        // UDP signalling: anyone on the path could have swapped the
        // fingerprint, so only the offer's address may open the channel.
        let scene = Scene::new("3", true, &format!("sip:{B_OUTSIDE}:5060"));
        scene.submit("Subject: across NAT in clear\r\n\r\nCall 050-2222-0000.\r\n");
        let attempts = wait_for_history(scene.a_dir.path(), "hanako@b.example", "fell-back");
        assert!(
            attempts
                .iter()
                .any(|attempt| attempt["path"] == "call" && attempt["outcome"] == "fell-back"),
            "{attempts:?}"
        );
        let b_log = Scene::log(&scene.b_dir);
        assert!(
            b_log.contains("channel connection from a stranger closed"),
            "{b_log}"
        );
        assert!(maildir_files(scene.b_dir.path(), "hanako").is_empty());
    });
}

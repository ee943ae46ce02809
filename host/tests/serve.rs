//! `mailcall serve` with real clients on loopback: swaks and raw sockets;
//! and a crash (kill -9) under load, after which every message that got
//! `250` is in the mailbox exactly once.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::load::{self, Ledger};
use common::server::*;

#[test]
fn swaks_delivers_to_a_local_mailbox_with_a_received_header() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), free_port());
    let (ok, transcript) = swaks(
        &server,
        &["--to", "info@local.test", "--h-Subject", "hello from swaks"],
    );
    assert!(ok, "{transcript}");
    assert!(
        transcript.contains("250 2.0.0 Ok: queued as"),
        "{transcript}"
    );
    let files = wait_for_files(dir.path(), "taro", 1);
    assert_eq!(files.len(), 1);
    let message = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        message.starts_with(
            "Return-Path: <sender@remote.test>\r\nReceived: from client.test ([127.0.0.1])\r\n\tby mx.test (mailcall)"
        ),
        "{message}"
    );
    assert!(message.contains("Subject: hello from swaks"), "{message}");

    // Pipelined, to postmaster in the other local domain.
    let (ok, transcript) = swaks(&server, &["--pipeline", "--to", "postmaster@localhost"]);
    assert!(ok, "{transcript}");
    assert_eq!(wait_for_files(dir.path(), "postmaster", 1).len(), 1);
}

#[test]
fn swaks_sees_unknown_users_and_relaying_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), free_port());
    let (ok, transcript) = swaks(&server, &["--to", "nobody@local.test"]);
    assert!(!ok);
    assert!(transcript.contains("550 5.1.1"), "{transcript}");
    for to in [
        "someone@remote.test",
        "someone%remote.test@local.test",
        "someone@remote.test.",
    ] {
        let (ok, transcript) = swaks(&server, &["--to", to]);
        assert!(!ok, "{to}");
        assert!(transcript.contains("<** 5"), "{to}: {transcript}");
    }
}

/// One SMTP conversation over a socket; returns every reply line.
fn converse(address: SocketAddr, script: &[u8]) -> Vec<String> {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(script).unwrap();
    let reader = BufReader::new(stream);
    let mut lines = Vec::new();
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let done = line.starts_with("221");
        lines.push(line);
        if done {
            break;
        }
    }
    lines
}

#[test]
fn final_delivery_adds_the_return_path_and_drops_the_senders_own() {
    let dir = tempfile::tempdir().unwrap();
    let pop3_port = free_port();
    let hash = hash_password("pw");
    let server = start_file(
        dir.path(),
        &host(free_port(), pop3_port).set("users.taro", "password_hash", hash.as_str()),
    );
    // A null sender (a bounce), with Return-Path headers of its own.
    let replies = converse(
        server.address,
        b"EHLO client.test\r\nMAIL FROM:<>\r\nRCPT TO:<taro@local.test>\r\nDATA\r\n\
          Return-Path: <forged@evil.test>\r\nSubject: bounce\r\nRETURN-PATH:\r\n <folded@evil.test>\r\n\r\n\
          Return-Path: <in-the-body@remote.test>\r\n.\r\nQUIT\r\n",
    );
    assert!(
        replies.iter().any(|l| l.contains("queued as")),
        "{replies:?}"
    );
    let files = wait_for_files(dir.path(), "taro", 1);
    assert_eq!(files.len(), 1);
    let message = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        message.starts_with("Return-Path: <>\r\nReceived: from client.test"),
        "{message}"
    );
    assert!(!message.contains("evil.test"), "{message}");
    assert!(
        message.ends_with("\r\n\r\nReturn-Path: <in-the-body@remote.test>\r\n"),
        "{message}"
    );

    // A POP3 client (Python's poplib) reads it the same way.
    let (ok, transcript) = swaks(&server, &["--to", "taro@local.test"]);
    assert!(ok, "{transcript}");
    assert_eq!(wait_for_files(dir.path(), "taro", 2).len(), 2);
    let fetched = python(&format!(
        "import poplib\n\
         pop = poplib.POP3('127.0.0.1', {pop3_port})\n\
         pop.user('taro'); pop.pass_('pw')\n\
         for n in range(1, len(pop.list()[1]) + 1):\n    print(pop.retr(n)[1][0].decode())\n\
         pop.quit()\n"
    ));
    let first_lines: Vec<&str> = fetched.lines().collect();
    assert!(first_lines.contains(&"Return-Path: <>"), "{fetched}");
    assert!(
        first_lines.contains(&"Return-Path: <sender@remote.test>"),
        "{fetched}"
    );
}

#[test]
fn smuggled_end_of_data_over_a_socket_never_queues_a_second_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), free_port());
    let replies = converse(
        server.address,
        b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<taro@local.test>\r\nDATA\r\n\
          Subject: one\r\n\r\nhello\n.\r\nMAIL FROM:<evil@remote.test>\r\nRCPT TO:<postmaster@local.test>\r\nDATA\r\nsmuggled\r\n.\r\nQUIT\r\n",
    );
    assert!(
        replies.iter().any(|l| l.starts_with("550 5.5.2")),
        "{replies:?}"
    );
    assert!(
        !replies.iter().any(|l| l.contains("queued as")),
        "{replies:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(maildir_files(dir.path(), "postmaster").is_empty());
    assert!(maildir_files(dir.path(), "taro").is_empty());
}

/// The `[queue]` settings of the crash test: small segments, so the load
/// rotates (and deletes) segments before and after the kill.
/// Segments of 64 KiB, so that rotation and compaction run under load.
fn small_segments(file: ConfigFile) -> ConfigFile {
    file.set("queue", "segment_size_kib", 64)
}

#[test]
fn after_kill_9_every_acknowledged_message_is_delivered_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = start_file(dir.path(), &small_segments(host(port, free_port())));
    // Bounded: 4 clients, at most 100 messages each, 20 s; each stops when
    // the server is gone. Sizes from 300 bytes to 9 KB.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let clients = load::run(
        server.address,
        "k",
        "taro@local.test",
        4,
        100,
        |n| 300 + (n * 7919) % 9000,
        ledger.clone(),
        Duration::from_secs(20),
    );
    let started = Instant::now();
    while ledger.lock().unwrap().accepted() < 120 && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(server); // SIGKILL, mid-load
    for client in clients {
        client.join().unwrap();
    }
    let ledger = Arc::try_unwrap(ledger).unwrap().into_inner().unwrap();
    assert!(
        ledger.accepted() >= 60,
        "load too slow: {} acknowledged",
        ledger.accepted()
    );

    let _server = start_file(dir.path(), &small_segments(host(port, free_port())));
    let maildir = dir.path().join("data/mail/taro");
    let found = load::wait_delivered(&maildir, &ledger, Duration::from_secs(15));
    let verdict = load::check(&ledger, &found);
    println!("after kill -9: {}", verdict.summary());
    assert!(verdict.lost.is_empty(), "lost: {:?}", verdict.lost);
    assert!(
        verdict.corrupted.is_empty(),
        "corrupted: {:?}",
        verdict.corrupted
    );
    // Local deliveries are named by queue id and recipient: one redone
    // after the kill finds its own file, so not even one duplicate.
    assert!(
        verdict.duplicated.is_empty(),
        "delivered twice: {:?}",
        verdict.duplicated
    );
    assert!(
        verdict.refused_but_delivered.is_empty() && verdict.strangers == 0,
        "{}",
        verdict.summary()
    );
}

#[test]
fn poplib_reads_and_deletes_local_mail() {
    let hash = hash_password("secret pw");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let dir = tempfile::tempdir().unwrap();
    let pop3_port = free_port();
    let server = start_file(
        dir.path(),
        &host(free_port(), pop3_port).set("users.taro", "password_hash", hash.as_str()),
    );
    for (subject, body) in [("first", "line one\n.leading dot"), ("second", "a\nb\nc")] {
        let (ok, transcript) = swaks(
            &server,
            &[
                "--to",
                "taro@local.test",
                "--h-Subject",
                subject,
                "--body",
                body,
            ],
        );
        assert!(ok, "{transcript}");
    }
    assert_eq!(wait_for_files(dir.path(), "taro", 2).len(), 2);

    let script = r#"
import poplib, sys
port = int(sys.argv[1])
p = poplib.POP3('127.0.0.1', port, timeout=10)
assert p.getwelcome().startswith(b'+OK'), p.getwelcome()
caps = p.capa()
assert 'UIDL' in caps and 'TOP' in caps and 'USER' in caps, caps
p.user('taro')
try:
    p.pass_('wrong')
    raise SystemExit('a wrong password was accepted')
except poplib.error_proto as e:
    assert b'[AUTH]' in e.args[0], e
p.user('taro')
p.pass_('secret pw')
count, size = p.stat()
assert count == 2, count
resp, listing, _ = p.list()
assert len(listing) == 2 and sum(int(l.split()[1]) for l in listing) == size, listing
resp, uids, _ = p.uidl()
assert len(set(u.split()[1] for u in uids)) == 2, uids
resp, lines, octets = p.retr(1)
assert b'Subject: first' in lines and b'.leading dot' in lines, lines
assert lines[0].startswith(b'Return-Path: <') and lines[1].startswith(b'Received: from client.test'), lines[:2]
resp, top, _ = p.top(2, 1)
assert b'Subject: second' in top and b'a' in top and b'c' not in top, top
q = poplib.POP3('127.0.0.1', port, timeout=10)
q.user('taro')
try:
    q.pass_('secret pw')
    raise SystemExit('the mailbox was opened twice')
except poplib.error_proto as e:
    assert b'[IN-USE]' in e.args[0], e
q.quit()
p.dele(1)
p.rset()
p.dele(1)
assert p.stat()[0] == 1
try:
    p.retr(1)
    raise SystemExit('a deleted message was retrieved')
except poplib.error_proto:
    pass
p.quit()
r = poplib.POP3('127.0.0.1', port, timeout=10)
r.user('taro')
r.pass_('secret pw')
assert r.stat()[0] == 1
resp, lines, _ = r.retr(1)
assert b'Subject: second' in lines, lines
r.quit()
print('pop3 ok')
"#;
    let output = Command::new("python3")
        .args(["-c", script, &pop3_port.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && text.contains("pop3 ok"),
        "{text}"
    );
    assert_eq!(
        maildir_files(dir.path(), "taro").len(),
        1,
        "the deletion took effect at QUIT"
    );
}

#[test]
fn queue_list_shows_deferred_mail_and_flush_retries_it_now() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), free_port());
    // A file where taro's Maildir should be: local delivery fails and defers.
    std::fs::create_dir_all(dir.path().join("data/mail")).unwrap();
    std::fs::write(dir.path().join("data/mail/taro"), "not a folder").unwrap();
    let (ok, transcript) = swaks(&server, &["--to", "taro@local.test"]);
    assert!(ok, "{transcript}");

    let listing = wait_for_queue(dir.path(), &["deferred"]);
    assert!(
        listing.contains("taro@local.test  deferred (1 attempts"),
        "{listing}"
    );

    std::fs::remove_file(dir.path().join("data/mail/taro")).unwrap();
    assert!(queue(dir.path(), "flush").contains("flush"));
    assert_eq!(wait_for_files(dir.path(), "taro", 1).len(), 1);
    let listing = wait_for_queue(dir.path(), &["the queue is empty"]);
    assert!(listing.contains("the queue is empty"), "{listing}");
}

#[test]
fn relay_networks_relay_over_static_routes_with_per_recipient_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let accepting = sink(&dir.path().join("ok"), &[]);
    let refusing = sink(&dir.path().join("hard"), &["-f", "rcpt"]);
    let deferring = sink(&dir.path().join("soft"), &["-r", "rcpt"]);
    let file = relaying(host(free_port(), free_port()))
        .set(
            "routes",
            "remote.test",
            format!("127.0.0.1:{}", accepting.port),
        )
        .set(
            "routes",
            "hard.test",
            format!("127.0.0.1:{}", refusing.port),
        )
        .set(
            "routes",
            "soft.test",
            format!("127.0.0.1:{}", deferring.port),
        );
    let server = start_file(dir.path(), &file);
    let (ok, transcript) = swaks(
        &server,
        &[
            "--from",
            "postmaster@local.test",
            "--to",
            "a@remote.test,b@REMOTE.test,c@hard.test,d@soft.test",
            "--h-Subject",
            "relayed",
        ],
    );
    assert!(ok, "{transcript}");

    // The accepting sink got one transaction with both of its recipients.
    let dumped = wait_for_dumps(&dir.path().join("ok"), 1);
    assert_eq!(dumped.len(), 1, "{dumped:?}");
    let text = String::from_utf8_lossy(&std::fs::read(&dumped[0]).unwrap()).into_owned();
    assert!(text.contains("Subject: relayed"), "{text}");
    assert!(
        text.contains("a@remote.test") && text.contains("b@remote.test"),
        "{text}"
    );

    // The refused recipient failed, the deferred one waits in the queue;
    // each destination is recorded in turn: wait for all three.
    let listing = wait_for_queue(
        dir.path(),
        &[
            "d@soft.test  deferred",
            "c@hard.test  failed",
            "a@remote.test  delivered",
        ],
    );
    assert!(
        listing.contains("d@soft.test  deferred (1 attempts"),
        "{listing}"
    );
    assert!(listing.contains("c@hard.test  failed: 5"), "{listing}");
    assert!(
        listing.contains("a@remote.test  delivered: 250"),
        "{listing}"
    );

    // The sender (local here) gets an RFC 3464 bounce for the failed one only.
    let bounces = wait_for_files(dir.path(), "postmaster", 1);
    assert_eq!(bounces.len(), 1);
    let bounce = std::fs::read_to_string(&bounces[0]).unwrap();
    for expected in [
        "From: Mail Delivery System <MAILER-DAEMON@mx.test>",
        "report-type=delivery-status",
        "Final-Recipient: rfc822; c@hard.test",
        "Action: failed",
        "Subject: relayed",
    ] {
        assert!(bounce.contains(expected), "{expected} missing in\n{bounce}");
    }
    assert!(
        !bounce.contains("Final-Recipient: rfc822; d@")
            && !bounce.contains("Final-Recipient: rfc822; a@"),
        "{bounce}"
    );
}

#[test]
fn smtplib_exercises_every_command_and_extension() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = start(dir.path(), port);
    let output = python(&format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port}, timeout=10)
assert s.helo("client.test")[0] == 250
code, _ = s.ehlo("client.test")
assert code == 250
for extension in ["pipelining", "size", "8bitmime", "enhancedstatuscodes", "smtputf8",
                  "dsn", "chunking", "starttls", "auth"]:
    assert s.has_extn(extension), extension
assert s.noop()[0] == 250
assert s.vrfy("taro")[0] == 252
assert s.docmd("EXPN", "staff")[0] == 502
assert s.mail("a@remote.test", ["SIZE=999999999"])[0] == 552
assert s.mail("a@remote.test")[0] == 250
assert s.rcpt("someone@remote.test")[0] == 554
assert s.rcpt("nobody@local.test")[0] == 550
assert s.rset()[0] == 250

# 8BITMIME, SIZE and DSN parameters, to a local user, success notice asked.
body = "Subject: 8bit\r\n\r\ncaf\u00e9\r\n".encode("utf-8")
refused = s.sendmail("postmaster@local.test", ["taro@local.test"], body,
                     mail_options=["BODY=8BITMIME", "SIZE=%d" % len(body), "RET=HDRS", "ENVID=env-8bit"],
                     rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;taro@local.test"])
assert refused == {{}}, refused

# SMTPUTF8: an internationalized sender.
s.command_encoding = "utf-8"
refused = s.sendmail("\u9001\u4fe1@remote.test", ["info@local.test"], b"Subject: utf8\r\n\r\nx\r\n",
                     mail_options=["SMTPUTF8"])
assert refused == {{}}, refused
s.command_encoding = "ascii"

# CHUNKING: the message in two BDAT chunks.
assert s.mail("a@remote.test")[0] == 250
assert s.rcpt("taro@local.test")[0] == 250
first = b"Subject: chunked\r\n\r\n"
last = b"in two chunks\r\n"
s.send(b"BDAT %d\r\n" % len(first) + first)
assert s.getreply()[0] == 250
s.send(b"BDAT %d LAST\r\n" % len(last) + last)
code, text = s.getreply()
assert code == 250, (code, text)
print("bdat", text.decode())
assert s.quit()[0] == 221
print("done")
"#
    ));
    assert!(output.contains("done"), "{output}");
    let files = wait_for_files(dir.path(), "taro", 3);
    let texts: Vec<String> = files
        .iter()
        .map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned())
        .collect();
    for subject in ["Subject: 8bit", "Subject: utf8", "Subject: chunked"] {
        assert!(
            texts.iter().any(|t| t.contains(subject)),
            "{subject} missing in {texts:?}"
        );
    }
    assert!(texts.iter().any(|t| t.contains("café")), "{texts:?}");
    // NOTIFY=SUCCESS for a local delivery: "delivered", to the sender.
    let notices = wait_for_files(dir.path(), "postmaster", 1);
    let notice = std::fs::read_to_string(&notices[0]).unwrap();
    for expected in [
        "Subject: Successful Mail Delivery Report",
        "Original-Envelope-Id: env-8bit",
        "Final-Recipient: rfc822; taro@local.test",
        "Action: delivered",
    ] {
        assert!(notice.contains(expected), "{expected} missing in\n{notice}");
    }
}

#[test]
fn no_address_trick_relays_for_an_outside_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), free_port());
    let tricks = [
        "<someone@remote.test>",
        "<someone@REMOTE.test.>",
        "<@local.test:someone@remote.test>",
        "<@local.test,@other.test:someone@remote.test>",
        "<someone%remote.test@local.test>",
        "<\"someone@remote.test\"@local.test>",
        "<someone!remote.test@local.test>",
        "<remote.test!someone@local.test>",
        "<someone@remote.test@local.test>",
        "<someone@[127.0.0.1]>",
        "<\"someone@remote.test\">",
        "<someone@local.test@remote.test>",
    ];
    let mut script = b"EHLO client.test\r\nMAIL FROM:<a@outside.test>\r\n".to_vec();
    for trick in tricks {
        script.extend_from_slice(format!("RCPT TO:{trick}\r\n").as_bytes());
    }
    script.extend_from_slice(b"QUIT\r\n");
    // The last line of each reply: the greeting, EHLO, MAIL, one per
    // trick, QUIT.
    let replies: Vec<String> = converse(server.address, &script)
        .into_iter()
        .filter(|line| line.as_bytes().get(3) != Some(&b'-'))
        .collect();
    let rcpt_replies = &replies[3..3 + tricks.len()];
    for (trick, reply) in tricks.iter().zip(rcpt_replies) {
        assert!(
            reply.starts_with('5'),
            "{trick} was not refused: {reply}\n{replies:?}"
        );
    }
    assert!(replies.last().unwrap().starts_with("221"), "{replies:?}");
}

#[test]
fn pop3_sessions_beyond_the_limit_are_refused_for_now() {
    let dir = tempfile::tempdir().unwrap();
    let pop3_port = free_port();
    let _server = start_file(
        dir.path(),
        &host(free_port(), pop3_port).set("server", "max_sessions", 1),
    );
    let script = format!(
        r#"
import socket
first = socket.create_connection(("127.0.0.1", {pop3_port}), timeout=10)
print("first", first.makefile("rb").readline().decode().strip())
second = socket.create_connection(("127.0.0.1", {pop3_port}), timeout=10)
print("second", second.makefile("rb").readline().decode().strip())
first.close()
"#
    );
    let stdout = python(&script);
    assert!(stdout.contains("first +OK"), "{stdout}");
    assert!(
        stdout.contains("second -ERR [SYS/TEMP] too many connections"),
        "{stdout}"
    );
}

#[test]
fn a_console_off_loopback_without_tls_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mailcall.toml");
    let file = host(free_port(), free_port())
        .set("admin", "enabled", true)
        .set("admin", "listen", format!("0.0.0.0:{}", free_port()));
    std::fs::write(&config, file.to_toml()).unwrap();
    for command in ["serve", "check-config"] {
        let output = Command::new(env!("CARGO_BIN_EXE_mailcall"))
            .args([command, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{command}: {text}");
        assert!(
            text.contains("reachable from other hosts needs TLS")
                && text.contains("[admin] tls = true"),
            "{command}: {text}"
        );
    }
}

/// `curl` run in the network namespace of process `pid`; the response's
/// status, headers (lowercase names) and body. Status 0: no HTTP answer.
fn curl_in(pid: u32, dir: &std::path::Path, args: &[&str]) -> (u16, String, String) {
    let output = Command::new("nsenter")
        .args(["--target", &pid.to_string(), "--net", "--", "curl", "-s"])
        .args(["--max-time", "10", "-D", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(dir.join("data/tls/certificate.pem"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (response, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (headers, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    (
        status.trim().parse().unwrap_or(0),
        headers.to_lowercase(),
        body.to_string(),
    )
}

/// The console listening on every address, with TLS, in a network
/// namespace of the test's own where loopback also carries 10.9.9.1: a
/// client from 10.9.9.1 is "elsewhere" and must log in; one from
/// 127.0.0.1 reads freely. Nothing leaves the namespace.
#[test]
fn a_console_elsewhere_needs_tls_and_an_administrator() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mailcall.toml");
    // Fixed ports: the namespace has nothing else in it.
    let file = host(2525, 1110)
        .set("users.taro", "password_hash", hash_password("secret"))
        .set("users.taro", "admin", true)
        .set("users.hanako", "password_hash", hash_password("hers"))
        .set("admin", "enabled", true)
        .set("admin", "listen", "0.0.0.0:8443")
        .set("admin", "tls", true);
    std::fs::write(&config, file.to_toml()).unwrap();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let child = Command::new("unshare")
        .args(["--net", "--map-root-user", "sh", "-c"])
        .arg("ip link set lo up && ip addr add 10.9.9.1/32 dev lo && exec \"$0\" serve --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_mailcall"))
        .arg(&config)
        .current_dir(dir.path())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id();
    let _server = Process::of("mailcall", child);
    let log = || std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    // The certificate names mx.test; `--resolve` says which address that is.
    let get = |host: &str, path: &str, extra: &[&str]| {
        let mut args = vec!["--resolve".to_string(), format!("mx.test:8443:{host}")];
        args.extend(extra.iter().map(|a| a.to_string()));
        args.push(format!("https://mx.test:8443{path}"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl_in(pid, dir.path(), &args)
    };
    wait_until(&format!("the console answers: {}", log()), || {
        get("127.0.0.1", "/", &[]).0 == 200
    });
    assert!(
        log().contains("console listening: https://0.0.0.0:8443/"),
        "{}",
        log()
    );

    // On loopback, reading needs no login, even over TLS.
    let (status, _, page) = get("127.0.0.1", "/", &[]);
    assert_eq!(status, 200);
    assert!(page.contains("Overview"), "{page}");

    // From elsewhere: a page sends the browser to log in; the metrics ask
    // for an administrator's credentials.
    let (status, headers, _) = get("10.9.9.1", "/deliveries", &[]);
    assert_eq!(
        (status, headers.contains("location: /login")),
        (303, true),
        "{headers}"
    );
    let (status, headers, _) = get("10.9.9.1", "/metrics", &[]);
    assert_eq!(status, 401);
    assert!(headers.contains("www-authenticate: basic"), "{headers}");
    for (credentials, expected) in [
        ("taro:wrong", 401),
        ("hanako:hers", 401),
        ("taro:secret", 200),
    ] {
        let (status, _, body) = get("10.9.9.1", "/metrics", &["-u", credentials]);
        assert_eq!(status, expected, "{credentials}: {body}");
    }
    let (_, _, metrics) = get("10.9.9.1", "/metrics", &["-u", "taro:secret"]);
    assert!(metrics.contains("mailcall_queue_messages"), "{metrics}");

    // The login page is open; a login gives a Secure cookie that opens
    // the pages.
    let (status, _, page) = get("10.9.9.1", "/login", &[]);
    assert_eq!(status, 200);
    assert!(page.contains("password"), "{page}");
    let (status, headers, _) = get(
        "10.9.9.1",
        "/login",
        &["--data", "user=taro&password=secret"],
    );
    assert_eq!(status, 303, "{headers}");
    let cookie = headers
        .lines()
        .find_map(|line| line.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {headers}"))
        .to_string();
    assert!(
        cookie.contains("secure")
            && cookie.contains("httponly")
            && cookie.contains("samesite=strict"),
        "{cookie}"
    );
    // (The header was lowercased for the checks; the token is hex.)
    let token = cookie.split(';').next().unwrap().to_string();
    let (status, _, page) = get("10.9.9.1", "/queue", &["-H", &format!("Cookie: {token}")]);
    assert_eq!(status, 200);
    assert!(page.contains("Log out"), "{page}");

    // Plain HTTP gets no page from a TLS listener.
    let (status, _, _) = curl_in(pid, dir.path(), &["http://10.9.9.1:8443/"]);
    assert_eq!(status, 0);
}

#[test]
fn a_taken_port_is_reported_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = dir.path().join("mailcall.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = \"data\"\nsmtp_listen = \"127.0.0.1:{port}\"\npop3_listen = \"127.0.0.1:{}\"\n\n[admin]\nenabled = false\n",
            free_port()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mailcall"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

/// The queue id `mailcall queue list` shows for the message to `recipient`.
fn queue_id_of(listing: &str, recipient: &str) -> String {
    let mut id = None;
    for line in listing.lines() {
        if !line.starts_with(' ') {
            id = line.split_whitespace().next();
        } else if line.trim_start().starts_with(&format!("{recipient} ")) {
            return id.unwrap().to_string();
        }
    }
    panic!("{recipient} not in\n{listing}");
}

/// `mailcall queue ACTION ID…` for the configuration in `dir`: whether it
/// succeeded, and what it printed.
fn queue_action(dir: &std::path::Path, action: &str, ids: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mailcall"))
        .args(["queue", action])
        .args(ids)
        .arg("--config")
        .arg(dir.join("mailcall.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn an_operator_holds_releases_deletes_and_bounces_queued_mail_and_a_hold_outlasts_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on the relay's port yet: every relay attempt defers.
    let relay_port = free_port();
    let file = relaying(host(free_port(), free_port())).set(
        "routes",
        "remote.test",
        format!("127.0.0.1:{relay_port}"),
    );
    let server = start_file(dir.path(), &file);
    for (to, subject) in [
        ("held@remote.test", "kept"),
        ("deleted@remote.test", "removed"),
        ("bounced@remote.test", "returned"),
    ] {
        let (ok, transcript) = swaks(
            &server,
            &[
                "--from",
                "postmaster@local.test",
                "--to",
                to,
                "--h-Subject",
                subject,
            ],
        );
        assert!(ok, "{transcript}");
    }
    let listing = wait_for_queue(
        dir.path(),
        &[
            "held@remote.test  deferred",
            "deleted@remote.test  deferred",
            "bounced@remote.test  deferred",
        ],
    );
    let held = queue_id_of(&listing, "held@remote.test");
    let deleted = queue_id_of(&listing, "deleted@remote.test");
    let bounced = queue_id_of(&listing, "bounced@remote.test");

    let (ok, said) = queue_action(dir.path(), "hold", &[&held]);
    assert!(
        ok && said.contains(&format!("{held}: hold: 1 recipients")),
        "{said}"
    );
    let (ok, said) = queue_action(dir.path(), "hold", &["FFFFFFFF"]);
    assert!(!ok && said.contains("not in the queue"), "{said}");
    let (ok, said) = queue_action(dir.path(), "delete", &[&deleted]);
    assert!(ok, "{said}");
    let (ok, said) = queue_action(dir.path(), "bounce", &[&bounced]);
    assert!(ok && said.contains("report"), "{said}");

    // The sender gets a report for the bounced message only.
    let reports = wait_for_files(dir.path(), "postmaster", 1);
    assert_eq!(reports.len(), 1);
    let report = std::fs::read_to_string(&reports[0]).unwrap();
    for expected in [
        "report-type=delivery-status",
        "Final-Recipient: rfc822; bounced@remote.test",
        "Action: failed",
        "Subject: returned",
    ] {
        assert!(report.contains(expected), "{expected} missing in\n{report}");
    }

    // A restart keeps the hold; a flush does not deliver held mail.
    drop(server);
    let server = start_file(dir.path(), &file);
    let listing = queue(dir.path(), "list");
    assert!(
        listing.contains("held@remote.test  HELD (1 attempts)"),
        "{listing}"
    );
    assert!(
        !listing.contains("deleted@remote.test") && !listing.contains("bounced@remote.test"),
        "{listing}"
    );
    let sink = sink_on(&dir.path().join("relayed"), &[], relay_port);
    queue(dir.path(), "flush");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        queue(dir.path(), "list").contains("held@remote.test  HELD"),
        "a flush delivered held mail"
    );

    // A release delivers it at once, and only it: the deleted and the
    // bounced message never reach the relay.
    let (ok, said) = queue_action(dir.path(), "release", &[&held]);
    assert!(ok, "{said}");
    let dumped = wait_for_dumps(&dir.path().join("relayed"), 1);
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert_eq!(dumped.len(), 1, "{said}\n{log}");
    let text = String::from_utf8_lossy(&std::fs::read(&dumped[0]).unwrap()).into_owned();
    assert!(text.contains("Subject: kept"), "{text}");
    let listing = wait_for_queue(dir.path(), &["the queue is empty"]);
    assert!(listing.contains("the queue is empty"), "{listing}");
    // Nothing is left to deliver: the relay got the released message only.
    let relayed = std::fs::read_dir(dir.path().join("relayed"))
        .unwrap()
        .count();
    assert_eq!(relayed, 1);

    // Each action is in the history, on the operator's path.
    let operator: Vec<(String, String)> = history(dir.path())
        .into_iter()
        .filter(|a| a["path"] == "operator")
        .map(|a| {
            (
                a["recipient"].as_str().unwrap().to_string(),
                a["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for expected in [
        ("held@remote.test", "held"),
        ("held@remote.test", "released"),
        ("deleted@remote.test", "deleted"),
        ("bounced@remote.test", "failed"),
    ] {
        assert!(
            operator.contains(&(expected.0.to_string(), expected.1.to_string())),
            "{expected:?} missing in {operator:?}"
        );
    }
    drop((server, sink));
}

#[test]
fn console_queue_actions_need_an_administrators_login_and_the_sessions_token() {
    let dir = tempfile::tempdir().unwrap();
    let relay_port = free_port();
    let console_port = free_port();
    let file = relaying(host(free_port(), free_port()))
        .set("routes", "remote.test", format!("127.0.0.1:{relay_port}"))
        .set("users.taro", "password_hash", hash_password("secret"))
        .set("users.taro", "admin", true)
        .set("users.hanako", "password_hash", hash_password("hers"));
    let server = start_file(dir.path(), &console(file, console_port));
    let (ok, transcript) = swaks(&server, &["--to", "far@remote.test"]);
    assert!(ok, "{transcript}");
    let listing = wait_for_queue(dir.path(), &["far@remote.test  deferred"]);
    let id = queue_id_of(&listing, "far@remote.test");

    // Anyone on loopback reads the queue, without the actions.
    let (status, _, page) = http(console_port, "GET", "/queue", None, "");
    assert_eq!(status, 200);
    assert!(
        page.contains(&id) && page.contains("far@remote.test"),
        "{page}"
    );
    assert!(
        page.contains("id=\"login\"") && !page.contains("/queue/act"),
        "{page}"
    );

    // An action without a login, and logins that fail, are refused.
    let hold = |csrf: &str| format!("action=hold&id={id}&csrf={csrf}");
    let (status, _, _) = http(console_port, "POST", "/queue/act", None, &hold("x"));
    assert_eq!(status, 403);
    for form in ["user=taro&password=wrong", "user=hanako&password=hers"] {
        let (status, _, page) = http(console_port, "POST", "/login", None, form);
        assert_eq!(status, 403, "{form}: {page}");
    }

    let (status, head, _) = http(
        console_port,
        "POST",
        "/login",
        None,
        "user=taro&password=secret",
    );
    assert_eq!(status, 303, "{head}");
    let set_cookie = head
        .lines()
        .find_map(|line| line.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie in {head}"));
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let (_, _, page) = http(console_port, "GET", "/queue", Some(&cookie), "");
    assert!(page.contains("/queue/act"), "{page}");
    let csrf = form_value(&page, "csrf");

    // Logged in, but without the session's token (a form from elsewhere).
    for token in ["", "0000"] {
        let (status, _, page) = http(
            console_port,
            "POST",
            "/queue/act",
            Some(&cookie),
            &hold(token),
        );
        assert_eq!(status, 403, "{page}");
    }
    assert!(queue(dir.path(), "list").contains("far@remote.test  deferred"));

    let (status, _, page) = http(
        console_port,
        "POST",
        "/queue/act",
        Some(&cookie),
        &hold(&csrf),
    );
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&format!("{id}: hold: 1 recipients")),
        "{page}"
    );
    let listing = queue(dir.path(), "list");
    assert!(
        listing.contains("far@remote.test  HELD (1 attempts): held by taro"),
        "{listing}"
    );
    let held = history(dir.path()).into_iter().any(|a| {
        a["path"] == "operator" && a["outcome"] == "held" && a["detail"] == "held by taro"
    });
    assert!(held, "the hold is in the history");
    // A real browser shows the held recipient (a screenshot is kept).
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&shots).unwrap();
    let dom = browse(
        &format!("http://127.0.0.1:{console_port}/queue"),
        &shots.join("queue.png"),
    );
    assert!(
        dom.contains(&format!("data-id=\"{id}\""))
            && dom.contains("HELD (1 attempts): held by taro"),
        "{dom}"
    );

    // After logging out the cookie acts no more.
    let (status, _, _) = http(
        console_port,
        "POST",
        "/logout",
        Some(&cookie),
        &format!("csrf={csrf}"),
    );
    assert_eq!(status, 303);
    let release = format!("action=release&id={id}&csrf={csrf}");
    let (status, _, _) = http(console_port, "POST", "/queue/act", Some(&cookie), &release);
    assert_eq!(status, 403);
    drop(server);
}

#[test]
fn serve_tells_systemd_when_it_is_ready_and_stopping_and_logs_json_lines() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&notify_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let port = free_port();
    let config = format!(
        "[server]\nhostname = \"mx.test\"\ndata_dir = \"data\"\nsmtp_listen = \"127.0.0.1:{port}\"\npop3_listen = \"127.0.0.1:{}\"\nlocal_domains = [\"local.test\"]\n\n[admin]\nenabled = false\n\n[log]\nformat = \"json\"\n",
        free_port()
    );
    let path = dir.path().join("mailcall.toml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mailcall"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "info")
        .stderr(log)
        .spawn()
        .unwrap();
    let server = Process::of("mailcall", child);
    let mut said = [0u8; 512];
    let length = systemd.recv(&mut said).expect("no READY=1 from the server");
    let ready = String::from_utf8_lossy(&said[..length]).into_owned();
    assert!(
        ready.starts_with("READY=1\nSTATUS=SMTP on 127.0.0.1:"),
        "{ready}"
    );
    // Ready means ready: the port takes a connection at once, and the
    // signals an operator sends from then on are handled (not the default
    // action, which would end the process).
    TcpStream::connect(("127.0.0.1", port)).expect("READY=1 before listening");
    let pid = server.child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGHUP) };
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    std::thread::sleep(Duration::from_millis(200));
    let mut server = server;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "SIGHUP or SIGUSR1 ended the server"
    );
    TcpStream::connect(("127.0.0.1", port)).expect("still serving after SIGHUP and SIGUSR1");

    unsafe { libc::kill(pid, libc::SIGTERM) };
    let length = systemd.recv(&mut said).expect("no STOPPING=1");
    assert_eq!(&said[..length], b"STOPPING=1");
    drop(server);

    // `[log] format = "json"`: one JSON object per line.
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(
        lines.iter().any(|line| line["level"] == "INFO"
            && line["fields"]["message"] == "listening"
            && line["fields"]["smtp"] == format!("127.0.0.1:{port}")),
        "{log}"
    );
}

#[test]
fn the_console_overview_counts_new_mail_live_without_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let console_port = free_port();
    let server = start_file(
        dir.path(),
        &console(host(free_port(), free_port()), console_port),
    );
    let mut browser = Browser::open(&format!("http://127.0.0.1:{console_port}/"));
    // The page is up and its event stream delivers.
    browser.wait_for("Number(document.body.dataset.updates || 0) >= 1");
    assert_eq!(
        browser.eval("document.getElementById('accepted').textContent"),
        "0"
    );
    // A mark a reload would wipe out.
    browser.eval("window.sameLoad = true");

    for _ in 0..2 {
        let (ok, transcript) = swaks(&server, &["--to", "taro@local.test"]);
        assert!(ok, "{transcript}");
    }
    browser.wait_for(
        "document.getElementById('accepted').textContent === '2' \
         && document.getElementById('local-delivered').textContent === '2'",
    );
    // The last hour's figures and its plot follow too.
    browser.wait_for(
        "document.getElementById('hour-accepted').textContent === '2' \
         && document.getElementById('hour-local-delivered').textContent === '2' \
         && document.querySelector('#plot polyline.accepted').dataset.total === '2' \
         && document.querySelector('#plot polyline.delivered').dataset.total === '2'",
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('#plot polyline').length"),
        3
    );
    assert_eq!(
        browser.eval("document.getElementById('waiting').textContent"),
        "0"
    );
    // No [sip]: no calls to show.
    assert_eq!(
        browser.eval("document.getElementById('calls') === null"),
        true
    );
    assert_eq!(
        browser.eval("window.sameLoad === true"),
        true,
        "the page was reloaded"
    );
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    browser.screenshot(&shots.join("overview-live.png"));
}

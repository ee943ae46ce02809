//! Relaying (S8) against real peers: Postfix's smtp-sink answering `4xx`
//! and then, restarted, `2xx`; MX look-up through a name server on
//! loopback; delivery status notices the sender asked for.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use mailcall_testbed::dns::{NameServer, Record};

mod common;
use common::server::*;

/// Sends `commands` one per line over SMTP and returns the last reply line
/// to each (the greeting first).
fn smtp(server: &Server, commands: &[&str]) -> Vec<String> {
    let stream = TcpStream::connect(server.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut reply = || {
        let mut last = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                return last;
            }
            last = line.trim_end().to_string();
            if last.as_bytes().get(3) != Some(&b'-') {
                return last;
            }
        }
    };
    let mut replies = vec![reply()];
    for command in commands {
        writer
            .write_all(format!("{command}\r\n").as_bytes())
            .unwrap();
        replies.push(reply());
    }
    replies
}

fn read_all(files: &[std::path::PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned())
        .collect()
}

#[test]
fn a_deferred_recipient_is_delivered_when_the_server_recovers_with_the_notices_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let deferring = sink(&dir.path().join("soft"), &["-r", "rcpt"]);
    let port = deferring.port;
    let file = relaying(host(free_port(), free_port())).set(
        "routes",
        "remote.test",
        format!("127.0.0.1:{port}"),
    );
    let server = start_file(dir.path(), &file);
    let replies = smtp(
        &server,
        &[
            "EHLO client.test",
            "MAIL FROM:<postmaster@local.test> ENVID=retry-1",
            "RCPT TO:<a@remote.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a@remote.test",
            "DATA",
            "Subject: try again\r\n\r\nbody\r\n.",
            "QUIT",
        ],
    );
    assert!(replies[5].starts_with("250 2.0.0"), "{replies:?}");

    // 4xx: deferred, and the sender hears of the delay (NOTIFY=DELAY).
    let listing = wait_for_queue(dir.path(), &["a@remote.test  deferred (1 attempts"]);
    assert!(
        listing.contains("a@remote.test  deferred (1 attempts"),
        "{listing}"
    );
    let notices = wait_for_files(dir.path(), "postmaster", 1);
    let delay = &read_all(&notices)[0];
    for expected in [
        "Subject: Delayed Mail (still being retried)",
        "Action: delayed",
        "Original-Envelope-Id: retry-1",
        "Original-Recipient: rfc822;a@remote.test",
    ] {
        assert!(delay.contains(expected), "{expected} missing in\n{delay}");
    }

    // The server recovers (same port, now accepting); a flush retries now.
    drop(deferring);
    let _accepting = sink_on(&dir.path().join("ok"), &[], port);
    assert!(queue(dir.path(), "flush").contains("flush"));
    let dumps = wait_for_dumps(&dir.path().join("ok"), 1);
    assert_eq!(dumps.len(), 1);
    assert!(read_all(&dumps)[0].contains("Subject: try again"));
    let listing = wait_for_queue(dir.path(), &["the queue is empty"]);
    assert!(listing.contains("the queue is empty"), "{listing}");

    // NOTIFY=SUCCESS: a relayed notice (the sink sends none of its own).
    let notices = wait_for_files(dir.path(), "postmaster", 2);
    let texts = read_all(&notices);
    let success = texts
        .iter()
        .find(|t| t.contains("Successful Mail Delivery Report"))
        .unwrap_or_else(|| panic!("no success notice in {texts:?}"));
    assert!(success.contains("Action: relayed"), "{success}");
    assert!(success.contains("Status: 2."), "{success}");
    assert!(
        !texts.iter().any(|t| t.contains("Action: failed")),
        "{texts:?}"
    );
}

#[test]
fn mail_goes_to_the_mx_hosts_in_order_or_bounces_when_there_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let accepting = sink(&dir.path().join("sink"), &[]);
    let dns = NameServer::start(vec![
        // The best MX has no address; the next one is the sink.
        Record::mx("mx.test", 20, "mail.mx.test"),
        Record::mx("mx.test", 10, "gone.mx.test"),
        Record::a("mail.mx.test", [127, 0, 0, 1]),
        // No MX: its own address takes the mail (the implicit MX).
        Record::a("implicit.test", [127, 0, 0, 1]),
        // RFC 7505: no mail at all.
        Record::mx("nullmx.test", 0, "."),
        Record::a("nullmx.test", [127, 0, 0, 1]),
    ]);
    let file = relaying(host(free_port(), free_port()))
        .set("relay", "mx_port", i64::from(accepting.port))
        .set("relay", "dns_servers", vec![dns.address.to_string()]);
    let server = start_file(dir.path(), &file);
    let (ok, transcript) = swaks(
        &server,
        &[
            "--from",
            "postmaster@local.test",
            "--to",
            "a@mx.test,b@implicit.test,c@nullmx.test,d@nowhere.test",
            "--h-Subject",
            "by MX",
        ],
    );
    assert!(ok, "{transcript}");
    // One transaction per domain reached the sink.
    let dumps = read_all(&wait_for_dumps(&dir.path().join("sink"), 2));
    assert_eq!(dumps.len(), 2, "{dumps:?}");
    for recipient in ["X-Rcpt-Args: <a@mx.test>", "X-Rcpt-Args: <b@implicit.test>"] {
        assert_eq!(
            dumps.iter().filter(|d| d.contains(recipient)).count(),
            1,
            "{recipient} in {dumps:?}"
        );
    }
    // The other two bounce, each with its reason.
    let bounces = wait_for_files(dir.path(), "postmaster", 1);
    let bounce = &read_all(&bounces)[0];
    for expected in [
        "Final-Recipient: rfc822; c@nullmx.test\r\nAction: failed\r\nStatus: 5.1.10",
        "Final-Recipient: rfc822; d@nowhere.test\r\nAction: failed\r\nStatus: 5.1.2",
    ] {
        assert!(bounce.contains(expected), "{expected} missing in\n{bounce}");
    }
    assert!(!bounce.contains("Final-Recipient: rfc822; a@"), "{bounce}");
    assert!(queue(dir.path(), "list").contains("the queue is empty"));
}

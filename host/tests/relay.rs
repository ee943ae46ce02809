//! Relaying (S8) against real peers: Postfix's smtp-sink answering `4xx`
//! and then, restarted, `2xx`; MX look-up through a name server on
//! loopback; delivery status notices the sender asked for.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

/// A name server on loopback answering from a fixed zone: MX and A
/// records by name, NXDOMAIN for names it does not know, no data for
/// known names without that record type. Stops when dropped.
struct NameServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One zone entry: a name (lower case, no trailing dot), its MX records
/// (preference, exchange; "." for a null MX) and its A record.
struct Entry {
    name: &'static str,
    mx: Vec<(u16, &'static str)>,
    a: Option<[u8; 4]>,
}

fn name_server(zone: Vec<Entry>) -> NameServer {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let address = socket.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 512];
        while !stopped.load(Ordering::Relaxed) {
            let Ok((length, peer)) = socket.recv_from(&mut buffer) else {
                continue;
            };
            if let Some(answer) = answer(&buffer[..length], &zone) {
                let _ = socket.send_to(&answer, peer);
            }
        }
    });
    NameServer { address, stop }
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// The response to one query (RFC 1035 §4), or `None` if it is not one.
fn answer(query: &[u8], zone: &[Entry]) -> Option<Vec<u8>> {
    // The question: labels from byte 12, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let length = *query.get(at)? as usize;
        at += 1;
        if length == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + length)?).to_lowercase());
        at += length;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question = query.get(12..at + 4)?;
    let name = labels.join(".");
    let entry = zone.iter().find(|e| e.name == name);
    let mut records: Vec<(u16, Vec<u8>)> = Vec::new();
    match (entry, qtype) {
        (Some(entry), 15) => {
            for (preference, exchange) in &entry.mx {
                let mut data = preference.to_be_bytes().to_vec();
                encode_name(exchange, &mut data);
                records.push((15, data));
            }
        }
        (Some(entry), 1) => records.extend(entry.a.map(|a| (1, a.to_vec()))),
        _ => {}
    }
    let rcode = if entry.is_none() { 3 } else { 0 };
    let mut response = query[..2].to_vec(); // the id
    response.extend_from_slice(&[0x81, 0x80 | rcode]); // response, RD, RA
    response.extend_from_slice(&[0, 1]);
    response.extend_from_slice(&(records.len() as u16).to_be_bytes());
    response.extend_from_slice(&[0, 0, 0, 0]);
    response.extend_from_slice(question);
    for (rtype, data) in records {
        response.extend_from_slice(&[0xc0, 12]); // the question's name
        response.extend_from_slice(&rtype.to_be_bytes());
        response.extend_from_slice(&[0, 1, 0, 0, 0, 60]); // IN, TTL 60
        response.extend_from_slice(&(data.len() as u16).to_be_bytes());
        response.extend_from_slice(&data);
    }
    Some(response)
}

#[test]
fn mail_goes_to_the_mx_hosts_in_order_or_bounces_when_there_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let accepting = sink(&dir.path().join("sink"), &[]);
    let dns = name_server(vec![
        // The best MX has no address; the next one is the sink.
        Entry {
            name: "mx.test",
            mx: vec![(20, "mail.mx.test"), (10, "gone.mx.test")],
            a: None,
        },
        Entry {
            name: "mail.mx.test",
            mx: vec![],
            a: Some([127, 0, 0, 1]),
        },
        Entry {
            name: "gone.mx.test",
            mx: vec![],
            a: None,
        },
        // No MX: its own address takes the mail (the implicit MX).
        Entry {
            name: "implicit.test",
            mx: vec![],
            a: Some([127, 0, 0, 1]),
        },
        // RFC 7505: no mail at all.
        Entry {
            name: "nullmx.test",
            mx: vec![(0, ".")],
            a: Some([127, 0, 0, 1]),
        },
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

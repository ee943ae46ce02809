//! A power cut on a real file system: the data folder on lossyfs (a FUSE
//! file system of this workspace that keeps only what was fsynced, like
//! Jepsen's LazyFS), mounted in this test process. mailcall takes a
//! bounded load; then, at the same moment, it is killed (SIGKILL) and the
//! file system loses everything unsynced; it is remounted (as after a
//! reboot), mailcall starts again on it, and every message that got a
//! `250` must be delivered, exactly once, with its bytes.
//!
//! A SIGKILL alone cannot show a missing fsync (the page cache outlives
//! the process); this can. Device-mapper (dm-flakey) would do the same
//! below a real file system, but this machine has no device-mapper, so
//! FUSE it is. Skipped, with a message, where FUSE cannot be mounted (not
//! root, no /dev/fuse).

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::load::{self, Ledger};
use common::server::*;

fn cannot_mount() -> Option<&'static str> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if !uid.stdout.starts_with(b"0\n") {
        return Some("not root (lossyfs mounts with mount(2))");
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse");
    }
    None
}

/// Makes every folder under `root` durable, as the passing of time does
/// on a real disk (metadata written back within seconds): the folders
/// mailcall made at its first start are not what this test is about.
/// Files are left alone: their durability is mailcall's to get right.
fn settle_folders(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
        }
        std::fs::File::open(&dir).unwrap().sync_all().unwrap();
    }
}

/// The `[queue]` settings of this test: small segments, so the load also
/// rotates and deletes segments before the cut.
/// Segments of 64 KiB, so that rotation and compaction run under load.
fn small_segments(file: ConfigFile) -> ConfigFile {
    file.set("queue", "segment_size_kib", 64)
}

/// Never leaves a mount behind, even when the test fails.
struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn after_a_power_cut_every_acknowledged_message_is_delivered_once() {
    if let Some(reason) = cannot_mount() {
        eprintln!("skipped: the power-loss test needs a FUSE mount: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let _unmount = Unmount(&data);
    let mounted = lossyfs::mount(&data).expect("mounting lossyfs as root");
    let port = free_port();
    let maildir = data.join("mail/taro");

    // First start: the folders, the certificate, one message delivered.
    let server = start_file(dir.path(), &small_segments(host(port, free_port())));
    let first = load::message("first", 500);
    assert_eq!(
        load::send(
            server.address,
            "load@remote.test",
            "taro@local.test",
            &first
        ),
        load::Answer::Accepted
    );
    wait_until("the first message was not delivered", || {
        load::delivered(&maildir).contains_key("first")
    });
    settle_folders(&data);

    // A bounded load: 4 clients, at most 150 messages each, 20 s.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    ledger
        .lock()
        .unwrap()
        .sent
        .insert("first".into(), (first, load::Answer::Accepted));
    let clients = load::run(
        server.address,
        "p",
        "taro@local.test",
        4,
        150,
        |n| 400 + (n * 7919) % 12000,
        ledger.clone(),
        Duration::from_secs(20),
    );
    let started = Instant::now();
    while ledger.lock().unwrap().accepted() < 120 && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }

    // The power cut: mailcall killed and the disk's unsynced state lost at
    // the same moment (handles of the killed process die with the cut, so
    // nothing it still had in flight lands afterwards).
    let mut server = server;
    server._process.child.kill().unwrap();
    let lost = mounted.switch.cut();
    server._process.child.wait().unwrap();
    for client in clients {
        client.join().unwrap();
    }
    let ledger = Arc::try_unwrap(ledger).unwrap().into_inner().unwrap();
    println!(
        "power cut after {} acknowledged ({} sent): the file system lost {lost:?}",
        ledger.accepted(),
        ledger.sent.len()
    );
    assert!(
        ledger.accepted() >= 60,
        "load too slow: {}",
        ledger.accepted()
    );

    // Reboot: remount, start again, deliver what is queued.
    let mounted = mounted.remount(&data).expect("remounting lossyfs");
    let server = start_file(dir.path(), &small_segments(host(port, free_port())));
    queue(dir.path(), "flush");
    let found = load::wait_delivered(&maildir, &ledger, Duration::from_secs(20));
    let verdict = load::check(&ledger, &found);
    println!("after the power cut: {}", verdict.summary());
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    assert!(
        verdict.lost.is_empty() && verdict.corrupted.is_empty(),
        "{}\nlost: {:?}\ncorrupted: {:?}\n--- log ---\n{}",
        verdict.summary(),
        verdict.lost,
        verdict.corrupted,
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    // Local delivery is named by queue id and recipient, so a delivery
    // redone after the cut (its outcome record lost) finds its own file:
    // no duplicate is allowed at all here.
    assert!(
        verdict.duplicated.is_empty(),
        "delivered twice: {:?}",
        verdict.duplicated
    );
    assert!(
        verdict.refused_but_delivered.is_empty() && verdict.strangers == 0,
        "{}: {:?}",
        verdict.summary(),
        verdict.refused_but_delivered
    );
    let listing = wait_for_queue(dir.path(), &["the queue is empty"]);
    assert!(listing.contains("the queue is empty"), "{listing}");
    drop(server);
    drop(mounted);
}

//! A full disk, for real: the data folder on a small tmpfs this test
//! mounts (as root; skipped with a message otherwise), filled with a filler
//! file while messages come in, then freed. Every message answered `250`
//! must be delivered exactly once with its exact bytes, every refused one
//! never, and the queue must be empty afterwards, also after a restart.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::load::{self, Answer, Ledger};
use common::server::*;

/// Why this machine cannot mount a tmpfs for the test, if it cannot.
fn cannot_mount() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    (!uid.stdout.starts_with(b"0\n")).then(|| "not root: mounting a tmpfs needs root".to_string())
}

/// A tmpfs of `size` mounted at a folder; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mount -t tmpfs failed at {}",
            at.display()
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a server killed a moment ago may still hold a file.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A file that takes all the room left on its file system.
struct Filler {
    file: File,
    full: u64,
}

impl Filler {
    fn fill(path: &Path) -> Filler {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)
            .unwrap();
        let chunk = vec![0x5a; 64 << 10];
        // Bounded: a 64 MiB file system at most.
        for _ in 0..1024 {
            match file.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let full = file.metadata().unwrap().len();
        Filler { file, full }
    }

    /// Leaves `bytes` free (rounded to pages by tmpfs).
    fn leave_free(&self, bytes: u64) {
        self.file.set_len(self.full.saturating_sub(bytes)).unwrap();
    }
}

fn queue_is_empty(dir: &Path) -> String {
    wait_for_queue(dir, &["the queue is empty"])
}

/// Prints the verdict and asserts nothing was lost, doubled, corrupted, or
/// delivered against a refusal.
fn assert_clean(verdict: &load::Verdict, when: &str, log: &str) {
    println!("{when}: {}", verdict.summary());
    let clean = verdict.lost.is_empty()
        && verdict.duplicated.is_empty()
        && verdict.corrupted.is_empty()
        && verdict.refused_but_delivered.is_empty()
        && verdict.strangers == 0;
    assert!(
        clean,
        "{when}: {}\nlost {:?}\nduplicated {:?}\ncorrupted {:?}\nrefused but delivered {:?}\n--- server log (tail) ---\n{}",
        verdict.summary(),
        verdict.lost,
        verdict.duplicated,
        verdict.corrupted,
        verdict.refused_but_delivered,
        tail(log, 40)
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

/// The `[queue]` settings of these tests: small segments, so the full
/// disk also meets segment rotation.
/// Segments of 64 KiB, so that rotation and compaction run under load.
fn small_segments(file: ConfigFile) -> ConfigFile {
    file.set("queue", "segment_size_kib", 64)
}

#[test]
fn a_full_spool_disk_refuses_with_4xx_and_every_250_arrives_once_intact() {
    if let Some(reason) = cannot_mount() {
        eprintln!("skipped: the full-disk test needs its own tmpfs: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _tmpfs = Tmpfs::mount(&data, "4m");
    let port = free_port();
    let server = start_file(dir.path(), &small_segments(host(port, free_port())));
    let maildir = data.join("mail/taro");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let send = |token: String, size: usize| {
        let text = load::message(&token, size);
        let answer = load::send(server.address, "load@remote.test", "taro@local.test", &text);
        ledger.lock().unwrap().sent.insert(token, (text, answer));
    };

    // Room enough: accepted and delivered.
    for n in 0..5 {
        send(format!("before{n}"), 3000);
    }
    assert_eq!(
        ledger.lock().unwrap().accepted(),
        5,
        "{:?}",
        ledger
            .lock()
            .unwrap()
            .sent
            .values()
            .map(|v| &v.1)
            .collect::<Vec<_>>()
    );
    load::wait_delivered(&maildir, &ledger.lock().unwrap(), Duration::from_secs(10));

    // Full; then a little room now and then, less than the messages need,
    // so writes end short (ENOSPC in the middle of a record).
    let filler = Filler::fill(&data.join("filler"));
    for round in 0..8u64 {
        filler.leave_free(((round % 4 + 1) * 12) << 10);
        for n in 0..6 {
            let size = 2000 + ((round * 6 + n) as usize * 7919) % 30000;
            send(format!("full{round}x{n}"), size);
        }
    }
    {
        let ledger = ledger.lock().unwrap();
        let refused: Vec<&String> = ledger
            .sent
            .values()
            .filter_map(|(_, a)| match a {
                Answer::Refused(reply) => Some(reply),
                _ => None,
            })
            .collect();
        println!(
            "while full: {} accepted, {} refused ({:?}), {} unanswered",
            ledger.accepted(),
            refused.len(),
            refused.first(),
            ledger.count(|a| *a == Answer::Unknown)
        );
        assert!(
            refused.iter().any(|r| r.starts_with("45")),
            "the disk never filled: {refused:?}"
        );
    }

    // Room again: retried now, everything acknowledged arrives.
    drop(filler);
    std::fs::remove_file(data.join("filler")).unwrap();
    for n in 0..5 {
        send(format!("after{n}"), 3000);
    }
    queue(dir.path(), "flush");
    let ledger = Arc::try_unwrap(ledger).unwrap().into_inner().unwrap();
    let found = load::wait_delivered(&maildir, &ledger, Duration::from_secs(20));
    assert_clean(
        &load::check(&ledger, &found),
        "after space returned",
        &log_of(dir.path()),
    );
    let listing = queue_is_empty(dir.path());
    assert!(listing.contains("the queue is empty"), "{listing}");

    // A restart (SIGKILL, start again) delivers nothing twice and finds
    // nothing left.
    drop(server);
    let _server = start_file(dir.path(), &small_segments(host(port, free_port())));
    let listing = queue_is_empty(dir.path());
    queue(dir.path(), "flush");
    std::thread::sleep(Duration::from_millis(500));
    let again = load::delivered(&maildir);
    assert_clean(
        &load::check(&ledger, &again),
        "after a restart",
        &log_of(dir.path()),
    );
    assert_eq!(again.len(), found.len());
    assert!(listing.contains("the queue is empty"), "{listing}");
}

#[test]
fn a_full_mailbox_disk_defers_then_delivers_once_and_never_again_after_a_restart() {
    if let Some(reason) = cannot_mount() {
        eprintln!("skipped: the full-disk test needs its own tmpfs: {reason}");
        return;
    }
    // The spool has room; only the mailboxes' file system is full.
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("data/mail");
    let _tmpfs = Tmpfs::mount(&mail, "1m");
    let port = free_port();
    let server = start_file(dir.path(), &small_segments(host(port, free_port())));
    let filler = Filler::fill(&mail.join(".filler"));
    // Some room, less than one message: deliveries fail part-way.
    filler.leave_free(8 << 10);
    let mut ledger = Ledger::default();
    const MESSAGES: usize = 10;
    for n in 0..MESSAGES {
        let token = format!("mbox{n}");
        let text = load::message(&token, 20_000);
        let answer = load::send(server.address, "load@remote.test", "taro@local.test", &text);
        ledger.sent.insert(token, (text, answer));
    }
    assert_eq!(ledger.accepted(), MESSAGES, "{:?}", ledger.sent);
    let deferred = "taro@local.test  deferred";
    let started = Instant::now();
    let listing = loop {
        let listing = queue(dir.path(), "list");
        if listing.matches(deferred).count() == MESSAGES
            || started.elapsed() > Duration::from_secs(15)
        {
            break listing;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        listing.matches(deferred).count(),
        MESSAGES,
        "{listing}\n{}",
        tail(&log_of(dir.path()), 30)
    );
    let maildir = mail.join("taro");
    assert!(
        load::delivered(&maildir).is_empty(),
        "delivered to a full disk?"
    );

    // Room again: one copy each, nothing left in the queue or in tmp/.
    drop(filler);
    std::fs::remove_file(mail.join(".filler")).unwrap();
    queue(dir.path(), "flush");
    let found = load::wait_delivered(&maildir, &ledger, Duration::from_secs(20));
    assert_clean(
        &load::check(&ledger, &found),
        "after space returned",
        &log_of(dir.path()),
    );
    let listing = queue_is_empty(dir.path());
    assert!(listing.contains("the queue is empty"), "{listing}");
    let leftovers: Vec<_> = std::fs::read_dir(maildir.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        leftovers.is_empty(),
        "partial deliveries left in tmp/: {leftovers:?}"
    );

    // A restart delivers none of them again.
    drop(server);
    let _server = start_file(dir.path(), &small_segments(host(port, free_port())));
    queue(dir.path(), "flush");
    std::thread::sleep(Duration::from_millis(500));
    let again = load::delivered(&maildir);
    assert_clean(
        &load::check(&ledger, &again),
        "after a restart",
        &log_of(dir.path()),
    );
    let listing = queue_is_empty(dir.path());
    assert!(listing.contains("the queue is empty"), "{listing}");
}

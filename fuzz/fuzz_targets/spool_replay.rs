//! The spool's record decoding and replay (`host/src/queue/spool.rs`) on
//! arbitrary segment bytes, in two ways:
//!
//! - first byte even: the rest is a whole segment. `scan` never panics or
//!   reads out of bounds; what it reports tiles the input (records, damage,
//!   torn tail, in order, without overlap); `Spool::open_with` over that
//!   segment recovers every message `scan` read, body intact, and gives
//!   the history whatever lines its records carry.
//! - first byte odd: a real spool (on the simulated disk) writes messages
//!   and outcomes, then the rest of the input, as `(offset, xor)` pairs,
//!   damages the segment. Reopening never panics; a message either comes
//!   back with its exact body or not at all; an outcome recorded final never
//!   turns into a message to deliver again unless its record was damaged;
//!   undamaged, the history gets its three lines back exactly.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use mailcall::history::History;
use mailcall::queue::spool::{
    scan, Envelope, Outcome, Record, Recovery, Spool, SpoolError, SpoolOptions,
};
use mailcall::storage::sim::SimStorage;
use mailcall::storage::Storage;

const SEGMENT: &str = "/spool/0000000000000001.seg";

fn envelope(recipients: usize) -> Envelope {
    Envelope {
        mail_from: "a@sender.example".into(),
        recipients: (0..recipients).map(|i| format!("r{i}@b.example")).collect(),
        received_at: 1_795_000_000,
        received_at_ms: 0,
        client_address: "127.0.0.1".into(),
        helo: "client.example".into(),
        envelope_id: None,
        return_full: None,
        notify: Vec::new(),
        original_recipients: Vec::new(),
    }
}

/// The spool in `/spool` with its history beside its segments (the
/// server's data folder holds both).
fn open(disk: &Arc<SimStorage>) -> Result<(Spool, Recovery), SpoolError> {
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    let history = Arc::new(History::on(storage.clone(), Path::new("/spool")));
    Spool::open_with(storage, Path::new("/spool"), SpoolOptions::default(), Some(history))
}

/// Writes `bytes` as the spool's only segment, durably.
fn disk_with_segment(bytes: &[u8]) -> Arc<SimStorage> {
    let disk = SimStorage::new(0);
    disk.create_dir_all(Path::new("/spool")).expect("a folder");
    let file = disk.create_new(Path::new(SEGMENT)).expect("a segment");
    file.write_all(bytes).expect("written");
    file.sync().expect("synced");
    disk.sync_dir(Path::new("/spool")).expect("folder synced");
    disk
}

fn raw_segment(bytes: &[u8]) {
    let scanned = scan(bytes);
    // Records, damage and the torn tail cover the bytes in order.
    let mut spans: Vec<(u64, u64)> = scanned
        .damage
        .iter()
        .map(|(offset, skipped, _)| (*offset, offset + skipped))
        .collect();
    for (record, body_offset) in &scanned.records {
        assert!(*body_offset <= bytes.len() as u64);
        if let Record::Message { body_length, .. } = record {
            assert!(body_offset + body_length <= bytes.len() as u64);
        }
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "damage spans overlap: {spans:?}");
    }
    if let Some(tail) = scanned.torn_tail {
        assert!(tail < bytes.len() as u64);
        assert!(spans.last().is_none_or(|last| last.1 <= tail));
    }

    let disk = disk_with_segment(bytes);
    let Ok((spool, recovery)) = open(&disk) else {
        return;
    };
    assert_eq!(recovery.damage.len(), scanned.damage.len());
    for queued in &recovery.messages {
        let body = spool.body(queued.id).expect("a recovered message's body");
        let found = scanned.records.iter().any(|(record, offset)| {
            matches!(record, Record::Message { id, body_length, .. }
                if *id == queued.id
                    && bytes[*offset as usize..(*offset + *body_length) as usize] == body[..])
        });
        assert!(found, "message {} recovered with other bytes", queued.id);
    }
}

fn damaged_spool(damage: &[u8]) {
    let disk = SimStorage::new(1);
    let (spool, _) = open(&disk).expect("a new spool");
    let mut bodies = Vec::new();
    for n in 0..4u8 {
        let body = vec![b'a' + n; 20 + usize::from(n) * 7];
        let id = spool.enqueue(envelope(2), &body).expect("enqueued");
        bodies.push((id, body));
    }
    let delivered = Outcome::Delivered {
        detail: "250 ok".into(),
    };
    let outcomes = [(0, 0), (0, 1), (1, 0)];
    for (message, index) in outcomes {
        let line = format!("line {message} {index}\n");
        spool
            .record(bodies[message].0, index, delivered.clone(), line)
            .expect("recorded");
    }
    drop(spool);
    let mut segment = disk.read(Path::new(SEGMENT)).expect("the segment");
    for pair in damage.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([pair[0], pair[1]]));
        let at = at % segment.len().max(1);
        if let Some(byte) = segment.get_mut(at) {
            *byte ^= pair[2];
        }
    }
    let intact = scan(&segment).damage.is_empty() && scan(&segment).torn_tail.is_none();
    let disk = disk_with_segment(&segment);
    // The history is gone: the reopened spool gives it back what the
    // (damaged) records still carry.
    let (spool, recovery) = open(&disk).expect("the damaged spool opens");
    for queued in &recovery.messages {
        let body = spool.body(queued.id).expect("a recovered body");
        let original = bodies.iter().find(|(id, _)| *id == queued.id);
        assert!(
            original.is_some_and(|(_, expected)| *expected == body),
            "message {} came back with other bytes",
            queued.id
        );
    }
    if intact {
        // Nothing damaged: exactly the three unfinished messages return.
        let ids: Vec<_> = recovery.messages.iter().map(|q| q.id).collect();
        let expected: Vec<_> = bodies[1..].iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, expected);
        let history = disk.read(Path::new("/spool/history.jsonl")).expect("the history");
        assert_eq!(history, b"line 0 0\nline 0 1\nline 1 0\n");
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    if mode & 1 == 0 {
        raw_segment(rest);
    } else {
        damaged_spool(rest);
    }
});

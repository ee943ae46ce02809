//! The console's history pages against a long history. Run with:
//!
//!     cargo bench -p mailcall --bench console --profile dev
//!
//! 100 000 attempts (about 40 MB of history): the first page of the
//! deliveries list, a page deep in it, a filtered page whose matches are
//! spread thin, and a delivery's detail (every attempt of one queue id,
//! which reads the whole file). The target is a page in under 200 ms.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use mailcall::history::{self, Attempt, AttemptOutcome, DeliveryPath, Filter};

const ATTEMPTS: usize = 100_000;

fn attempt(n: usize) -> Attempt {
    Attempt {
        at_ms: 1_796_000_000_000 + n as u64,
        queue_id: format!("{:016X}", 0x0006_61C6_0000_0000u64 + (n / 2) as u64),
        message_id: Some(format!("m{n}@a.example")),
        recipient: format!("user{}@b{}.example", n % 1000, n % 50),
        path: [DeliveryPath::Local, DeliveryPath::Call, DeliveryPath::Relay][n % 3],
        outcome: if n.is_multiple_of(97) {
            AttemptOutcome::Failed
        } else {
            AttemptOutcome::Delivered
        },
        detail: "250 2.0.0 Ok: queued as 000661C6CB40C083 (over a call to 05022220000)".into(),
        number: Some("05022220000".into()),
        rule: Some("keyword-table".into()),
        rule_version: Some("3f2a9c1b0e4d".into()),
        policy: Some("1-7f67e9be3339".into()),
        reason: Some("keyword OSAKASITEN in the message body".into()),
        shadow_disagreements: Vec::new(),
        call_id: Some(format!("{n:032x}@a.example")),
        sip_status: Some(200),
        peer: Some("127.0.0.1:47000".into()),
        elapsed_ms: 9,
        ladder: Vec::new(),
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for n in 0..ATTEMPTS {
        text.push_str(&history::lines(&[attempt(n)]));
    }
    std::fs::write(dir.path().join(history::HISTORY_FILE), &text).unwrap();
    eprintln!("history of {ATTEMPTS} attempts, {} MB", text.len() >> 20);
    let data = dir.path();
    let mut group = c.benchmark_group("console");
    group.sample_size(10);
    group.bench_function("deliveries, first page of 50", |b| {
        b.iter(|| black_box(history::newest(data, &Filter::default(), 0, 50).unwrap()))
    });
    group.bench_function("deliveries, page 200 (10 000 rows in)", |b| {
        b.iter(|| black_box(history::newest(data, &Filter::default(), 10_000, 50).unwrap()))
    });
    let failed = Filter {
        outcome: Some(AttemptOutcome::Failed),
        ..Filter::default()
    };
    group.bench_function("deliveries, first page of failed (1 in 97)", |b| {
        b.iter(|| black_box(history::newest(data, &failed, 0, 50).unwrap()))
    });
    let one = Filter {
        id: Some(attempt(ATTEMPTS / 2).queue_id),
        ..Filter::default()
    };
    group.bench_function("delivery detail (the whole file read)", |b| {
        b.iter(|| black_box(history::newest(data, &one, 0, usize::MAX).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

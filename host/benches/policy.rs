//! Policy generations and decision records. Run with:
//!
//!     scripts/build-rules && cargo bench -p mailcall --bench policy --profile dev
//!
//! - `reload/5 rules (1 JavaScript, 1 Python)`: building, checking and
//!   putting in force a new generation of a five-rule policy with a warm
//!   compile cache (each iteration changes one rule's config, so every
//!   iteration is a real new generation). A watched file change adds the
//!   watcher's 300 ms of quiet before this work starts.
//! - `evaluate/…`: a warm three-rule evaluation (pooled instances) without
//!   and with the decision log, for recipients of one message and for a
//!   new message each time; the ratio is the cost of recording on the
//!   evaluating thread. The log's writer thread (building and serializing
//!   the line) runs on another core meanwhile; records it cannot keep up
//!   with are dropped and counted, as in a server.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use mailcall::config::Config;
use mailcall::policy::{Envelope, PolicyEngine};

const ADDRESSES: &str = "\"muratec.co.jp\" = \"050-2222-3333\"\n";
const KEYWORDS: &str = "KYOTOSITEN = \"050-1234-5678\"\nOSAKASITEN = \"050-2222-3333\"\n";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// A configuration of `chain`, every rule pooled; `tag` goes into one
/// rule's config so two tags are two generations.
fn config_text(dir: &Path, chain: &[&str], tag: u32) -> String {
    let chain: Vec<String> = chain.iter().map(|r| format!("{r:?}")).collect();
    let mut text = format!(
        "[server]\ndata_dir = \"data\"\n[policy]\nrules_dir = {:?}\ncache_dir = {:?}\nchain = [{}]\nhot_reload = false\n\
         [tables.addresses]\nfile = \"addresses.toml\"\n[tables.keywords]\nfile = \"keywords.toml\"\n",
        repo().join("build/rules"),
        dir.join("cache"),
        chain.join(", "),
    );
    for rule in [
        "embedded-number",
        "address-table",
        "keyword-table",
        "keyword-table-js",
        "keyword-table-py",
        "custom",
    ] {
        let table = if rule == "address-table" {
            "addresses"
        } else {
            "keywords"
        };
        text.push_str(&format!(
            "[rules.{rule}]\nisolation = \"pooled\"\npool_size = 1\nmax_calls_per_instance = 1000000\nmemory_limit_mib = 64\ndeadline_ms = 2000\n\
             [rules.{rule}.config]\ntable = {table:?}\ntag = \"{tag}\"\n"
        ));
    }
    text
}

fn write_config(dir: &Path, chain: &[&str], tag: u32) -> Config {
    std::fs::write(dir.join("addresses.toml"), ADDRESSES).unwrap();
    std::fs::write(dir.join("keywords.toml"), KEYWORDS).unwrap();
    let path = dir.join("mailcall.toml");
    std::fs::write(&path, config_text(dir, chain, tag)).unwrap();
    Config::load(&path).unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let five = [
        "embedded-number",
        "address-table",
        "keyword-table",
        "keyword-table-js",
        "keyword-table-py",
    ];
    let config = write_config(dir.path(), &five, 0);
    // Compiles everything once: the cache is warm from here on.
    let engine = PolicyEngine::from_config(&config).unwrap();
    let mut group = c.benchmark_group("policy");
    group.sample_size(10);
    let mut tag = 0;
    group.bench_function("reload/5 rules (1 JavaScript, 1 Python)", |b| {
        b.iter(|| {
            tag += 1;
            write_config(dir.path(), &five, tag);
            let report = engine.reload(None);
            black_box(report.outcome.unwrap());
        })
    });
    drop(engine);

    let three = ["embedded-number", "address-table", "keyword-table"];
    let config = write_config(dir.path(), &three, 0);
    let quiet = PolicyEngine::from_config(&config).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let recording = PolicyEngine::for_server(&config, &data).unwrap();
    let mut unlogged = config.clone();
    unlogged.policy.decision_log_mib = 0;
    let server = PolicyEngine::for_server(&unlogged, &data).unwrap();
    let text = "From: Taro <taro@a.example>\r\nTo: x@b.example\r\nSubject: for KYOTOSITEN\r\n\r\nPlease forward this.\r\n";
    let envelope = Envelope {
        mail_from: "taro@a.example".into(),
        rcpt_to: "hanako@b.example".into(),
        client_address: "192.0.2.1".into(),
        helo: "a.example".into(),
    };
    let view = std::sync::Arc::new(quiet.view(text.as_bytes()).unwrap());
    group.sample_size(50);
    // The queue id and envelope are made for each evaluation, as the
    // planner makes them for each recipient (and the log takes them).
    let id = || "18A2F3C4D5E6F708".to_string();
    group.bench_function("evaluate/3 rules warm, no decision log", |b| {
        b.iter(|| black_box(quiet.evaluate_queued(id(), envelope.clone(), &view)))
    });
    group.bench_function(
        "evaluate/3 rules warm, server engine, no decision log",
        |b| b.iter(|| black_box(server.evaluate_queued(id(), envelope.clone(), &view))),
    );
    group.bench_function("evaluate/3 rules warm, decision log", |b| {
        b.iter(|| black_box(recording.evaluate_queued(id(), envelope.clone(), &view)))
    });
    // Each evaluation another message: the writer serializes the message
    // view every time, not once per queue id.
    let mut queue_id = 0u64;
    group.bench_function("evaluate/3 rules warm, decision log, a message each", |b| {
        b.iter(|| {
            queue_id += 1;
            let id = format!("{queue_id:016X}");
            black_box(recording.evaluate_queued(id, envelope.clone(), &view))
        })
    });
    // The handing over alone, on a log whose writer runs meanwhile.
    let log = mailcall::policy::decisions::DecisionLog::open(&data.join("alone"), 64 << 20, false)
        .unwrap();
    let verdict = server.evaluate_queued(id(), envelope.clone(), &view);
    // Timed in runs of 1000 that fit the backlog, the writer catching up
    // in between (untimed), so no record is dropped.
    group.bench_function("decision log: recording one evaluation", |b| {
        b.iter_custom(|iters| {
            let mut spent = std::time::Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let run = left.min(1000);
                let inputs: Vec<_> = (0..run).map(|_| (id(), envelope.clone())).collect();
                let mut verdicts = vec![verdict.clone(); run as usize];
                while log.backlog() > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                let started = std::time::Instant::now();
                for ((id, envelope), verdict) in inputs.into_iter().zip(&mut verdicts) {
                    log.record(id, envelope, &view, verdict, 1);
                }
                spent += started.elapsed();
                left -= run;
            }
            spent
        })
    });
    group.finish();
    eprintln!(
        "decision records dropped (writer behind): {} by the evaluations, {} by the recording alone",
        recording.decisions_dropped(),
        log.dropped()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);

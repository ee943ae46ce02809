//! The keyword-table rule in Rust, JavaScript and Python, side by side:
//! per-evaluation cost (fresh instance and warm instance), compile time,
//! load time from the compile cache, and memory. Prints a table. Run with:
//!
//!     scripts/build-rules && cargo bench -p mailcall --bench languages --profile dev
//!
//! Under `cargo test` (no `--bench` argument) it runs a few iterations and
//! skips the uncached compile, as a check that it still works.

use std::path::Path;
use std::time::{Duration, Instant};

use mailcall::config::Config;
use mailcall::policy::{Envelope, PolicyEngine};

const KEYWORDS: &str = "KYOTOSITEN = \"050-1234-5678\"\nOSAKASITEN = \"050-2222-3333\"\nTOKYOSITEN = \"080-0000-1111\"\n";
const RULES: [(&str, &str); 3] = [
    ("Rust", "keyword-table"),
    ("JavaScript", "keyword-table-js"),
    ("Python", "keyword-table-py"),
];

fn engine(dir: &Path, rule: &str, isolation: &str, cache: &Path) -> (PolicyEngine, Duration) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::write(dir.join("keywords.toml"), KEYWORDS).unwrap();
    let text = format!(
        "[policy]\nrules_dir = {rules:?}\ncache_dir = {cache:?}\nchain = [{rule:?}]\nhot_reload = false\n\
         [tables.keywords]\nfile = \"keywords.toml\"\n\
         [rules.{rule}]\nmemory_limit_mib = 64\ndeadline_ms = 1000\nisolation = {isolation:?}\npool_size = 1\nmax_calls_per_instance = 1000000\n\
         [rules.{rule}.config]\ntable = \"keywords\"\n",
        rules = repo.join("build/rules"),
    );
    let path = dir.join("mailcall.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let started = Instant::now();
    let engine = PolicyEngine::from_config(&config).unwrap();
    (engine, started.elapsed())
}

/// The median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let runs = if full { 2000 } else { 5 };
    let dir = tempfile::tempdir().unwrap();
    let shared_cache = std::env::temp_dir().join("mailcall-bench-cache");
    let mut body = String::new();
    for line in 0..60 {
        body.push_str(&format!(
            "Line {line}: figures for order 2026-{line:04}, 50,800 yen.\r\n"
        ));
    }
    body.push_str("Please forward to KYOTOSITEN.\r\n");
    let raw =
        format!("From: a@sender.example\r\nTo: x@y.example\r\nSubject: figures\r\n\r\n{body}");
    let envelope = Envelope {
        mail_from: "a@sender.example".into(),
        rcpt_to: "x@y.example".into(),
        client_address: "127.0.0.1".into(),
        helo: "sender.example".into(),
    };

    println!(
        "keyword-table on a {} byte message, {runs} runs each (medians)",
        raw.len()
    );
    println!(
        "| language | module | compile (no cache) | load (cached) | fresh instance | warm instance | peak memory |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (language, rule) in RULES {
        let module = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join(format!("build/rules/{rule}.wasm"));
        let size = std::fs::metadata(&module).map(|m| m.len()).unwrap_or(0);
        let compile = if full {
            let cold_cache = dir.path().join(format!("cold-{rule}"));
            format!(
                "{:.2} s",
                engine(dir.path(), rule, "fresh", &cold_cache)
                    .1
                    .as_secs_f64()
            )
        } else {
            "skipped".into()
        };
        engine(dir.path(), rule, "fresh", &shared_cache); // fill the cache
        let (fresh, load) = engine(dir.path(), rule, "fresh", &shared_cache);
        let (warm, _) = engine(dir.path(), rule, "pooled", &shared_cache);
        let message = fresh.view(raw.as_bytes()).unwrap();
        for engine in [&fresh, &warm] {
            let verdict = engine.evaluate(&envelope, &message);
            assert_eq!(verdict.number(), Some("05012345678"), "{rule}: {verdict:?}");
        }
        let fresh_time = median(runs, || {
            fresh.evaluate(&envelope, &message);
        });
        let warm_time = median(runs, || {
            warm.evaluate(&envelope, &message);
        });
        let peak = fresh.rule_peak_memory(rule).unwrap();
        println!(
            "| {language} | {:.1} MB | {compile} | {:.1} ms | {:.0} µs | {:.0} µs | {:.1} MiB |",
            size as f64 / 1e6,
            load.as_secs_f64() * 1e3,
            fresh_time.as_secs_f64() * 1e6,
            warm_time.as_secs_f64() * 1e6,
            peak as f64 / (1 << 20) as f64,
        );
    }
}

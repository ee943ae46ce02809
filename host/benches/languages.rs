//! Every stock rule in every language, side by side: module size, compile
//! time, load time from the compile cache, per-evaluation cost on a fresh
//! instance and on a warm one, and peak memory; then the keyword rule on a
//! table of 10 000 keywords, with the table copied into the rule (the 0.1.0
//! contract's `tables.entries`) and searched by the host (0.2.0's
//! `tables.search-keywords`). Prints two tables. Run with:
//!
//!     scripts/build-rules && cargo bench -p mailcall --bench languages --profile dev
//!
//! Under `cargo test` (no `--bench` argument) it runs a few iterations and
//! skips the uncached compile, as a check that it still works.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mailcall::config::Config;
use mailcall::policy::{Envelope, Message, PolicyEngine};

const LANGUAGES: [(&str, &str); 4] = [
    ("Rust", ""),
    ("JavaScript", "-js"),
    ("Python", "-py"),
    ("C", "-c"),
];

/// Each stock rule with the recipient and the clue it finds at the end of
/// the message, so every rule reads all of it.
const RULES: [(&str, &str, &str); 4] = [
    (
        "embedded-number",
        "x@y.example",
        "Please call 050-1234-5678.",
    ),
    ("address-table", "info@muratec.co.jp", ""),
    (
        "keyword-table",
        "x@y.example",
        "Please forward to KYOTOSITEN.",
    ),
    ("custom", "x@y.example", ""),
];

const ADDRESSES: &str = "\"abc@efg.com\" = \"050-1234-5678\"\n\"muratec.co.jp\" = \"050-2222-3333\"\n\"*.example.net\" = \"080-0000-1111\"\n";
const KEYWORDS: &str = "KYOTOSITEN = \"050-1234-5678\"\nOSAKASITEN = \"050-2222-3333\"\nTOKYOSITEN = \"080-0000-1111\"\n";

/// Long enough, and large enough, for the 0.1.0 JavaScript rule, which
/// copies 10 000 keywords into its heap and folds each in its interpreter
/// on every call (at 64 MiB a warm instance of it fails within a few
/// calls). What the rules really use is the `peak memory` column.
const DEADLINE_MS: u64 = 10_000;
const MEMORY_MIB: u64 = 256;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// An engine whose chain is `module` alone, named `name`; and how long
/// making it took (compiling, or loading from `cache`).
fn engine(
    dir: &Path,
    name: &str,
    module: &Path,
    isolation: &str,
    cache: &Path,
) -> (PolicyEngine, Duration) {
    let text = format!(
        "[policy]\nrules_dir = {dir:?}\ncache_dir = {cache:?}\nchain = [{name:?}]\nhot_reload = false\n\
         [tables.keywords]\nfile = \"keywords.toml\"\n[tables.addresses]\nfile = \"addresses.toml\"\n\
         [rules.{name}]\nfile = {module:?}\nmemory_limit_mib = {MEMORY_MIB}\ndeadline_ms = {DEADLINE_MS}\nisolation = {isolation:?}\npool_size = 1\nmax_calls_per_instance = 1000000\n\
         [rules.{name}.config]\ntable = {table:?}\n\"sender.sender.example\" = \"050-1234-5678\"\n",
        table = if name.starts_with("address") { "addresses" } else { "keywords" },
    );
    let path = dir.join("mailcall.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let started = Instant::now();
    let engine = PolicyEngine::from_config(&config).unwrap();
    (engine, started.elapsed())
}

/// The median of `runs` evaluations; every one must dial (a failing rule
/// is fast, and its circuit breaker faster: never time those).
fn median(runs: usize, engine: &PolicyEngine, envelope: &Envelope, message: &Message) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let verdict = engine.evaluate(envelope, message);
            let took = started.elapsed();
            assert!(
                verdict.number().is_some() && verdict.failures.is_empty(),
                "{verdict:?}"
            );
            took
        })
        .collect();
    times.sort();
    times[runs / 2]
}

/// A 3 KB message: 60 lines of figures, then `clue`.
fn message(engine: &PolicyEngine, clue: &str) -> Message {
    let mut body = String::new();
    for line in 0..60 {
        body.push_str(&format!(
            "Line {line}: figures for order 2026-{line:04}, 50,800 yen.\r\n"
        ));
    }
    body.push_str(clue);
    body.push_str("\r\n");
    let raw = format!(
        "From: a@sender.example\r\nTo: x@y.example\r\nImportance: high\r\nSubject: figures\r\n\r\n{body}"
    );
    engine.view(raw.as_bytes()).unwrap()
}

fn envelope(rcpt: &str) -> Envelope {
    Envelope {
        mail_from: "a@sender.example".into(),
        rcpt_to: rcpt.into(),
        client_address: "127.0.0.1".into(),
        helo: "sender.example".into(),
    }
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

fn us(duration: Duration) -> String {
    format!("{:.0} µs", duration.as_secs_f64() * 1e6)
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let runs = if full { 1000 } else { 3 };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keywords.toml"), KEYWORDS).unwrap();
    std::fs::write(dir.path().join("addresses.toml"), ADDRESSES).unwrap();
    // The tests' compile cache: under `cargo test` the modules are there.
    let cache = std::env::temp_dir().join("mailcall-test-cache");

    println!("Every stock rule on a 3 KB message, {runs} runs each (medians)");
    println!("| rule | language | module | compile (no cache) | load (cached) | fresh instance | warm instance | peak memory |");
    println!("|---|---|---|---|---|---|---|---|");
    for (rule, rcpt, clue) in RULES {
        for (language, suffix) in LANGUAGES {
            let name = format!("{rule}{suffix}");
            let module = repo().join(format!("build/rules/{name}.wasm"));
            let size = std::fs::metadata(&module).map(|m| m.len()).unwrap_or(0);
            let compile = if full {
                let cold = dir.path().join(format!("cold-{name}"));
                let (_, took) = engine(dir.path(), &name, &module, "fresh", &cold);
                format!("{:.2} s", took.as_secs_f64())
            } else {
                "skipped".into()
            };
            engine(dir.path(), &name, &module, "fresh", &cache); // fill the cache
            let (fresh, load) = engine(dir.path(), &name, &module, "fresh", &cache);
            let (warm, _) = engine(dir.path(), &name, &module, "pooled", &cache);
            let message = message(&fresh, clue);
            let envelope = envelope(rcpt);
            for engine in [&fresh, &warm] {
                let verdict = engine.evaluate(&envelope, &message);
                assert!(
                    verdict.number().is_some() && verdict.failures.is_empty(),
                    "{name}: {verdict:?}"
                );
            }
            let fresh_time = median(runs, &fresh, &envelope, &message);
            let warm_time = median(runs, &warm, &envelope, &message);
            let peak = fresh.rule_peak_memory(&name).unwrap();
            println!(
                "| {rule} | {language} | {:.2} MB | {compile} | {} | {} | {} | {:.1} MiB |",
                size as f64 / 1e6,
                ms(load),
                us(fresh_time),
                us(warm_time),
                peak as f64 / (1 << 20) as f64,
            );
        }
    }
    keyword_table_of_10_000(&dir, &cache, runs);
}

/// The keyword rule on a table of 10 000 keywords, the match at the end of
/// the body: the 0.1.0 rules copy the table into the rule at every call
/// and fold every keyword; the 0.2.0 rules ask the host.
fn keyword_table_of_10_000(dir: &tempfile::TempDir, cache: &Path, runs: usize) {
    let mut table = String::new();
    for index in 0..10_000 {
        table.push_str(&format!(
            "BRANCH{index:05} = \"050-{:04}-{:04}\"\n",
            index / 100,
            index
        ));
    }
    table.push_str("KYOTOSITEN = \"050-1234-5678\"\n");
    std::fs::write(dir.path().join("keywords.toml"), table).unwrap();
    let v0_1 = repo().join("tests/fixtures/rules-0.1.0/keyword-table.wasm");
    let contenders: [(&str, &str, PathBuf); 7] = [
        ("Rust", "0.1.0, table copied", v0_1),
        (
            "Rust",
            "0.2.0, host search",
            repo().join("build/rules/keyword-table.wasm"),
        ),
        (
            "JavaScript",
            "0.1.0, table copied",
            repo().join("build/fixtures/keyword-table-js-0.1.0.wasm"),
        ),
        (
            "JavaScript",
            "0.2.0, host search",
            repo().join("build/rules/keyword-table-js.wasm"),
        ),
        (
            "Python",
            "0.1.0, table copied",
            repo().join("build/fixtures/keyword-table-py-0.1.0.wasm"),
        ),
        (
            "Python",
            "0.2.0, host search",
            repo().join("build/rules/keyword-table-py.wasm"),
        ),
        (
            "C",
            "0.2.0, host search",
            repo().join("build/rules/keyword-table-c.wasm"),
        ),
    ];
    let runs = runs.min(50);
    println!();
    println!("keyword-table with 10 001 keywords, 3 KB message, {runs} runs each (medians, warm instances)");
    println!("| language | contract | evaluation | fresh instance |");
    println!("|---|---|---|---|");
    for (language, contract, module) in contenders {
        let name = module
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .replace('.', "-");
        let (warm, _) = engine(dir.path(), &name, &module, "pooled", cache);
        let (fresh, _) = engine(dir.path(), &name, &module, "fresh", cache);
        let message = message(&warm, "Please forward to KYOTOSITEN.");
        let envelope = envelope("x@y.example");
        let verdict = warm.evaluate(&envelope, &message);
        assert_eq!(verdict.number(), Some("05012345678"), "{name}: {verdict:?}");
        let warm_time = median(runs, &warm, &envelope, &message);
        let fresh_time = median(runs, &fresh, &envelope, &message);
        println!(
            "| {language} | {contract} | {} | {} |",
            us(warm_time),
            us(fresh_time)
        );
    }
}

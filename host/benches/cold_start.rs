//! Cold start of a rule: the cost of one evaluation on a fresh instance
//! (instantiate, call, drop) against a warm one, and the minor page faults
//! each takes, for the keyword-table and embedded-number rules in every
//! language. Fresh and warm runs alternate in rounds so that the noise of a
//! shared machine falls on both alike. Run with:
//!
//!     scripts/build-rules && cargo bench -p mailcall --bench cold_start --profile dev
//!
//! `COLD_START_ROUNDS=n` sets the number of rounds (of 50 runs; 20 by
//! default), `COLD_START_ONLY=-py` picks the rules whose name has `-py`, and
//! `COLD_START_UNCACHED=1` also measures an engine whose rule was just
//! compiled (the first-compile path: no cached artifact to map).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mailcall::config::Config;
use mailcall::policy::{Envelope, Message, PolicyEngine};

const RULES: [(&str, &str); 2] = [
    ("embedded-number", "Please call 050-1234-5678."),
    ("keyword-table", "Please forward to KYOTOSITEN."),
];
const LANGUAGES: [(&str, &str); 4] = [
    ("Rust", ""),
    ("JavaScript", "-js"),
    ("Python", "-py"),
    ("C", "-c"),
];
const KEYWORDS: &str = "KYOTOSITEN = \"050-1234-5678\"\nOSAKASITEN = \"050-2222-3333\"\n";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn engine(dir: &Path, name: &str, module: &Path, isolation: &str, cache: &Path) -> PolicyEngine {
    let text = format!(
        "[policy]\nrules_dir = {dir:?}\ncache_dir = {cache:?}\nchain = [{name:?}]\nhot_reload = false\n\
         [tables.keywords]\nfile = \"keywords.toml\"\n\
         [rules.{name}]\nfile = {module:?}\nmemory_limit_mib = 64\ndeadline_ms = 1000\nisolation = {isolation:?}\npool_size = 1\nmax_calls_per_instance = 1000000\n\
         [rules.{name}.config]\ntable = \"keywords\"\n"
    );
    let path = dir.join("mailcall.toml");
    std::fs::write(&path, text).unwrap();
    PolicyEngine::from_config(&Config::load(&path).unwrap()).unwrap()
}

fn message(engine: &PolicyEngine, clue: &str) -> Message {
    let mut body = String::new();
    for line in 0..60 {
        body.push_str(&format!(
            "Line {line}: figures for order 2026-{line:04}, 50,800 yen.\r\n"
        ));
    }
    body.push_str(clue);
    body.push_str("\r\n");
    let raw =
        format!("From: a@sender.example\r\nTo: x@y.example\r\nSubject: figures\r\n\r\n{body}");
    engine.view(raw.as_bytes()).unwrap()
}

fn minor_faults() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr());
        usage.assume_init().ru_minflt
    }
}

/// Per-evaluation times and minor faults of `engine`, `runs` of them.
fn sample(
    engine: &PolicyEngine,
    envelope: &Envelope,
    message: &Message,
    runs: usize,
    times: &mut Vec<Duration>,
) -> i64 {
    let faults = minor_faults();
    for _ in 0..runs {
        let started = Instant::now();
        let verdict = engine.evaluate(envelope, message);
        times.push(started.elapsed());
        debug_assert!(verdict.number().is_some());
    }
    minor_faults() - faults
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn us(duration: Duration) -> String {
    format!("{:.0} µs", duration.as_secs_f64() * 1e6)
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let rounds = std::env::var("COLD_START_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok());
    let (rounds, per_round) = if full {
        (rounds.unwrap_or(20), 50)
    } else {
        (1, 3)
    };
    let uncached = full && std::env::var_os("COLD_START_UNCACHED").is_some();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keywords.toml"), KEYWORDS).unwrap();
    let cache = std::env::temp_dir().join("mailcall-test-cache");
    // `COLD_START_ONLY=-py` measures only the rules whose name has `-py`.
    let only = std::env::var("COLD_START_ONLY").ok();

    println!(
        "Fresh against warm evaluation, {} runs each (medians; faults per evaluation)",
        rounds * per_round
    );
    println!(
        "| rule | language | fresh | warm | fresh − warm | faults fresh | faults warm |{}",
        if uncached {
            " fresh, just compiled |"
        } else {
            ""
        }
    );
    println!(
        "|---|---|---|---|---|---|---|{}",
        if uncached { "---|" } else { "" }
    );
    for (rule, clue) in RULES {
        for (language, suffix) in LANGUAGES {
            let name = format!("{rule}{suffix}");
            let module = repo().join(format!("build/rules/{name}.wasm"));
            if !module.exists() || only.as_deref().is_some_and(|only| !name.contains(only)) {
                continue;
            }
            engine(dir.path(), &name, &module, "fresh", &cache); // fill the cache
            let fresh = engine(dir.path(), &name, &module, "fresh", &cache);
            let warm = engine(dir.path(), &name, &module, "pooled", &cache);
            let message = message(&fresh, clue);
            let envelope = Envelope {
                mail_from: "a@sender.example".into(),
                rcpt_to: "x@y.example".into(),
                client_address: "127.0.0.1".into(),
                helo: "sender.example".into(),
            };
            for engine in [&fresh, &warm] {
                let verdict = engine.evaluate(&envelope, &message);
                assert!(
                    verdict.number().is_some() && verdict.failures.is_empty(),
                    "{name}: {verdict:?}"
                );
            }
            let (mut fresh_times, mut warm_times) = (Vec::new(), Vec::new());
            let (mut fresh_faults, mut warm_faults) = (0, 0);
            for _ in 0..rounds {
                fresh_faults += sample(&fresh, &envelope, &message, per_round, &mut fresh_times);
                warm_faults += sample(&warm, &envelope, &message, per_round, &mut warm_times);
            }
            let just_compiled = if uncached {
                let cold = tempfile::tempdir().unwrap();
                let engine = engine(dir.path(), &name, &module, "fresh", cold.path());
                let mut times = Vec::new();
                for _ in 0..rounds {
                    sample(&engine, &envelope, &message, per_round, &mut times);
                }
                format!(" {} |", us(median(&mut times)))
            } else {
                String::new()
            };
            let runs = (rounds * per_round) as f64;
            let (fresh_time, warm_time) = (median(&mut fresh_times), median(&mut warm_times));
            println!(
                "| {rule} | {language} | {} | {} | {} | {:.0} | {:.0} |{just_compiled}",
                us(fresh_time),
                us(warm_time),
                us(fresh_time.saturating_sub(warm_time)),
                fresh_faults as f64 / runs,
                warm_faults as f64 / runs,
            );
        }
    }
}

//! Hot reload: rule modules and tables replaced on disk while the engine
//! runs. Each test watches its own temporary folder.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{decide, mail, rule, setup, Setup};
use mailcall::policy::PolicyEngine;

/// The rule `pick` lives in its own watched folder; it starts as a copy of
/// `address-table`, which dials 050-2222-3333 for muratec.co.jp.
fn watched() -> (Setup, PathBuf, Arc<PolicyEngine>) {
    // `file` is relative to the configuration's folder.
    let setup = setup(
        &["pick"],
        "[rules.pick]\nfile = \"rules/pick.wasm\"\n[rules.pick.config]\ntable = \"addresses\"\n",
    );
    let rules = setup.dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let pick = rules.join("pick.wasm");
    std::fs::copy(rule("address-table"), &pick).unwrap();
    let engine = Arc::new(setup.engine());
    (setup, pick, engine)
}

const RCPT: &str = "050-1111-2222@muratec.co.jp";

fn number_now(engine: &PolicyEngine) -> Option<String> {
    decide(engine, RCPT, &mail("To: x@y.example\nSubject: hi", ""))
        .number()
        .map(str::to_string)
}

/// Polls until `number_now` is `expected` or `limit` passes; returns how
/// long it took.
fn wait_for_number(engine: &PolicyEngine, expected: &str, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if number_now(engine).as_deref() == Some(expected) {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Writes `bytes` the way editors do: a temporary file, then a rename.
fn replace_by_rename(path: &Path, bytes: &[u8]) {
    let temporary = path.with_extension("wasm.partial");
    std::fs::write(&temporary, bytes).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn wait_for_report(engine: &PolicyEngine, failed: bool, after: usize) -> String {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let reports = engine.recent_reloads();
        if let Some(report) = reports
            .iter()
            .skip(after)
            .find(|r| r.outcome.is_err() == failed)
        {
            let outcome = match &report.outcome {
                Ok(id) => format!("generation {id}"),
                Err(error) => error.to_string(),
            };
            return format!("{}: {outcome}", report.file.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "no reload report (failed = {failed}) after {after}: {:?}",
        engine.recent_reloads()
    );
}

#[test]
fn a_replaced_module_is_in_force_within_a_second() {
    let (_setup, pick, engine) = watched();
    let _watcher = engine
        .watch()
        .unwrap()
        .expect("hot reload is on by default");
    assert_eq!(number_now(&engine).as_deref(), Some("05022223333"));

    replace_by_rename(&pick, &std::fs::read(rule("embedded-number")).unwrap());
    let took = wait_for_number(&engine, "05011112222", Duration::from_secs(10))
        .expect("the new module never came into force");
    assert!(took <= Duration::from_secs(1), "took {took:?}");

    // In-place writes (cp) work as well as renames.
    std::fs::copy(rule("address-table"), &pick).unwrap();
    let took = wait_for_number(&engine, "05022223333", Duration::from_secs(10))
        .expect("the copied module never came into force");
    assert!(took <= Duration::from_secs(1), "took {took:?}");
}

#[test]
fn a_corrupt_module_never_replaces_the_one_in_force() {
    let (_setup, pick, engine) = watched();
    let _watcher = engine.watch().unwrap().unwrap();
    let before = engine.rule_digest("pick").unwrap();

    replace_by_rename(&pick, b"\0asm\x0d\0\x01\0 this is not a component");
    let report = wait_for_report(&engine, true, 0);
    assert!(report.contains("not a WebAssembly component"), "{report}");
    assert_eq!(engine.rule_digest("pick").unwrap(), before);
    assert_eq!(number_now(&engine).as_deref(), Some("05022223333"));

    // A module of another world is refused the same way.
    let reports = engine.recent_reloads().len();
    replace_by_rename(&pick, &wat::parse_str("(component)").unwrap());
    let report = wait_for_report(&engine, true, reports);
    assert!(
        report.contains("does not implement the mailcall:rule world"),
        "{report}"
    );
    assert_eq!(number_now(&engine).as_deref(), Some("05022223333"));

    // Fixing the file brings the new module in.
    replace_by_rename(&pick, &std::fs::read(rule("embedded-number")).unwrap());
    assert!(wait_for_number(&engine, "05011112222", Duration::from_secs(10)).is_some());
}

#[test]
fn a_slow_writer_gets_the_module_loaded_once_it_is_complete() {
    let (_setup, pick, engine) = watched();
    let _watcher = engine.watch().unwrap().unwrap();
    let module = std::fs::read(rule("embedded-number")).unwrap();
    let (first, rest) = module.split_at(module.len() / 2);
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&pick).unwrap();
        file.write_all(first).unwrap();
        file.sync_all().unwrap();
        // Longer than the debounce: the truncated module is seen and refused.
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(
            number_now(&engine).as_deref(),
            Some("05022223333"),
            "old module in force"
        );
        file.write_all(rest).unwrap();
    }
    assert!(wait_for_number(&engine, "05011112222", Duration::from_secs(10)).is_some());
}

#[test]
fn an_edited_table_is_reloaded_and_a_broken_one_ignored() {
    let (setup, _pick, engine) = watched();
    let _watcher = engine.watch().unwrap().unwrap();
    let table = setup.dir.path().join("addresses.toml");

    std::fs::write(&table, "\"muratec.co.jp\" = \"080-4444-5555\"\n").unwrap();
    assert!(wait_for_number(&engine, "08044445555", Duration::from_secs(10)).is_some());

    let reports = engine.recent_reloads().len();
    std::fs::write(&table, "\"muratec.co.jp\" = \n").unwrap();
    let report = wait_for_report(&engine, true, reports);
    assert!(report.contains("table addresses"), "{report}");
    assert_eq!(number_now(&engine).as_deref(), Some("08044445555"));
}

#[test]
fn evaluations_keep_running_while_modules_are_swapped() {
    let (_setup, pick, engine) = watched();
    let _watcher = engine.watch().unwrap().unwrap();
    let embedded = std::fs::read(rule("embedded-number")).unwrap();
    let table = std::fs::read(rule("address-table")).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let engine = engine.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            let mut evaluations = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && evaluations < 100_000 {
                let verdict = decide(&engine, RCPT, &mail("To: x@y.example\nSubject: hi", ""));
                assert!(verdict.failures.is_empty(), "{verdict:?}");
                seen.insert(verdict.number().unwrap().to_string());
                evaluations += 1;
            }
            seen
        })
    };
    for round in 0..4 {
        let bytes = if round % 2 == 0 { &embedded } else { &table };
        replace_by_rename(&pick, bytes);
        std::thread::sleep(Duration::from_millis(600));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = worker.join().unwrap();
    assert!(
        seen.contains("05011112222") && seen.contains("05022223333"),
        "{seen:?}"
    );
}

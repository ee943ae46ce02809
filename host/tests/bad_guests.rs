//! The engine against purpose-built bad rules: each failure is contained,
//! named, counted, and the chain goes on to the next rule.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{decide, guest, mail, setup, Setup};
use mailcall::config::Config;
use mailcall::policy::{PolicyEngine, RuleFailure};

/// A chain of `bad` (a test guest) then `address-table`, which dials
/// 050-2222-3333 for muratec.co.jp.
fn bad_then_table(bad: &str, extra: &str) -> (Setup, PolicyEngine) {
    let extra = format!("[rules.{bad}]\nfile = {file:?}\n{extra}", file = guest(bad));
    let setup = setup(&[bad, "address-table"], &extra);
    let engine = setup.engine();
    (setup, engine)
}

fn report() -> String {
    mail("To: info@muratec.co.jp\nSubject: report", "")
}

#[test]
fn an_endless_loop_stops_at_the_deadline() {
    let (_setup, engine) = bad_then_table("spin", "deadline_ms = 20\n");
    let started = Instant::now();
    let verdict = decide(&engine, "info@muratec.co.jp", &report());
    let took = started.elapsed();
    assert_eq!(
        verdict.number(),
        Some("05022223333"),
        "the next rule decides"
    );
    assert_eq!(verdict.rule.as_deref(), Some("address-table"));
    assert_eq!(
        verdict.failures,
        [(
            "spin".to_string(),
            RuleFailure::Timeout(Duration::from_millis(20))
        )]
    );
    // Generous: the point is that it stopped, not how fast (see the bench).
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let counters = &engine.counters()[0].1;
    assert_eq!(counters.timeouts.load(Ordering::Relaxed), 1);
    assert_eq!(counters.failures.load(Ordering::Relaxed), 1);
}

#[test]
fn a_guest_that_allocates_past_the_cap_fails_cleanly() {
    let (_setup, engine) = bad_then_table("hog", "memory_limit_mib = 8\ndeadline_ms = 2000\n");
    let verdict = decide(&engine, "info@muratec.co.jp", &report());
    assert_eq!(verdict.number(), Some("05022223333"));
    assert_eq!(
        verdict.failures,
        [("hog".to_string(), RuleFailure::MemoryCap(8 << 20))]
    );
    assert_eq!(
        engine.counters()[0].1.memory_caps.load(Ordering::Relaxed),
        1
    );
}

#[test]
fn a_trapping_guest_is_skipped_and_its_panic_message_kept() {
    let (_setup, engine) = bad_then_table("trap", "");
    let verdict = decide(&engine, "info@muratec.co.jp", &report());
    assert_eq!(verdict.number(), Some("05022223333"));
    let [(name, RuleFailure::Trap(reason))] = &verdict.failures[..] else {
        panic!("expected one trap, got {:?}", verdict.failures);
    };
    assert_eq!(name, "trap");
    assert!(
        reason.contains("the trap rule traps for info@muratec.co.jp"),
        "the guest's panic message reaches the log: {reason}"
    );
}

#[test]
fn a_pooled_instance_that_trapped_is_thrown_away() {
    let (_setup, engine) = bad_then_table("trap", "isolation = \"pooled\"\npool_size = 1\n");
    for _ in 0..3 {
        let verdict = decide(&engine, "ok@muratec.co.jp", &report());
        assert_eq!(verdict.rule.as_deref(), Some("trap"), "{verdict:?}");
        let verdict = decide(&engine, "info@muratec.co.jp", &report());
        assert_eq!(verdict.rule.as_deref(), Some("address-table"));
        assert_eq!(verdict.failures.len(), 1);
    }
    // Had the poisoned instance gone back to the pool, the `ok@` calls
    // would have failed with "cannot enter component instance".
    let counters = &engine.counters()[0].1;
    assert_eq!(counters.smtp.load(Ordering::Relaxed), 3);
    assert_eq!(counters.failures.load(Ordering::Relaxed), 3);
}

/// Components that do not implement the rule world: one exports nothing,
/// one exports `resolve` with another signature.
const WRONG_WORLDS: [(&str, &str); 2] = [
    ("empty", "(component)"),
    (
        "other-resolve",
        r#"(component
            (core module $m (func (export "f") (result i32) i32.const 7))
            (core instance $i (instantiate $m))
            (func (export "resolve") (result u32) (canon lift (core func $i "f"))))"#,
    ),
];

fn wrong_world_setup(name: &str, wat: &str) -> Setup {
    let setup = setup(&[name, "address-table"], "");
    let file = setup.dir.path().join(format!("{name}.wasm"));
    std::fs::write(&file, wat::parse_str(wat).unwrap()).unwrap();
    let mut config: Config = setup.config.clone();
    config.rules.entry(name.to_string()).or_default().file = Some(file);
    Setup { config, ..setup }
}

#[test]
fn a_module_for_another_world_is_rejected_with_a_clear_message() {
    for (name, wat) in WRONG_WORLDS {
        let setup = wrong_world_setup(name, wat);
        let error = PolicyEngine::from_config(&setup.config)
            .err()
            .expect("refused");
        let message = format!("{error}");
        assert!(
            message.contains(&format!("rule {name}"))
                && message.contains("does not implement the mailcall:rule world"),
            "{message}"
        );

        // A server starts anyway and the chain goes on to the next rule.
        let engine = PolicyEngine::from_config_skipping_bad_rules(&setup.config).unwrap();
        let verdict = decide(&engine, "info@muratec.co.jp", &report());
        assert_eq!(verdict.number(), Some("05022223333"));
        assert!(
            matches!(&verdict.failures[..], [(n, RuleFailure::Unavailable(_))] if n == name),
            "{:?}",
            verdict.failures
        );
    }
}

#[test]
fn a_file_that_is_not_wasm_is_refused() {
    let setup = setup(&["address-table"], "");
    let file = setup.dir.path().join("junk.wasm");
    std::fs::write(&file, b"this is not a module").unwrap();
    let error = PolicyEngine::with_rule_files(&setup.config, &[file])
        .err()
        .expect("refused");
    assert!(
        error.to_string().contains("not a WebAssembly component"),
        "{error}"
    );
}

#[test]
fn a_rule_reaches_no_environment_files_clock_or_network() {
    let extra = format!(
        "[rules.probe]\nfile = {:?}\ndeadline_ms = 1000\n",
        guest("probe")
    );
    let engine = setup(&["probe"], &extra).engine();
    let verdict = decide(&engine, "x@y.example", &report());
    assert!(verdict.failures.is_empty(), "{:?}", verdict.failures);
    assert_eq!(
        verdict.reason,
        "env=0 args=0 root=false cwd=false file=false clock=0 tcp=false udp=false hashmap=1"
    );
}

#[test]
fn fresh_instances_return_their_pool_slots() {
    // More evaluations than the pool has instances: each fresh instance's
    // slot must come back when its evaluation ends.
    let engine = setup(&["embedded-number"], "").engine();
    for _ in 0..200 {
        let verdict = decide(&engine, "050-1234-5678@x.example", &report());
        assert_eq!(verdict.number(), Some("05012345678"));
        assert!(verdict.failures.is_empty());
    }
}

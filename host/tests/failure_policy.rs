//! Each rule's failure policy (`on_error`), its circuit breaker, and shadow
//! and canary modes, against the purpose-built bad guests (endless loop,
//! trap, memory hog) and the stock rules.

mod common;

use std::sync::atomic::Ordering;

use common::{decide, envelope, guest, mail, message, rule, setup};
use mailcall::policy::{PolicyEngine, Route, RuleFailure};

fn report() -> String {
    mail("To: info@muratec.co.jp\nSubject: report", "")
}

fn counter(
    engine: &PolicyEngine,
    name: &str,
    pick: fn(&mailcall::policy::RuleCounters) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    let counters = engine.counters();
    let (_, counters) = counters
        .iter()
        .find(|(n, _)| n == name)
        .expect("a rule of the chain");
    pick(counters).load(Ordering::Relaxed)
}

#[test]
fn on_error_defer_defers_the_recipient_for_each_bad_guest() {
    for (bad, limits) in [
        ("spin", "deadline_ms = 20\n"),
        ("trap", ""),
        ("hog", "memory_limit_mib = 8\ndeadline_ms = 2000\n"),
    ] {
        let extra = format!(
            "[rules.{bad}]\nfile = {:?}\non_error = \"defer\"\n{limits}",
            guest(bad)
        );
        let setup = setup(&[bad, "address-table"], &extra);
        let engine = setup.engine();
        let verdict = decide(&engine, "info@muratec.co.jp", &report());
        assert_eq!(verdict.route, Route::Defer, "{bad}: {verdict:?}");
        assert_eq!(verdict.rule.as_deref(), Some(bad));
        assert!(
            verdict
                .reason
                .starts_with(&format!("4.3.0 rule {bad} failed")),
            "{}",
            verdict.reason
        );
        assert_eq!(counter(&engine, bad, |c| &c.deferrals), 1);
        assert_eq!(counter(&engine, "address-table", |c| &c.evaluations), 0);
    }
}

#[test]
fn on_error_skip_goes_on_to_the_next_rule() {
    let extra = format!(
        "[rules.trap]\nfile = {:?}\non_error = \"skip\"\n",
        guest("trap")
    );
    let setup = setup(&["trap", "address-table"], &extra);
    let verdict = decide(&setup.engine(), "info@muratec.co.jp", &report());
    assert_eq!(verdict.number(), Some("05022223333"));
    assert!(matches!(&verdict.failures[..], [(name, RuleFailure::Trap(_))] if name == "trap"));
}

#[test]
fn on_error_previous_asks_the_module_of_the_previous_generation() {
    // `pick` starts as the address table rule, then its file is replaced by
    // a guest that traps: the new generation's `pick` fails and the old
    // module decides instead.
    let setup = setup(
        &["pick"],
        "[rules.pick]\nfile = \"pick.wasm\"\non_error = \"previous\"\nmax_failures = 3\n[rules.pick.config]\ntable = \"addresses\"\n",
    );
    let pick = setup.dir.path().join("pick.wasm");
    std::fs::copy(rule("address-table"), &pick).unwrap();
    let engine = PolicyEngine::from_config(&setup.config).unwrap();
    let good = engine.rule_digest("pick").unwrap();
    std::fs::copy(guest("trap"), &pick).unwrap();
    let report_of_reload = engine.reload(None);
    let second = report_of_reload.outcome.expect("the trapping module loads");
    assert_ne!(engine.rule_digest("pick").unwrap(), good);

    for _ in 0..5 {
        let verdict = decide(&engine, "info@muratec.co.jp", &report());
        assert_eq!(verdict.number(), Some("05022223333"), "{verdict:?}");
        assert_eq!(
            verdict.version.as_deref(),
            Some(good.as_str()),
            "the old module decided"
        );
        assert_eq!(verdict.generation.as_ref(), Some(&second));
    }
    assert_eq!(counter(&engine, "pick", |c| &c.fallbacks), 5);
    // After 3 failures the breaker is open: the new module is not run any
    // more, the old one decides straight away.
    assert_eq!(counter(&engine, "pick", |c| &c.failures), 3);
    assert_eq!(counter(&engine, "pick", |c| &c.breaker_trips), 1);
}

#[test]
fn the_breaker_switches_a_trapping_rule_off_until_the_next_reload() {
    let extra = format!(
        "[rules.trap]\nfile = {:?}\nmax_failures = 4\nfailure_window_secs = 60\n",
        guest("trap")
    );
    let setup = setup(&["trap", "address-table"], &extra);
    let engine = setup.engine();
    for _ in 0..10 {
        let verdict = decide(&engine, "info@muratec.co.jp", &report());
        assert_eq!(verdict.number(), Some("05022223333"));
    }
    assert_eq!(
        counter(&engine, "trap", |c| &c.failures),
        4,
        "run until switched off"
    );
    assert_eq!(counter(&engine, "trap", |c| &c.breaker_trips), 1);
    let verdict = decide(&engine, "info@muratec.co.jp", &report());
    assert_eq!(
        verdict.failures,
        [("trap".to_string(), RuleFailure::SwitchedOff(4))]
    );

    // A reload (nothing changed) switches it back on.
    engine.reload(None).outcome.unwrap();
    decide(&engine, "info@muratec.co.jp", &report());
    assert_eq!(counter(&engine, "trap", |c| &c.failures), 5);
}

#[test]
fn a_shadow_rule_records_disagreements_and_never_changes_a_route() {
    // The address table dials for muratec.co.jp; the shadow would dial the
    // number in the address.
    let setup = setup(
        &["embedded-number", "address-table"],
        "[rules.embedded-number]\nmode = \"shadow\"\n",
    );
    let engine = setup.engine();
    let verdict = decide(&engine, "050-1111-2222@muratec.co.jp", &report());
    assert_eq!(verdict.number(), Some("05022223333"), "{verdict:?}");
    assert_eq!(verdict.rule.as_deref(), Some("address-table"));
    let [shadow] = &verdict.shadows[..] else {
        panic!("{:?}", verdict.shadows);
    };
    assert!(
        shadow.disagrees && shadow.decision.starts_with("dial 05011112222"),
        "{shadow:?}"
    );
    assert_eq!(
        counter(&engine, "embedded-number", |c| &c.shadow_disagreements),
        1
    );
    assert_eq!(
        counter(&engine, "embedded-number", |c| &c.dials),
        0,
        "never decided"
    );

    // Where it agrees, no disagreement is counted.
    let verdict = decide(&engine, "info@muratec.co.jp", &report());
    assert!(!verdict.shadows[0].disagrees, "{:?}", verdict.shadows);
    assert_eq!(
        counter(&engine, "embedded-number", |c| &c.shadow_evaluations),
        2
    );
}

#[test]
fn a_canary_at_50_percent_decides_about_half_the_messages_by_queue_id() {
    let setup = setup(
        &["embedded-number", "address-table"],
        "[rules.embedded-number]\nmode = \"canary\"\ncanary = 50\n",
    );
    let engine = setup.engine();
    let text = report();
    let view = std::sync::Arc::new(message(&engine, &text));
    let mut by_canary = 0;
    for n in 0..200u64 {
        // Queue ids as the spool makes them: microseconds, in hex.
        let queue_id = format!("{:X}", 1_795_000_000_000_000 + n * 7919);
        let verdicts: Vec<_> = ["050-1111-2222@muratec.co.jp", "050-3333-4444@muratec.co.jp"]
            .iter()
            .map(|rcpt| engine.evaluate_queued(queue_id.clone(), envelope(rcpt), &view))
            .collect();
        let decided: Vec<bool> = verdicts
            .iter()
            .map(|v| v.rule.as_deref() == Some("embedded-number"))
            .collect();
        assert_eq!(decided[0], decided[1], "{queue_id}: both recipients alike");
        if decided[0] {
            by_canary += 1;
            assert!(verdicts[0].shadows.is_empty());
        } else {
            assert_eq!(verdicts[0].rule.as_deref(), Some("address-table"));
            assert!(
                verdicts[0].shadows[0].disagrees,
                "shadowed: {:?}",
                verdicts[0]
            );
        }
    }
    assert!(
        (70..=130).contains(&by_canary),
        "the canary decided {by_canary} of 200"
    );
}

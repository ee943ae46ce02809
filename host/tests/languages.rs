//! Rules in other languages: the keyword-table rule in Rust, JavaScript and
//! Python gives the same decision on one shared case list, through
//! `mailcall rules test --rule`; the engine's limits hold for the large
//! JavaScript and Python runtimes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{guest, mail, repo, rule, setup};
use mailcall::policy::RuleFailure;
use serde::Deserialize;

#[derive(Deserialize)]
struct Cases {
    case: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    rcpt: String,
    message: String,
    number: Option<String>,
    reason: Option<String>,
}

const LANGUAGES: [&str; 3] = ["keyword-table", "keyword-table-js", "keyword-table-py"];

/// A configuration naming the keyword table for each language's rule.
fn config(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::write(dir.join("keywords.toml"), common::KEYWORDS).unwrap();
    let mut text = "[tables.keywords]\nfile = \"keywords.toml\"\n".to_string();
    for name in LANGUAGES {
        text.push_str(&format!(
            "[rules.{name}]\nmemory_limit_mib = 64\ndeadline_ms = 1000\n[rules.{name}.config]\ntable = \"keywords\"\n"
        ));
    }
    let path = dir.join("mailcall.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_keyword_rule_decides_alike_in_rust_javascript_and_python() {
    let cases: Cases =
        toml::from_str(&std::fs::read_to_string(repo().join("tests/keyword-cases.toml")).unwrap())
            .unwrap();
    assert!(cases.case.len() >= 10);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let mut failures = Vec::new();
    for (index, case) in cases.case.iter().enumerate() {
        let message = dir.path().join(format!("case{index}.eml"));
        std::fs::write(&message, case.message.replace('\n', "\r\n")).unwrap();
        for language in LANGUAGES {
            let output = Command::new(env!("CARGO_BIN_EXE_mailcall"))
                .args(["rules", "test", "--config"])
                .arg(&config)
                .arg("--rule")
                .arg(rule(language))
                .args(["--rcpt", &case.rcpt])
                .arg(&message)
                .env(
                    "XDG_CACHE_HOME",
                    std::env::temp_dir().join("mailcall-test-cache-cli"),
                )
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success(),
                "{language}, {}: {stderr}",
                case.name
            );
            assert!(
                !stderr.contains("rule failed"),
                "{language}, {}: {stderr}",
                case.name
            );
            let got: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            let expected = serde_json::json!({
                "rcpt": case.rcpt,
                "decision": if case.number.is_some() { "dial" } else { "smtp" },
                "number": case.number,
                "rule": case.number.as_ref().map(|_| language),
                "reason": case.reason.as_deref().unwrap_or("no rule found a number"),
            });
            if got != expected {
                failures.push(format!(
                    "{language}, {}:\n  got      {got}\n  expected {expected}",
                    case.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_javascript_rule_with_an_endless_loop_is_stopped_at_the_deadline() {
    let extra = format!(
        "[rules.spin-js]\nfile = {:?}\nmemory_limit_mib = 64\ndeadline_ms = 50\n",
        guest("spin-js")
    );
    let engine = setup(&["spin-js", "address-table"], &extra).engine();
    let verdict = common::decide(
        &engine,
        "info@muratec.co.jp",
        &mail("To: x@y.example\nSubject: hi", ""),
    );
    assert_eq!(
        verdict.number(),
        Some("05022223333"),
        "the next rule decides"
    );
    assert_eq!(
        verdict.failures,
        [(
            "spin-js".to_string(),
            RuleFailure::Timeout(Duration::from_millis(50))
        )]
    );
}

#[test]
fn large_runtimes_run_under_the_memory_cap_fresh_and_pooled() {
    for isolation in ["fresh", "pooled"] {
        let extra = format!(
            "[rules.keyword-table-js]\nfile = {js:?}\nmemory_limit_mib = 64\ndeadline_ms = 1000\nisolation = {isolation:?}\n\
             [rules.keyword-table-js.config]\ntable = \"keywords\"\n\
             [rules.keyword-table-py]\nfile = {py:?}\nmemory_limit_mib = 64\ndeadline_ms = 1000\nisolation = {isolation:?}\n\
             [rules.keyword-table-py.config]\ntable = \"keywords\"\n",
            js = rule("keyword-table-js"),
            py = rule("keyword-table-py"),
        );
        for name in ["keyword-table-js", "keyword-table-py"] {
            let engine = setup(&[name], &extra).engine();
            for _ in 0..5 {
                let verdict = common::decide(
                    &engine,
                    "x@y.example",
                    &mail("To: x@y.example\nSubject: KYOTOSITEN", ""),
                );
                assert_eq!(
                    verdict.number(),
                    Some("05012345678"),
                    "{name} {isolation}: {verdict:?}"
                );
            }
            let peak = engine.rule_peak_memory(name).unwrap();
            assert!(peak > 0 && peak <= 64 << 20, "{name}: {peak}");
        }
    }
}

#[test]
fn a_memory_cap_below_the_runtimes_needs_fails_cleanly() {
    let extra = format!(
        "[rules.keyword-table-py]\nfile = {:?}\nmemory_limit_mib = 2\ndeadline_ms = 1000\n",
        rule("keyword-table-py")
    );
    let engine = setup(&["keyword-table-py", "address-table"], &extra).engine();
    let verdict = common::decide(
        &engine,
        "info@muratec.co.jp",
        &mail("To: x@y.example\nSubject: KYOTOSITEN", ""),
    );
    assert_eq!(verdict.rule.as_deref(), Some("address-table"));
    assert_eq!(
        verdict.failures,
        [(
            "keyword-table-py".to_string(),
            RuleFailure::MemoryCap(2 << 20)
        )]
    );
}

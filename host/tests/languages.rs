//! Rules in every language: each stock rule in Rust, JavaScript, Python
//! and C decides every case of one shared list (`tests/rule-cases.toml`)
//! alike — decision, number and reason — and so do the stock rules built
//! against the 0.1.0 contract before 0.2.0 (`tests/fixtures/rules-0.1.0`);
//! the engine's limits hold for the large JavaScript and Python runtimes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{guest, mail, repo, rule, setup};
use mailcall::config::Config;
use mailcall::policy::{Envelope, PolicyEngine, Route, RuleFailure, Verdict};
use serde::Deserialize;

#[derive(Deserialize)]
struct CaseList {
    tables: BTreeMap<String, BTreeMap<String, String>>,
    config: BTreeMap<String, BTreeMap<String, String>>,
    case: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    rule: String,
    name: String,
    rcpt: String,
    from: Option<String>,
    message: String,
    number: Option<String>,
    decision: Option<String>,
    reason: Option<String>,
    /// Decided differently by the 0.1.0 rules, on purpose.
    new_in: Option<String>,
}

const STOCK_RULES: [&str; 4] = [
    "embedded-number",
    "address-table",
    "keyword-table",
    "custom",
];

/// Each language's module of a stock rule, as `scripts/build-rules` names
/// it.
const LANGUAGES: [(&str, &str); 4] = [
    ("Rust", ""),
    ("JavaScript", "-js"),
    ("Python", "-py"),
    ("C", "-c"),
];

fn case_list() -> CaseList {
    let text = std::fs::read_to_string(repo().join("tests/rule-cases.toml")).unwrap();
    toml::from_str(&text).unwrap()
}

/// An engine whose chain is the one module `file`, named `name`, with the
/// case list's tables and the configuration of the stock rule `stock`.
fn engine(dir: &Path, cases: &CaseList, stock: &str, name: &str, file: &Path) -> PolicyEngine {
    let mut text = format!(
        "[policy]\nrules_dir = {dir:?}\ncache_dir = {cache:?}\nchain = [{name:?}]\nhot_reload = false\n\
         [rules.{name}]\nfile = {file:?}\nmemory_limit_mib = 64\ndeadline_ms = 1000\n[rules.{name}.config]\n",
        cache = std::env::temp_dir().join("mailcall-test-cache"),
    );
    for (key, value) in cases.config.get(stock).into_iter().flatten() {
        text.push_str(&format!("{key:?} = {value:?}\n"));
    }
    for (table, entries) in &cases.tables {
        let file = dir.join(format!("{table}.toml"));
        let lines: String = entries
            .iter()
            .map(|(k, v)| format!("{k:?} = {v:?}\n"))
            .collect();
        std::fs::write(&file, lines).unwrap();
        text.push_str(&format!("[tables.{table}]\nfile = {file:?}\n"));
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    PolicyEngine::from_config(&Config::load(&path).unwrap()).unwrap()
}

/// What a verdict says, in the words of the case list.
fn outcome(verdict: &Verdict) -> (String, Option<String>, String) {
    match &verdict.route {
        Route::Dial { number } => ("dial".into(), Some(number.clone()), verdict.reason.clone()),
        Route::Smtp if verdict.rule.is_some() => ("smtp".into(), None, verdict.reason.clone()),
        Route::Smtp => ("no-opinion".into(), None, String::new()),
        Route::Defer => ("defer".into(), None, verdict.reason.clone()),
    }
}

fn expected(case: &Case) -> (String, Option<String>, String) {
    let decision = case.decision.clone().unwrap_or_else(|| {
        if case.number.is_some() {
            "dial"
        } else {
            "no-opinion"
        }
        .to_string()
    });
    (
        decision,
        case.number.clone(),
        case.reason.clone().unwrap_or_default(),
    )
}

/// Runs every case of `stock` through the module `file`; returns the
/// differences from the list.
fn disagreements(
    cases: &CaseList,
    stock: &str,
    label: &str,
    file: &Path,
    skip_new: bool,
) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let name = file.file_stem().unwrap().to_str().unwrap();
    let engine = engine(dir.path(), cases, stock, name, file);
    let mut found = Vec::new();
    for case in cases.case.iter().filter(|case| case.rule == stock) {
        if skip_new && case.new_in.is_some() {
            continue;
        }
        let envelope = Envelope {
            mail_from: case
                .from
                .clone()
                .unwrap_or_else(|| "a@sender.example".into()),
            rcpt_to: case.rcpt.clone(),
            client_address: "127.0.0.1".into(),
            helo: "sender.example".into(),
        };
        let message = engine
            .view(case.message.replace('\n', "\r\n").as_bytes())
            .unwrap();
        let verdict = engine.evaluate(&envelope, &message);
        assert!(
            verdict.failures.is_empty(),
            "{label} {stock}, {}: {:?}",
            case.name,
            verdict.failures
        );
        let got = outcome(&verdict);
        if got != expected(case) {
            found.push(format!(
                "{label} {stock}, {}:\n  got      {got:?}\n  expected {:?}",
                case.name,
                expected(case)
            ));
        }
    }
    found
}

#[test]
fn every_stock_rule_decides_every_case_alike_in_every_language() {
    let cases = case_list();
    let mut failures = Vec::new();
    for stock in STOCK_RULES {
        let count = cases.case.iter().filter(|case| case.rule == stock).count();
        assert!(count >= 8, "{stock} has only {count} cases");
        for (language, suffix) in LANGUAGES {
            let file = rule(&format!("{stock}{suffix}"));
            failures.extend(disagreements(&cases, stock, language, &file, false));
        }
    }
    // A fifth language, for one rule.
    let zig = rule("keyword-table-zig");
    failures.extend(disagreements(&cases, "keyword-table", "Zig", &zig, false));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rules_built_against_the_0_1_contract_still_load_and_decide_as_before() {
    let cases = case_list();
    let mut failures = Vec::new();
    for stock in STOCK_RULES {
        let file: PathBuf = repo().join(format!("tests/fixtures/rules-0.1.0/{stock}.wasm"));
        failures.extend(disagreements(&cases, stock, "0.1.0", &file, true));
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

/// The guide shows every stock rule in every language, each marked
/// `<!-- stock: PATH -->` on the line before its code fence: the code must
/// be the file, so the guide never shows a rule that is not the one tested.
#[test]
fn the_guide_shows_every_stock_rule_in_every_language_as_it_is() {
    let guide = std::fs::read_to_string(repo().join("docs/rules.md")).unwrap();
    let mut shown = BTreeMap::new();
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        let Some(path) = line
            .strip_prefix("<!-- stock: ")
            .and_then(|l| l.strip_suffix(" -->"))
        else {
            continue;
        };
        assert!(
            lines.next().unwrap().starts_with("```"),
            "a fence follows {path}"
        );
        let block: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        shown.insert(path.to_string(), block.join("\n") + "\n");
    }
    let check = |path: &str| check_shown(&shown, path);
    for stock in STOCK_RULES {
        for path in [
            format!("rules/{stock}/src/lib.rs"),
            format!("rules/{stock}-js/rule.js"),
            format!("rules/{stock}-py/rule.py"),
            format!("rules/{stock}-c/rule.c"),
        ] {
            check(&path);
        }
    }
    check("rules/keyword-table-zig/rule.zig");
    check("rules/c-sdk/mailcall_rule.h");
}

/// Keeps the guide's copy of a stock rule identical to its file.
fn check_shown(shown: &BTreeMap<String, String>, path: &str) {
    let file = std::fs::read_to_string(repo().join(path)).unwrap();
    let block = shown
        .get(path)
        .unwrap_or_else(|| panic!("the guide does not show {path}"));
    assert_eq!(*block, file, "the guide's {path} differs from the file");
}

//! `mailcall rules check`: the shared case list passes, a wrong
//! expectation is reported with the difference (exit 1), and an
//! instruction budget fails a case that needs more.

mod common;

use std::process::Command;

use common::{repo, rule};

/// A configuration with the shared case list's keyword table.
fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("tests/rule-cases.toml")).unwrap();
    let list: toml::Table = toml::from_str(&text).unwrap();
    let keywords = toml::to_string(&list["tables"]["keywords"]).unwrap();
    std::fs::write(dir.join("keywords.toml"), keywords).unwrap();
    let path = dir.join("mailcall.toml");
    std::fs::write(
        &path,
        "[tables.keywords]\nfile = \"keywords.toml\"\n[rules.keyword-table.config]\ntable = \"keywords\"\n",
    )
    .unwrap();
    path
}

fn check(dir: &std::path::Path, cases: &std::path::Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mailcall"))
        .args(["rules", "check"])
        .arg(cases)
        .arg("--config")
        .arg(config(dir))
        .arg("--rule")
        .arg(format!("keyword-table={}", rule("keyword-table").display()))
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("mailcall-test-cache-cli"),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// The keyword-table cases of the shared case list (`tests/rule-cases.toml`),
/// as a case list of `rules check` (which knows no `rule` of the list's kind,
/// nor its tables).
fn keyword_cases(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("tests/rule-cases.toml")).unwrap();
    let list: toml::Table = toml::from_str(&text).unwrap();
    let mut cases = toml::Table::new();
    let kept: Vec<toml::Value> = list["case"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|case| case["rule"].as_str() == Some("keyword-table"))
        .map(|case| {
            let mut case = case.as_table().unwrap().clone();
            case.remove("rule");
            toml::Value::Table(case)
        })
        .collect();
    cases.insert("case".into(), toml::Value::Array(kept));
    let path = dir.join("keyword-cases.toml");
    std::fs::write(&path, toml::to_string(&cases).unwrap()).unwrap();
    path
}

#[test]
fn the_shared_case_list_passes_with_instruction_counts() {
    let dir = tempfile::tempdir().unwrap();
    let cases = keyword_cases(dir.path());
    let (ok, output) = check(dir.path(), &cases);
    assert!(ok, "{output}");
    assert!(output.contains(" passed, 0 failed"), "{output}");
    assert!(
        output.contains("pass  keyword in RCPT TO  (instructions: keyword-table "),
        "{output}"
    );
}

#[test]
fn a_failing_case_is_reported_with_the_difference_and_a_budget_can_fail() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.toml");
    std::fs::write(
        &cases,
        r#"
[[case]]
name = "right"
rcpt = "kyotositen@branch.example"
message = "Subject: hello\n\nnothing here\n"
number = "05012345678"
rule = "keyword-table"

[[case]]
name = "wrong number"
rcpt = "kyotositen@branch.example"
message = "Subject: hello\n\nnothing here\n"
number = "05099999999"

[[case]]
name = "too costly"
rcpt = "kyotositen@branch.example"
message = "Subject: hello\n\nnothing here\n"
number = "05012345678"
max_instructions = 10
"#,
    )
    .unwrap();
    let (ok, output) = check(dir.path(), &cases);
    assert!(!ok, "{output}");
    assert!(output.contains("pass  right"), "{output}");
    assert!(output.contains("FAIL  wrong number"), "{output}");
    assert!(
        output.contains("number: expected 05099999999, got 05012345678"),
        "{output}"
    );
    assert!(output.contains("FAIL  too costly"), "{output}");
    assert!(
        output.contains("instructions, over the budget of 10"),
        "{output}"
    );
    assert!(output.contains("3 cases, 1 passed, 2 failed"), "{output}");
}

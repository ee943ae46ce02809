//! `mailcall rules new`: each language's project builds as created and
//! passes `mailcall rules test`; the guide's worked examples are exactly
//! these projects' files, so no example in the guide goes untested.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::repo;

fn mailcall(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mailcall"))
        .args(args)
        .current_dir(dir)
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("mailcall-test-cache-cli"),
        )
        .output()
        .unwrap()
}

fn tools() -> PathBuf {
    std::env::var_os("MAILCALL_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/mailcall-tools")
        })
}

/// Creates `my-rule` in `lang` under `parent`.
fn create(parent: &Path, lang: &str) -> PathBuf {
    let output = mailcall(parent, &["rules", "new", "my-rule", "--lang", lang]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    parent.join("my-rule")
}

#[test]
fn new_projects_build_and_pass_rules_test_in_every_language() {
    for lang in ["rust", "js", "python", "c"] {
        let parent = tempfile::tempdir().unwrap();
        let project = create(parent.path(), lang);
        let build = Command::new("./build.sh")
            .current_dir(&project)
            // Reuse one build folder for the Rust template across runs.
            .env("CARGO_TARGET_DIR", repo().join("target/rule-template"))
            .env(
                "COMPONENTIZE_JS",
                tools().join("js/node_modules/.bin/componentize-js"),
            )
            .env("COMPONENTIZE_PY", tools().join("py/bin/componentize-py"))
            .env("WIT_BINDGEN", tools().join("c/bin/wit-bindgen"))
            .env("WASM_TOOLS", tools().join("c/bin/wasm-tools"))
            .env(
                "WASI_ADAPTER",
                tools().join("c/wasi_snapshot_preview1.reactor.wasm"),
            )
            .output()
            .unwrap();
        assert!(
            build.status.success(),
            "{lang}: build failed: {}{}",
            String::from_utf8_lossy(&build.stdout),
            String::from_utf8_lossy(&build.stderr)
        );
        let output = mailcall(
            &project,
            &[
                "rules",
                "test",
                "--config",
                "mailcall.toml",
                "--rule",
                "my-rule.wasm",
                "--rcpt",
                "hanako@branch.example",
                "test.eml",
            ],
        );
        assert!(
            output.status.success(),
            "{lang}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let verdict: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(
            verdict,
            serde_json::json!({
                "rcpt": "hanako@branch.example",
                "decision": "dial",
                "number": "05012345678",
                "rule": "my-rule",
                "reason": "the Subject mentions CALL-ME",
            }),
            "{lang}"
        );
    }
}

#[test]
fn new_refuses_bad_names_and_existing_folders() {
    let parent = tempfile::tempdir().unwrap();
    let output = mailcall(
        parent.path(),
        &["rules", "new", "My_Rule", "--lang", "rust"],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a rule name"));
    create(parent.path(), "js");
    let output = mailcall(
        parent.path(),
        &["rules", "new", "my-rule", "--lang", "python"],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already exists"));
}

/// The guide marks each worked example with `<!-- example: LANG FILE -->`
/// on the line before its code fence.
#[test]
fn the_guides_examples_are_the_projects_rules_new_creates() {
    let guide = std::fs::read_to_string(repo().join("docs/rules.md")).unwrap();
    let parent = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        let Some(marker) = line
            .strip_prefix("<!-- example: ")
            .and_then(|l| l.strip_suffix(" -->"))
        else {
            continue;
        };
        let (lang, file) = marker.split_once(' ').unwrap();
        assert!(
            lines.next().unwrap().starts_with("```"),
            "a fence follows {marker}"
        );
        let block: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        let folder = parent.path().join(lang);
        let project = folder.join("my-rule");
        if !project.exists() {
            std::fs::create_dir_all(&folder).unwrap();
            create(&folder, lang);
        }
        let file_text = std::fs::read_to_string(project.join(file)).unwrap();
        assert_eq!(
            block.join("\n") + "\n",
            file_text,
            "the guide's {lang} {file} differs from the template"
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} examples found");
}

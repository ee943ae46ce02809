//! The `mailcall` command, run as a user would.

mod common;

use std::process::{Command, Output};

use common::{guest, repo, rule};

fn mailcall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailcall"))
        .args(args)
        .current_dir(repo())
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("mailcall-test-cache-cli"),
        )
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn rules_test(rcpt: &str, message: &str) -> serde_json::Value {
    let output = mailcall(&[
        "rules",
        "test",
        "--config",
        "examples/mailcall.toml",
        "--rcpt",
        rcpt,
        message,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<&str> = std::str::from_utf8(&output.stdout)
        .unwrap()
        .lines()
        .collect();
    assert_eq!(lines.len(), 1, "one JSON line: {lines:?}");
    serde_json::from_str(lines[0]).unwrap()
}

#[test]
fn rules_test_prints_the_decision_as_one_json_line() {
    let kyoto = "examples/messages/kyoto.eml";
    assert_eq!(
        rules_test("info@muratec.co.jp", kyoto),
        serde_json::json!({
            "rcpt": "info@muratec.co.jp",
            "decision": "dial",
            "number": "05022223333",
            "rule": "address-table",
            "reason": "domain entry muratec.co.jp in table addresses",
        })
    );
    let keyword = rules_test("kyoto@b.example", kyoto);
    assert_eq!(keyword["number"], "05012345678");
    assert_eq!(keyword["rule"], "keyword-table");

    let embedded = rules_test("support@b.example", "examples/messages/display-name.eml");
    assert_eq!(embedded["rule"], "embedded-number");

    assert_eq!(
        rules_test("someone@elsewhere.example", "examples/messages/plain.eml"),
        serde_json::json!({
            "rcpt": "someone@elsewhere.example",
            "decision": "smtp",
            "number": null,
            "rule": null,
            "reason": "no rule found a number",
        })
    );
}

#[test]
fn rules_test_runs_modules_given_with_rule() {
    let output = mailcall(&[
        "rules",
        "test",
        "--rule",
        guest("trap").to_str().unwrap(),
        "--rule",
        rule("embedded-number").to_str().unwrap(),
        "--rcpt",
        "080-0000-1111@x.example",
        "examples/messages/plain.eml",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let value: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(value["number"], "08000001111");
    assert_eq!(value["rule"], "embedded-number");
    // The failing rule is reported on stderr, with its name.
    assert!(
        stderr(&output).contains("rule failed"),
        "{}",
        stderr(&output)
    );
    assert!(stderr(&output).contains("trap"), "{}", stderr(&output));
}

#[test]
fn rules_test_errors_are_clear_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, "junk").unwrap();
    let bad_config = dir.path().join("bad.toml");
    std::fs::write(&bad_config, "[policy]\nchain = [\"x\"\n").unwrap();
    let empty = dir.path().join("empty.eml");
    std::fs::write(&empty, "").unwrap();
    let cases: [(&[&str], &str); 6] = [
        (
            &[
                "--config",
                "examples/mailcall.toml",
                "--rcpt",
                "a@b.example",
                "examples/messages/none.eml",
            ],
            "cannot read message examples/messages/none.eml",
        ),
        (
            &[
                "--config",
                "examples/mailcall.toml",
                "--rcpt",
                "a@b.example",
                empty.to_str().unwrap(),
            ],
            "not a mail message",
        ),
        (
            &[
                "--rule",
                "missing.wasm",
                "--rcpt",
                "a@b.example",
                "examples/messages/plain.eml",
            ],
            "rule module missing.wasm does not exist",
        ),
        (
            &[
                "--rule",
                junk.to_str().unwrap(),
                "--rcpt",
                "a@b.example",
                "examples/messages/plain.eml",
            ],
            "is not a WebAssembly component",
        ),
        (
            &[
                "--config",
                bad_config.to_str().unwrap(),
                "--rcpt",
                "a@b.example",
                "examples/messages/plain.eml",
            ],
            "line 2",
        ),
        (
            &["--rcpt", "a@b.example", "examples/messages/plain.eml"],
            "give --config FILE",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["rules", "test"];
        full.extend_from_slice(args);
        let output = mailcall(&full);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(stdout(&output).is_empty(), "{args:?}: nothing on stdout");
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn check_config_accepts_the_example_and_names_the_line_of_an_error() {
    let output = mailcall(&["check-config", "examples/mailcall.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("OK"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[policy]\nchain = []\n\n[numbering_plan]\ndigits = \"eleven\"\n",
    )
    .unwrap();
    let output = mailcall(&["check-config", bad.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("line 5"), "{}", stderr(&output));
}

#[test]
fn check_config_loads_the_tls_certificate_and_key_as_the_server_does() {
    let dir = tempfile::tempdir().unwrap();
    let pair = |name: &str| {
        let made = rcgen::generate_simple_self_signed(vec!["mx.test".to_string()]).unwrap();
        let certificate = dir.path().join(format!("{name}-certificate.pem"));
        let key = dir.path().join(format!("{name}-key.pem"));
        std::fs::write(&certificate, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        (certificate, key)
    };
    let (certificate, key) = pair("good");
    let (_, other_key) = pair("other");
    let check = |key: &std::path::Path| {
        let file = dir.path().join("mailcall.toml");
        std::fs::write(
            &file,
            format!("[server]\ntls_certificate = {certificate:?}\ntls_key = {key:?}\n"),
        )
        .unwrap();
        mailcall(&["check-config", file.to_str().unwrap()])
    };

    let output = check(&key);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("SHA-256 ") && stdout(&output).contains("OK"),
        "{}",
        stdout(&output)
    );

    let missing = dir.path().join("missing.pem");
    for (key, reason) in [
        (missing.as_path(), "No such file"),
        (certificate.as_path(), "no private key in the file"),
        (
            other_key.as_path(),
            "the key does not match the certificate",
        ),
    ] {
        let output = check(key);
        assert!(
            !output.status.success(),
            "{}: {}",
            key.display(),
            stdout(&output)
        );
        assert!(
            stderr(&output).contains(&format!("{}: {reason}", key.display())),
            "{}",
            stderr(&output)
        );
    }
}

/// Runs a bash script with `$1` the `mailcall` binary; its stdout and stderr.
fn bash(script: &str) -> (String, String) {
    let output = Command::new("bash")
        .args(["-c", script, "bash", env!("CARGO_BIN_EXE_mailcall")])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    (stdout(&output), stderr(&output))
}

#[test]
fn the_manual_and_the_completions_come_from_the_commands() {
    // groff reads the page with every warning on, and has nothing to say.
    let (text, warnings) = bash(r#""$1" man | groff -man -Tutf8 -ww -z"#);
    assert_eq!((text.as_str(), warnings.as_str()), ("", ""));
    // A reader that has gone (`| head` that has read enough; here one that
    // reads nothing) ends it quietly, with success.
    let (nothing, complaint) = bash(r#"set -o pipefail; "$1" man | true"#);
    assert_eq!((nothing.as_str(), complaint.as_str()), ("", ""));
    let page = stdout(&mailcall(&["man"]));
    assert!(page.contains(".TH mailcall 1"), "{page}");
    for command in ["serve", "demo", "queue", "history", "reload", "completions"] {
        assert!(page.contains(command), "{command} missing in\n{page}");
    }
    let folder = tempfile::tempdir().unwrap();
    let out = folder.path().to_str().unwrap();
    assert!(mailcall(&["man", "--out", out]).status.success());
    for name in ["mailcall.1", "mailcall-queue.1", "mailcall-queue-hold.1"] {
        assert!(folder.path().join(name).is_file(), "no {name}");
    }
    // Bash completes the subcommands and the queue actions.
    let (words, _) = bash(
        r#"source <("$1" completions bash)
# As bash calls it: the command, the word to complete, the one before.
COMP_WORDS=(mailcall qu); COMP_CWORD=1; _mailcall mailcall qu mailcall; echo "${COMPREPLY[@]}"
COMP_WORDS=(mailcall queue ""); COMP_CWORD=2; _mailcall mailcall "" queue; echo "${COMPREPLY[@]}""#,
    );
    let lines: Vec<&str> = words.lines().collect();
    assert_eq!(lines[0], "queue", "{words}");
    for action in [
        "list", "flush", "hold", "release", "retry", "delete", "bounce",
    ] {
        assert!(
            lines[1].split(' ').any(|w| w == action),
            "{action} missing in {words}"
        );
    }
    let unknown = mailcall(&["completions", "tcsh"]);
    assert!(!unknown.status.success() && stderr(&unknown).contains("tcsh"));
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo().join("examples/mailcall.service"))
        .unwrap()
        .replace("/usr/local/bin/mailcall", env!("CARGO_BIN_EXE_mailcall"));
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("mailcall.service");
    std::fs::write(&path, unit).unwrap();
    // systemd-analyze warns (and still exits 0) on a value it ignores.
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (scripts/setup installs systemd)");
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{}",
        stderr(&output)
    );
}

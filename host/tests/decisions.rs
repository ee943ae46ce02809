//! The decision log read back: `mailcall rules explain` shows each rule's
//! decision and the look-ups it made; `mailcall rules replay` runs another
//! module on the recorded inputs and counts the differences exactly.

mod common;

use std::process::Command;

use common::{envelope, mail, message, rule, setup};
use mailcall::policy::PolicyEngine;

fn mailcall(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mailcall"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// A server's engine (chain: the address table) that has decided 100
/// recipients: 30 in the table's domain (dial), 50 with a number in the
/// address and 20 without (no opinion).
fn recorded(redact: bool) -> (common::Setup, std::path::PathBuf) {
    let setup = setup(&["address-table"], "[server]\ndata_dir = \"data\"\n");
    let data = setup.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut config = setup.config.clone();
    config.policy.decision_log_redact = redact;
    let engine = PolicyEngine::for_server(&config, &data).unwrap();
    let text = mail("To: someone@b.test\nSubject: hello", "nothing to see");
    let view = std::sync::Arc::new(message(&engine, &text));
    for n in 0..100u32 {
        let rcpt = match n {
            0..30 => format!("user{n}@muratec.co.jp"),
            30..80 => format!("050-1111-{n:04}@b.test"),
            _ => format!("info{n}@b.test"),
        };
        engine.evaluate_queued(format!("{:016X}", 0xA000 + n), envelope(&rcpt), &view);
    }
    let config = setup.dir.path().join("mailcall.toml");
    (setup, config)
}

#[test]
fn explain_shows_each_rules_decision_and_its_look_ups() {
    let (_setup, config) = recorded(false);
    let (ok, output) = mailcall(&config, &["rules", "explain", "000000000000A000"]);
    assert!(ok, "{output}");
    assert!(
        output.contains(
            "000000000000A000 for user0@muratec.co.jp: dial 05022223333 by address-table"
        ),
        "{output}"
    );
    assert!(output.contains("1. address-table (module "), "{output}");
    assert!(
        output.contains("config.get(table) -> addresses"),
        "{output}"
    );
    assert!(
        output.contains(
            "tables.match-address(addresses, user0@muratec.co.jp) -> domain entry muratec.co.jp = 050-2222-3333"
        ),
        "{output}"
    );

    let (ok, output) = mailcall(&config, &["rules", "explain", "FFFF"]);
    assert!(!ok && output.contains("no decision recorded"), "{output}");
}

#[test]
fn replay_counts_exactly_what_a_changed_module_would_decide_otherwise() {
    let (_setup, config) = recorded(false);
    let candidate = rule("embedded-number");
    let (ok, output) = mailcall(
        &config,
        &[
            "rules",
            "replay",
            "--rule",
            &format!("address-table={}", candidate.display()),
            "--show",
            "2",
        ],
    );
    assert!(ok, "{output}");
    // The number rule dials the 50 numbered addresses (recorded: no
    // opinion) and has no opinion on the 30 table domains (recorded:
    // dial); the 20 others agree.
    assert!(output.contains("| 20 | 80 | 0 | 0 | 0 |"), "{output}");
    assert!(output.contains("recorded dial 05022223333"), "{output}");
    assert!(
        output.contains("duration per evaluation: median"),
        "{output}"
    );

    // The same module replays without a difference.
    let (ok, output) = mailcall(
        &config,
        &[
            "rules",
            "replay",
            "--rule",
            &format!("address-table={}", rule("address-table").display()),
        ],
    );
    assert!(ok && output.contains("| 100 | 0 | 0 | 0 | 0 |"), "{output}");
}

#[test]
fn a_redacted_log_masks_addresses_and_numbers_and_cannot_be_replayed() {
    let (_setup, config) = recorded(true);
    let (ok, output) = mailcall(&config, &["rules", "explain", "000000000000A000"]);
    assert!(ok, "{output}");
    assert!(
        output.contains("for *****@muratec.co.jp: dial ########### by address-table"),
        "{output}"
    );
    assert!(
        !output.contains("05022223333") && !output.contains("user0"),
        "{output}"
    );
    let (ok, output) = mailcall(
        &config,
        &[
            "rules",
            "replay",
            "--rule",
            &format!("address-table={}", rule("address-table").display()),
        ],
    );
    assert!(ok && output.contains("| 0 | 0 | 0 | 0 | 100 |"), "{output}");
}

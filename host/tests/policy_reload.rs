//! Policy generations on a running server (`mailcall serve`, swaks as the
//! client, smtp-sink as the next server): a rule added to the chain by
//! editing the configuration decides the next message without a restart,
//! `mailcall reload` does the same on demand, a bad change is refused with
//! the file, rule and reason while mail goes on being decided by the
//! generation in force, and `mailcall rules rollback` goes back.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::repo;
use common::server::{free_port, history, sink, start_config, swaks, Server, Sink};

/// Every recipient has a number in its address: `embedded-number` dials it,
/// `address-table` has no entry for the domain.
const DOMAIN: &str = "b.test";

struct Bed {
    dir: tempfile::TempDir,
    port: u16,
    pop3_port: u16,
    sink: Sink,
    server: Option<Server>,
}

impl Bed {
    fn start(chain: &[&str], hot_reload: bool) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("addresses.toml"),
            "\"muratec.co.jp\" = \"050-2222-3333\"\n",
        )
        .unwrap();
        let sink = sink(&dir.path().join("sink"), &[]);
        let mut bed = Bed {
            port: free_port(),
            pop3_port: free_port(),
            dir,
            sink,
            server: None,
        };
        let config = bed.config(chain, hot_reload, "");
        bed.server = Some(start_config(bed.dir.path(), bed.port, &config));
        bed
    }

    fn config(&self, chain: &[&str], hot_reload: bool, extra: &str) -> String {
        let chain: Vec<String> = chain.iter().map(|name| format!("{name:?}")).collect();
        format!(
            r#"[server]
hostname = "mx.test"
data_dir = "data"
smtp_listen = "127.0.0.1:{port}"
pop3_listen = "127.0.0.1:{pop3}"
local_domains = ["localhost"]
relay_networks = ["127.0.0.0/8"]

[users.postmaster]

[policy]
rules_dir = {rules_dir:?}
cache_dir = {cache_dir:?}
hot_reload = {hot_reload}
chain = [{chain}]

[tables.addresses]
file = "addresses.toml"

[rules.address-table.config]
table = "addresses"

[routes]
"{DOMAIN}" = "127.0.0.1:{sink}"
{extra}
"#,
            port = self.port,
            pop3 = self.pop3_port,
            rules_dir = repo().join("build/rules"),
            cache_dir = std::env::temp_dir().join("mailcall-test-cache"),
            chain = chain.join(", "),
            sink = self.sink.port,
        )
    }

    fn config_file(&self) -> std::path::PathBuf {
        self.dir.path().join("mailcall.toml")
    }

    /// Replaces the configuration the way editors do (write, then rename),
    /// so the watcher never sees half a file.
    fn edit(&self, text: &str) {
        let partial = self.dir.path().join(".mailcall.toml.partial");
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, self.config_file()).unwrap();
    }

    /// Sends one message to `rcpt` and waits for its history line; returns
    /// the rule and generation that decided it.
    fn decide(&self, rcpt: &str) -> (Option<String>, String) {
        let (ok, output) = swaks(
            self.server.as_ref().unwrap(),
            &["--to", rcpt, "--body", "policy test"],
        );
        assert!(ok, "{output}");
        let started = Instant::now();
        loop {
            let attempt = history(self.dir.path())
                .into_iter()
                .find(|a| a["recipient"] == rcpt);
            if let Some(attempt) = attempt {
                let generation = attempt["policy"]
                    .as_str()
                    .expect("a generation")
                    .to_string();
                return (attempt["rule"].as_str().map(str::to_string), generation);
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{rcpt} not decided"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn mailcall(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_mailcall"))
            .args(args)
            .arg("--config")
            .arg(self.config_file())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    }

    /// The generation in force, from `mailcall rules status`.
    fn active(&self) -> String {
        let (ok, status) = self.mailcall(&["rules", "status"]);
        assert!(ok, "{status}");
        status
            .lines()
            .find(|line| line.ends_with("<- in force"))
            .and_then(|line| line.split_whitespace().next())
            .unwrap_or_else(|| panic!("no generation in force: {status}"))
            .to_string()
    }

    fn wait_for_generation_after(&self, old: &str) -> String {
        let started = Instant::now();
        loop {
            let active = self.active();
            if active != old {
                return active;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no new generation after {old}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn number(n: u32) -> String {
    format!("050-1111-{n:04}@{DOMAIN}")
}

#[test]
fn a_rule_added_to_the_configuration_decides_the_next_message() {
    let bed = Bed::start(&["address-table"], true);
    let (rule, first) = bed.decide(&number(1));
    assert_eq!(rule, None, "address-table has no opinion on {DOMAIN}");

    bed.edit(&bed.config(&["address-table", "embedded-number"], true, ""));
    let second = bed.wait_for_generation_after(&first);
    let (rule, generation) = bed.decide(&number(2));
    assert_eq!(rule.as_deref(), Some("embedded-number"));
    assert_eq!(generation, second, "history names the new generation");
    let numbers = |id: &str| -> u64 { id.split('-').next().unwrap().parse().unwrap() };
    assert!(numbers(&second) > numbers(&first), "{first} then {second}");

    // `mailcall history` (the table) shows it too.
    let (ok, table) = bed.mailcall(&["history"]);
    assert!(ok && table.contains(&second), "{table}");
}

#[test]
fn mailcall_reload_applies_a_change_or_says_why_not() {
    let bed = Bed::start(&["address-table"], false);
    let (_, first) = bed.decide(&number(1));

    // Not watched: the edit alone changes nothing.
    bed.edit(&bed.config(&["address-table", "embedded-number"], false, ""));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(bed.active(), first);
    let (ok, output) = bed.mailcall(&["reload"]);
    assert!(ok, "{output}");
    let second = bed.active();
    assert_ne!(second, first);
    assert!(
        output.contains(&format!("generation {second} in force")),
        "{output}"
    );
    assert_eq!(
        bed.decide(&number(2)),
        (Some("embedded-number".into()), second.clone())
    );

    // Bad changes are refused with what, where and why; mail goes on
    // being decided by the generation in force.
    std::fs::write(
        bed.dir.path().join("fixtures.toml"),
        "[[case]]\nname = \"a number in the address\"\nrcpt = \"050-1111-2222@b.test\"\n\
         message = \"Subject: x\\n\\nx\\n\"\nnumber = \"05099999999\"\n",
    )
    .unwrap();
    let refusals: [(&str, String, &[&str]); 5] = [
        (
            "an unknown rule in the chain",
            bed.config(&["embedded-number", "no-such-rule"], false, ""),
            &["rule no-such-rule", "no-such-rule.wasm"],
        ),
        (
            "a module for another world",
            bed.config(
                &["embedded-number", "other"],
                false,
                &format!(
                    "[rules.other]\nfile = {:?}\n",
                    common::repo().join("build/test-guests/other-world.wasm")
                ),
            ),
            &[
                "rule other",
                "other-world.wasm does not implement the mailcall:rule world",
            ],
        ),
        (
            "a file that is no component at all",
            bed.config(
                &["embedded-number", "junk"],
                false,
                &format!(
                    "[rules.junk]\nfile = {:?}\n",
                    bed.dir.path().join("junk.wasm")
                ),
            ),
            &["rule junk", "not a WebAssembly component"],
        ),
        (
            "a rule that fails its fixtures",
            bed.config(
                &["embedded-number"],
                false,
                "[rules.embedded-number]\nfixtures = \"fixtures.toml\"\n",
            ),
            &[
                "rule embedded-number",
                "fixture \"a number in the address\" fails",
                "expected 05099999999, got 05011112222",
            ],
        ),
        (
            "a table that does not parse",
            bed.config(&["embedded-number"], false, ""),
            &["table addresses", "addresses.toml"],
        ),
    ];
    std::fs::write(bed.dir.path().join("junk.wasm"), b"\0asm junk").unwrap();
    for (n, (what, config, expected)) in refusals.into_iter().enumerate() {
        if what.contains("table") {
            std::fs::write(bed.dir.path().join("addresses.toml"), "\"a\" = \n").unwrap();
        }
        bed.edit(&config);
        let (ok, output) = bed.mailcall(&["reload"]);
        assert!(!ok, "{what}: accepted: {output}");
        for part in expected {
            assert!(output.contains(part), "{what}: {output}");
        }
        assert!(
            output.contains(&format!("generation {second} stays in force")),
            "{output}"
        );
        let decided = bed.decide(&number(10 + n as u32));
        assert_eq!(
            decided,
            (Some("embedded-number".into()), second.clone()),
            "{what}"
        );
    }
}

#[test]
fn a_restart_only_change_is_reported_and_a_rollback_goes_back() {
    let bed = Bed::start(&["address-table"], false);
    let first = bed.active();
    let changed = bed
        .config(&["embedded-number"], false, "")
        .replace("[users.postmaster]", "[users.postmaster]\n[users.taro]");
    bed.edit(&changed);
    let (ok, output) = bed.mailcall(&["reload"]);
    assert!(ok, "{output}");
    assert!(
        output.contains("[users] changed: needs a restart"),
        "{output}"
    );
    let second = bed.active();
    assert_eq!(bed.decide(&number(1)).1, second);

    let (ok, output) = bed.mailcall(&["rules", "rollback"]);
    assert!(ok, "{output}");
    assert_eq!(bed.active(), first);
    let (rule, generation) = bed.decide(&number(2));
    assert_eq!((rule, generation), (None, first.clone()));

    // Forward again by number; an unknown number is refused.
    let number_of = |id: &str| id.split('-').next().unwrap().to_string();
    let (ok, output) = bed.mailcall(&["rules", "rollback", "--to", &number_of(&second)]);
    assert!(ok, "{output}");
    assert_eq!(bed.active(), second);
    let (ok, output) = bed.mailcall(&["rules", "rollback", "--to", "999"]);
    assert!(!ok && output.contains("not kept"), "{output}");
}

#[test]
fn sighup_rebuilds_the_policy() {
    let bed = Bed::start(&["address-table"], false);
    let first = bed.active();
    bed.edit(&bed.config(&["embedded-number"], false, ""));
    let pid = std::fs::read_to_string(bed.dir.path().join("data/mailcall.pid")).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", pid.trim()])
        .status()
        .unwrap();
    assert!(status.success());
    let second = bed.wait_for_generation_after(&first);
    assert_eq!(
        bed.decide(&number(1)),
        (Some("embedded-number".into()), second)
    );
}

/// Mail keeps flowing while the policy is reloaded 20 times, alternating
/// between two chains with a bad change among them: every message is
/// decided once, by a generation that was put in force, and as that
/// generation's chain decides.
#[test]
fn alternating_reloads_under_load_lose_or_double_decide_nothing() {
    use common::load::{send, Answer};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let bed = Bed::start(&["address-table"], false);
    let first = bed.active();
    // Generation id to the rule its chain decides with.
    let mut deciders: BTreeMap<String, Option<String>> = BTreeMap::from([(first, None)]);
    let stop = Arc::new(AtomicBool::new(false));
    let address = bed.server.as_ref().unwrap().address;
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = Vec::new();
            for n in 0..400u32 {
                if stop.load(Ordering::Relaxed) && n >= 40 {
                    break;
                }
                let rcpt = number(n);
                let answer = send(
                    address,
                    "load@remote.test",
                    &rcpt,
                    "Subject: load\r\n\r\nx\r\n",
                );
                assert!(matches!(answer, Answer::Accepted), "{rcpt}: {answer:?}");
                sent.push(rcpt);
            }
            sent
        })
    };
    for round in 0..20 {
        let (chain, decider): (&[&str], Option<&str>) = match round % 2 {
            0 => (&["embedded-number"], Some("embedded-number")),
            _ => (&["address-table"], None),
        };
        if round % 5 == 4 {
            bed.edit(&bed.config(&["embedded-number", "no-such-rule"], false, ""));
            let (ok, output) = bed.mailcall(&["reload"]);
            assert!(!ok, "a bad chain was accepted: {output}");
        }
        bed.edit(&bed.config(chain, false, ""));
        let (ok, output) = bed.mailcall(&["reload"]);
        assert!(ok, "round {round}: {output}");
        let id = bed.active();
        deciders.insert(id, decider.map(str::to_string));
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    assert!(sent.len() >= 40, "only {} messages sent", sent.len());

    let started = Instant::now();
    let attempts = loop {
        let attempts = history(bed.dir.path());
        if attempts.len() >= sent.len() || started.elapsed() > Duration::from_secs(60) {
            break attempts;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut decided: BTreeMap<String, Vec<(Option<String>, String)>> = BTreeMap::new();
    for attempt in &attempts {
        decided
            .entry(attempt["recipient"].as_str().unwrap().to_string())
            .or_default()
            .push((
                attempt["rule"].as_str().map(str::to_string),
                attempt["policy"].as_str().unwrap().to_string(),
            ));
    }
    let mut generations_seen = std::collections::BTreeSet::new();
    for rcpt in &sent {
        let decisions = decided.get(rcpt).map(Vec::as_slice).unwrap_or_default();
        let [(rule, generation)] = decisions else {
            panic!("{rcpt}: decided {} times: {decisions:?}", decisions.len());
        };
        let expected = deciders
            .get(generation)
            .unwrap_or_else(|| panic!("{rcpt}: generation {generation} was never in force"));
        assert_eq!(rule, expected, "{rcpt} under {generation}");
        generations_seen.insert(generation.clone());
    }
    assert_eq!(attempts.len(), sent.len(), "attempts for unsent mail");
    assert!(generations_seen.len() >= 3, "{generations_seen:?}");
}

/// A shadow rule on a running server: the route stays the chain's, the
/// history says what the shadow would have done, `rules status` counts it.
#[test]
fn a_shadow_disagreement_is_in_the_history_and_the_status() {
    let bed = Bed::start(&["address-table"], false);
    bed.edit(&bed.config(
        &["embedded-number", "address-table"],
        false,
        "[rules.embedded-number]\nmode = \"shadow\"\n",
    ));
    let (ok, output) = bed.mailcall(&["reload"]);
    assert!(ok, "{output}");
    let rcpt = number(7);
    let (rule, _) = bed.decide(&rcpt);
    assert_eq!(rule, None, "the shadow did not decide");
    let attempt = history(bed.dir.path())
        .into_iter()
        .find(|a| a["recipient"] == rcpt.as_str())
        .unwrap();
    assert_eq!(attempt["path"], "relay");
    let disagreements = attempt["shadow_disagreements"].as_array().unwrap();
    assert_eq!(disagreements.len(), 1, "{attempt}");
    assert!(
        disagreements[0]
            .as_str()
            .unwrap()
            .starts_with("embedded-number: dial 05011110007"),
        "{attempt}"
    );
    let (ok, status) = bed.mailcall(&["rules", "status"]);
    assert!(ok, "{status}");
    assert!(
        status.contains("as a shadow: evaluations 1  disagreements 1"),
        "{status}"
    );
}

/// `rules status` names the contract each rule in force was built against,
/// so an operator sees which rules are still on an older one — and a rule
/// of the 0.1.0 contract, put in force by a reload, decides beside 0.2.0
/// ones.
#[test]
fn the_status_names_each_rules_contract_and_an_old_rule_reloads_in() {
    let bed = Bed::start(&["address-table"], false);
    let old = repo().join("tests/fixtures/rules-0.1.0/embedded-number.wasm");
    bed.edit(&bed.config(
        &["embedded-number-0-1", "address-table"],
        false,
        &format!("[rules.embedded-number-0-1]\nfile = {old:?}\n"),
    ));
    let (ok, output) = bed.mailcall(&["reload"]);
    assert!(ok, "{output}");
    let rcpt = number(8);
    let (rule, _) = bed.decide(&rcpt);
    assert_eq!(rule.as_deref(), Some("embedded-number-0-1"));
    let (ok, status) = bed.mailcall(&["rules", "status"]);
    assert!(ok, "{status}");
    let line = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(&format!("rule {name} ")))
            .unwrap_or_else(|| panic!("{name} missing: {status}"))
            .to_string()
    };
    assert!(
        line("embedded-number-0-1").contains("contract 0.1.0  active"),
        "{status}"
    );
    assert!(
        line("address-table").contains("contract 0.2.0  active"),
        "{status}"
    );
}

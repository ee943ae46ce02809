//! Helpers shared by the engine's integration tests: where the built rules
//! are, configurations in temporary folders, envelopes and messages.

#![allow(dead_code)] // each test file uses a different part

pub mod load;
pub mod server;

use std::path::{Path, PathBuf};

use mailcall::config::Config;
use mailcall::policy::{Envelope, Message, PolicyEngine, Verdict};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn built(folder: &str, name: &str) -> PathBuf {
    let path = repo()
        .join("build")
        .join(folder)
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/build-rules first",
        path.display()
    );
    path
}

/// A stock rule built by `scripts/build-rules`.
pub fn rule(name: &str) -> PathBuf {
    built("rules", name)
}

/// A bad guest built by `scripts/build-rules`.
pub fn guest(name: &str) -> PathBuf {
    built("test-guests", name)
}

/// A configuration in a temporary folder, with the patent's example
/// tables, rules taken from `build/rules`, and `extra` TOML appended.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: Config,
}

pub const ADDRESSES: &str = r#"
"abc@efg.com"   = "050-1234-5678"
"muratec.co.jp" = "050-2222-3333"
"*.example.net" = "080-0000-1111"
"*.b.example.net" = "080-9999-0000"
"#;

pub const KEYWORDS: &str = r#"
KYOTOSITEN = "050-1234-5678"
OSAKASITEN = "050-2222-3333"
TOKYOSITEN = "080-0000-1111"
"京都支店" = "050-7777-8888"
"#;

pub fn setup(chain: &[&str], extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("addresses.toml"), ADDRESSES).unwrap();
    std::fs::write(dir.path().join("keywords.toml"), KEYWORDS).unwrap();
    let chain: Vec<String> = chain.iter().map(|name| format!("{name:?}")).collect();
    let text = format!(
        r#"
[policy]
rules_dir = {rules_dir:?}
cache_dir = {cache_dir:?}
chain = [{chain}]

[tables.addresses]
file = "addresses.toml"
[tables.keywords]
file = "keywords.toml"
[rules.address-table.config]
table = "addresses"
[rules.keyword-table.config]
table = "keywords"
{extra}
"#,
        rules_dir = repo().join("build/rules"),
        cache_dir = std::env::temp_dir().join("mailcall-test-cache"),
        chain = chain.join(", "),
    );
    let path = dir.path().join("mailcall.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    Setup { dir, config }
}

impl Setup {
    pub fn engine(&self) -> PolicyEngine {
        PolicyEngine::from_config(&self.config).unwrap()
    }
}

pub fn envelope(rcpt: &str) -> Envelope {
    Envelope {
        mail_from: "taro@sender.example".into(),
        rcpt_to: rcpt.into(),
        client_address: "127.0.0.1".into(),
        helo: "client.example".into(),
    }
}

/// Parses a message written with `\n` line ends (made `\r\n`).
pub fn message(engine: &PolicyEngine, text: &str) -> Message {
    engine.view(text.replace('\n', "\r\n").as_bytes()).unwrap()
}

/// Runs the chain for `rcpt` on `text`.
pub fn decide(engine: &PolicyEngine, rcpt: &str, text: &str) -> Verdict {
    engine.evaluate(&envelope(rcpt), &message(engine, text))
}

/// A plain message with `headers` and `body`.
pub fn mail(headers: &str, body: &str) -> String {
    format!("From: Taro <taro@sender.example>\n{headers}\n\n{body}\n")
}

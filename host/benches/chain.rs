//! The rule chain's cost per evaluation, next to the same logic run
//! natively. Run with:
//!
//!     scripts/build-rules && cargo bench -p mailcall --bench chain --profile dev
//!
//! (the dev profile optimizes all code here and shares its build with the
//! tests; see Cargo.toml). The message is 10 KB and the number is only
//! found by the last rule, at the end of the body, so every rule reads all
//! of it.
//!
//! - `native/*`: the host's helpers the rules call, called directly.
//! - `wasm/*/warm`: rules in `isolation = "pooled"`: one warm instance.
//! - `wasm/*/fresh`: the default, a fresh instance per evaluation; the
//!   difference with `warm` is the isolation cost per rule.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use mailcall::config::Config;
use mailcall::policy::{numbers, text, Envelope, Message, NumberingPlan, PolicyEngine, Table};

const ADDRESSES: &str = "\"abc@efg.com\" = \"050-1234-5678\"\n\"muratec.co.jp\" = \"050-2222-3333\"\n\"*.example.net\" = \"080-0000-1111\"\n";
const KEYWORDS: &str = "KYOTOSITEN = \"050-1234-5678\"\nOSAKASITEN = \"050-2222-3333\"\nTOKYOSITEN = \"080-0000-1111\"\n";

/// A 10 KB message whose only clue is a keyword at the end of the body.
fn ten_kb_message() -> String {
    let mut body = String::new();
    let mut line = 0;
    while body.len() < 10 * 1024 - 200 {
        line += 1;
        body.push_str(&format!(
            "Line {line}: the quarterly figures for order 2026-{line:04} were 50,800 yen on 2026/11/28.\r\n"
        ));
    }
    body.push_str("Please forward this to KYOTOSITEN.\r\n");
    format!(
        "From: Taro Yamada <taro@a.example>\r\nTo: Hanako <hanako@b.example>\r\nSubject: Quarterly figures\r\nDate: Sat, 28 Nov 2026 10:00:00 +0900\r\nMessage-ID: <20261128100000.1234@a.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    )
}

fn engine(dir: &Path, isolation: &str) -> PolicyEngine {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::write(dir.join("addresses.toml"), ADDRESSES).unwrap();
    std::fs::write(dir.join("keywords.toml"), KEYWORDS).unwrap();
    let mut text = format!(
        "[policy]\nrules_dir = {:?}\ncache_dir = {:?}\nchain = [\"embedded-number\", \"address-table\", \"keyword-table\"]\nhot_reload = false\n\
         [tables.addresses]\nfile = \"addresses.toml\"\n[tables.keywords]\nfile = \"keywords.toml\"\n",
        repo.join("build/rules"),
        dir.join("cache"),
    );
    for rule in ["embedded-number", "address-table", "keyword-table"] {
        text.push_str(&format!("[rules.{rule}]\nisolation = {isolation:?}\npool_size = 1\nmax_calls_per_instance = 1000000\n"));
    }
    text.push_str("[rules.address-table.config]\ntable = \"addresses\"\n[rules.keyword-table.config]\ntable = \"keywords\"\n");
    let path = dir.join("mailcall.toml");
    std::fs::write(&path, text).unwrap();
    PolicyEngine::from_config(&Config::load(&path).unwrap()).unwrap()
}

/// The three stock rules' logic, natively: the host's helpers the rules
/// call, without the component boundary.
fn native_chain(
    envelope: &Envelope,
    message: &Message,
    plan: &NumberingPlan,
    addresses: &Table,
    keywords: &Table,
) -> Option<String> {
    if let Some(found) = native_embedded(envelope, message, plan) {
        return Some(found);
    }
    if let Some(found) = addresses.match_address("addresses", &envelope.rcpt_to, plan) {
        return Some(found.number);
    }
    let places = std::iter::once(envelope.rcpt_to.as_str())
        .chain(
            message
                .headers
                .iter()
                .filter(|h| text::is_human_header(&h.name))
                .map(|h| h.value.as_str()),
        )
        .chain(std::iter::once(message.body_text.as_str()));
    places
        .filter_map(|text| keywords.search_keywords("keywords", text, plan))
        .map(|found| found.number)
        .next()
}

/// The places `embedded-number` reads, natively.
fn native_embedded(envelope: &Envelope, message: &Message, plan: &NumberingPlan) -> Option<String> {
    let headers = message
        .headers
        .iter()
        .filter(|h| text::is_human_header(&h.name))
        .map(|h| h.value.as_str());
    std::iter::once(envelope.rcpt_to.as_str())
        .chain(message.subject.as_deref())
        .chain(headers)
        .chain(std::iter::once(message.body_text.as_str()))
        .find_map(|text| numbers::find_first(text, plan))
        .map(|found| found.number)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let fresh = engine(dir.path(), "fresh");
    let warm = engine(dir.path(), "pooled");
    let raw = ten_kb_message();
    let message = fresh.view(raw.as_bytes()).unwrap();
    let envelope = Envelope {
        mail_from: "taro@a.example".into(),
        rcpt_to: "hanako@b.example".into(),
        client_address: "127.0.0.1".into(),
        helo: "a.example".into(),
    };
    assert_eq!(
        fresh.evaluate(&envelope, &message).number(),
        Some("05012345678")
    );
    assert_eq!(
        warm.evaluate(&envelope, &message).number(),
        Some("05012345678")
    );

    let plan = NumberingPlan {
        country_code: "81".into(),
        trunk_prefix: "0".into(),
        prefixes: vec!["050".into(), "080".into()],
        digits: 11,
    };
    let addresses = Table::parse(ADDRESSES).unwrap();
    let keywords = Table::parse(KEYWORDS).unwrap();
    assert_eq!(
        native_chain(&envelope, &message, &plan, &addresses, &keywords).as_deref(),
        Some("05012345678")
    );

    let mut group = c.benchmark_group("10KB message");
    group.bench_function("native/embedded-number", |b| {
        b.iter(|| native_embedded(black_box(&envelope), black_box(&message), &plan))
    });
    group.bench_function("native/chain of 3", |b| {
        b.iter(|| {
            native_chain(
                black_box(&envelope),
                black_box(&message),
                &plan,
                &addresses,
                &keywords,
            )
        })
    });
    group.bench_function("wasm/chain of 3/warm", |b| {
        b.iter(|| warm.evaluate(black_box(&envelope), black_box(&message)))
    });
    group.bench_function("wasm/chain of 3/fresh", |b| {
        b.iter(|| fresh.evaluate(black_box(&envelope), black_box(&message)))
    });
    group.finish();

    // The isolation cost alone: one rule, a tiny message, fresh vs warm.
    let tiny = fresh.view(b"Subject: hi\r\n\r\nhello\r\n").unwrap();
    let mut group = c.benchmark_group("tiny message, 3 rules");
    group.bench_function("wasm/warm", |b| {
        b.iter(|| warm.evaluate(black_box(&envelope), black_box(&tiny)))
    });
    group.bench_function("wasm/fresh", |b| {
        b.iter(|| fresh.evaluate(black_box(&envelope), black_box(&tiny)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The stock rules, run as built components through the engine: positive
//! and negative cases for each claim of the patent.

mod common;

use common::{decide, mail, setup};
use mailcall::policy::{PolicyEngine, Route};

fn embedded() -> PolicyEngine {
    setup(&["embedded-number"], "").engine()
}

fn dialled(engine: &PolicyEngine, rcpt: &str, text: &str) -> Option<String> {
    decide(engine, rcpt, text).number().map(str::to_string)
}

// ---- embedded-number (claim 2) ----

#[test]
fn embedded_number_with_separators_and_full_width_digits() {
    let engine = embedded();
    for subject in [
        "Call 050-1234-5678",
        "Call 050 1234 5678",
        "Call 050.1234.5678",
        "Call (050) 1234-5678",
        "=?UTF-8?B?44GK6Zu76KmxIO+8kO+8le+8kO+8je+8ke+8ku+8k++8lO+8je+8le+8lu+8l++8mA==?=",
        "電話 ０５０ー１２３４ー５６７８",
    ] {
        let text = mail(&format!("To: x@y.example\nSubject: {subject}"), "");
        assert_eq!(
            dialled(&engine, "x@y.example", &text).as_deref(),
            Some("05012345678"),
            "{subject}"
        );
    }
}

#[test]
fn embedded_number_in_international_form() {
    let engine = embedded();
    let text = mail(
        "To: x@y.example\nSubject: hi",
        "Our number is +81 50-1234-5678.",
    );
    let verdict = decide(&engine, "x@y.example", &text);
    assert_eq!(verdict.number(), Some("05012345678"));
    assert_eq!(verdict.rule.as_deref(), Some("embedded-number"));
    assert_eq!(
        verdict.reason,
        "number +81 50-1234-5678 in the message body"
    );
}

#[test]
fn embedded_number_in_the_address_local_part_and_domain() {
    let engine = embedded();
    let text = mail("To: x@y.example\nSubject: hi", "");
    let verdict = decide(&engine, "050-0000-9999@muratec.example", &text);
    assert_eq!(verdict.number(), Some("05000009999"));
    assert!(verdict.reason.contains("local part"), "{}", verdict.reason);

    let verdict = decide(&engine, "info@08000001111.voip.example", &text);
    assert_eq!(verdict.number(), Some("08000001111"));
    assert!(verdict.reason.contains("domain"), "{}", verdict.reason);
}

#[test]
fn embedded_number_in_this_recipients_display_name() {
    let engine = embedded();
    let text = mail(
        "To: \"Osaka 080-0000-1111\" <osaka@y.example>, =?UTF-8?Q?Kyoto_050-1234-5678?= <kyoto@y.example>\nSubject: hi",
        "",
    );
    assert_eq!(
        dialled(&engine, "kyoto@y.example", &text).as_deref(),
        Some("05012345678")
    );
    assert_eq!(
        dialled(&engine, "osaka@y.example", &text).as_deref(),
        Some("08000001111")
    );
}

#[test]
fn embedded_number_negatives() {
    let engine = embedded();
    for (what, text) in [
        ("too few digits", mail("To: x@y.example\nSubject: call 050-1234-567", "")),
        ("inside a longer digit run", mail("To: x@y.example\nSubject: order 2026050123456789", "")),
        ("glued to more digits", mail("To: x@y.example\nSubject: ref 12-050-1234-5678", "")),
        ("dates", mail("To: x@y.example\nSubject: meeting 2050-08-01 at 08:00", "on 2026/05/01")),
        ("prices", mail("To: x@y.example\nSubject: ¥50,800", "total 080,000 yen, 0.50 USD")),
        ("toll-free outside the plan", mail("To: x@y.example\nSubject: 0120-123-456", "or 0800-123-4567")),
        (
            "identifiers in Message-ID/References",
            mail(
                "To: x@y.example\nSubject: hi\nMessage-ID: <05012345678@y.example>\nReferences: <050-1234-5678@y.example> <08000001111.x@y.example>\nIn-Reply-To: <08000001111@y.example>\nReceived: from 050-1234-5678.y.example by mx",
                "",
            ),
        ),
        ("another country", mail("To: x@y.example\nSubject: +1 050-1234-5678", "")),
    ] {
        let verdict = decide(&engine, "x@y.example", &text);
        assert_eq!(verdict.route, Route::Smtp, "{what}: {verdict:?}");
        assert_eq!(verdict.rule, None, "{what}");
    }
}

// ---- address-table (claim 3) ----

#[test]
fn address_table_most_specific_entry_wins() {
    let engine = setup(&["address-table"], "").engine();
    let text = mail("To: x@y.example\nSubject: hi", "");
    let cases = [
        (
            "abc@efg.com",
            Some("05012345678"),
            "address entry abc@efg.com",
        ),
        (
            "ABC@EFG.COM",
            Some("05012345678"),
            "address entry abc@efg.com",
        ),
        ("other@efg.com", None, ""),
        (
            "info@muratec.co.jp",
            Some("05022223333"),
            "domain entry muratec.co.jp",
        ),
        (
            "info@MURATEC.co.JP",
            Some("05022223333"),
            "domain entry muratec.co.jp",
        ),
        ("info@sub.muratec.co.jp", None, ""),
        (
            "a@x.example.net",
            Some("08000001111"),
            "wildcard entry *.example.net",
        ),
        (
            "a@deep.er.example.net",
            Some("08000001111"),
            "wildcard entry *.example.net",
        ),
        (
            "a@c.b.example.net",
            Some("08099990000"),
            "wildcard entry *.b.example.net",
        ),
        ("a@example.net", None, ""),
        ("a@notexample.net", None, ""),
    ];
    for (rcpt, number, reason) in cases {
        let verdict = decide(&engine, rcpt, &text);
        assert_eq!(verdict.number(), number, "{rcpt}");
        assert!(
            verdict.reason.starts_with(reason),
            "{rcpt}: {}",
            verdict.reason
        );
    }
}

// ---- keyword-table (claim 4) ----

#[test]
fn keyword_in_rcpt_subject_and_body() {
    let engine = setup(&["keyword-table"], "").engine();
    let plain = mail("To: x@y.example\nSubject: hi", "nothing here");

    let verdict = decide(&engine, "kyotositen@branch.example", &plain);
    assert_eq!(verdict.number(), Some("05012345678"));
    assert_eq!(verdict.reason, "keyword KYOTOSITEN in RCPT TO");

    // A MIME encoded-word Subject: "To OsakaSiten".
    let encoded = mail(
        "To: x@y.example\nSubject: =?UTF-8?B?VG8gT3Nha2FTaXRlbg==?=",
        "",
    );
    let verdict = decide(&engine, "x@y.example", &encoded);
    assert_eq!(verdict.number(), Some("05022223333"));
    assert_eq!(verdict.reason, "keyword OSAKASITEN in the Subject header");

    // A base64 body.
    let base64 = mail(
        "To: x@y.example\nSubject: hi\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64",
        "UGxlYXNlIGZvcndhcmQgdG8gdG9reW9zaXRlbiwgdGhhbmtzLg==",
    );
    let verdict = decide(&engine, "x@y.example", &base64);
    assert_eq!(verdict.number(), Some("08000001111"));
    assert_eq!(verdict.reason, "keyword TOKYOSITEN in the message body");
}

#[test]
fn keyword_in_an_iso_2022_jp_body() {
    let engine = setup(&["keyword-table"], "").engine();
    // 京都支店宛 in ISO-2022-JP (JIS escape sequences), 7bit.
    let mut raw = b"From: a@sender.example\r\nTo: x@y.example\r\nSubject: hi\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-2022-JP\r\nContent-Transfer-Encoding: 7bit\r\n\r\n".to_vec();
    raw.extend_from_slice(b"\x1b$B5~ET;YE908\x1b(B\r\n");
    let message = engine.view(&raw).unwrap();
    let verdict = engine.evaluate(&common::envelope("x@y.example"), &message);
    assert_eq!(verdict.number(), Some("05077778888"), "{verdict:?}");
    assert_eq!(verdict.reason, "keyword 京都支店 in the message body");
}

#[test]
fn keyword_negatives() {
    let engine = setup(&["keyword-table"], "").engine();
    for (what, text) in [
        ("part of a longer word", mail("To: x@y.example\nSubject: xkyotositen", "osakasitens tokyositen2")),
        ("only in a trace header", mail("To: x@y.example\nSubject: hi\nReceived: from kyotositen.example by mx\nMessage-ID: <osakasiten@y.example>", "")),
        ("no keyword", mail("To: x@y.example\nSubject: hi", "Kyoto branch")),
    ] {
        let verdict = decide(&engine, "x@y.example", &text);
        assert_eq!(verdict.route, Route::Smtp, "{what}: {verdict:?}");
    }
}

// ---- custom (urgent mail only) and the chain ----

#[test]
fn custom_rule_gates_the_chain_on_urgency() {
    let setup = setup(
        &["custom", "embedded-number", "address-table"],
        "[rules.custom.config]\nsender.\"vip.example\" = \"080-1111-2222\"\n",
    );
    let engine = setup.engine();

    let normal = mail("To: x@muratec.co.jp\nSubject: weekly report", "");
    let verdict = decide(&engine, "x@muratec.co.jp", &normal);
    assert_eq!(verdict.route, Route::Smtp);
    assert_eq!(
        verdict.rule.as_deref(),
        Some("custom"),
        "use-smtp stops the chain"
    );

    let urgent = mail(
        "To: x@muratec.co.jp\nSubject: server down\nImportance: high",
        "",
    );
    let verdict = decide(&engine, "x@muratec.co.jp", &urgent);
    assert_eq!(verdict.number(), Some("05022223333"));
    assert_eq!(
        verdict.rule.as_deref(),
        Some("address-table"),
        "no-opinion passes on"
    );

    let mut envelope = common::envelope("x@muratec.co.jp");
    envelope.mail_from = "boss@VIP.example".into();
    let message = common::message(
        &engine,
        &mail("To: x@muratec.co.jp\nSubject: 至急 連絡", ""),
    );
    let verdict = engine.evaluate(&envelope, &message);
    assert_eq!(verdict.number(), Some("08011112222"));
    assert_eq!(verdict.rule.as_deref(), Some("custom"));
}

#[test]
fn the_first_rule_that_dials_wins() {
    let engine = setup(&["embedded-number", "address-table", "keyword-table"], "").engine();
    let text = mail("To: x@muratec.co.jp\nSubject: KYOTOSITEN 080-0000-2222", "");
    let verdict = decide(&engine, "x@muratec.co.jp", &text);
    assert_eq!(verdict.number(), Some("08000002222"));
    assert_eq!(verdict.rule.as_deref(), Some("embedded-number"));

    let text = mail("To: x@muratec.co.jp\nSubject: KYOTOSITEN", "");
    let verdict = decide(&engine, "x@muratec.co.jp", &text);
    assert_eq!(verdict.rule.as_deref(), Some("address-table"));

    let verdict = decide(&engine, "x@nowhere.example", &text);
    assert_eq!(verdict.rule.as_deref(), Some("keyword-table"));

    let text = mail("To: x@nowhere.example\nSubject: hello", "");
    let verdict = decide(&engine, "x@nowhere.example", &text);
    assert_eq!((verdict.route, verdict.rule), (Route::Smtp, None));
    assert_eq!(verdict.reason, "no rule found a number");
}

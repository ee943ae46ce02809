//! The rule contract's helpers (`host/src/policy/{text,numbers,keywords}.rs`)
//! on arbitrary text, as a message off the network gives them: never a
//! panic; every number found is digits of the plan's length, starting with
//! a prefix, written where its offset says; a keyword found is in the table
//! and at an offset inside the text; folding keeps the character count
//! before lower-casing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailcall::policy::{numbers, text, NumberingPlan, Table};

const KEYWORDS: &str = "KYOTOSITEN = \"050-1234-5678\"\n\"京都支店\" = \"050-7777-8888\"\nOSAKA = \"+81 50 4444 5555\"\n\"OSAKA SHISHA\" = \"050-4444-6666\"\nBAD = \"ask\"\n";

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let plan = NumberingPlan {
        country_code: "81".into(),
        trunk_prefix: "0".into(),
        prefixes: vec!["050".into(), "080".into()],
        digits: 11,
    };
    let chars = input.chars().count();
    for found in numbers::find_all(input, &plan) {
        assert_eq!(found.number.len(), 11, "{found:?}");
        assert!(found.number.bytes().all(|b| b.is_ascii_digit()), "{found:?}");
        assert!(plan.prefixes.iter().any(|p| found.number.starts_with(p.as_str())));
        let written: String = input.chars().skip(found.char_offset).take(found.written.chars().count()).collect();
        assert_eq!(written, found.written);
    }
    if let Some(number) = numbers::normalize(input, &plan) {
        assert!(number.bytes().all(|b| b.is_ascii_digit()) && !number.is_empty());
    }
    assert_eq!(input.chars().map(text::fold_char).count(), chars);
    let table = Table::parse(KEYWORDS).unwrap();
    if let Some(found) = table.search_keywords("keywords", input, &plan) {
        assert!(found.offset < chars.max(1), "{found:?}");
        assert!(table.get(&found.keyword).is_some(), "{found:?}");
        assert_ne!(found.keyword, "BAD");
    }
    let _ = table.match_address("addresses", input, &plan);
    let _ = text::is_human_header(input);
});

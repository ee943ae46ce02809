//! The NAPTR substitution expression of an ENUM record (RFC 3402 §3.2,
//! `sip/src/locate/substitution.rs`), as a name server may send it, applied
//! to a number: never a panic, and a result only from what matched.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailcall_sip::fuzzing::Substitution;

fuzz_target!(|input: (&str, &str)| {
    let (expression, subject) = input;
    let Ok(substitution) = Substitution::parse(expression) else {
        return;
    };
    if let Some(result) = substitution.apply(subject) {
        // The replacement is a fixed text plus what the groups matched.
        assert!(result.len() <= expression.len() * (subject.len() + 1) + 1);
    }
});

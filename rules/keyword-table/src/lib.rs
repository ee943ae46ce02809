//! `keyword-table` (claim 4): dial the number an operator's table gives for
//! a keyword found in the recipient address, the headers or the body, so
//! senders can name a branch (`KYOTOSITEN`) instead of a number.
//!
//! The table is the configuration value `table` (default `keywords`).
//! Matching ignores case and full-width forms; ASCII keywords match whole
//! words, keywords in scripts without spaces (`京都支店`) match anywhere.
//! Places are searched in order — `RCPT TO`, the human-written headers in
//! message order (never trace or identifier headers), the body — and in
//! each place the keyword written first wins.

use mailcall_guest_sdk::headers::is_human_header;
use mailcall_guest_sdk::number::normalize;
use mailcall_guest_sdk::text::{fold, Keyword};
use mailcall_guest_sdk::{export_rule, host, Decision, Envelope, LogLevel, Message, Rule};

struct KeywordTable;

impl Rule for KeywordTable {
    fn resolve(envelope: Envelope, message: Message) -> Decision {
        let table = host::config_or("table", "keywords");
        let plan = host::numbering_plan();
        let keywords: Vec<(Keyword, String, String)> = host::table_entries(&table)
            .into_iter()
            .filter_map(|entry| match normalize(&entry.value, &plan) {
                Some(number) => Some((Keyword::new(&entry.key)?, entry.key, number)),
                None => {
                    let warning =
                        format!("table {table}: {:?} is not a number; skipped", entry.value);
                    host::log(LogLevel::Warn, &warning);
                    None
                }
            })
            .collect();
        if keywords.is_empty() {
            return Decision::NoOpinion;
        }

        let headers = message
            .headers
            .iter()
            .filter(|header| is_human_header(&header.name))
            .map(|header| (format!("the {} header", header.name), header.value.as_str()));
        let places = std::iter::once(("RCPT TO".to_string(), envelope.rcpt_to.as_str()))
            .chain(headers)
            .chain(std::iter::once((
                "the message body".to_string(),
                message.body_text.as_str(),
            )));

        for (place, text) in places {
            let folded = fold(text);
            let first = keywords
                .iter()
                .filter_map(|(keyword, key, number)| {
                    keyword.find_in_folded(&folded).map(|at| (at, key, number))
                })
                .min_by_key(|(at, key, _)| (*at, usize::MAX - key.len()));
            if let Some((_, key, number)) = first {
                return Decision::dial(number.clone(), format!("keyword {key} in {place}"));
            }
        }
        Decision::NoOpinion
    }
}

export_rule!(KeywordTable);

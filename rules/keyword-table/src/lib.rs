//! `keyword-table` (claim 4): dial the number an operator's table gives for
//! a keyword found in the recipient address, the headers or the body, so
//! senders can name a branch (`KYOTOSITEN`) instead of a number.
//!
//! The table is the configuration value `table` (default `keywords`).
//! Places are searched in order — `RCPT TO`, the human-written headers in
//! message order (never trace or identifier headers), the body; the host's
//! `tables.search-keywords-in` finds the keyword a place mentions first,
//! reading the place itself.

use mailcall_guest_sdk::host::{config_or, is_human_header, search_keywords_in};
use mailcall_guest_sdk::{export_rule, Decision, Envelope, Message, Part, Rule};

struct KeywordTable;

impl Rule for KeywordTable {
    fn resolve(_envelope: Envelope, message: Message) -> Decision {
        let table = config_or("table", "keywords");
        let headers = (0..)
            .zip(&message.headers)
            .filter(|(_, header)| is_human_header(&header.name))
            .map(|(index, header)| (format!("the {} header", header.name), Part::Header(index)));
        let places = std::iter::once(("RCPT TO".to_string(), Part::RcptTo))
            .chain(headers)
            .chain([("the message body".to_string(), Part::Body)]);
        for (place, part) in places {
            if let Some(found) = search_keywords_in(&table, part) {
                let reason = format!("keyword {} in {place}", found.keyword);
                return Decision::dial(found.number, reason);
            }
        }
        Decision::NoOpinion
    }
}

export_rule!(KeywordTable);

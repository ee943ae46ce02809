//! The host's imports, with plain Rust signatures. Each is documented in
//! `wit/rule.wit`.

use crate::bindings::mailcall::rule::{config, log, numbering, numbers, tables, text};
use crate::{AddressMatch, FoundNumber, KeywordMatch, LogLevel, NumberingPlan, Part, TableEntry};

/// The value of `key` in the operator's table `table` (keys compare
/// case-insensitively).
pub fn table_get(table: &str, key: &str) -> Option<String> {
    tables::get(table, key)
}

/// Every entry of the operator's table `table`, in file order (a copy of
/// the whole table: to search one, use [`match_address`] or
/// [`search_keywords`]).
pub fn table_entries(table: &str) -> Vec<TableEntry> {
    tables::entries(table)
}

/// The most specific entry of the address table `table` for `address`.
pub fn match_address(table: &str, address: &str) -> Option<AddressMatch> {
    tables::match_address(table, address)
}

/// The keyword of the keyword table `table` that `text` mentions first.
pub fn search_keywords(table: &str, text: &str) -> Option<KeywordMatch> {
    tables::search_keywords(table, text)
}

/// The keyword of the keyword table `table` that a part of the message
/// being decided mentions first (the host reads the part itself).
pub fn search_keywords_in(table: &str, part: Part) -> Option<KeywordMatch> {
    tables::search_keywords_in(table, part)
}

/// The host's numbering plan.
pub fn numbering_plan() -> NumberingPlan {
    numbering::plan()
}

/// The first number of the plan written in `text`.
pub fn find_number(text: &str) -> Option<FoundNumber> {
    numbers::find_first(text)
}

/// The first number of the plan written in a part of the message being
/// decided (the host reads the part itself).
pub fn find_number_in(part: Part) -> Option<FoundNumber> {
    numbers::find_first_in(part)
}

/// Every number of the plan written in `text`, in order.
pub fn find_numbers(text: &str) -> Vec<FoundNumber> {
    numbers::find_all(text)
}

/// A number as an operator writes it, in national form.
pub fn normalize_number(written: &str) -> Option<String> {
    numbers::normalize(written)
}

/// `text` folded for comparing: full-width forms, dashes, spaces, case.
pub fn fold(text: &str) -> String {
    text::fold(text)
}

/// True for header fields people write, false for trace headers.
pub fn is_human_header(name: &str) -> bool {
    text::is_human_header(name)
}

/// The rule's configuration value `key` (`[rules.NAME.config]`).
pub fn config(key: &str) -> Option<String> {
    config::get(key)
}

/// The rule's configuration value `key`, or `default` when not configured.
pub fn config_or(key: &str, default: &str) -> String {
    config::get(key).unwrap_or_else(|| default.to_string())
}

/// Write one line to the host's log.
pub fn log(level: LogLevel, message: &str) {
    log::write(level, message)
}

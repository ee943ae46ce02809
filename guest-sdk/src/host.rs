//! The host's imports, with plain Rust signatures.

use crate::bindings::mailcall::rule::{config, log, numbering, tables};
use crate::{LogLevel, NumberingPlan, TableEntry};

/// The value of `key` in the operator's table `table` (keys compare
/// case-insensitively).
pub fn table_get(table: &str, key: &str) -> Option<String> {
    tables::get(table, key)
}

/// Every entry of the operator's table `table`, in file order.
pub fn table_entries(table: &str) -> Vec<TableEntry> {
    tables::entries(table)
}

/// The host's numbering plan.
pub fn numbering_plan() -> NumberingPlan {
    numbering::plan()
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

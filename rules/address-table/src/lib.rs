//! `address-table` (claim 3): dial the number an operator's table gives for
//! the recipient's address or domain.
//!
//! The table (configuration value `table`, default `addresses`) maps a whole
//! address (`abc@efg.com`), an exact domain (`muratec.co.jp`) or a wildcard
//! domain (`*.example.net`: every subdomain, at any depth) to a number; `*`
//! alone is a catch-all. The most specific entry wins: address, then exact
//! domain, then the longest wildcard. Keys compare case-insensitively.

use mailcall_guest_sdk::address::table_keys;
use mailcall_guest_sdk::number::normalize;
use mailcall_guest_sdk::{export_rule, host, Decision, Envelope, LogLevel, Message, Rule};

struct AddressTable;

impl Rule for AddressTable {
    fn resolve(envelope: Envelope, _message: Message) -> Decision {
        let table = host::config_or("table", "addresses");
        let plan = host::numbering_plan();
        for (kind, key) in table_keys(&envelope.rcpt_to) {
            let Some(value) = host::table_get(&table, &key) else {
                continue;
            };
            match normalize(&value, &plan) {
                Some(number) => {
                    let reason = format!("{} entry {key} in table {table}", kind.describe());
                    return Decision::dial(number, reason);
                }
                None => host::log(
                    LogLevel::Warn,
                    &format!("table {table}: entry {key} = {value:?} is not a number; skipped"),
                ),
            }
        }
        Decision::NoOpinion
    }
}

export_rule!(AddressTable);

//! `address-table` (claim 3): dial the number an operator's table gives for
//! the recipient's address or domain.
//!
//! The table (configuration value `table`, default `addresses`) maps a whole
//! address (`abc@efg.com`), an exact domain (`muratec.co.jp`) or a wildcard
//! domain (`*.example.net`: every subdomain, at any depth) to a number; `*`
//! alone is a catch-all. The most specific entry wins — the host's
//! `tables.match-address` finds it.

use mailcall_guest_sdk::host::{config_or, match_address};
use mailcall_guest_sdk::{export_rule, Decision, Envelope, Message, Rule};

struct AddressTable;

impl Rule for AddressTable {
    fn resolve(envelope: Envelope, _message: Message) -> Decision {
        let table = config_or("table", "addresses");
        match match_address(&table, &envelope.rcpt_to) {
            Some(entry) => {
                let kind = entry.kind.describe();
                let reason = format!("{kind} entry {} in table {table}", entry.key);
                Decision::dial(entry.number, reason)
            }
            None => Decision::NoOpinion,
        }
    }
}

export_rule!(AddressTable);

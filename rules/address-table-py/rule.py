"""address-table (claim 3), in Python: the same rule as rules/address-table
(Rust). Dials the number an operator's table (configuration value `table`,
default `addresses`) gives for the recipient's address, domain or wildcard
domain. The host finds the most specific entry (`tables.match_address`).
"""

import wit_world
from wit_world.imports import config, tables
from wit_world.imports.types import Decision_Dial, Decision_NoOpinion, Dial, KeyKind

# How a reason names each kind of entry.
KIND_NAMES = {KeyKind.ADDRESS: "address", KeyKind.DOMAIN: "domain", KeyKind.WILDCARD: "wildcard"}


class WitWorld(wit_world.WitWorld):
    def resolve(self, envelope, message):
        table = config.get("table")
        if table is None:
            table = "addresses"
        match = tables.match_address(table, envelope.rcpt_to)
        if match is None:
            return Decision_NoOpinion()
        reason = f"{KIND_NAMES[match.kind]} entry {match.key} in table {table}"
        return Decision_Dial(Dial(number=match.number, reason=reason))

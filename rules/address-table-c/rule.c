/* address-table (claim 3), in C: the same rule as rules/address-table
 * (Rust). Dials the number an operator's table gives for the recipient's
 * address, its domain or a wildcard domain, most specific first.
 *
 * The table is the configuration value `table` (default `addresses`); the
 * host searches it (`tables.match-address`). Memory: strings the host
 * returns are ours to free, and so are `envelope` and `message`; the
 * decision we return is freed by the bindings after the call, so its
 * strings must be allocated. */

#include "mailcall_rule.h"

/* The words the reason uses for each kind of entry. */
static const char *const KIND[] = {
    [MAILCALL_RULE_TYPES_KEY_KIND_ADDRESS] = "address",
    [MAILCALL_RULE_TYPES_KEY_KIND_DOMAIN] = "domain",
    [MAILCALL_RULE_TYPES_KEY_KIND_WILDCARD] = "wildcard",
};

void exports_rule_resolve(rule_envelope_t *envelope, rule_message_t *message, rule_decision_t *ret) {
    ret->tag = MAILCALL_RULE_TYPES_DECISION_NO_OPINION;

    /* The table's name: configured, or `addresses`. */
    rule_string_t key = lit("table"), table;
    if (!mailcall_rule_config_get(&key, &table)) rule_string_dup(&table, "addresses");

    mailcall_rule_tables_address_match_t match;
    if (mailcall_rule_tables_match_address(&table, &envelope->rcpt_to, &match)) {
        /* e.g. "domain entry muratec.co.jp in table addresses" */
        ret->tag = MAILCALL_RULE_TYPES_DECISION_DIAL;
        ret->val.dial.number = match.number; /* handed over: freed after the call */
        match.number = (rule_string_t){NULL, 0};
        ret->val.dial.reason = concat(5, lit(KIND[match.kind]), lit(" entry "), match.key,
                                      lit(" in table "), table);
        mailcall_rule_tables_address_match_free(&match);
    }

    rule_string_free(&table);
    rule_envelope_free(envelope);
    rule_message_free(message);
}

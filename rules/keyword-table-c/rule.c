/* keyword-table (claim 4), in C: the same rule as rules/keyword-table
 * (Rust). Dials the number an operator's table gives for a keyword
 * (`KYOTOSITEN`, `京都支店`) found in the recipient address, a
 * human-written header or the body.
 *
 * The table is the configuration value `table` (default `keywords`); the
 * host searches it (`tables.search-keywords-in`: folded text, whole words
 * for ASCII keywords, the keyword written first). Places are tried in order
 * — RCPT TO, the human-written headers in message order, the body — and the
 * first that holds a keyword wins; each is named as a part of the message
 * (`mailcall_rule_types_part_t`), never sent back as text: the host reads
 * it itself. Memory: strings the host returns are ours to free, and so are
 * `envelope` and `message`; the decision we return is freed by the
 * bindings after the call, so its strings must be allocated. */

#include "mailcall_rule.h"

/* Parts of the message, which the host reads itself. */
typedef mailcall_rule_types_part_t part_t;
static const part_t RCPT_TO = {.tag = MAILCALL_RULE_TYPES_PART_RCPT_TO};
static const part_t BODY = {.tag = MAILCALL_RULE_TYPES_PART_BODY};

/* If the part `part` of the message mentions a keyword of `table`, sets
 * *ret to dial its number for the reason "keyword {keyword} in {place}"
 * and returns true. */
static bool dial_keyword_in(rule_string_t table, part_t part, rule_string_t place,
                            rule_decision_t *ret) {
    mailcall_rule_tables_keyword_match_t match;
    if (!mailcall_rule_tables_search_keywords_in(&table, &part, &match)) return false;
    ret->tag = MAILCALL_RULE_TYPES_DECISION_DIAL;
    ret->val.dial.number = match.number; /* handed over: freed after the call */
    match.number = (rule_string_t){NULL, 0};
    ret->val.dial.reason = concat(4, lit("keyword "), match.keyword, lit(" in "), place);
    mailcall_rule_tables_keyword_match_free(&match);
    return true;
}

/* Decides into *ret (which starts as no-opinion). */
static void decide(rule_string_t table, rule_message_t *message, rule_decision_t *ret) {
    if (dial_keyword_in(table, RCPT_TO, lit("RCPT TO"), ret)) return;
    for (size_t i = 0; i < message->headers.len; i++) {
        mailcall_rule_types_header_t *header = &message->headers.ptr[i];
        /* Never trace or identifier headers (Received, Message-ID, ...). */
        if (!mailcall_rule_text_is_human_header(&header->name)) continue;
        rule_string_t place = concat(3, lit("the "), header->name, lit(" header"));
        part_t value = {.tag = MAILCALL_RULE_TYPES_PART_HEADER, .val.header = (uint32_t)i};
        bool found = dial_keyword_in(table, value, place, ret);
        rule_string_free(&place);
        if (found) return;
    }
    dial_keyword_in(table, BODY, lit("the message body"), ret);
}

void exports_rule_resolve(rule_envelope_t *envelope, rule_message_t *message, rule_decision_t *ret) {
    ret->tag = MAILCALL_RULE_TYPES_DECISION_NO_OPINION;

    /* The table's name: configured, or `keywords`. */
    rule_string_t key = lit("table"), table;
    if (!mailcall_rule_config_get(&key, &table)) rule_string_dup(&table, "keywords");

    decide(table, message, ret);

    rule_string_free(&table);
    rule_envelope_free(envelope);
    rule_message_free(message);
}

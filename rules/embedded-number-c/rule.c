/* embedded-number (claim 2), in C: the same rule as rules/embedded-number
 * (Rust). Dials a number of the numbering plan written in the recipient
 * address, in the recipient's display name, in the Subject, in another
 * human-written header (only when the recipient is not listed in To/Cc) or
 * in the body; the first place that holds one wins.
 *
 * The host finds the numbers (`numbers.find-first`) and folds text for
 * comparing (`text.fold`), so this rule decides exactly as the other
 * languages' do. The message's own texts are named as parts
 * (`mailcall_rule_types_part_t`) for `numbers.find-first-in`, never sent
 * back: the host reads them itself. Memory: strings the host returns are ours to free, and so
 * are `envelope` and `message`; the decision we return is freed by the
 * bindings after the call, so its strings must be allocated. */

#include "mailcall_rule.h"

/* Sets *ret to dial the number `found` for the reason
 * "number {as written} in {place}", and frees `found`. */
static void dial_found(mailcall_rule_numbers_found_number_t *found, rule_string_t place,
                       rule_decision_t *ret) {
    ret->tag = MAILCALL_RULE_TYPES_DECISION_DIAL;
    rule_string_dup_n(&ret->val.dial.number, (const char *)found->number.ptr, found->number.len);
    ret->val.dial.reason = concat(4, lit("number "), found->written, lit(" in "), place);
    mailcall_rule_numbers_found_number_free(found);
}

/* If `text` holds a number, sets *ret to dial it (see `dial_found`) and
 * returns true. */
static bool dial_number_in(rule_string_t text, rule_string_t place, rule_decision_t *ret) {
    mailcall_rule_numbers_found_number_t found;
    if (!mailcall_rule_numbers_find_first(&text, &found)) return false;
    dial_found(&found, place, ret);
    return true;
}

/* The same for the part `part` of the message, which the host reads. */
typedef mailcall_rule_types_part_t part_t;
static bool dial_number_in_part(part_t part, rule_string_t place, rule_decision_t *ret) {
    mailcall_rule_numbers_found_number_t found;
    if (!mailcall_rule_numbers_find_first_in(&part, &found)) return false;
    dial_found(&found, place, ret);
    return true;
}

/* Sets *ret when the recipient `folded_rcpt` is listed in `field` (To or
 * Cc) with a number in its display name (the part `name_tag` of the
 * mailbox's index); tells whether it is listed. */
static bool listed_in(mailcall_rule_types_list_mailbox_t list, const char *field, uint8_t name_tag,
                      rule_string_t folded_rcpt, rule_decision_t *ret) {
    bool listed = false;
    for (size_t i = 0; i < list.len && ret->tag != MAILCALL_RULE_TYPES_DECISION_DIAL; i++) {
        mailcall_rule_types_mailbox_t *mailbox = &list.ptr[i];
        if (!mailbox->address.is_some) continue;
        rule_string_t address = strip(mailbox->address.val), folded;
        mailcall_rule_text_fold(&address, &folded);
        bool is_recipient = same(folded, folded_rcpt);
        rule_string_free(&folded);
        if (!is_recipient) continue;
        listed = true;
        if (mailbox->name.is_some) {
            rule_string_t place = concat(2, lit("the display name of the recipient in "), lit(field));
            part_t name = {.tag = name_tag};
            if (name_tag == MAILCALL_RULE_TYPES_PART_TO_NAME) name.val.to_name = (uint32_t)i;
            else name.val.cc_name = (uint32_t)i;
            dial_number_in_part(name, place, ret);
            rule_string_free(&place);
        }
    }
    return listed;
}

/* Decides into *ret (which starts as no-opinion). */
static void decide(rule_envelope_t *envelope, rule_message_t *message, rule_decision_t *ret) {
    /* 1. The recipient address, split at its last `@`. */
    rule_string_t local = envelope->rcpt_to, domain = {NULL, 0};
    for (size_t i = local.len; i > 0; i--) {
        if (local.ptr[i - 1] == '@') {
            domain = (rule_string_t){local.ptr + i, local.len - i};
            local.len = i - 1;
            break;
        }
    }
    if (dial_number_in(local, lit("the recipient address (local part)"), ret)) return;
    if (dial_number_in(domain, lit("the recipient address (domain)"), ret)) return;

    /* 2. The recipient's display name in To, then Cc. */
    rule_string_t rcpt = strip(envelope->rcpt_to), folded_rcpt;
    mailcall_rule_text_fold(&rcpt, &folded_rcpt);
    bool listed = listed_in(message->to, "To", MAILCALL_RULE_TYPES_PART_TO_NAME, folded_rcpt, ret);
    if (ret->tag == MAILCALL_RULE_TYPES_DECISION_NO_OPINION)
        listed |= listed_in(message->cc, "Cc", MAILCALL_RULE_TYPES_PART_CC_NAME, folded_rcpt, ret);
    rule_string_free(&folded_rcpt);
    if (ret->tag == MAILCALL_RULE_TYPES_DECISION_DIAL) return;

    /* 3. The Subject. */
    part_t subject = {.tag = MAILCALL_RULE_TYPES_PART_SUBJECT};
    if (message->subject.is_some && dial_number_in_part(subject, lit("Subject"), ret)) return;

    /* 4. Other human-written headers, unless the recipient is listed. */
    for (size_t i = 0; !listed && i < message->headers.len; i++) {
        mailcall_rule_types_header_t *header = &message->headers.ptr[i];
        if (!mailcall_rule_text_is_human_header(&header->name)) continue;
        rule_string_t folded_name;
        mailcall_rule_text_fold(&header->name, &folded_name);
        bool is_subject = equal(folded_name, "subject");
        rule_string_free(&folded_name);
        if (is_subject) continue;
        rule_string_t place = concat(3, lit("the "), header->name, lit(" header"));
        part_t value = {.tag = MAILCALL_RULE_TYPES_PART_HEADER, .val.header = (uint32_t)i};
        bool found = dial_number_in_part(value, place, ret);
        rule_string_free(&place);
        if (found) return;
    }

    /* 5. The body. */
    part_t body = {.tag = MAILCALL_RULE_TYPES_PART_BODY};
    dial_number_in_part(body, lit("the message body"), ret);
}

void exports_rule_resolve(rule_envelope_t *envelope, rule_message_t *message, rule_decision_t *ret) {
    ret->tag = MAILCALL_RULE_TYPES_DECISION_NO_OPINION;
    decide(envelope, message, ret);
    rule_envelope_free(envelope);
    rule_message_free(message);
}

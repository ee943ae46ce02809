/* custom, in C: the same rule as rules/custom (Rust). Calls only for
 * urgent mail: mail marked urgent (Importance: high, Priority: urgent,
 * X-Priority 1 or 2, or a Subject starting with "urgent" or "至急") is
 * dialled to the number configured for the sender's domain
 * (`[rules.NAME.config]`, key `sender.DOMAIN`); other mail goes by SMTP.
 *
 * Text is compared folded by the host (`text.fold`: case, full-width
 * forms), so this rule decides exactly as the other languages' do.
 * Memory: strings the host returns are ours to free, and so are
 * `envelope` and `message`; the decision we return is freed by the
 * bindings after the call, so its strings must be allocated. */

#include "mailcall_rule.h"

/* Whether a header field marks the message urgent. */
static bool is_urgent_header(mailcall_rule_types_header_t *header) {
    rule_string_t name, value;
    mailcall_rule_text_fold(&header->name, &name);
    mailcall_rule_text_fold(&header->value, &value);
    rule_string_t v = strip(value);
    bool urgent = (equal(name, "importance") && equal(v, "high")) ||
                  (equal(name, "priority") && equal(v, "urgent")) ||
                  (equal(name, "x-priority") && (starts_with(v, "1") || starts_with(v, "2")));
    rule_string_free(&name);
    rule_string_free(&value);
    return urgent;
}

static bool is_urgent(rule_message_t *message) {
    for (size_t i = 0; i < message->headers.len; i++)
        if (is_urgent_header(&message->headers.ptr[i])) return true;
    if (!message->subject.is_some) return false;
    rule_string_t subject;
    mailcall_rule_text_fold(&message->subject.val, &subject);
    bool urgent = starts_with(lstrip(subject), "urgent") ||
                  starts_with(lstrip(message->subject.val), "至急"); /* U+81F3 U+6025 */
    rule_string_free(&subject);
    return urgent;
}

/* Decides into *ret (which starts as no-opinion). */
static void decide(rule_envelope_t *envelope, rule_message_t *message, rule_decision_t *ret) {
    if (!is_urgent(message)) {
        ret->tag = MAILCALL_RULE_TYPES_DECISION_USE_SMTP;
        rule_string_dup(&ret->val.use_smtp, "not marked urgent: calls are for urgent mail");
        return;
    }

    /* The sender's domain: what follows the last `@` of MAIL FROM. */
    rule_string_t domain = {NULL, 0};
    for (size_t i = envelope->mail_from.len; i > 0; i--) {
        if (envelope->mail_from.ptr[i - 1] == '@') {
            domain = (rule_string_t){envelope->mail_from.ptr + i, envelope->mail_from.len - i};
            break;
        }
    }

    /* Its number: configuration value `sender.{folded domain}`. */
    rule_string_t folded, value, number;
    mailcall_rule_text_fold(&domain, &folded);
    rule_string_t key = concat(2, lit("sender."), folded);
    bool configured = mailcall_rule_config_get(&key, &value);
    rule_string_free(&key);
    rule_string_free(&folded);
    if (!configured) return;
    bool is_number = mailcall_rule_numbers_normalize(&value, &number);
    rule_string_free(&value);
    if (!is_number) return;

    ret->tag = MAILCALL_RULE_TYPES_DECISION_DIAL;
    ret->val.dial.number = number; /* handed over: freed after the call */
    ret->val.dial.reason = concat(2, lit("urgent mail from "), domain); /* as written */
}

void exports_rule_resolve(rule_envelope_t *envelope, rule_message_t *message, rule_decision_t *ret) {
    ret->tag = MAILCALL_RULE_TYPES_DECISION_NO_OPINION;
    decide(envelope, message, ret);
    rule_envelope_free(envelope);
    rule_message_free(message);
}

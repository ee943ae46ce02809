// {{name}}: a mailcall rule. Dials the configured `number` when the Subject
// mentions the configured `keyword`; otherwise has no opinion.
//
// rule.h is generated from wit/rule.wit by build.sh: each import is a C
// function (`mailcall:rule/config@0.2.0`'s get is mailcall_rule_config_get),
// strings are rule_string_t (pointer and length, not NUL-terminated).
// Memory: what the host returns is ours to free, and so are `envelope` and
// `message`; the decision's strings must be allocated (the bindings free
// them once the host has read them).

#include <stdlib.h>
#include <string.h>

#include "rule.h"

// The configuration value `key`, or `fallback` if not configured; free it
// with rule_string_free.
static rule_string_t config_or(const char *key, const char *fallback) {
    rule_string_t name, value;
    rule_string_set(&name, key); // a view of `key`: nothing to free
    if (!mailcall_rule_config_get(&name, &value)) rule_string_dup(&value, fallback);
    return value;
}

// `text` folded by the host (`mailcall:rule/text@0.2.0`): lower case,
// full-width letters as ASCII, so "Call-Me" and "ＣＡＬＬ－ＭＥ" compare alike.
static rule_string_t fold(rule_string_t text) {
    rule_string_t folded;
    mailcall_rule_text_fold(&text, &folded);
    return folded;
}

static bool contains(rule_string_t text, rule_string_t part) {
    for (size_t at = 0; at + part.len <= text.len; at++)
        if (memcmp(text.ptr + at, part.ptr, part.len) == 0) return true;
    return false;
}

void exports_rule_resolve(rule_envelope_t *envelope, rule_message_t *message, rule_decision_t *ret) {
    rule_string_t keyword = config_or("keyword", "CALL-ME");
    rule_string_t number = config_or("number", "05012345678");
    ret->tag = MAILCALL_RULE_TYPES_DECISION_NO_OPINION;

    if (message->subject.is_some) {
        rule_string_t subject = fold(message->subject.val), folded_keyword = fold(keyword);
        if (contains(subject, folded_keyword)) {
            // The reason: "the Subject mentions " and the keyword.
            const char *because = "the Subject mentions ";
            size_t n = strlen(because);
            rule_string_t reason = {malloc(n + keyword.len), n + keyword.len};
            memcpy(reason.ptr, because, n);
            memcpy(reason.ptr + n, keyword.ptr, keyword.len);
            ret->tag = MAILCALL_RULE_TYPES_DECISION_DIAL;
            ret->val.dial = (mailcall_rule_types_dial_t){number, reason};
            number = (rule_string_t){NULL, 0}; // the decision owns it now
        }
        rule_string_free(&subject);
        rule_string_free(&folded_keyword);
    }

    rule_string_free(&keyword);
    rule_string_free(&number);
    rule_envelope_free(envelope);
    rule_message_free(message);
}

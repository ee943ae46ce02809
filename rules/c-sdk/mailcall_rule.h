/* The C rule SDK: the bindings of the rule world (rule.h, generated from
 * wit/rule.wit by wit-bindgen) and the few string helpers every C rule
 * needs. The logic itself (numbers, folding, table searches) is the host's.
 *
 * A rule_string_t is a pointer and a length in bytes of UTF-8, not
 * NUL-terminated. Views (lit, strip, lstrip) point into other strings and
 * are never freed; concat allocates, and its result is freed with
 * rule_string_free or handed to the host in a decision. */

#ifndef MAILCALL_RULE_H
#define MAILCALL_RULE_H

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "rule.h"

/* A view of a C string (nothing to free). */
static inline rule_string_t lit(const char *s) {
    rule_string_t view;
    rule_string_set(&view, s);
    return view;
}

/* The `count` strings given, joined into one newly allocated string. */
static inline rule_string_t concat(int count, ...) {
    va_list args;
    size_t len = 0;
    va_start(args, count);
    for (int i = 0; i < count; i++) len += va_arg(args, rule_string_t).len;
    va_end(args);
    rule_string_t joined = {NULL, 0};
    if (len == 0) return joined;
    joined.ptr = malloc(len);
    va_start(args, count);
    for (int i = 0; i < count; i++) {
        rule_string_t piece = va_arg(args, rule_string_t);
        memcpy(joined.ptr + joined.len, piece.ptr, piece.len);
        joined.len += piece.len;
    }
    va_end(args);
    return joined;
}

/* `text` without its leading ASCII spaces (a view into it). */
static inline rule_string_t lstrip(rule_string_t text) {
    while (text.len > 0 && text.ptr[0] == ' ') text.ptr++, text.len--;
    return text;
}

/* `text` without its leading and trailing ASCII spaces (a view into it). */
static inline rule_string_t strip(rule_string_t text) {
    text = lstrip(text);
    while (text.len > 0 && text.ptr[text.len - 1] == ' ') text.len--;
    return text;
}

/* Whether `text` starts with the C string `prefix`. */
static inline bool starts_with(rule_string_t text, const char *prefix) {
    size_t len = strlen(prefix);
    return text.len >= len && memcmp(text.ptr, prefix, len) == 0;
}

/* Whether `text` is the C string `other`. */
static inline bool equal(rule_string_t text, const char *other) {
    return text.len == strlen(other) && starts_with(text, other);
}

/* Whether two strings are the same. */
static inline bool same(rule_string_t a, rule_string_t b) {
    return a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0;
}

#endif

//! keyword-table (claim 4), in Zig: the same rule as rules/keyword-table
//! (Rust). Dials the number an operator's table gives for a keyword
//! (`KYOTOSITEN`, `京都支店`) found in the recipient address, a
//! human-written header or the body.
//!
//! The table is the configuration value `table` (default `keywords`); the
//! host searches it (`tables.search-keywords-in`). Places are tried in
//! order — RCPT TO, the human-written headers in message order, the body —
//! and the first that holds a keyword wins; each is named as a part of the
//! message (`mailcall_rule_types_part_t`), never sent back as text: the host
//! reads it itself.
//!
//! There is no Zig generator for WIT: scripts/build-zig-rule generates the
//! C bindings (wit-bindgen c), translates their header to Zig (`zig
//! translate-c`) as the module `rule`, and links this file with them.
//! Memory follows the C bindings: what the host returns is ours to free,
//! and so are `envelope` and `message`; the decision's strings must be
//! allocated with malloc (the bindings free them after the call).

const std = @import("std");
const c = @import("rule");

/// A panic (out of memory) traps: the host counts the call as failed. This
/// keeps the standard library's panic printer, and the WASI it needs, out.
pub const panic = std.debug.no_panic;

/// A view of a Zig string as a bindings string (nothing to free).
fn view(text: []const u8) c.rule_string_t {
    return .{ .ptr = @constCast(text.ptr), .len = text.len };
}

/// A bindings string as a Zig slice (no copy).
fn slice(text: c.rule_string_t) []const u8 {
    return if (text.len == 0) "" else text.ptr[0..text.len];
}

/// `parts` joined into one string allocated with malloc.
fn concat(parts: []const []const u8) c.rule_string_t {
    var len: usize = 0;
    for (parts) |part| len += part.len;
    if (len == 0) return .{};
    const joined: [*]u8 = @ptrCast(std.c.malloc(len) orelse @panic("out of memory"));
    var at: usize = 0;
    for (parts) |part| {
        @memcpy(joined[at..][0..part.len], part);
        at += part.len;
    }
    return .{ .ptr = joined, .len = len };
}

/// If the part `in` of the message mentions a keyword of `table`, sets
/// `ret` to dial its number for the reason "keyword {keyword} in {place}"
/// and returns true.
fn dialKeywordIn(table: c.rule_string_t, in: c.mailcall_rule_types_part_t, place: []const u8, ret: *c.rule_decision_t) bool {
    var table_arg = table;
    var part_arg = in;
    var match: c.mailcall_rule_tables_keyword_match_t = .{};
    if (!c.mailcall_rule_tables_search_keywords_in(&table_arg, &part_arg, &match)) return false;
    ret.tag = c.MAILCALL_RULE_TYPES_DECISION_DIAL;
    ret.val = .{ .dial = .{
        .number = match.number, // handed over: freed after the call
        .reason = concat(&.{ "keyword ", slice(match.keyword), " in ", place }),
    } };
    match.number = .{};
    c.mailcall_rule_tables_keyword_match_free(&match);
    return true;
}

/// Decides into `ret` (which starts as no-opinion).
fn decide(table: c.rule_string_t, message: *c.rule_message_t, ret: *c.rule_decision_t) void {
    if (dialKeywordIn(table, .{ .tag = c.MAILCALL_RULE_TYPES_PART_RCPT_TO }, "RCPT TO", ret)) return;
    for (0..message.headers.len) |i| {
        const header = &message.headers.ptr[i];
        // Never trace or identifier headers (Received, Message-ID, ...).
        if (!c.mailcall_rule_text_is_human_header(&header.name)) continue;
        var place = concat(&.{ "the ", slice(header.name), " header" });
        defer c.rule_string_free(&place);
        const value: c.mailcall_rule_types_part_t = .{
            .tag = c.MAILCALL_RULE_TYPES_PART_HEADER,
            .val = .{ .header = @intCast(i) },
        };
        if (dialKeywordIn(table, value, slice(place), ret)) return;
    }
    _ = dialKeywordIn(table, .{ .tag = c.MAILCALL_RULE_TYPES_PART_BODY }, "the message body", ret);
}

export fn exports_rule_resolve(envelope: *c.rule_envelope_t, message: *c.rule_message_t, ret: *c.rule_decision_t) void {
    ret.tag = c.MAILCALL_RULE_TYPES_DECISION_NO_OPINION;

    // The table's name: configured, or `keywords`.
    var key = view("table");
    var table: c.rule_string_t = .{};
    if (!c.mailcall_rule_config_get(&key, &table)) table = concat(&.{"keywords"});

    decide(table, message, ret);

    c.rule_string_free(&table);
    c.rule_envelope_free(envelope);
    c.rule_message_free(message);
}

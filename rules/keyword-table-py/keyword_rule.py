"""keyword-table, in Python: the same rule as rules/keyword-table (Rust).

An operator's table (configuration value `table`, default `keywords`) maps
keywords to numbers. The keyword is searched in RCPT TO, the human-written
headers (never trace or identifier headers) and the body, ignoring case and
full-width forms; ASCII keywords match whole words, others anywhere. The
first place that holds a keyword wins; in it, the keyword written first.
"""

import wit_world
from wit_world.imports import config, log, numbering, tables
from wit_world.imports.types import Decision_Dial, Decision_NoOpinion, Dial, LogLevel

# Trace and identifier headers: written by software, never searched.
MACHINE_HEADERS = {
    "received", "return-path", "message-id", "resent-message-id", "in-reply-to",
    "references", "date", "resent-date", "dkim-signature", "domainkey-signature",
    "authentication-results", "arc-seal", "arc-message-signature",
    "arc-authentication-results", "received-spf", "content-id", "content-type",
    "content-transfer-encoding", "content-disposition", "mime-version",
    "thread-index", "x-received", "x-google-dkim-signature",
    "x-ms-exchange-organization-network-message-id", "list-id", "list-unsubscribe",
}

DASHES = set("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u30fc\uff70\ufe58\ufe63\u2043")
SPACES = set("\u3000\u00a0\t\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a")


def fold_char(c: str) -> str:
    """Full-width ASCII to ASCII, Japanese dashes to '-', spaces to ' '."""
    code = ord(c)
    if 0xFF01 <= code <= 0xFF5E:
        return chr(code - 0xFEE0)
    if c in DASHES:
        return "-"
    if c in SPACES:
        return " "
    if c in "\u3002\uff61":
        return "."
    return c


def fold(text: str) -> str:
    # Plain ASCII without tabs folds to itself: skip the per-character work.
    if text.isascii() and "\t" not in text:
        return text.lower()
    return "".join(map(fold_char, text)).lower()


def is_word_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c == "_")


def find_keyword(keyword: str, folded_text: str) -> int:
    """Position of the first match of the folded keyword, or -1."""
    whole_word = keyword.isascii()
    start = folded_text.find(keyword)
    while start >= 0:
        end = start + len(keyword)
        before = folded_text[start - 1] if start > 0 else ""
        after = folded_text[end] if end < len(folded_text) else ""
        if not whole_word or not (before and is_word_char(before) or after and is_word_char(after)):
            return start
        start = folded_text.find(keyword, start + 1)
    return -1


def normalize(written: str, plan) -> str | None:
    """A number as an operator writes it, as digits in national form."""
    folded = "".join(map(fold_char, written.strip()))
    international = folded.startswith("+")
    digits = ""
    for c in folded[1:] if international else folded:
        if "0" <= c <= "9":
            digits += c
        elif c not in "-. ()":
            return None
    if not digits:
        return None
    if not international:
        return digits
    if digits.startswith(plan.country_code):
        national = digits[len(plan.country_code):]
        if national.startswith(plan.trunk_prefix):
            return national or None
        return plan.trunk_prefix + national
    return "00" + digits


class WitWorld(wit_world.WitWorld):
    def resolve(self, envelope, message):
        configured = config.get("table")
        table = "keywords" if configured is None else configured
        plan = numbering.plan()
        keywords = []
        for entry in tables.entries(table):
            number = normalize(entry.value, plan)
            if number is None:
                log.write(LogLevel.WARN, f"table {table}: {entry.value!r} is not a number; skipped")
                continue
            folded = fold(entry.key.strip())
            if folded:
                keywords.append((folded, entry.key, number))
        if not keywords:
            return Decision_NoOpinion()

        places = [("RCPT TO", envelope.rcpt_to)]
        places += [
            (f"the {header.name} header", header.value)
            for header in message.headers
            if header.name.lower() not in MACHINE_HEADERS
        ]
        places.append(("the message body", message.body_text))
        for place, text in places:
            folded_text = fold(text)
            hits = []
            for folded, key, number in keywords:
                at = find_keyword(folded, folded_text)
                if at >= 0:
                    hits.append((at, -len(key.encode()), key, number))
            if hits:
                _, _, key, number = min(hits, key=lambda hit: (hit[0], hit[1]))
                return Decision_Dial(Dial(number=number, reason=f"keyword {key} in {place}"))
        return Decision_NoOpinion()

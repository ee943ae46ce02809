//! Text as people write it, in Japanese and English: folding (the rule
//! contract's `text.fold`), the keyword search of keyword tables, and which
//! header fields people write (`text.is-human-header`).

/// Folds one character to the form the searches compare: full-width ASCII
/// (`０`, `Ａ`, `（`) becomes ASCII, the many dash and prolonged-sound
/// characters used in Japanese text become `-`, and every kind of space
/// becomes a plain space. Every other character is returned as it is, so
/// folding never changes the number of characters.
pub fn fold_char(c: char) -> char {
    match c {
        // Full-width forms of the ASCII range.
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        // Hyphens, dashes, minus signs and the prolonged sound marks that
        // Japanese text uses between the groups of a phone number.
        '\u{2010}'..='\u{2015}'
        | '\u{2212}'
        | '\u{30FC}'
        | '\u{FF70}'
        | '\u{FE58}'
        | '\u{FE63}'
        | '\u{2043}' => '-',
        '\u{3000}' | '\u{00A0}' | '\t' | '\u{2002}'..='\u{200A}' => ' ',
        '\u{3002}' | '\u{FF61}' => '.',
        _ => c,
    }
}

/// [`fold_char`] over a whole text, then lower-cased: `text.fold`.
pub fn fold(text: &str) -> String {
    text.chars()
        .map(fold_char)
        .flat_map(char::to_lowercase)
        .collect()
}

/// An ASCII word ends where a character that is not an ASCII letter, digit
/// or underscore begins (or the text ends).
pub(super) fn is_word_boundary(neighbour: Option<char>) -> bool {
    neighbour.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
}

/// Trace and identifier fields: written by software, full of digits (dates,
/// ids, hashes) that must never be read as a phone number or a keyword.
const MACHINE_HEADERS: &[&str] = &[
    "received",
    "return-path",
    "message-id",
    "resent-message-id",
    "in-reply-to",
    "references",
    "date",
    "resent-date",
    "dkim-signature",
    "domainkey-signature",
    "authentication-results",
    "arc-seal",
    "arc-message-signature",
    "arc-authentication-results",
    "received-spf",
    "content-id",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "mime-version",
    "thread-index",
    "x-received",
    "x-google-dkim-signature",
    "x-ms-exchange-organization-network-message-id",
    "list-id",
    "list-unsubscribe",
];

/// True for fields people write (To, Cc, Subject, Comments, ...), false for
/// trace and identifier fields (Received, Message-ID, References, Date,
/// DKIM-Signature, MIME structure, ...).
pub fn is_human_header(name: &str) -> bool {
    !MACHINE_HEADERS
        .iter()
        .any(|machine| machine.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_keeps_the_character_count() {
        let text = "０５０－１２３４ー５６７８\u{3000}（）";
        assert_eq!(text.chars().count(), text.chars().map(fold_char).count());
        let folded: String = text.chars().map(fold_char).collect();
        assert_eq!(folded, "050-1234-5678 ()");
    }

    #[test]
    fn trace_and_identifier_headers_are_not_human() {
        for name in [
            "Received",
            "MESSAGE-ID",
            "References",
            "In-Reply-To",
            "DKIM-Signature",
        ] {
            assert!(!is_human_header(name), "{name}");
        }
        for name in ["To", "cc", "Subject", "Comments", "X-Branch"] {
            assert!(is_human_header(name), "{name}");
        }
    }
}

//! The substitution expression of an NAPTR record (RFC 3402 §3.2):
//! `delim ERE delim replacement delim flags`, e.g.
//! `!^\+81(.*)$!sip:\1@b.example!`, applied to ENUM's application unique
//! string (the E.164 number).
//!
//! The ERE goes to the `regex` crate unchanged but for escaped delimiters:
//! the two agree on the syntax ENUM records use (anchors, groups, classes,
//! `\` escapes), though `regex` takes the leftmost-first match where POSIX
//! takes the leftmost-longest.

use regex::{Regex, RegexBuilder};

/// The compiled size a record's pattern may take.
const PATTERN_SIZE_LIMIT: usize = 256 * 1024;

/// Why a substitution expression cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstitutionError {
    #[error("empty expression")]
    Empty,
    /// RFC 3402 §3.2: a digit or the flag `i` would make it ambiguous.
    #[error("{0:?} cannot be the delimiter")]
    Delimiter(char),
    #[error("expected three delimiters")]
    Unterminated,
    #[error("unknown flags {0:?}")]
    Flags(String),
    #[error("bad regular expression: {0}")]
    Pattern(String),
    #[error("\\{0} names no group of the expression")]
    NoSuchGroup(usize),
}

/// One piece of the replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// `\1`..`\9`: what that group of the ERE matched.
    Group(usize),
}

/// A parsed substitution expression.
#[derive(Debug, Clone)]
pub struct Substitution {
    pattern: Regex,
    replacement: Vec<Piece>,
}

impl Substitution {
    pub fn parse(expression: &str) -> Result<Substitution, SubstitutionError> {
        let mut chars = expression.chars();
        let delimiter = chars.next().ok_or(SubstitutionError::Empty)?;
        // RFC 3402 §3.2: any character but a backref digit or a flag; a
        // backslash could never be escaped.
        if matches!(delimiter, '1'..='9' | 'i' | '\\') {
            return Err(SubstitutionError::Delimiter(delimiter));
        }
        let [ere, replacement, flags] = split(chars.as_str(), delimiter)?;
        let case_insensitive = match flags.as_str() {
            "" => false,
            "i" => true,
            _ => return Err(SubstitutionError::Flags(flags)),
        };
        let pattern = RegexBuilder::new(&pattern_of(&ere, delimiter))
            .case_insensitive(case_insensitive)
            // From the network: an ENUM pattern is a few dozen bytes; a
            // huge one is refused rather than compiled (default 10 MiB).
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map_err(|error| SubstitutionError::Pattern(error.to_string()))?;
        let replacement = pieces_of(&replacement);
        let groups = pattern.captures_len() - 1;
        if let Some(&Piece::Group(n)) = replacement
            .iter()
            .find(|piece| matches!(piece, Piece::Group(n) if *n > groups))
        {
            return Err(SubstitutionError::NoSuchGroup(n));
        }
        Ok(Substitution {
            pattern,
            replacement,
        })
    }

    /// The subject with the ERE's first match replaced, or None if it does
    /// not match (the record does not apply).
    pub fn apply(&self, subject: &str) -> Option<String> {
        let captures = self.pattern.captures(subject)?;
        let matched = captures.get(0)?;
        let mut out = subject[..matched.start()].to_string();
        for piece in &self.replacement {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Group(n) => out.push_str(captures.get(*n).map_or("", |g| g.as_str())),
            }
        }
        out.push_str(&subject[matched.end()..]);
        Some(out)
    }
}

/// The ERE, the replacement and the flags: what lies between and after
/// the unescaped delimiters, escapes kept as they are.
fn split(body: &str, delimiter: char) -> Result<[String; 3], SubstitutionError> {
    let mut fields = vec![String::new()];
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        let last = fields.len() - 1;
        if fields.len() == 3 {
            fields[last].push(c);
        } else if c == delimiter {
            fields.push(String::new());
        } else if c == '\\' {
            let escaped = chars.next().ok_or(SubstitutionError::Unterminated)?;
            fields[last].push(c);
            fields[last].push(escaped);
        } else {
            fields[last].push(c);
        }
    }
    <[String; 3]>::try_from(fields).map_err(|_| SubstitutionError::Unterminated)
}

/// The ERE as `regex` takes it: `\delim` is the delimiter, literally;
/// every other escape means to `regex` what it means in an ERE.
fn pattern_of(ere: &str, delimiter: char) -> String {
    let mut pattern = String::new();
    let mut chars = ere.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            pattern.push(c);
            continue;
        }
        // `split` left no backslash without its escaped character.
        let escaped = chars.next().unwrap_or('\\');
        if escaped == delimiter {
            pattern.push_str(&regex::escape(&escaped.to_string()));
        } else {
            pattern.push(c);
            pattern.push(escaped);
        }
    }
    pattern
}

/// The replacement's text and back-references: `\1`..`\9` are groups,
/// `\c` is `c` (the delimiter, or a backslash).
fn pieces_of(replacement: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = replacement.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            text.push(c);
            continue;
        }
        match chars.next().unwrap_or('\\') {
            digit @ '1'..='9' => {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Group(digit as usize - '0' as usize));
            }
            escaped => text.push(escaped),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn substitute(expression: &str, subject: &str) -> Option<String> {
        Substitution::parse(expression)
            .expect("a valid expression")
            .apply(subject)
    }

    #[test]
    fn back_references_take_the_groups() {
        assert_eq!(
            substitute(r"!^\+81(.*)$!sip:\1@b.example.test!", "+815022220000").as_deref(),
            Some("sip:5022220000@b.example.test")
        );
        assert_eq!(
            substitute(r"!^\+(\d\d)(\d+)$!sip:\2;cc=\1@x!", "+815022220000").as_deref(),
            Some("sip:5022220000;cc=81@x")
        );
        // The whole subject when the ERE matches all of it.
        assert_eq!(
            substitute("!^.*$!sip:info@example.test!", "+81").as_deref(),
            Some("sip:info@example.test")
        );
    }

    #[test]
    fn other_delimiters_and_escaped_ones() {
        assert_eq!(
            substitute(r"/^\+(.*)$/sip:\1@b.example.test/", "+4930").as_deref(),
            Some("sip:4930@b.example.test")
        );
        // `\#` in the ERE is a literal `#`, in the replacement too.
        assert_eq!(
            substitute(r"#^\+1\#(.*)$#sip:\1\#x@b#", "+1#22").as_deref(),
            Some("sip:22#x@b")
        );
        // A delimiter that is special in an ERE, escaped, is literal.
        assert_eq!(
            substitute(r"|^\+(1\|2)$|sip:\1@b|", "+1|2").as_deref(),
            Some("sip:1|2@b")
        );
    }

    #[test]
    fn the_i_flag_ignores_case() {
        assert_eq!(substitute("!^abc$!sip:x@b!", "ABC"), None);
        assert_eq!(
            substitute("!^abc$!sip:x@b!i", "ABC").as_deref(),
            Some("sip:x@b")
        );
    }

    #[test]
    fn no_match_gives_nothing() {
        assert_eq!(substitute(r"!^\+49(.*)$!sip:\1@b!", "+815022220000"), None);
    }

    #[test]
    fn invalid_expressions_are_refused() {
        let error = |expression: &str| Substitution::parse(expression).unwrap_err();
        assert_eq!(error(""), SubstitutionError::Empty);
        assert_eq!(error("1a1b1"), SubstitutionError::Delimiter('1'));
        assert_eq!(error("!^a$!sip:x@b"), SubstitutionError::Unterminated);
        assert_eq!(
            error("!^a$!sip:x@b!g"),
            SubstitutionError::Flags("g".into())
        );
        assert!(matches!(
            error(r"!^(a$!sip:\1@b!"),
            SubstitutionError::Pattern(_)
        ));
        assert_eq!(
            error(r"!^(a)$!sip:\2@b!"),
            SubstitutionError::NoSuchGroup(2)
        );
    }
}

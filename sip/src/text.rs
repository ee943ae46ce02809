//! Header text cut at ASCII separators (`;`, `,`, `=`, `<`…) with memchr.
//! A SIP message's values are short and each is cut several times (the
//! screen, then the call's identifiers, then the answer's copies):
//! `str::split(char)` and its kin, which search for any `char`, cost the
//! callee about a sixth of its instructions there.

/// The parts of `text` between each `separator` (an ASCII byte), as
/// `text.split(separator as char)`.
pub(crate) fn split(text: &str, separator: u8) -> Split<'_> {
    Split {
        rest: Some(text),
        separator,
    }
}

pub(crate) struct Split<'a> {
    rest: Option<&'a str>,
    separator: u8,
}

impl<'a> Iterator for Split<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match find(rest, self.separator) {
            // An ASCII byte is a whole char: both sides stay UTF-8.
            Some(at) => {
                self.rest = Some(&rest[at + 1..]);
                Some(&rest[..at])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// Where `separator` (an ASCII byte) first is in `text`.
pub(crate) fn find(text: &str, separator: u8) -> Option<usize> {
    memchr::memchr(separator, text.as_bytes())
}

/// As `text.split_once(separator as char)`.
pub(crate) fn split_once(text: &str, separator: u8) -> Option<(&str, &str)> {
    let at = find(text, separator)?;
    Some((&text[..at], &text[at + 1..]))
}

/// As `text.rsplit_once(separator as char)`.
pub(crate) fn rsplit_once(text: &str, separator: u8) -> Option<(&str, &str)> {
    let at = memchr::memrchr(separator, text.as_bytes())?;
    Some((&text[..at], &text[at + 1..]))
}

/// The words of `text` between runs of SP and HTAB (LWS, once unfolded).
pub(crate) fn words(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        match memchr::memchr2(b' ', b'\t', rest.as_bytes()) {
            Some(0) => rest = &rest[1..],
            Some(at) => {
                let word = &rest[..at];
                rest = &rest[at + 1..];
                return Some(word);
            }
            None => return Some(std::mem::take(&mut rest)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_as_the_standard_library_does() {
        for text in ["", ";", "a", "a;b", ";a;;b;", "é;ü=ß;", "sip:x@y;tag=1;lr"] {
            assert_eq!(
                split(text, b';').collect::<Vec<_>>(),
                text.split(';').collect::<Vec<_>>()
            );
            assert_eq!(split_once(text, b'='), text.split_once('='));
            assert_eq!(rsplit_once(text, b';'), text.rsplit_once(';'));
            assert_eq!(find(text, b';'), text.find(';'));
        }
        let words: Vec<&str> = words(" SIP/2.0/UDP \t host:5060 ").collect();
        assert_eq!(words, ["SIP/2.0/UDP", "host:5060"]);
    }
}

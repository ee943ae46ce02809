//! Text folding and keyword search, as people write in Japanese and English.

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

/// [`fold_char`] over a whole text, then lower-cased.
pub fn fold(text: &str) -> String {
    text.chars()
        .map(fold_char)
        .flat_map(char::to_lowercase)
        .collect()
}

/// A keyword prepared for repeated searches.
#[derive(Debug, Clone)]
pub struct Keyword {
    folded: String,
    whole_word: bool,
}

impl Keyword {
    /// Prepares `keyword`: ASCII keywords (`KYOTOSITEN`) match as whole
    /// words; keywords in scripts written without spaces (`京都支店`) match as
    /// substrings. Matching ignores case and full-width forms. `None` for a
    /// keyword that is empty after trimming.
    pub fn new(keyword: &str) -> Option<Self> {
        let folded = fold(keyword.trim());
        if folded.is_empty() {
            return None;
        }
        let whole_word = folded.is_ascii();
        Some(Keyword { folded, whole_word })
    }

    /// The byte offset in `folded_text` (a text passed through [`fold`]) of
    /// the first match of this keyword.
    pub fn find_in_folded(&self, folded_text: &str) -> Option<usize> {
        let mut from = 0;
        while let Some(found) = folded_text[from..].find(&self.folded) {
            let start = from + found;
            let end = start + self.folded.len();
            if !self.whole_word
                || (is_word_boundary(folded_text[..start].chars().next_back())
                    && is_word_boundary(folded_text[end..].chars().next()))
            {
                return Some(start);
            }
            from = start
                + folded_text[start..]
                    .chars()
                    .next()
                    .map_or(1, char::len_utf8);
        }
        None
    }

    /// The byte offset in the folded form of `text` of the first match.
    pub fn find(&self, text: &str) -> Option<usize> {
        self.find_in_folded(&fold(text))
    }
}

/// An ASCII word ends where a character that is not an ASCII letter, digit
/// or underscore begins (or the text ends).
fn is_word_boundary(neighbour: Option<char>) -> bool {
    neighbour.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finds(keyword: &str, text: &str) -> bool {
        Keyword::new(keyword).unwrap().find(text).is_some()
    }

    #[test]
    fn ascii_keywords_match_whole_words_in_any_case() {
        assert!(finds("KYOTOSITEN", "kyotositen@example.com"));
        assert!(finds("KYOTOSITEN", "To the Kyotositen office"));
        assert!(finds("KYOTOSITEN", "attn: KYOTOSITEN-sales"));
        assert!(!finds("KYOTOSITEN", "xkyotositen"));
        assert!(!finds("KYOTOSITEN", "kyotositen2"));
        assert!(!finds("SITE", "kyotositen"));
    }

    #[test]
    fn full_width_letters_fold_to_ascii() {
        assert!(finds("KYOTOSITEN", "宛先：ＫＹＯＴＯＳＩＴＥＮ様"));
    }

    #[test]
    fn keywords_without_spaces_match_as_substrings() {
        assert!(finds("京都支店", "株式会社ムラテック京都支店御中"));
        assert!(!finds("京都支店", "大阪支店御中"));
    }

    #[test]
    fn a_later_whole_word_match_is_found_after_an_embedded_one() {
        let keyword = Keyword::new("osaka").unwrap();
        assert_eq!(keyword.find("osakasiten osaka"), Some(11));
    }

    #[test]
    fn empty_keywords_are_refused() {
        assert!(Keyword::new("  ").is_none());
    }

    #[test]
    fn folding_keeps_the_character_count() {
        let text = "０５０－１２３４ー５６７８\u{3000}（）";
        assert_eq!(text.chars().count(), text.chars().map(fold_char).count());
        let folded: String = text.chars().map(fold_char).collect();
        assert_eq!(folded, "050-1234-5678 ()");
    }
}

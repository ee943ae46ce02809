//! Keyword tables searched in the host (the patent's claim 4, the rule
//! contract's `tables.search-keywords`): every keyword of a table in one
//! Aho-Corasick automaton over the folded keywords, built once per version
//! of the table, so a search costs time linear in the text whatever the
//! table's size, and the table is never copied into a rule.

use aho_corasick::{AhoCorasick, MatchKind};

use super::text::{fold, fold_char, is_word_boundary};

/// One keyword of the index.
#[derive(Debug, Clone)]
struct Keyword {
    /// As the operator wrote it, for the decision's reason.
    written: String,
    value: String,
    /// The value as a number in national form.
    number: String,
    /// ASCII keywords match as whole words only.
    whole_word: bool,
}

/// The keywords of one table whose values are numbers.
#[derive(Debug, Clone)]
pub struct KeywordIndex {
    /// `None` when the table has no usable keyword.
    automaton: Option<AhoCorasick>,
    /// By pattern id: the table's usable entries in file order.
    keywords: Vec<Keyword>,
}

/// The keyword a text mentions first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeywordMatch {
    pub keyword: String,
    pub value: String,
    pub number: String,
    /// Where the keyword starts, in characters of the searched text.
    pub offset: usize,
}

impl KeywordIndex {
    /// Indexes `entries` (keyword, value as written, value as a number);
    /// keywords that are empty once trimmed are left out.
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str, String)>) -> KeywordIndex {
        let mut keywords = Vec::new();
        let mut patterns = Vec::new();
        for (key, value, number) in entries {
            let folded = fold(key.trim());
            if folded.is_empty() {
                continue;
            }
            keywords.push(Keyword {
                written: key.to_string(),
                value: value.to_string(),
                number,
                whole_word: folded.is_ascii(),
            });
            patterns.push(folded);
        }
        // Overlapping matches need the standard match kind: every keyword
        // at every place is reported, and the earliest, longest one chosen.
        let automaton = (!patterns.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::Standard)
                    .build(&patterns)
                    .ok()
            })
            .flatten();
        KeywordIndex {
            automaton,
            keywords,
        }
    }

    /// The keyword that starts first in `text`; of two that start at the
    /// same place the longer (as written), of equal ones the first in the
    /// table.
    pub fn search(&self, text: &str) -> Option<KeywordMatch> {
        let automaton = self.automaton.as_ref()?;
        let folded = fold(text);
        let mut best: Option<(usize, usize)> = None; // (start, pattern)
        for found in automaton.find_overlapping_iter(&folded) {
            let pattern = found.pattern().as_usize();
            let keyword = &self.keywords[pattern];
            if keyword.whole_word
                && !(is_word_boundary(folded[..found.start()].chars().next_back())
                    && is_word_boundary(folded[found.end()..].chars().next()))
            {
                continue;
            }
            let better = match best {
                None => true,
                Some((start, other)) => {
                    let other_len = self.keywords[other].written.len();
                    (found.start(), usize::MAX - keyword.written.len(), pattern)
                        < (start, usize::MAX - other_len, other)
                }
            };
            if better {
                best = Some((found.start(), pattern));
            }
        }
        let (start, pattern) = best?;
        let keyword = &self.keywords[pattern];
        Some(KeywordMatch {
            keyword: keyword.written.clone(),
            value: keyword.value.clone(),
            number: keyword.number.clone(),
            offset: char_offset(text, start),
        })
    }
}

/// The character of `text` whose folded form holds byte `folded_at` of
/// `fold(text)` (lower-casing may lengthen a character).
fn char_offset(text: &str, folded_at: usize) -> usize {
    let mut folded_len = 0;
    for (index, c) in text.chars().enumerate() {
        folded_len += fold_char(c)
            .to_lowercase()
            .map(char::len_utf8)
            .sum::<usize>();
        if folded_len > folded_at {
            return index;
        }
    }
    text.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(keys: &[&str]) -> KeywordIndex {
        KeywordIndex::new(
            keys.iter()
                .enumerate()
                .map(|(i, key)| (*key, "050", format!("0500000000{i}"))),
        )
    }

    fn finds(keyword: &str, text: &str) -> bool {
        index(&[keyword]).search(text).is_some()
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
        let found = index(&["osaka"]).search("osakasiten osaka").unwrap();
        assert_eq!(found.offset, 11);
    }

    #[test]
    fn the_earliest_then_the_longest_keyword_wins() {
        let keys = ["TOKYO", "OSAKA", "OSAKA SHISHA"];
        let found = index(&keys).search("to osaka shisha, then tokyo").unwrap();
        assert_eq!(found.keyword, "OSAKA SHISHA");
        assert_eq!(found.offset, 3);
        assert_eq!(index(&keys).search("tokyo osaka").unwrap().keyword, "TOKYO");
    }

    #[test]
    fn offsets_count_characters_of_the_text() {
        let found = index(&["京都支店"]).search("ＡＢ京都支店").unwrap();
        assert_eq!(found.offset, 2);
        // 'İ' lower-cases to two characters: the offset still counts the
        // text's own.
        let found = index(&["kyoto"]).search("İİ kyoto").unwrap();
        assert_eq!(found.offset, 3);
    }

    #[test]
    fn empty_keywords_and_tables_find_nothing() {
        assert!(index(&["  "]).search("  ").is_none());
        assert!(index(&[]).search("anything").is_none());
    }
}

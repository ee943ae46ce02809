//! Phone numbers of the numbering plan, as people write them: the rule
//! contract's `numbers.find-all`, `find-first` and `normalize`.
//!
//! A number is one of the plan's prefixes (`050`, `080`) followed by the
//! rest of its digits (11 in all for Japan's IP phones). People write it
//! with hyphens, spaces, dots or parentheses between the groups, with
//! full-width digits and Japanese dashes, or in international form with the
//! country code (`+81 50-1234-5678`, `+81 (0)50 1234 5678`). The search is
//! strict about what is *not* a number:
//! - a digit run longer than a number (an order id that contains one), or a
//!   number glued by `-` or `.` to more digits (`12-050-1234-5678`);
//! - too few digits (`050-1234-567`);
//! - a number whose first group is not exactly a prefix when it is written
//!   in groups (`0800-123-4567` is a toll-free number, not an `080` one).

use super::bindings::mailcall::rule::types::NumberingPlan;
use super::text::fold_char;

/// A number found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The number in national form, digits only (`05012345678`).
    pub number: String,
    /// The number as it was written in the text.
    pub written: String,
    /// Where the written form starts, in characters from the text's start.
    pub char_offset: usize,
}

/// Every number of `plan` written in `text`, in text order.
pub fn find_all(text: &str, plan: &NumberingPlan) -> Vec<Found> {
    Scanner::new(text, plan).collect()
}

/// The first number of `plan` written in `text`.
pub fn find_first(text: &str, plan: &NumberingPlan) -> Option<Found> {
    Scanner::new(text, plan).next()
}

/// Normalizes a number an operator wrote in a table (`050-1234-5678`,
/// `+81 50 1234 5678`, `０５０…`) to digits in national form. Unlike the
/// search, it does not require the plan's prefixes: the operator may name
/// any number. `None` if the text holds anything but a number.
pub fn normalize(written: &str, plan: &NumberingPlan) -> Option<String> {
    let folded: String = written.trim().chars().map(fold_char).collect();
    let (international, rest) = match folded.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, folded.as_str()),
    };
    let mut digits = String::new();
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            '-' | '.' | ' ' | '(' | ')' => {}
            _ => return None,
        }
    }
    if digits.is_empty() {
        return None;
    }
    if !international {
        return Some(digits);
    }
    match digits.strip_prefix(plan.country_code.as_str()) {
        // `+81 (0)50…` keeps the trunk prefix in parentheses.
        Some(national) if national.starts_with(plan.trunk_prefix.as_str()) => {
            Some(national.to_string()).filter(|n| !n.is_empty())
        }
        Some(national) => Some(format!("{}{national}", plan.trunk_prefix)),
        // Another country: keep the international form the SIP side can
        // route (`+` is dropped, as numbers are digits only; `00` is the
        // international call prefix).
        None => Some(format!("00{digits}")),
    }
}

/// Separators allowed between the digit groups of one number.
fn is_separator(c: char) -> bool {
    matches!(c, '-' | '.' | ' ' | '(' | ')')
}

/// Separators that glue digits into one token: a number followed by `-5`
/// or preceded by `12-` is part of something longer.
fn is_tight_separator(c: char) -> bool {
    matches!(c, '-' | '.')
}

/// The longest run of separators between two groups (`) - (` is four).
const MAX_SEPARATOR_RUN: usize = 4;

/// Stands for every character that folds to something outside ASCII: none
/// of them is a digit or a separator.
const NOT_ASCII: u8 = 0x80;

/// Scans one character per byte: the text folded (full-width digits,
/// Japanese dashes) and reduced to ASCII, so positions count characters and
/// a 10 KB text costs 10 KB of memory, not 80.
struct Scanner<'a> {
    text: &'a str,
    folded: Vec<u8>,
    plan: &'a NumberingPlan,
    position: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str, plan: &'a NumberingPlan) -> Self {
        let folded = text
            .chars()
            .map(|c| {
                let c = fold_char(c);
                if c.is_ascii() {
                    c as u8
                } else {
                    NOT_ASCII
                }
            })
            .collect();
        Scanner {
            text,
            folded,
            plan,
            position: 0,
        }
    }

    fn at(&self, index: usize) -> Option<char> {
        self.folded.get(index).map(|&b| b as char)
    }

    fn is_digit_at(&self, index: usize) -> bool {
        self.at(index).is_some_and(|c| c.is_ascii_digit())
    }

    /// True when a number may start at `index`: not inside a digit run and
    /// not glued to digits before it.
    fn starts_token(&self, index: usize) -> bool {
        if index == 0 {
            return true;
        }
        let before = self.folded[index - 1] as char;
        if before.is_ascii_digit() || before == '+' {
            return false;
        }
        if is_tight_separator(before) && index >= 2 && self.is_digit_at(index - 2) {
            return false;
        }
        !self.follows_country_code(index)
    }

    /// True when the digits at `index` follow an international prefix of
    /// another country (`+1 050…`): they belong to that foreign number.
    fn follows_country_code(&self, index: usize) -> bool {
        let mut code_end = index;
        while code_end > 0 && is_separator(self.folded[code_end - 1] as char) {
            code_end -= 1;
        }
        let mut code_start = code_end;
        while code_start > 0 && self.folded[code_start - 1].is_ascii_digit() {
            code_start -= 1;
        }
        code_start < code_end && code_start > 0 && self.folded[code_start - 1] == b'+'
    }

    /// True when a number may end just before `index`: not followed by more
    /// digits, directly or glued by `-`/`.`.
    fn ends_token(&self, index: usize) -> bool {
        match self.at(index) {
            None => true,
            Some(c) if c.is_ascii_digit() => false,
            Some(c) if is_tight_separator(c) => !self.is_digit_at(index + 1),
            Some(_) => true,
        }
    }

    /// Skips a run of separators starting at `index` that is followed by a
    /// digit; returns the index of that digit.
    fn skip_separators(&self, index: usize) -> Option<usize> {
        let mut next = index;
        while next < self.folded.len() && is_separator(self.folded[next] as char) {
            next += 1;
            if next - index > MAX_SEPARATOR_RUN {
                return None;
            }
        }
        (next > index && self.is_digit_at(next)).then_some(next)
    }

    /// Reads `count` digits in groups from `index`. Returns the digits, the
    /// length of the first group, and the index just after the last digit.
    fn read_groups(&self, mut index: usize, count: usize) -> Option<(String, usize, usize)> {
        let mut digits = String::with_capacity(count);
        let mut first_group = None;
        loop {
            if self.is_digit_at(index) {
                digits.push(self.folded[index] as char);
                index += 1;
                if digits.len() == count {
                    let first_group = first_group.unwrap_or(count);
                    return Some((digits, first_group, index));
                }
            } else {
                first_group.get_or_insert(digits.len());
                index = self.skip_separators(index)?;
            }
        }
    }

    /// Matches a national number (`050-1234-5678`, `(050) 1234 5678`) whose
    /// digits, trunk prefix included, begin at `index`.
    fn national_at(&self, index: usize) -> Option<(String, usize)> {
        let (digits, first_group, end) = self.read_groups(index, self.plan.digits as usize)?;
        let prefix_ok = self.plan.prefixes.iter().any(|prefix| {
            !prefix.is_empty()
                && digits.starts_with(prefix.as_str())
                && (first_group == digits.len() || first_group == prefix.len())
        });
        (prefix_ok && self.ends_token(end)).then_some((digits, end))
    }

    /// Matches the international form (`+81 50-1234-5678`,
    /// `+81 (0)50 1234 5678`, `+81-050-1234-5678`) with `+` at `index`.
    fn international_at(&self, index: usize) -> Option<(String, usize)> {
        let country = &self.plan.country_code;
        if country.is_empty() {
            return None;
        }
        let mut next = index + 1;
        for expected in country.chars() {
            if self.at(next) != Some(expected) {
                return None;
            }
            next += 1;
        }
        let mut start = if self.is_digit_at(next) {
            next
        } else {
            self.skip_separators(next)?
        };
        // `(0)`: the trunk prefix in parentheses, written to show how the
        // number is dialled nationally.
        let trunk = self.plan.trunk_prefix.as_bytes();
        if !trunk.is_empty()
            && self.at(start.wrapping_sub(1)) == Some('(')
            && self.folded.get(start..start + trunk.len()) == Some(trunk)
            && self.at(start + trunk.len()) == Some(')')
        {
            let after = start + trunk.len() + 1;
            start = if self.is_digit_at(after) {
                after
            } else {
                self.skip_separators(after)?
            };
        }
        self.significant_at(start)
            .or_else(|| self.national_at(start))
    }

    /// Matches a national significant number (the national number without
    /// its trunk prefix: `50-1234-5678`) at `index`.
    fn significant_at(&self, index: usize) -> Option<(String, usize)> {
        let trunk = &self.plan.trunk_prefix;
        let count = (self.plan.digits as usize).checked_sub(trunk.len())?;
        let (digits, first_group, end) = self.read_groups(index, count)?;
        let prefix_ok = self.plan.prefixes.iter().any(|prefix| {
            let significant = prefix.strip_prefix(trunk.as_str()).unwrap_or(prefix);
            !significant.is_empty()
                && digits.starts_with(significant)
                && (first_group == digits.len() || first_group == significant.len())
        });
        (prefix_ok && self.ends_token(end)).then(|| (format!("{trunk}{digits}"), end))
    }

    /// Tries to match a number starting at `index`.
    fn match_at(&self, index: usize) -> Option<(String, usize)> {
        if !self.starts_token(index) {
            return None;
        }
        match self.folded[index] as char {
            '+' => self.international_at(index),
            '(' if self.is_digit_at(index + 1) => self.national_at(index + 1),
            c if c.is_ascii_digit() => self.national_at(index),
            _ => None,
        }
    }
}

impl Iterator for Scanner<'_> {
    type Item = Found;

    fn next(&mut self) -> Option<Found> {
        while self.position < self.folded.len() {
            let start = self.position;
            if let Some((number, end)) = self.match_at(start) {
                self.position = end;
                return Some(Found {
                    number,
                    written: self.text.chars().skip(start).take(end - start).collect(),
                    char_offset: start,
                });
            }
            self.position += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn japan() -> NumberingPlan {
        NumberingPlan {
            country_code: "81".into(),
            trunk_prefix: "0".into(),
            prefixes: vec!["050".into(), "080".into()],
            digits: 11,
        }
    }

    fn first(text: &str) -> Option<String> {
        find_first(text, &japan()).map(|found| found.number)
    }

    #[test]
    fn numbers_with_separators() {
        for text in [
            "05012345678",
            "050-1234-5678",
            "050 1234 5678",
            "050.1234.5678",
            "(050) 1234-5678",
            "(050)1234-5678",
            "050(1234)5678",
            "050 - 1234 - 5678",
            "call 050-1234-5678.",
            "tel:050-1234-5678;",
            "（050）1234-5678",
        ] {
            assert_eq!(first(text).as_deref(), Some("05012345678"), "{text}");
        }
    }

    #[test]
    fn full_width_digits_and_japanese_dashes() {
        for text in [
            "０５０－１２３４－５６７８",
            "０５０ー１２３４ー５６７８",
            "050―1234―5678",
            "050‐1234‐5678",
            "050−1234−5678",
            "電話０５０（１２３４）５６７８まで",
        ] {
            assert_eq!(first(text).as_deref(), Some("05012345678"), "{text}");
        }
    }

    #[test]
    fn international_form() {
        for text in [
            "+81 50-1234-5678",
            "+81-50-1234-5678",
            "+815012345678",
            "+81 (0)50 1234 5678",
            "+81(0)50-1234-5678",
            "+81 050-1234-5678",
            "＋８１ ５０－１２３４－５６７８",
        ] {
            assert_eq!(first(text).as_deref(), Some("05012345678"), "{text}");
        }
        assert_eq!(first("+81 80 0000 1111").as_deref(), Some("08000001111"));
    }

    #[test]
    fn other_countries_are_not_the_plan() {
        assert_eq!(first("+1 050-1234-5678"), None);
        assert_eq!(first("+44 50 1234 5678"), None);
    }

    #[test]
    fn too_few_or_too_many_digits() {
        assert_eq!(first("050-1234-567"), None);
        assert_eq!(first("0501234567"), None);
        assert_eq!(first("050-1234-56789"), None);
        assert_eq!(first("050123456789"), None);
    }

    #[test]
    fn a_number_inside_a_longer_digit_run_is_not_a_number() {
        assert_eq!(first("order 2024050123456789"), None);
        assert_eq!(first("id 9905012345678"), None);
        assert_eq!(first("ref 12-050-1234-5678"), None);
        assert_eq!(first("ref 050-1234-5678-9"), None);
        assert_eq!(first("v1.050.1234.5678"), None);
    }

    #[test]
    fn dates_and_prices_are_not_numbers() {
        for text in [
            "2024-05-01",
            "2050-12-31",
            "Date: Tue, 05 Mar 2024 08:01:23 +0900",
            "¥50,800",
            "050,800,000円",
            "price 0.50 80.00",
            "12:05:01 2024/08/01",
        ] {
            assert_eq!(first(text), None, "{text}");
        }
    }

    #[test]
    fn toll_free_numbers_are_outside_the_plan() {
        for text in [
            "0120-123-456",
            "0800-123-4567",
            "0570-012-345",
            "03-1234-5678",
        ] {
            assert_eq!(first(text), None, "{text}");
        }
    }

    #[test]
    fn numbers_in_addresses() {
        assert_eq!(
            first("050-1234-5678@example.jp").as_deref(),
            Some("05012345678")
        );
        assert_eq!(
            first("05012345678@example.jp").as_deref(),
            Some("05012345678")
        );
        assert_eq!(
            first("info@050-1234-5678.example.jp").as_deref(),
            Some("05012345678")
        );
        assert_eq!(
            first("info@080.0000.1111.example.jp").as_deref(),
            Some("08000001111")
        );
    }

    #[test]
    fn every_number_is_found_in_order() {
        let found = find_all("A: 050-1111-2222, B: 080 3333 4444", &japan());
        let numbers: Vec<&str> = found.iter().map(|f| f.number.as_str()).collect();
        assert_eq!(numbers, ["05011112222", "08033334444"]);
        assert_eq!(found[1].written, "080 3333 4444");
        assert_eq!(found[0].char_offset, 3);
    }

    #[test]
    fn space_separated_neighbours_are_two_numbers() {
        let found = find_all("050 1111 2222 080 3333 4444", &japan());
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn normalizing_table_values() {
        let plan = japan();
        assert_eq!(
            normalize("050-1234-5678", &plan).as_deref(),
            Some("05012345678")
        );
        assert_eq!(
            normalize(" +81 50 1234 5678 ", &plan).as_deref(),
            Some("05012345678")
        );
        assert_eq!(
            normalize("+81 (0)50 1234 5678", &plan).as_deref(),
            Some("05012345678")
        );
        assert_eq!(
            normalize("０８０－００００－１１１１", &plan).as_deref(),
            Some("08000001111")
        );
        assert_eq!(
            normalize("+1 212 555 0100", &plan).as_deref(),
            Some("0012125550100")
        );
        assert_eq!(normalize("call me", &plan), None);
        assert_eq!(normalize("", &plan), None);
    }
}

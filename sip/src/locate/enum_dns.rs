//! ENUM (RFC 6116): a telephone number's SIP URI from the NAPTR records
//! at its E.164 form, reversed, under each configured suffix.

use hickory_resolver::TokioResolver;
use rsipstack::sip::{Scheme, Uri};

use super::substitution::Substitution;
use super::{naptr_records, why_none, Naptr};
use crate::ladder::{Label, Ladder};

/// The numbering plan that turns national numbers into E.164 ones.
#[derive(Debug, Clone)]
pub(crate) struct NumberingPlan {
    /// Without `+`, e.g. "81".
    pub country_code: String,
    /// What national numbers start with, e.g. "0".
    pub trunk_prefix: String,
}

impl NumberingPlan {
    /// The number in E.164 form (`+` and digits), or why it has none.
    /// `+…` is international already; `{trunk}…` is national and becomes
    /// `+{country code}…`; anything else (a short code, an extension) is
    /// left alone: guessing would query ENUM for someone else's number.
    pub(crate) fn e164(&self, number: &str) -> Result<String, String> {
        // Visual separators (RFC 3966 §5.1.1) are no part of the number.
        let compact: String = number
            .chars()
            .filter(|c| !matches!(c, '-' | '.' | ' ' | '(' | ')'))
            .collect();
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if let Some(digits) = compact.strip_prefix('+') {
            if all_digits(digits) {
                return Ok(compact);
            }
            return Err(format!("{number} is not an E.164 number"));
        }
        if !all_digits(&compact) {
            return Err(format!("{number} is not a telephone number"));
        }
        match compact.strip_prefix(self.trunk_prefix.as_str()) {
            Some(national) if !self.trunk_prefix.is_empty() && !self.country_code.is_empty() => {
                Ok(format!("+{}{national}", self.country_code))
            }
            _ => Err(format!(
                "{number} has neither + nor the trunk prefix {:?}",
                self.trunk_prefix
            )),
        }
    }
}

/// The ENUM domain of an E.164 number under `suffix` (RFC 6116, "Valid Databases"):
/// its digits reversed, one label each.
pub(crate) fn enum_domain(e164: &str, suffix: &str) -> String {
    let mut labels: Vec<String> = e164
        .chars()
        .filter(char::is_ascii_digit)
        .rev()
        .map(String::from)
        .collect();
    labels.push(suffix.trim_matches('.').to_string());
    labels.join(".")
}

/// What ENUM found for a number.
pub(crate) struct Found {
    pub uri: Uri,
    pub suffix: String,
}

/// Looks `e164` up under each suffix in turn; the first suffix with a
/// usable record wins. Every question and every record passed over is
/// a step in the ladder.
pub(crate) async fn lookup(
    resolver: &TokioResolver,
    suffixes: &[String],
    e164: &str,
    ladder: &Ladder,
) -> Option<Found> {
    for suffix in suffixes {
        let domain = enum_domain(e164, suffix);
        let records = match naptr_records(resolver, &domain).await {
            Ok(records) => records,
            Err(error) => {
                ladder.step(
                    Label::L,
                    format!("ENUM NAPTR {domain}: {}", why_none(&error)),
                );
                continue;
            }
        };
        ladder.step(
            Label::L,
            format!("ENUM NAPTR {domain}: {} records", records.len()),
        );
        match choose(records, e164, ladder) {
            Some(uri) => {
                return Some(Found {
                    uri,
                    suffix: suffix.clone(),
                })
            }
            None => ladder.step(Label::L, format!("ENUM {domain}: no usable SIP record")),
        }
    }
    None
}

/// The URI of the first usable SIP record, by order then preference
/// (RFC 3403 §4.1; one we can use ends the search, so a higher order is
/// only reached when every lower one fails).
fn choose(mut records: Vec<Naptr>, e164: &str, ladder: &Ladder) -> Option<Uri> {
    records.sort_by_key(|record| (record.order, record.preference));
    for record in records.iter().filter(|record| is_sip(&record.services)) {
        match uri_of(record, e164) {
            Ok(uri) => {
                ladder.step(Label::L, format!("ENUM chose {record} → {uri}"));
                return Some(uri);
            }
            Err(why) => ladder.step(Label::L, format!("ENUM skipped {record}: {why}")),
        }
    }
    None
}

/// Whether the services field names the SIP enumservice: `E2U+sip`
/// (RFC 3764), or `E2U+sips`; several `+`-joined enumservices and
/// `type:subtype` forms allowed (RFC 6116, "Services Parameters"), case ignored.
fn is_sip(services: &str) -> bool {
    let services = services.to_ascii_lowercase();
    let Some(enumservices) = services.strip_prefix("e2u+") else {
        return false;
    };
    enumservices.split('+').any(|enumservice| {
        let kind = enumservice.split(':').next().unwrap_or_default();
        kind == "sip" || kind == "sips"
    })
}

/// The SIP URI a terminal record gives for `e164`.
fn uri_of(record: &Naptr, e164: &str) -> Result<Uri, String> {
    // RFC 6116, "Flags": only terminal `u` records give a URI; we do not
    // follow non-terminal ones (empty flags, a replacement) further.
    if !record.flags.eq_ignore_ascii_case("u") {
        return Err(format!(
            "flags {:?}: only terminal \"u\" is followed",
            record.flags
        ));
    }
    let substitution = Substitution::parse(&record.regexp).map_err(|error| error.to_string())?;
    let text = substitution
        .apply(e164)
        .ok_or_else(|| format!("the regexp does not match {e164}"))?;
    let uri = Uri::try_from(text.as_str()).map_err(|error| format!("{text:?}: {error}"))?;
    match uri.scheme {
        Some(Scheme::Sip) | Some(Scheme::Sips) => Ok(uri),
        _ => Err(format!("{text} is not a sip: or sips: URI")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn japan() -> NumberingPlan {
        NumberingPlan {
            country_code: "81".into(),
            trunk_prefix: "0".into(),
        }
    }

    #[test]
    fn national_numbers_take_the_country_code() {
        let plan = japan();
        assert_eq!(plan.e164("05022220000").unwrap(), "+815022220000");
        assert_eq!(plan.e164("050-2222-0000").unwrap(), "+815022220000");
        assert_eq!(plan.e164("+81 50 2222 0000").unwrap(), "+815022220000");
        assert!(plan.e164("5022220000").is_err(), "no trunk prefix");
        assert!(plan.e164("+81x").is_err());
        assert!(plan.e164("alice").is_err());
    }

    #[test]
    fn the_enum_domain_is_the_digits_reversed() {
        assert_eq!(
            enum_domain("+815022220000", "e164.arpa"),
            "0.0.0.0.2.2.2.2.0.5.1.8.e164.arpa"
        );
        assert_eq!(
            enum_domain("+4930", ".e164.example.test."),
            "0.3.9.4.e164.example.test"
        );
    }

    #[test]
    fn sip_enumservices() {
        assert!(is_sip("E2U+sip"));
        assert!(is_sip("e2u+SIPS"));
        assert!(is_sip("E2U+voice:tel+sip"));
        assert!(!is_sip("E2U+email:mailto"));
        assert!(!is_sip("SIP+D2U"));
    }
}

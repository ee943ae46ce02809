//! The keys of an address-table look-up (the patent's claim 3), most
//! specific first.

use super::bindings::mailcall::rule::types::KeyKind;

/// Splits `local@domain` at the last `@`. An address without `@` is all
/// local part.
fn split(address: &str) -> (&str, &str) {
    match address.rfind('@') {
        Some(at) => (&address[..at], &address[at + 1..]),
        None => (address, ""),
    }
}

/// The keys to try in an address table for `address`, most specific first:
/// the whole address, the exact domain, then wildcards from the longest
/// (`*.b.example.net`) to the shortest (`*.net`), and finally `*`. Everything
/// is lower-cased and a trailing dot of the domain is dropped.
///
/// A wildcard `*.example.net` matches every subdomain of `example.net` at any
/// depth, but not `example.net` itself.
pub fn table_keys(address: &str) -> Vec<(KeyKind, String)> {
    let address = address.trim().to_lowercase();
    let (local, domain) = split(&address);
    let domain = domain.trim_end_matches('.');
    let mut keys = Vec::new();
    if !local.is_empty() && !domain.is_empty() {
        keys.push((KeyKind::Address, format!("{local}@{domain}")));
    }
    if !domain.is_empty() {
        keys.push((KeyKind::Domain, domain.to_string()));
        let mut rest = domain;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if rest.is_empty() {
                break;
            }
            keys.push((KeyKind::Wildcard, format!("*.{rest}")));
        }
    }
    keys.push((KeyKind::Wildcard, "*".to_string()));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_go_from_most_to_least_specific() {
        let keys: Vec<String> = table_keys("Bob@A.B.Example.NET.")
            .into_iter()
            .map(|(_, key)| key)
            .collect();
        assert_eq!(
            keys,
            [
                "bob@a.b.example.net",
                "a.b.example.net",
                "*.b.example.net",
                "*.example.net",
                "*.net",
                "*"
            ]
        );
    }

    #[test]
    fn split_uses_the_last_at() {
        assert_eq!(split("\"a@b\"@c.example"), ("\"a@b\"", "c.example"));
        assert_eq!(split("postmaster"), ("postmaster", ""));
    }
}

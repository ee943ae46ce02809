//! Which header fields people write, and which machines write.

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

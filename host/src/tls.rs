//! TLS: the server side of SMTP `STARTTLS` and POP3 `STLS`, and the client
//! side of opportunistic `STARTTLS` when relaying.
//!
//! The server's certificate comes from the configuration
//! (`[server] tls_certificate`, `tls_key`, PEM files), or, without one, is
//! a self-signed certificate for the host name kept in the data folder
//! (`tls/certificate.pem`, `tls/key.pem`), so a new server offers TLS at
//! once. The generated one is made on first start and made again (with the
//! same key) on a start when it has less than 30 days left or names another
//! host; it is valid for a year. Its SHA-256 fingerprint is logged at start
//! and printed by `mailcall check-config`, so clients can pin it.
//! All crypto is aws-lc-rs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::Config;

/// How long a generated certificate is valid.
const GENERATED_VALIDITY_DAYS: i64 = 365;
/// A generated certificate with less left than this is made again at start.
const RENEW_BEFORE_DAYS: i64 = 30;
const DAY_SECS: i64 = 86_400;

/// TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS settings refused: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    fn file(path: &Path, message: impl Into<String>) -> TlsError {
        TlsError::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What the server's certificate says: for the log, `check-config`, and
/// the renewal of a generated one.
#[derive(Debug, Clone)]
pub struct CertificateInfo {
    /// The file it was read from.
    pub path: PathBuf,
    /// SHA-256 of the certificate (the first of the chain), as clients pin it.
    pub fingerprint: [u8; 32],
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// Its subject alternative names (DNS names and IP addresses).
    pub names: Vec<String>,
    /// Valid from, and until (Unix seconds).
    pub not_before: i64,
    pub not_after: i64,
}

impl CertificateInfo {
    /// The fingerprint as `openssl x509 -fingerprint -sha256` prints it
    /// (`AB:CD:…`), also the form of SDP's `a=fingerprint`.
    pub fn fingerprint_hex(&self) -> String {
        let hex: Vec<String> = self
            .fingerprint
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        hex.join(":")
    }

    /// One line for the operator: names, validity and fingerprint.
    pub fn summary(&self) -> String {
        let date = |secs: i64| mail_parser::DateTime::from_timestamp(secs).to_rfc3339();
        format!(
            "{} (CN {}, names {}), valid {} to {}, SHA-256 {}",
            self.path.display(),
            self.common_name.as_deref().unwrap_or("none"),
            self.names.join(", "),
            date(self.not_before),
            date(self.not_after),
            self.fingerprint_hex()
        )
    }
}

/// The server's TLS settings, and the certificate they show.
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub certificate: CertificateInfo,
}

/// The server's TLS settings: the configured certificate, or the generated
/// one in the data folder (made now if missing, near expiry, or for
/// another host name).
pub fn server_config(config: &Config) -> Result<ServerTls, TlsError> {
    let (certificate, key) = certificate_files(config)?;
    load(&certificate, &key)
}

/// The server's certificate and key files: the configured ones, or the
/// generated ones (made now if they need to be). SIP over TLS shows them
/// too unless `[sip]` names its own.
pub fn certificate_files(config: &Config) -> Result<(PathBuf, PathBuf), TlsError> {
    let server = &config.server;
    match (&server.tls_certificate, &server.tls_key) {
        (Some(certificate), Some(key)) => Ok((config.resolve(certificate), config.resolve(key))),
        _ => {
            let folder = config.resolve(&server.data_dir).join("tls");
            generated_certificate(&folder, &server.hostname, now())
        }
    }
}

/// What `mailcall check-config` says of TLS, found without writing
/// anything.
#[derive(Debug)]
pub enum TlsCheck {
    /// The configured certificate and key load and match.
    Configured(CertificateInfo),
    /// The generated certificate in the data folder; `renewal` says why
    /// the next start makes it again, if it does.
    Generated {
        certificate: CertificateInfo,
        renewal: Option<String>,
    },
    /// No usable generated certificate: the next start makes one in
    /// `folder`, for `reason`.
    ToBeGenerated { folder: PathBuf, reason: String },
}

/// Loads the certificate and key as `mailcall serve` would, without
/// generating or renewing one. A configured pair that does not load is an
/// error naming the file and the reason.
pub fn check(config: &Config) -> Result<TlsCheck, TlsError> {
    let server = &config.server;
    if let (Some(certificate), Some(key)) = (&server.tls_certificate, &server.tls_key) {
        let loaded = load(&config.resolve(certificate), &config.resolve(key))?;
        return Ok(TlsCheck::Configured(loaded.certificate));
    }
    let folder = config.resolve(&server.data_dir).join("tls");
    let (certificate, key) = generated_paths(&folder);
    Ok(match load(&certificate, &key) {
        Ok(loaded) => TlsCheck::Generated {
            renewal: renewal_reason(&loaded.certificate, &server.hostname, now()),
            certificate: loaded.certificate,
        },
        // A broken generated pair is no error: the next start makes it again.
        Err(error) => TlsCheck::ToBeGenerated {
            reason: unusable_reason(&certificate, &error),
            folder,
        },
    })
}

/// Why a generated certificate that did not load is made again.
fn unusable_reason(certificate: &Path, error: &TlsError) -> String {
    if certificate.exists() {
        format!("it does not load ({error})")
    } else {
        "there is none yet".to_string()
    }
}

/// Loads a certificate chain and its private key (PEM) into server
/// settings; the key must match the first certificate.
pub fn load(certificate: &Path, key: &Path) -> Result<ServerTls, TlsError> {
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::file(certificate, pem_problem(e, "certificate")))?;
    let Some(first) = chain.first() else {
        return Err(TlsError::file(certificate, "no certificate in the file"));
    };
    let info = describe(certificate, first)?;
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::file(key, pem_problem(e, "private key")))?;
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|error| match error {
            rustls::Error::InconsistentKeys(_) => TlsError::file(
                key,
                format!(
                    "the key does not match the certificate {}",
                    certificate.display()
                ),
            ),
            other => TlsError::file(key, format!("the key is refused: {other}")),
        })?;
    Ok(ServerTls {
        config: Arc::new(tls),
        certificate: info,
    })
}

/// A PEM reading error in the operator's words.
fn pem_problem(error: rustls::pki_types::pem::Error, what: &str) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::NoItemsFound => format!("no {what} in the file (PEM expected)"),
        Error::Io(error) => error.to_string(),
        other => format!("not a readable PEM file: {other}"),
    }
}

/// The names, validity and fingerprint of a certificate.
fn describe(path: &Path, certificate: &CertificateDer<'_>) -> Result<CertificateInfo, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|e| TlsError::file(path, format!("not an X.509 certificate: {e}")))?;
    let common_name = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|name| name.as_str().ok())
        .map(str::to_string);
    let mut names = Vec::new();
    if let Ok(Some(alternatives)) = parsed.subject_alternative_name() {
        use x509_parser::extensions::GeneralName;
        for name in &alternatives.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_string()),
                GeneralName::IPAddress(octets) => {
                    let address = match octets.len() {
                        4 => <[u8; 4]>::try_from(*octets)
                            .ok()
                            .map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*octets)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(address.map(|a| a.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(CertificateInfo {
        path: path.to_path_buf(),
        fingerprint: Sha256::digest(certificate.as_ref()).into(),
        common_name,
        names,
        not_before: parsed.validity().not_before.timestamp(),
        not_after: parsed.validity().not_after.timestamp(),
    })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn generated_paths(folder: &Path) -> (PathBuf, PathBuf) {
    (folder.join("certificate.pem"), folder.join("key.pem"))
}

/// Why a generated certificate must be made again at `now`, if it must:
/// it names another host (the host name changed, or it is the old
/// "rcgen self signed cert"), or it has less than 30 days left.
pub fn renewal_reason(certificate: &CertificateInfo, hostname: &str, now: i64) -> Option<String> {
    let named = |name: &str| name.eq_ignore_ascii_case(hostname);
    if !certificate.common_name.as_deref().is_some_and(named)
        || !certificate.names.iter().any(|name| named(name))
    {
        return Some(format!(
            "it was made for {}, the host name is {hostname}",
            certificate.common_name.as_deref().unwrap_or("no name")
        ));
    }
    let left = certificate.not_after - now;
    if left < RENEW_BEFORE_DAYS * DAY_SECS {
        return Some(format!("it has {} days left", left.max(0) / DAY_SECS));
    }
    None
}

/// The self-signed certificate kept in `folder` for `hostname`: made if
/// missing, unreadable, near expiry at `now` or for another host, with the
/// key already there when it loads (so a client that pinned the public
/// key keeps working), else a new one.
fn generated_certificate(
    folder: &Path,
    hostname: &str,
    now: i64,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let (certificate, key) = generated_paths(folder);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error: std::io::Error| TlsError::file(&path, error.to_string())
    };
    crate::private::folder(folder).map_err(io(folder))?;
    let reason = match load(&certificate, &key) {
        Ok(loaded) => match renewal_reason(&loaded.certificate, hostname, now) {
            None => return Ok((certificate, key)),
            Some(reason) => reason,
        },
        Err(error) => unusable_reason(&certificate, &error),
    };
    let existing_key = std::fs::read_to_string(&key)
        .ok()
        .and_then(|pem| rcgen::KeyPair::from_pem(&pem).ok());
    let signing_key = match existing_key {
        Some(signing_key) => signing_key,
        None => {
            let signing_key = rcgen::KeyPair::generate()?;
            crate::private::write_file(&key, signing_key.serialize_pem().as_bytes())
                .map_err(io(&key))?;
            signing_key
        }
    };
    let pem = self_signed(hostname, &signing_key, now)?;
    // Written aside and renamed, so a crash leaves the old one or the new.
    let written = certificate.with_extension("pem.new");
    std::fs::write(&written, pem)
        .and_then(|()| std::fs::rename(&written, &certificate))
        .map_err(io(&certificate))?;
    tracing::info!(certificate = %certificate.display(), %hostname, "generated a self-signed TLS certificate: {reason}");
    Ok((certificate, key))
}

/// A certificate for `hostname` (common name and subject alternative name;
/// with the loopback addresses for `localhost`), valid from the start of
/// today (UTC) for a year, signed by its own key. PEM.
fn self_signed(hostname: &str, signing_key: &rcgen::KeyPair, now: i64) -> Result<String, TlsError> {
    let mut names = vec![hostname.to_string()];
    if hostname.eq_ignore_ascii_case("localhost") {
        names.extend(["127.0.0.1".to_string(), "::1".to_string()]);
    }
    // An IP address becomes an IP name, anything else a DNS name.
    let mut params = rcgen::CertificateParams::new(names)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let day = |secs: i64| {
        let date = mail_parser::DateTime::from_timestamp(secs);
        rcgen::date_time_ymd(date.year.into(), date.month, date.day)
    };
    params.not_before = day(now);
    params.not_after = day(now + GENERATED_VALIDITY_DAYS * DAY_SECS);
    Ok(params.self_signed(signing_key)?.pem())
}

/// Client settings for opportunistic TLS when relaying: encrypt whenever the
/// server offers `STARTTLS`, without checking its certificate (Postfix's
/// `smtp_tls_security_level = may`; RFC 7435). Most MX certificates would
/// not pass a check, and refusing them would only send the mail in clear.
pub fn opportunistic_client_config() -> Arc<rustls::ClientConfig> {
    let provider = provider();
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(mailcall_sip::AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(tls)
}

/// Drops one rustls warning from the log: "Illegal SNI extension: ignoring
/// IP address presented as hostname". RFC 6066 forbids an IP address as
/// SNI, but many clients (OpenSSL-based ones given an address, swaks
/// `--tls-sni`) send one when they connect to an address, and rustls then
/// simply ignores it: ordinary client behaviour, not worth a WARN on every
/// loopback connection. Every other TLS warning, from rustls or ours, stays.
pub struct QuietIpSni;

/// Where rustls logs the notice, and how it starts.
const IP_SNI_TARGET: &str = "rustls::msgs::handshake";
const IP_SNI_NOTICE: &str = "Illegal SNI extension: ignoring IP address";

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for QuietIpSni {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if *event.metadata().level() != tracing::Level::WARN {
            return true;
        }
        let mut fields = NoticeFields::default();
        event.record(&mut fields);
        // rustls logs through `log`: its target comes as a field.
        let target = fields
            .log_target
            .as_deref()
            .unwrap_or(event.metadata().target());
        !(target == IP_SNI_TARGET && fields.message.starts_with(IP_SNI_NOTICE))
    }
}

/// The fields of an event that [`QuietIpSni`] looks at.
#[derive(Default)]
struct NoticeFields {
    message: String,
    log_target: Option<String>,
}

impl tracing::field::Visit for NoticeFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "log.target" => self.log_target = Some(value.to_string()),
            "message" => self.message = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000; // 2027-01-15

    fn generate(folder: &Path, hostname: &str, now: i64) -> ServerTls {
        let (certificate, key) = generated_certificate(folder, hostname, now).unwrap();
        load(&certificate, &key).unwrap()
    }

    #[test]
    fn the_generated_certificate_names_the_host_for_a_year() {
        let dir = tempfile::tempdir().unwrap();
        let certificate = generate(dir.path(), "mx.example.org", NOW).certificate;
        assert_eq!(certificate.common_name.as_deref(), Some("mx.example.org"));
        assert_eq!(certificate.names, ["mx.example.org"]);
        assert!(certificate.not_before <= NOW && NOW - certificate.not_before < DAY_SECS);
        let days = (certificate.not_after - certificate.not_before) / DAY_SECS;
        assert_eq!(days, 365);
        assert_eq!(renewal_reason(&certificate, "mx.example.org", NOW), None);
        let pem = std::fs::read(&certificate.path).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        let expected: [u8; 32] = Sha256::digest(der.as_ref()).into();
        assert_eq!(certificate.fingerprint, expected);
        assert_eq!(certificate.fingerprint_hex().len(), 32 * 3 - 1);
    }

    #[test]
    fn localhost_gets_the_loopback_addresses_too() {
        let dir = tempfile::tempdir().unwrap();
        let certificate = generate(dir.path(), "localhost", NOW).certificate;
        assert_eq!(certificate.names, ["localhost", "127.0.0.1", "::1"]);
    }

    #[test]
    fn a_start_keeps_a_good_certificate_and_renews_one_near_expiry_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let first = generate(dir.path(), "mx.example.org", NOW).certificate;
        let key = std::fs::read(dir.path().join("key.pem")).unwrap();
        let later = NOW + 300 * DAY_SECS;
        let same = generate(dir.path(), "mx.example.org", later).certificate;
        assert_eq!(same.fingerprint, first.fingerprint);

        // 29 days left: made again, valid a year from then, same key.
        let near_expiry = first.not_after - 29 * DAY_SECS;
        assert!(renewal_reason(&first, "mx.example.org", near_expiry).is_some());
        let renewed = generate(dir.path(), "mx.example.org", near_expiry).certificate;
        assert_ne!(renewed.fingerprint, first.fingerprint);
        assert!(renewed.not_after - near_expiry > 364 * DAY_SECS);
        assert_eq!(std::fs::read(dir.path().join("key.pem")).unwrap(), key);
    }

    #[test]
    fn a_new_host_name_or_the_old_rcgen_default_gets_a_new_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let first = generate(dir.path(), "old.example.org", NOW).certificate;
        let renamed = generate(dir.path(), "new.example.org", NOW).certificate;
        assert_ne!(renamed.fingerprint, first.fingerprint);
        assert_eq!(renamed.common_name.as_deref(), Some("new.example.org"));

        // What earlier versions wrote: CN "rcgen self signed cert", 1975–4096.
        let old = rcgen::generate_simple_self_signed(vec!["mx.example.org".to_string()]).unwrap();
        crate::private::write_file(
            &dir.path().join("key.pem"),
            old.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        std::fs::write(dir.path().join("certificate.pem"), old.cert.pem()).unwrap();
        let loaded = load(
            &dir.path().join("certificate.pem"),
            &dir.path().join("key.pem"),
        )
        .unwrap();
        assert_eq!(
            loaded.certificate.common_name.as_deref(),
            Some("rcgen self signed cert")
        );
        let replaced = generate(dir.path(), "mx.example.org", NOW).certificate;
        assert_eq!(replaced.common_name.as_deref(), Some("mx.example.org"));
        assert!(replaced.not_after < NOW + 366 * DAY_SECS);
    }

    #[test]
    fn a_broken_generated_pair_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), "mx.example.org", NOW);
        std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
        let again = generate(dir.path(), "mx.example.org", NOW);
        assert_eq!(
            again.certificate.common_name.as_deref(),
            Some("mx.example.org")
        );
    }

    #[test]
    fn a_missing_empty_or_mismatched_key_is_named_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = generate(dir.path(), "mx.example.org", NOW).certificate.path;
        let missing = dir.path().join("missing.pem");
        let error = load(&good, &missing).err().unwrap().to_string();
        assert!(error.starts_with(&missing.display().to_string()), "{error}");
        assert!(error.contains("No such file"), "{error}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let error = load(&good, &empty).err().unwrap().to_string();
        assert!(
            error.contains("empty.pem: no private key in the file"),
            "{error}"
        );
        let error = load(&empty, &empty).err().unwrap().to_string();
        assert!(
            error.contains("empty.pem: no certificate in the file"),
            "{error}"
        );

        let other = tempfile::tempdir().unwrap();
        generate(other.path(), "mx.example.org", NOW);
        let error = load(&good, &other.path().join("key.pem"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("the key does not match the certificate"),
            "{error}"
        );
    }

    /// The log lines a subscriber with [`QuietIpSni`] lets through.
    fn logged(emit: impl FnOnce()) -> String {
        use tracing_subscriber::layer::SubscriberExt;
        let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = {
            let buffer = buffer.clone();
            move || Capture(buffer.clone())
        };
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .finish()
            .with(QuietIpSni);
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buffer.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_ip_sni_notice_is_dropped_and_other_tls_warnings_stay() {
        let log = logged(|| {
            tracing::warn!(target: "rustls::msgs::handshake", "Illegal SNI extension: ignoring IP address presented as hostname (\"127.0.0.1\")");
            tracing::warn!(target: "rustls::msgs::handshake", "Illegal SNI extension: duplicate host_name received");
            tracing::warn!(target: "rustls::conn", "Sending fatal alert BadRecordMac");
            tracing::info!(target: "rustls::msgs::handshake", "Illegal SNI extension: ignoring IP address (info)");
        });
        assert!(!log.contains("ignoring IP address presented"), "{log}");
        assert!(log.contains("duplicate host_name"), "{log}");
        assert!(log.contains("BadRecordMac"), "{log}");
        assert!(log.contains("(info)"), "{log}");
    }
}

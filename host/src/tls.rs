//! TLS: the server side of SMTP `STARTTLS` and POP3 `STLS`, and the client
//! side of opportunistic `STARTTLS` when relaying.
//!
//! The server's certificate comes from the configuration
//! (`[server] tls_certificate`, `tls_key`, PEM files) or, without one, is
//! generated on first start for the host name and kept in the data folder
//! (`tls/certificate.pem`, `tls/key.pem`), so a new server offers TLS at once.
//! All crypto is aws-lc-rs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::Config;

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

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server's TLS settings: the configured certificate, or the generated
/// one in the data folder (made now if missing).
pub fn server_config(config: &Config) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let server = &config.server;
    let (certificate, key) = match (&server.tls_certificate, &server.tls_key) {
        (Some(certificate), Some(key)) => (config.resolve(certificate), config.resolve(key)),
        _ => {
            let folder = config.resolve(&server.data_dir).join("tls");
            generated_certificate(&folder, &server.hostname)?
        }
    };
    let file_error = |path: &Path, message: String| TlsError::File {
        path: path.to_path_buf(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(&certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(&certificate, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(
            &certificate,
            "no certificate in the file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| file_error(&key, e.to_string()))?;
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(tls))
}

/// The self-signed certificate kept in `folder`, generated for `hostname`
/// the first time.
fn generated_certificate(folder: &Path, hostname: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let certificate = folder.join("certificate.pem");
    let key = folder.join("key.pem");
    if certificate.exists() && key.exists() {
        return Ok((certificate, key));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error: std::io::Error| TlsError::File {
            path,
            message: error.to_string(),
        }
    };
    std::fs::create_dir_all(folder).map_err(io(folder))?;
    let generated = rcgen::generate_simple_self_signed(vec![hostname.to_string()])?;
    write_private(&key, generated.signing_key.serialize_pem().as_bytes()).map_err(io(&key))?;
    std::fs::write(&certificate, generated.cert.pem()).map_err(io(&certificate))?;
    tracing::info!(certificate = %certificate.display(), "generated a self-signed TLS certificate");
    Ok((certificate, key))
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
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
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(tls)
}

/// Accepts any certificate, but still checks that the handshake is signed
/// by its key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

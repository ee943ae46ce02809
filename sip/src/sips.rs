//! SIP over TLS (RFC 3261 §26, RFC 5630): the server side of `tls_listen`
//! with our certificate, and the client side that checks a server's
//! certificate against the name of the target we were asked to reach
//! (RFC 5922 §4: the domain of the URI, not an SRV target or an address
//! found on the way), or against its address when the target is one.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::SipSettings;
use crate::SipError;

/// TLS for signalling, both ways.
pub(crate) struct SignallingTls {
    /// For `tls_listen`, when set.
    pub acceptor: Option<TlsAcceptor>,
    connector: TlsConnector,
}

impl SignallingTls {
    pub fn new(settings: &SipSettings) -> Result<SignallingTls, SipError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let acceptor = match (&settings.tls_certificate, &settings.tls_key) {
            (Some(certificate), Some(key)) => {
                let (chain, key) = load_identity(certificate, key)?;
                let config = rustls::ServerConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(tls_error)?
                    .with_no_client_auth()
                    .with_single_cert(chain, key)
                    .map_err(|e| SipError::Settings(format!("[sip] tls_key: {e}")))?;
                Some(TlsAcceptor::from(Arc::new(config)))
            }
            _ if settings.tls_listen.is_some() => {
                let why = "[sip] tls_listen needs tls_certificate and tls_key";
                return Err(SipError::Settings(why.into()));
            }
            _ => None,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?;
        let config = if settings.tls_verify {
            builder
                .with_root_certificates(trust_anchors(settings.tls_ca_file.as_deref())?)
                .with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        };
        Ok(SignallingTls {
            acceptor,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// TLS over `stream` to a server that must prove to be `name`.
    pub async fn connect(
        &self,
        stream: TcpStream,
        name: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(name.to_string()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{name:?} is not a server name"),
            )
        })?;
        self.connector.connect(name, stream).await
    }
}

fn tls_error(e: rustls::Error) -> SipError {
    SipError::Settings(format!("TLS: {e}"))
}

/// Our certificate chain and key from their PEM files.
fn load_identity(
    certificate: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), SipError> {
    let unreadable = |path: &Path, e: &dyn std::fmt::Display| {
        SipError::Settings(format!("[sip] {}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| unreadable(certificate, &e))?;
    if chain.is_empty() {
        return Err(unreadable(certificate, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| unreadable(key, &e))?;
    Ok((chain, key))
}

/// The configured CA file, else the system's roots.
fn trust_anchors(ca_file: Option<&Path>) -> Result<RootCertStore, SipError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| SipError::Settings(format!("[sip] tls_ca_file: {e}")))?;
            let (added, _) = roots.add_parsable_certificates(certificates);
            if added == 0 {
                let why = format!("[sip] tls_ca_file: no certificate in {}", path.display());
                return Err(SipError::Settings(why));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                // Not fatal: plain UDP/TCP still works; TLS peers will fail.
                tracing::warn!("no system trust anchors found: set [sip] tls_ca_file");
            }
        }
    }
    Ok(roots)
}

/// Any certificate, as long as the handshake is signed by its key: the
/// connection is encrypted, but to whom is unknown. For `tls_verify =
/// false`, and for the host's opportunistic relay TLS (RFC 7435).
#[derive(Debug)]
pub struct AnyCertificate(pub Arc<CryptoProvider>);

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
        verify_tls12_signature(
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
        verify_tls13_signature(
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

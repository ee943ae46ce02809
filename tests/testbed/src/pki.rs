//! A certificate authority of the tests' own: certificates for servers
//! (Kamailio, our SIP over TLS) by name or address, in PEM files, and the
//! CA file that makes them trusted.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA whose files live in a folder of the caller's.
pub struct Pki {
    folder: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM), for `tls_ca_file`.
    pub ca_file: PathBuf,
}

/// A certificate and its key, in PEM files.
pub struct Issued {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new(folder: &Path) -> Pki {
        std::fs::create_dir_all(folder).expect("a folder for the test CA");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "mailcall test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("a CA key");
        let certificate = params.self_signed(&key).expect("the CA certificate");
        let ca_file = folder.join("ca.pem");
        std::fs::write(&ca_file, certificate.pem()).expect("writing the CA file");
        Pki {
            folder: folder.to_path_buf(),
            issuer: Issuer::new(params, key),
            ca_file,
        }
    }

    /// A server certificate for `names` (addresses become IP names), signed
    /// by this CA, written as `<file>.pem` and `<file>.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("server parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, &names[0]);
        let key = KeyPair::generate().expect("a server key");
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("the server certificate");
        let issued = Issued {
            certificate: self.folder.join(format!("{file}.pem")),
            key: self.folder.join(format!("{file}.key")),
        };
        std::fs::write(&issued.certificate, certificate.pem()).expect("writing a certificate");
        std::fs::write(&issued.key, key.serialize_pem()).expect("writing a key");
        issued
    }
}

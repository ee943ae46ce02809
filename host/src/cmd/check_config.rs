//! `mailcall check-config`: validate a configuration file.

use std::path::Path;

use mailcall::config::Config;
use mailcall::policy::PolicyEngine;
use mailcall::tls::TlsCheck;

/// Parses the file, then loads its tables, rules and TLS certificate the
/// way the server would, so every error shows before a start. Prints the
/// certificate's SHA-256 fingerprint, for clients that pin it.
pub fn run(file: &Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    if !config.policy.chain.is_empty() {
        PolicyEngine::from_config(&config)?;
    }
    match mailcall::tls::check(&config)? {
        TlsCheck::Configured(certificate) => println!("TLS certificate: {}", certificate.summary()),
        TlsCheck::Generated {
            certificate,
            renewal,
        } => {
            println!("TLS certificate (generated): {}", certificate.summary());
            if let Some(reason) = renewal {
                println!("TLS: the next start makes it again: {reason}");
            }
        }
        TlsCheck::ToBeGenerated { folder, reason } => println!(
            "TLS: the next start generates a self-signed certificate for {} in {} ({reason})",
            config.server.hostname,
            folder.display()
        ),
    }
    println!("{}: OK", file.display());
    Ok(())
}

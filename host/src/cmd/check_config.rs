//! `mailcall check-config`: validate a configuration file.

use std::path::Path;

use mailcall::config::Config;
use mailcall::policy::PolicyEngine;

/// Parses the file, then loads its tables and rules the way the server
/// would, so every error shows before a start.
pub fn run(file: &Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    if !config.policy.chain.is_empty() {
        PolicyEngine::from_config(&config)?;
    }
    println!("{}: OK", file.display());
    Ok(())
}

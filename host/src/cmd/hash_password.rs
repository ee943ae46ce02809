//! `mailcall hash-password`: the argon2 hash of a password read on stdin.

use std::io::BufRead;

use anyhow::{bail, Context};
use argon2::{Argon2, PasswordHasher};

pub fn run() -> anyhow::Result<()> {
    let mut password = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut password)
        .context("cannot read the password on stdin")?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!("give the password on stdin (echo 'secret' | mailcall hash-password)");
    }
    let hash = Argon2::default()
        .hash_password(password.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot hash: {e}"))?;
    println!("{hash}");
    Ok(())
}

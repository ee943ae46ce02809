//! Who may log in: the users of the configuration and their argon2
//! password hashes, shared by SMTP `AUTH` and POP3 `USER`/`PASS`.

use argon2::{Argon2, PasswordVerifier};

use crate::config::Config;

/// The user name `login` and `password` identify, if they do. A login is a
/// user name, or a user name at one of the local domains (`taro@example.jp`),
/// case-insensitively. Verifying is slow on purpose (argon2): call it off
/// the async workers.
pub fn check(config: &Config, login: &str, password: &str) -> Option<String> {
    let user = match login.rsplit_once('@') {
        Some((user, domain)) => {
            let domain = domain.trim_end_matches('.');
            let local = config
                .server
                .local_domains
                .iter()
                .any(|d| d.trim_end_matches('.').eq_ignore_ascii_case(domain));
            local.then_some(user)?
        }
        None => login,
    };
    let (name, settings) = config
        .users
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(user))?;
    let hash = settings.password_hash.as_deref()?;
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .ok()
        .map(|()| name.clone())
}

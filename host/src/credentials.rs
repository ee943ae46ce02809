//! Who may log in: the users of the configuration and their argon2
//! password hashes, shared by SMTP `AUTH` and POP3 `USER`/`PASS`.

use argon2::{Argon2, PasswordVerifier};

use crate::config::Config;

/// The user name `login` and `password` identify, if they do. A login is a
/// user name, or a user name at one of the local domains (`taro@example.jp`),
/// case-insensitively. Verifying is slow on purpose (argon2) and takes
/// 19 MiB: servers call it through [`crate::auth::Authenticator`], which
/// bounds how many run at once.
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
    let found = config
        .users
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(user));
    let Some((name, Some(hash))) = found.map(|(name, s)| (name, s.password_hash.as_deref())) else {
        // The same work as a real check, so the time the answer takes does
        // not tell which user names exist.
        let mut output = [0u8; 32];
        let _ = Argon2::default().hash_password_into(
            password.as_bytes(),
            b"mailcall: no such user",
            &mut output,
        );
        return None;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .ok()
        .map(|()| name.clone())
}

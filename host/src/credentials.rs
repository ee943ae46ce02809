//! Who may log in: the users of the configuration and their argon2
//! password hashes, shared by SMTP `AUTH` and POP3 `USER`/`PASS`.

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};

use crate::config::Config;

/// The user name `login` and `password` identify, if they do. A login is a
/// user name, or a user name at one of the local domains (`taro@example.jp`),
/// case-insensitively. Verifying is slow on purpose (argon2) and takes
/// 19 MiB: servers call it through [`crate::auth::Authenticator`], which
/// bounds how many run at once.
///
/// `memory` holds argon2's blocks and is kept by the caller for the next
/// check: the 19 MiB are allocated once per thread, not once per check.
pub fn check(
    config: &Config,
    login: &str,
    password: &str,
    memory: &mut Vec<Block>,
) -> Option<String> {
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
        let params = Params::default();
        memory.resize(params.block_count(), Block::default());
        let mut output = [0u8; 32];
        let _ = Argon2::default().hash_password_into_with_memory(
            password.as_bytes(),
            b"mailcall: no such user",
            &mut output,
            &mut memory[..],
        );
        return None;
    };
    verify(password.as_bytes(), hash, memory).then(|| name.clone())
}

/// Whether `password` matches the PHC string `hash` (argon2), computed in
/// `memory` (grown to what the hash's parameters need).
fn verify(password: &[u8], hash: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(version), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm.as_str()),
        Version::try_from(parsed.version.unwrap_or(Version::default().into())),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    memory.resize(params.block_count(), Block::default());
    let mut output = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version, params);
    if argon2
        .hash_password_into_with_memory(password, salt, &mut output, &mut memory[..])
        .is_err()
    {
        return false;
    }
    // `Output`'s comparison takes constant time.
    argon2::password_hash::phc::Output::new(&output).is_ok_and(|computed| &computed == expected)
}

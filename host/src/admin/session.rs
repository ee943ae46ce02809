//! Console logins: a session per `[users.NAME]` with `admin = true` who
//! logged in, named by a random cookie, with the CSRF token every form of
//! that session carries. Kept in memory: a restart logs everyone out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "mailcall_session";

/// How long a login lasts.
const LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// Sessions kept at most; past that the oldest is dropped.
const MOST: usize = 1000;

/// One logged-in operator.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    /// Sent in every form and checked on every action (the cookie alone
    /// could come from another site's form, were SameSite not honoured).
    pub csrf: String,
    started: Instant,
}

#[derive(Default)]
pub struct Sessions {
    by_token: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes from the TLS stack's generator, as hex.
fn token() -> Option<String> {
    let mut bytes = [0u8; 32];
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.secure_random.fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Sessions {
    /// Starts a session for `user`; its cookie token. `None` when no
    /// randomness could be had (then nobody logs in).
    pub fn start(&self, user: &str) -> Option<String> {
        let (cookie, csrf) = (token()?, token()?);
        let mut sessions = self.lock();
        sessions.retain(|_, session| session.started.elapsed() < LIFETIME);
        if sessions.len() >= MOST {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, session)| session.started)
                .map(|(token, _)| token.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            cookie.clone(),
            Session {
                user: user.to_string(),
                csrf,
                started: Instant::now(),
            },
        );
        Some(cookie)
    }

    /// The live session a `Cookie` header names, if any.
    pub fn find(&self, cookie_header: Option<&str>) -> Option<Session> {
        let token = token_in(cookie_header)?;
        let mut sessions = self.lock();
        match sessions.get(token) {
            Some(session) if session.started.elapsed() < LIFETIME => Some(session.clone()),
            Some(_) => {
                sessions.remove(token);
                None
            }
            None => None,
        }
    }

    /// Ends the session a `Cookie` header names.
    pub fn end(&self, cookie_header: Option<&str>) {
        if let Some(token) = token_in(cookie_header) {
            self.lock().remove(token);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // Plain data: still usable after a panic elsewhere.
        self.by_token
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The session token a `Cookie` header carries.
fn token_in(cookie_header: Option<&str>) -> Option<&str> {
    cookie_header?
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Compares two tokens in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |differ, (x, y)| differ | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_only_and_ends_at_logout() {
        let sessions = Sessions::default();
        let token = sessions.start("alice").unwrap();
        assert_eq!(token.len(), 64);
        let header = format!("theme=dark; {COOKIE}={token}");
        let session = sessions.find(Some(&header)).unwrap();
        assert_eq!(session.user, "alice");
        assert_ne!(session.csrf, token);
        assert!(sessions.find(Some(&format!("{COOKIE}=0{token}"))).is_none());
        assert!(sessions.find(None).is_none());
        sessions.end(Some(&header));
        assert!(sessions.find(Some(&header)).is_none());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
    }
}

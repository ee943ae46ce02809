//! The POP3 session (`host/src/pop3/session.rs`) on arbitrary command lines,
//! over a Maildir of three messages: never a panic; every response starts
//! `+OK` or `-ERR` and ends in CRLF; a session that said it closes stays
//! closed. Kept small on purpose: the session is becoming sans-I/O.
//!
//! Input: the lines the client sends. The user `taro` has the password
//! `secret` (hashed with tiny argon2 costs, so fuzzing stays fast).
#![no_main]

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use libfuzzer_sys::fuzz_target;
use mailcall::config::Config;
use mailcall::mailbox::maildir::Maildir;
use mailcall::pop3::session::{After, Pop3Session, Pop3Shared};

const MESSAGES: [&[u8]; 3] = [
    b"Subject: one\r\n\r\nbody\r\n.dot line\r\n",
    b"Subject: two\n\nLF only\n..\n",
    b"",
];

/// The config with user `taro`, shared by every run.
fn config() -> Arc<Config> {
    static CONFIG: OnceLock<Arc<Config>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let params = Params::new(8, 1, 1, None).expect("argon2 parameters");
            let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
            let hash = argon2.hash_password(b"secret").expect("a hash").to_string();
            let text = format!(
                "[server]\nhostname = \"mx.local.example\"\nlocal_domains = [\"local.example\"]\n\
                 max_errors = 20\n[users.taro]\npassword_hash = \"{hash}\"\n"
            );
            let config = Config::parse(&text, Path::new("fuzz.toml"), "/nonexistent".into())
                .expect("the fuzz config parses");
            Arc::new(config)
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    // On tmpfs where there is one: delivery syncs every file.
    let Ok(root) = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()) else {
        return;
    };
    let maildir = Maildir::open(&root.path().join("taro")).expect("a maildir");
    for (index, message) in MESSAGES.iter().enumerate() {
        maildir
            .deliver_as(&format!("m{index}"), message)
            .expect("a message");
    }
    let shared = Arc::new(Pop3Shared {
        config: config(),
        mail_dir: root.path().to_path_buf(),
        open: Mutex::new(HashSet::new()),
        tls: None,
    });
    let mut session = Pop3Session::new(shared.clone(), "127.0.0.1".parse().expect("an address"));
    assert!(session.greeting().starts_with(b"+OK "));
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        let response = session.command(line.trim_end_matches('\r'));
        let bytes = &response.bytes;
        assert!(bytes.starts_with(b"+OK") || bytes.starts_with(b"-ERR"));
        assert!(bytes.ends_with(b"\r\n"));
        let first_line = bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(0, |end| end + 1);
        if bytes.starts_with(b"+OK") && first_line < bytes.len() {
            // A multi-line answer ends with the `.` line.
            let text = String::from_utf8_lossy(bytes);
            assert!(bytes.ends_with(b"\r\n.\r\n"), "{text:?}");
        }
        if response.after == After::Close {
            break;
        }
    }
    drop(session);
    assert!(
        shared.open.lock().expect("the lock").is_empty(),
        "a mailbox left open"
    );
});

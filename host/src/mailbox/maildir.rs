//! A Maildir (one folder per user with `tmp/`, `new/` and `cur/`), written
//! the durable way: the message is written to `tmp/` and fsynced, renamed
//! into `new/`, and `new/` is fsynced, before delivery counts as done.
//! Mail is private, whatever the umask: folders 0700, files 0600, as
//! Postfix and Dovecot make them.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Distinguishes deliveries within one process and second.
static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// A Maildir operation failed.
#[derive(Debug, thiserror::Error)]
#[error("maildir {path}: {error}")]
pub struct MaildirError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// One user's Maildir.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
}

/// A message in a Maildir, as POP3 lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The unique name (without the `:2,` flags), stable across sessions:
    /// POP3's UIDL.
    pub unique: String,
    /// Where the message is now (`new/` or `cur/`).
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

impl Maildir {
    /// The Maildir at `root`, created with its three folders if missing.
    /// Folders only the owner may enter (0700); one found wider (made by an
    /// older version, or by hand) is narrowed, which also hides the files
    /// already in it.
    pub fn open(root: &Path) -> Result<Maildir, MaildirError> {
        for path in [
            root.to_path_buf(),
            root.join("tmp"),
            root.join("new"),
            root.join("cur"),
        ] {
            crate::private::folder(&path).map_err(|error| MaildirError { path, error })?;
        }
        Ok(Maildir {
            root: root.to_path_buf(),
        })
    }

    /// Delivers `message` durably; returns its unique name.
    pub fn deliver(&self, message: &[u8]) -> Result<String, MaildirError> {
        let unique = unique_name();
        self.deliver_as(&unique, message)?;
        Ok(unique)
    }

    /// Delivers `message` durably under the unique name `unique`, once: if
    /// a message of that name is already here (a delivery repeated after a
    /// crash), nothing is written. The queue names deliveries by message id
    /// and recipient, so a crash never delivers twice.
    pub fn deliver_as(&self, unique: &str, message: &[u8]) -> Result<(), MaildirError> {
        if self.contains(unique) {
            return Ok(());
        }
        let temporary = self.root.join("tmp").join(unique);
        let delivered = self.root.join("new").join(unique);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| MaildirError { path, error }
        };
        let mut file = crate::private::file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)
            .map_err(io(&temporary))?;
        // A file left in `tmp/` by a crash keeps its mode when reopened.
        file.set_permissions(crate::private::file_permissions())
            .map_err(io(&temporary))?;
        file.write_all(message).map_err(io(&temporary))?;
        file.sync_all().map_err(io(&temporary))?;
        drop(file);
        std::fs::rename(&temporary, &delivered).map_err(io(&delivered))?;
        let new = self.root.join("new");
        File::open(&new)
            .and_then(|dir| dir.sync_all())
            .map_err(io(&new))?;
        Ok(())
    }

    /// True if a message named `unique` is in `new/` or `cur/`.
    fn contains(&self, unique: &str) -> bool {
        if self.root.join("new").join(unique).exists() {
            return true;
        }
        let prefix = format!("{unique}:");
        std::fs::read_dir(self.root.join("cur")).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        })
    }

    /// Every message in `new/` and `cur/`, oldest first (by unique name,
    /// which starts with the delivery time).
    pub fn messages(&self) -> Result<Vec<StoredMessage>, MaildirError> {
        let mut messages = Vec::new();
        for sub in ["new", "cur"] {
            let dir = self.root.join(sub);
            let entries = std::fs::read_dir(&dir).map_err(|error| MaildirError {
                path: dir.clone(),
                error,
            })?;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let Ok(metadata) = entry.metadata() else {
                    continue;
                };
                let unique = name.split(":2,").next().unwrap_or(&name).to_string();
                messages.push(StoredMessage {
                    unique,
                    path: entry.path(),
                    size: metadata.len(),
                });
            }
        }
        messages.sort_by(|a, b| a.unique.cmp(&b.unique));
        Ok(messages)
    }

    /// Deletes a message (POP3's UPDATE state); a message already gone is
    /// not an error.
    pub fn delete(&self, message: &StoredMessage) -> Result<(), MaildirError> {
        match std::fs::remove_file(&message.path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(MaildirError {
                path: message.path.clone(),
                error,
            }),
            _ => Ok(()),
        }
    }
}

/// `seconds.M<micros>P<pid>Q<count>.<host>`: unique per delivery, sortable
/// by time, as the Maildir convention asks.
fn unique_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let count = DELIVERIES.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}.M{:06}P{}Q{count}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        host_name()
    )
}

/// This machine's name, made safe for a Maildir file name; read once.
pub fn host_name() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().replace(['/', ':'], "_"))
            .unwrap_or_else(|_| "localhost".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_delivery_under_the_same_name_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::open(dir.path()).unwrap();
        maildir.deliver_as("1795000000.Q42R0.host", b"x").unwrap();
        maildir.deliver_as("1795000000.Q42R0.host", b"x").unwrap();
        assert_eq!(maildir.messages().unwrap().len(), 1);
    }

    #[test]
    fn delivered_messages_are_listed_in_order_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::open(&dir.path().join("postmaster")).unwrap();
        let first = maildir.deliver(b"Subject: 1\r\n\r\none\r\n").unwrap();
        let second = maildir.deliver(b"Subject: 2\r\n\r\ntwo\r\n").unwrap();
        assert_ne!(first, second);
        let messages = maildir.messages().unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].unique, first);
        assert_eq!(messages[0].size, 19);
        assert_eq!(
            std::fs::read(&messages[1].path).unwrap(),
            b"Subject: 2\r\n\r\ntwo\r\n"
        );
        assert!(std::fs::read_dir(dir.path().join("postmaster/tmp"))
            .unwrap()
            .next()
            .is_none());

        maildir.delete(&messages[0]).unwrap();
        maildir.delete(&messages[0]).unwrap();
        assert_eq!(maildir.messages().unwrap().len(), 1);
    }
}

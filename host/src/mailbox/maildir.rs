//! A Maildir (one folder per user with `tmp/`, `new/` and `cur/`), written
//! the durable way: the message is written to `tmp/` and fsynced, renamed
//! into `new/`, and `new/` is fsynced, before delivery counts as done.
//! Writes go through [`Storage`] (files 0600, folders 0700), so crash tests
//! can cut the power at each step.
//!
//! Mail is private, whatever the umask: folders 0700, files 0600, as
//! Postfix and Dovecot make them.
//!
//! Other programs may write into the same Maildir (Dovecot writes LF-only
//! files): sizes are counted as POP3 sends the message, with CRLF line ends.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::storage::{Disk, Storage};

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
#[derive(Clone)]
pub struct Maildir {
    storage: Arc<dyn Storage>,
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
    /// Its size as POP3 sends it (RFC 1939): every line ending in CRLF,
    /// before dot-stuffing.
    pub size: u64,
}

impl Maildir {
    /// The Maildir at `root`, created with its three folders if missing.
    /// Folders only the owner may enter (0700); one found wider (made by an
    /// older version, or by hand) is narrowed, which also hides the files
    /// already in it.
    pub fn open(root: &Path) -> Result<Maildir, MaildirError> {
        Maildir::on(Disk::shared(), root)
    }

    /// The same on `storage`. A new Maildir's folders are made durable
    /// before anything is delivered into them; folders found wider (made by
    /// an older version) are narrowed to 0700.
    pub fn on(storage: Arc<dyn Storage>, root: &Path) -> Result<Maildir, MaildirError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| MaildirError { path, error }
        };
        let complete = ["tmp", "new", "cur"]
            .iter()
            .all(|sub| storage.exists(&root.join(sub)));
        storage.create_dir_all(root).map_err(io(root))?;
        for sub in ["tmp", "new", "cur"] {
            let path = root.join(sub);
            storage.create_dir_all(&path).map_err(io(&path))?;
        }
        if !complete {
            storage.sync_dir(root).map_err(io(root))?;
            if let Some(parent) = root.parent() {
                storage.sync_dir(parent).map_err(io(parent))?;
            }
        }
        Ok(Maildir {
            storage,
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
        // A leftover of an attempt cut short (a crash, a full disk).
        if self.storage.exists(&temporary) {
            self.storage.remove(&temporary).map_err(io(&temporary))?;
        }
        let file = self
            .storage
            .create_new(&temporary)
            .map_err(io(&temporary))?;
        let written = file.write_all(message).and_then(|()| file.sync());
        if let Err(error) = written {
            let _ = self.storage.remove(&temporary);
            return Err(io(&temporary)(error));
        }
        drop(file);
        self.storage
            .rename(&temporary, &delivered)
            .map_err(io(&delivered))?;
        let new = self.root.join("new");
        self.storage.sync_dir(&new).map_err(io(&new))?;
        Ok(())
    }

    /// True if a message named `unique` is in `new/` or `cur/`.
    fn contains(&self, unique: &str) -> bool {
        if self.storage.exists(&self.root.join("new").join(unique)) {
            return true;
        }
        let prefix = format!("{unique}:");
        self.storage
            .list(&self.root.join("cur"))
            .is_ok_and(|names| names.iter().any(|name| name.starts_with(&prefix)))
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
                let unique = name.split(":2,").next().unwrap_or(&name).to_string();
                let path = entry.path();
                // Dovecot names a file with its CRLF size (`,W=`), which
                // saves reading it; other files are counted.
                let size = match size_in_name(&unique) {
                    Some(size) => size,
                    None => match File::open(&path).and_then(size_as_sent) {
                        Ok(size) => size,
                        // Gone since the listing (another session deleted it).
                        Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(error) => return Err(MaildirError { path, error }),
                    },
                };
                messages.push(StoredMessage { unique, path, size });
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

/// The size a Maildir++ file name carries in its `,W=<size>` field (the
/// size with CRLF line ends, as Dovecot writes it), if it has one.
fn size_in_name(unique: &str) -> Option<u64> {
    unique
        .split(',')
        .skip(1)
        .find_map(|field| field.strip_prefix("W="))
        .and_then(|size| size.parse().ok())
}

/// The size of a message as POP3 sends it: a bare LF is sent as CRLF, and
/// a last line without a line end gets one (as
/// [`dot_stuff`](crate::smtp::data::dot_stuff) sends it), dot-stuffing not
/// counted.
fn size_as_sent(mut message: impl Read) -> std::io::Result<u64> {
    let mut size = 0u64;
    // The byte before the current one; a line end before the first.
    let mut previous = b'\n';
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match message.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        for &byte in &buffer[..read] {
            if byte == b'\n' && previous != b'\r' {
                size += 1;
            }
            size += 1;
            previous = byte;
        }
    }
    size += match previous {
        b'\n' => 0,
        b'\r' => 1,
        _ => 2,
    };
    Ok(size)
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
    use crate::storage::sim::SimStorage;

    /// Delivers five messages on a simulated disk, the power cut at every
    /// write and sync point in turn: each delivery that returned is there
    /// with its exact bytes, and delivering everything again (as the queue
    /// does after a crash) stores each message exactly once.
    #[test]
    fn a_crash_at_any_point_loses_no_acknowledged_delivery_and_doubles_none() {
        let messages: Vec<(String, Vec<u8>)> = (0..5)
            .map(|i| {
                (
                    format!("1795000000.Q{i}R0.host"),
                    format!("Subject: {i}\r\n\r\nbody {i}\r\n").into_bytes(),
                )
            })
            .collect();
        let root = Path::new("/data/mail/postmaster");
        let run = |sim: &Arc<SimStorage>| -> Vec<usize> {
            let storage: Arc<dyn Storage> = Arc::new(sim.clone());
            let Ok(maildir) = Maildir::on(storage, root) else {
                return Vec::new();
            };
            let mut acknowledged = Vec::new();
            for (i, (unique, bytes)) in messages.iter().enumerate() {
                if maildir.deliver_as(unique, bytes).is_ok() {
                    acknowledged.push(i);
                }
            }
            acknowledged
        };
        let clean = SimStorage::new(0);
        run(&clean);
        for point in 1..=clean.points() {
            let sim = SimStorage::new(point);
            sim.crash_at(point);
            let acknowledged = run(&sim);
            sim.restart();
            let storage: Arc<dyn Storage> = Arc::new(sim.clone());
            let new = root.join("new");
            for &i in &acknowledged {
                let (unique, bytes) = &messages[i];
                let stored = storage.read(&new.join(unique));
                assert_eq!(
                    stored.ok().as_ref(),
                    Some(bytes),
                    "crash at {point}: {unique}"
                );
            }
            assert_eq!(
                run(&sim).len(),
                messages.len(),
                "crash at {point}: all delivered again"
            );
            let mut names = storage.list(&new).unwrap();
            names.sort();
            let expected: Vec<String> = messages.iter().map(|(u, _)| u.clone()).collect();
            assert_eq!(names, expected, "crash at {point}: each exactly once");
            for (unique, bytes) in &messages {
                assert_eq!(&storage.read(&new.join(unique)).unwrap(), bytes);
            }
        }
    }

    #[test]
    fn a_full_disk_defers_and_leaves_nothing_behind() {
        let sim = SimStorage::new(9);
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let root = Path::new("/data/mail/taro");
        let maildir = Maildir::on(storage.clone(), root).unwrap();
        sim.set_space(Some(10));
        assert!(maildir.deliver_as("1.Q1R0.host", &[b'm'; 100]).is_err());
        assert!(storage.list(&root.join("tmp")).unwrap().is_empty());
        assert!(storage.list(&root.join("new")).unwrap().is_empty());
        sim.set_space(None);
        maildir.deliver_as("1.Q1R0.host", &[b'm'; 100]).unwrap();
        assert_eq!(
            storage.read(&root.join("new/1.Q1R0.host")).unwrap(),
            vec![b'm'; 100]
        );
    }

    #[test]
    fn a_repeated_delivery_under_the_same_name_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::open(dir.path()).unwrap();
        maildir.deliver_as("1795000000.Q42R0.host", b"x").unwrap();
        maildir.deliver_as("1795000000.Q42R0.host", b"x").unwrap();
        assert_eq!(maildir.messages().unwrap().len(), 1);
    }

    #[test]
    fn sizes_count_line_ends_as_crlf_whatever_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::open(dir.path()).unwrap();
        let crlf = b"Subject: a\r\n\r\none\r\n.dot\r\n";
        let lf = b"Subject: a\n\none\n.dot\n";
        std::fs::write(dir.path().join("new/1700000001.M1P1.other"), crlf).unwrap();
        std::fs::write(dir.path().join("cur/1700000002.M1P1.other:2,S"), lf).unwrap();
        let messages = maildir.messages().unwrap();
        // Both are sent as the same 27 bytes (the leading dot is stuffed
        // on the wire, not counted).
        assert_eq!(messages[0].size, crlf.len() as u64);
        assert_eq!(messages[1].size, crlf.len() as u64);
        assert_eq!(messages[1].unique, "1700000002.M1P1.other");
    }

    #[test]
    fn the_size_counted_is_what_dot_stuff_sends() {
        let cases: [&[u8]; 7] = [
            b"",
            b"a\r\n",
            b"a\nb\n",
            b"no line end",
            b"cr at the end\r",
            b"bare\rcr\r\r\n\n",
            b"..x\n.\r\n",
        ];
        for message in cases {
            let sent = crate::smtp::data::dot_stuff(message, None);
            // Less the final ".\r\n" and the dots stuffed at line starts.
            let stuffed = sent
                .split(|&b| b == b'\n')
                .filter(|l| l.starts_with(b".."))
                .count();
            let expected = sent.len() - 3 - stuffed;
            assert_eq!(
                size_as_sent(message).unwrap(),
                expected as u64,
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
    }

    #[test]
    fn a_dovecot_size_in_the_name_is_taken_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::open(dir.path()).unwrap();
        let name = "1700000003.M5P6.host,S=10,W=12:2,S";
        std::fs::write(dir.path().join("cur").join(name), b"a\nb\nc\nd\ne\n").unwrap();
        let messages = maildir.messages().unwrap();
        assert_eq!(messages[0].unique, "1700000003.M5P6.host,S=10,W=12");
        assert_eq!(messages[0].size, 12);
        assert_eq!(size_in_name("1700000003.M5P6.host,S=10"), None);
        assert_eq!(size_in_name("1700000003.M5P6.host,W=x"), None);
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

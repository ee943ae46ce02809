//! Delivery history: for every attempt at every recipient, the path it
//! took (local, call, relay), the number and the rule that chose it, the
//! Call-ID, the SIP and SMTP replies, and the time it took — what the
//! patent promises the sender: knowing at once what became of the mail.
//!
//! Records are JSON lines appended to `data_dir/history.jsonl`;
//! `mailcall history` reads and filters them. The history is the patent's
//! communication record: each line is on disk before the outcome it
//! reports is (see [`History`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::queue::spool::SyncedFirst;
use crate::storage::{AppendFile, Disk, Storage};
use mailcall_sip::{Rung, Side};

use serde::{Deserialize, Serialize};

/// The file in the data folder.
pub const HISTORY_FILE: &str = "history.jsonl";

/// How a recipient's copy travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryPath {
    /// S3: into a local Maildir.
    Local,
    /// S5–S7: over a SIP call, straight to the final server.
    Call,
    /// S8: normal SMTP relay.
    Relay,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttemptOutcome {
    Delivered,
    Deferred,
    Failed,
    /// A call that failed and was followed by a relay.
    FellBack,
}

impl AttemptOutcome {
    /// As the history table and the JSON show it.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Deferred => "deferred",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::FellBack => "fell-back",
        }
    }

    /// True when the recipient is finished (delivered or failed for good).
    pub fn is_final(self) -> bool {
        matches!(self, AttemptOutcome::Delivered | AttemptOutcome::Failed)
    }
}

impl std::fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One attempt at one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When the attempt started, Unix milliseconds.
    pub at_ms: u64,
    /// The queue id of the message.
    pub queue_id: String,
    /// The message's `Message-ID`, if it has one.
    pub message_id: Option<String>,
    pub recipient: String,
    pub path: DeliveryPath,
    pub outcome: AttemptOutcome,
    /// The final reply or reason (`250 2.0.0 Ok: queued as 12`).
    pub detail: String,
    /// The number dialled, and the rule (with its module's SHA-256) and
    /// reason that chose the path, when a rule did.
    pub number: Option<String>,
    pub rule: Option<String>,
    pub rule_version: Option<String>,
    /// The policy generation that decided (`7-3f2a9c1b0e4d`).
    #[serde(default)]
    pub policy: Option<String>,
    pub reason: Option<String>,
    /// Shadow rules that would have routed this recipient otherwise: `rule:
    /// its decision (chain: the route taken)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow_disagreements: Vec<String>,
    pub call_id: Option<String>,
    /// The final SIP status of the call (200, 486, ...).
    pub sip_status: Option<u16>,
    /// The server talked to (`127.0.0.1:25`), or the mailbox.
    pub peer: Option<String>,
    pub elapsed_ms: u64,
    /// A call's ladder as the caller recorded it (Fig. 4: T1–T7, R1–R4,
    /// with the final server's SMTP replies), as far as the call got.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ladder: Vec<Rung>,
}

/// The history file, appended to by the delivery tasks.
///
/// A line is written before the spool records the outcome it reports, and
/// the spool syncs the history before each of its group commits
/// ([`SyncedFirst`]): so every outcome on disk has its line on disk, after
/// any crash. A line without an outcome (a crash in between) is an attempt
/// that happened and will be followed by another.
pub struct History {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    file: Mutex<Appender>,
    /// Lines written since the last sync.
    dirty: AtomicBool,
    /// A line could not be written: the next sync fails, so the outcome it
    /// reports is not committed without it (and is tried again).
    lost: AtomicBool,
    /// Held while syncing, so a second sync waits for the first to finish
    /// rather than returning before the lines it covers are on disk.
    syncing: Mutex<()>,
}

#[derive(Default)]
struct Appender {
    file: Option<Arc<dyn AppendFile>>,
    size: u64,
}

impl History {
    /// The history of the data folder `data_dir`; the file is made on the
    /// first record.
    pub fn new(data_dir: &Path) -> History {
        History::on(Disk::shared(), data_dir)
    }

    /// The same on `storage`.
    pub fn on(storage: Arc<dyn Storage>, data_dir: &Path) -> History {
        History {
            storage,
            path: data_dir.join(HISTORY_FILE),
            file: Mutex::new(Appender::default()),
            dirty: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            syncing: Mutex::new(()),
        }
    }

    /// Appends one attempt (made durable with the spool's next commit). A
    /// line that cannot be written is logged and fails the spool's next
    /// commit, so the outcome waits for a retry rather than going
    /// unrecorded; a failed write is cut back off, so the next line is whole.
    pub fn record(&self, attempt: &Attempt) {
        let Ok(mut line) = serde_json::to_vec(attempt) else {
            return;
        };
        line.push(b'\n');
        let mut appender = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if appender.file.is_none() {
            let existed = self.storage.exists(&self.path);
            let opened = self.storage.open_append(&self.path).and_then(|opened| {
                // A new file's name must be durable like its lines.
                match self.path.parent().filter(|_| !existed) {
                    Some(folder) => self.storage.sync_dir(folder).map(|()| opened),
                    None => Ok(opened),
                }
            });
            match opened {
                Ok(opened) => {
                    appender.size = opened.size().unwrap_or(0);
                    appender.file = Some(opened);
                }
                Err(error) => {
                    tracing::warn!(path = %self.path.display(), "cannot write the history: {error}");
                    self.lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
        let size = appender.size;
        let Some(file) = appender.file.clone() else {
            return;
        };
        match file.write_all(&line) {
            Ok(()) => {
                appender.size += line.len() as u64;
                self.dirty.store(true, Ordering::SeqCst);
            }
            Err(error) => {
                tracing::warn!(path = %self.path.display(), "cannot write the history: {error}");
                self.lost.store(true, Ordering::SeqCst);
                if file.truncate(size).is_err() {
                    // Start afresh at the next line: the size is unknown.
                    appender.file = None;
                }
            }
        }
    }

    /// Every attempt recorded in `data_dir`, oldest first; lines that do
    /// not parse (a torn last line after a crash) are skipped.
    pub fn read(data_dir: &Path) -> std::io::Result<Vec<Attempt>> {
        History::read_on(&Disk, data_dir)
    }

    /// The same on `storage`.
    pub fn read_on(storage: &dyn Storage, data_dir: &Path) -> std::io::Result<Vec<Attempt>> {
        let bytes = match storage.read(&data_dir.join(HISTORY_FILE)) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        Ok(bytes
            .split(|&b| b == b'\n')
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect())
    }
}

impl SyncedFirst for History {
    fn sync(&self) -> std::io::Result<()> {
        let _syncing = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        if self.lost.swap(false, Ordering::SeqCst) {
            return Err(std::io::Error::other("a history line could not be written"));
        }
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let file = self
            .file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .file
            .clone();
        let result = file.map_or(Ok(()), |file| file.sync());
        if result.is_err() {
            self.dirty.store(true, Ordering::SeqCst);
        }
        result
    }
}

/// The ladder of a call attempt as text, one step per line: its time from
/// the INVITE, the direction (A calls, B answers) and the label.
///
/// ```text
///        0.0 ms  A -> B  T1 INVITE sip:05022220000@127.0.0.1:5062
///        3.2 ms  A <- B  R2 200 OK
/// ```
pub fn ladder_text(attempt: &Attempt) -> String {
    let mut text = format!(
        "{} to {} by {} (Call-ID {}): {}\n",
        attempt.queue_id,
        attempt.recipient,
        attempt.number.as_deref().unwrap_or("?"),
        attempt.call_id.as_deref().unwrap_or("none"),
        attempt.outcome,
    );
    for rung in &attempt.ladder {
        let arrow = match rung.label.sender() {
            Side::Caller => "A -> B",
            Side::Callee => "A <- B",
        };
        text.push_str(&format!(
            "  {:>8.1} ms  {arrow}  {} {}\n",
            rung.at_us as f64 / 1000.0,
            rung.label,
            rung.text
        ));
    }
    text
}

/// The attempts as an aligned text table, one line each: recipient, path,
/// number, rule, policy generation, outcome, time, Call-ID and detail.
pub fn table(attempts: &[Attempt]) -> String {
    let header = [
        "queue id",
        "recipient",
        "path",
        "number",
        "rule",
        "policy",
        "outcome",
        "ms",
        "call-id",
        "detail",
    ];
    let rows: Vec<[String; 10]> = attempts
        .iter()
        .map(|a| {
            let path = match a.path {
                DeliveryPath::Local => "local",
                DeliveryPath::Call => "call",
                DeliveryPath::Relay => "relay",
            };
            [
                a.queue_id.clone(),
                a.recipient.clone(),
                path.to_string(),
                a.number.clone().unwrap_or_else(|| "-".into()),
                a.rule.clone().unwrap_or_else(|| "-".into()),
                a.policy.clone().unwrap_or_else(|| "-".into()),
                a.outcome.to_string(),
                a.elapsed_ms.to_string(),
                a.call_id.clone().unwrap_or_else(|| "-".into()),
                a.detail.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

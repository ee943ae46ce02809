//! Delivery history: for every attempt at every recipient, the path it
//! took (local, call, relay), the number and the rule that chose it, the
//! Call-ID, the SIP and SMTP replies, and the time it took — what the
//! patent promises the sender: knowing at once what became of the mail.
//!
//! Records are JSON lines appended to `data_dir/history.jsonl`;
//! `mailcall history` reads and filters them. The history is a report, not
//! the queue: it is written after the spool recorded the outcome, and not
//! fsynced.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
    /// `delivered`, `deferred` or `failed`; `fell-back` for a call that
    /// failed and was followed by a relay.
    pub outcome: String,
    /// The final reply or reason (`250 2.0.0 Ok: queued as 12`).
    pub detail: String,
    /// The number dialled, and the rule (with its module's SHA-256) and
    /// reason that chose the path, when a rule did.
    pub number: Option<String>,
    pub rule: Option<String>,
    pub rule_version: Option<String>,
    pub reason: Option<String>,
    pub call_id: Option<String>,
    /// The final SIP status of the call (200, 486, ...).
    pub sip_status: Option<u16>,
    /// The server talked to (`127.0.0.1:25`), or the mailbox.
    pub peer: Option<String>,
    pub elapsed_ms: u64,
}

/// The history file, appended to by the delivery tasks.
pub struct History {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl History {
    /// The history of the data folder `data_dir`; the file is made on the
    /// first record.
    pub fn new(data_dir: &Path) -> History {
        History {
            path: data_dir.join(HISTORY_FILE),
            file: Mutex::new(None),
        }
    }

    /// Appends one attempt. A history that cannot be written is logged,
    /// never a reason to fail a delivery.
    pub fn record(&self, attempt: &Attempt) {
        let Ok(mut line) = serde_json::to_vec(attempt) else {
            return;
        };
        line.push(b'\n');
        let Ok(mut file) = self.file.lock() else {
            return;
        };
        if file.is_none() {
            // 0600, also for a file an older version made wider: the
            // history names every sender and recipient.
            let opened = crate::private::file_options()
                .create(true)
                .append(true)
                .open(&self.path)
                .and_then(|opened| {
                    opened.set_permissions(crate::private::file_permissions())?;
                    Ok(opened)
                });
            match opened {
                Ok(opened) => *file = Some(opened),
                Err(error) => {
                    tracing::warn!(path = %self.path.display(), "cannot write the history: {error}");
                    return;
                }
            }
        }
        if let Some(file) = file.as_mut() {
            if let Err(error) = file.write_all(&line) {
                tracing::warn!(path = %self.path.display(), "cannot write the history: {error}");
            }
        }
    }

    /// Every attempt recorded in `data_dir`, oldest first; lines that do
    /// not parse (a torn last line after a crash) are skipped.
    pub fn read(data_dir: &Path) -> std::io::Result<Vec<Attempt>> {
        let file = match File::open(data_dir.join(HISTORY_FILE)) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let mut attempts = Vec::new();
        for line in BufReader::new(file).lines() {
            if let Ok(attempt) = serde_json::from_str(&line?) {
                attempts.push(attempt);
            }
        }
        Ok(attempts)
    }
}

/// The attempts as an aligned text table, one line each: recipient, path,
/// number, rule, outcome, time, Call-ID and detail.
pub fn table(attempts: &[Attempt]) -> String {
    let header = [
        "queue id",
        "recipient",
        "path",
        "number",
        "rule",
        "outcome",
        "ms",
        "call-id",
        "detail",
    ];
    let rows: Vec<[String; 9]> = attempts
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
                a.outcome.clone(),
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

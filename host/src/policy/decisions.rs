//! The decision log: one JSON line per evaluation — who was decided, by
//! which generation, each rule's decision, reason, time and the host
//! imports it called, and the input the rules saw — in the data folder,
//! bounded: when `current.jsonl` passes half the limit it becomes
//! `previous.jsonl` (replacing the one before), so the two stay within
//! `[policy] decision_log_mib`. `mailcall rules explain` reads it back and
//! `mailcall rules replay` feeds its inputs to a candidate module.
//!
//! It is a diagnostic record, not a durable one: lines are written by a
//! thread of their own, not synced, and dropped (counted, logged) when the
//! writer falls behind (the history is the communication record that
//! survives a crash).
//! With `decision_log_redact = true` addresses and numbers are masked and
//! the input is left out, so those records cannot be replayed.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use super::bindings::mailcall::rule::types::{Envelope, Message};
use super::chain::{Step, StepDecision, Verdict};

/// One evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub queue_id: String,
    pub recipient: String,
    pub generation: String,
    /// `dial NUMBER`, `smtp` or `defer`.
    pub route: String,
    /// The rule that decided, if one did.
    pub rule: Option<String>,
    pub reason: String,
    pub steps: Vec<Step>,
    /// Masked: addresses and numbers hidden, no input kept.
    #[serde(default)]
    pub redacted: bool,
    /// What the rules were given, for replay.
    pub input: Option<RecordedInput>,
}

/// The input of an evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedInput {
    pub envelope: Envelope,
    pub message: Message,
}

const CURRENT: &str = "current.jsonl";
const PREVIOUS: &str = "previous.jsonl";

/// Records waiting for the writer; more are dropped (and counted), so a
/// slow disk never holds up an evaluation.
const BACKLOG: usize = 4096;

/// The log a server writes. Records are serialized and written by a thread
/// of their own: an evaluation only hands its record over.
pub struct DecisionLog {
    records: Option<mpsc::SyncSender<DecisionRecord>>,
    writer: Option<std::thread::JoinHandle<()>>,
    redact: bool,
    dropped: AtomicU64,
}

/// The writer thread's side.
struct Writer {
    dir: PathBuf,
    /// Bytes `current.jsonl` may reach before it is rotated.
    rotate_at: u64,
    file: Option<(File, u64)>,
}

impl DecisionLog {
    /// The log in `dir` (made 0700), kept within `limit` bytes.
    pub fn open(dir: &Path, limit: u64, redact: bool) -> std::io::Result<DecisionLog> {
        crate::private::folder(dir)?;
        let (records, received) = mpsc::sync_channel::<DecisionRecord>(BACKLOG);
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            rotate_at: (limit / 2).max(4096),
            file: None,
        };
        let writer = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || {
                for record in received {
                    let Ok(mut line) = serde_json::to_vec(&record) else {
                        continue;
                    };
                    line.push(b'\n');
                    if let Err(error) = writer.append(&line) {
                        tracing::warn!(dir = %writer.dir.display(), "decision not recorded: {error}");
                    }
                }
            })?;
        Ok(DecisionLog {
            records: Some(records),
            writer: Some(writer),
            redact,
            dropped: AtomicU64::new(0),
        })
    }

    /// Records one evaluation; a full backlog or a failure to write is
    /// logged, never passed on (the delivery does not depend on it).
    pub fn record(
        &self,
        queue_id: &str,
        envelope: &Envelope,
        message: &Message,
        verdict: &Verdict,
        at_ms: u64,
    ) {
        let mut record = DecisionRecord {
            at_ms,
            queue_id: queue_id.to_string(),
            recipient: envelope.rcpt_to.clone(),
            generation: verdict
                .generation
                .as_ref()
                .map_or_else(String::new, ToString::to_string),
            route: verdict.route.to_string(),
            rule: verdict.rule.clone(),
            reason: verdict.reason.clone(),
            steps: verdict.steps.clone(),
            redacted: false,
            input: (!self.redact).then(|| RecordedInput {
                envelope: envelope.clone(),
                message: message.clone(),
            }),
        };
        if self.redact {
            redact(&mut record);
        }
        let Some(records) = &self.records else {
            return;
        };
        if records.try_send(record).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "decision log backlog full: records dropped");
            }
        }
    }
}

impl Drop for DecisionLog {
    /// Writes what is waiting before the log goes.
    fn drop(&mut self) {
        self.records = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Writer {
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        let current = self.dir.join(CURRENT);
        if self
            .file
            .as_ref()
            .is_some_and(|(_, size)| *size >= self.rotate_at)
        {
            self.file = None;
            std::fs::rename(&current, self.dir.join(PREVIOUS))?;
        }
        if self.file.is_none() {
            let opened = crate::private::file_options()
                .append(true)
                .create(true)
                .open(&current)?;
            let size = opened.metadata()?.len();
            self.file = Some((opened, size));
        }
        let (opened, size) = self.file.as_mut().expect("opened above");
        opened.write_all(line)?;
        *size += line.len() as u64;
        Ok(())
    }
}

/// Every record in the log in `dir`, oldest first; unreadable lines (a
/// line cut by a crash) are skipped.
pub fn read(dir: &Path) -> std::io::Result<Vec<DecisionRecord>> {
    let mut records = Vec::new();
    for name in [PREVIOUS, CURRENT] {
        let file = match File::open(dir.join(name)) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        for line in BufReader::new(file).lines() {
            if let Ok(record) = serde_json::from_str(&line?) {
                records.push(record);
            }
        }
    }
    Ok(records)
}

/// Hides addresses and numbers: digits become `#`, local parts `*`.
fn redact(record: &mut DecisionRecord) {
    record.redacted = true;
    record.input = None;
    record.recipient = mask(&record.recipient);
    record.route = mask(&record.route);
    record.reason = mask(&record.reason);
    for step in &mut record.steps {
        step.decision = match &step.decision {
            StepDecision::Dial { number, reason } => StepDecision::Dial {
                number: mask(number),
                reason: mask(reason),
            },
            StepDecision::Smtp { reason } => StepDecision::Smtp {
                reason: mask(reason),
            },
            other => other.clone(),
        };
        for import in &mut step.imports {
            for arg in &mut import.args {
                *arg = mask(arg);
            }
            import.result = mask(&import.result);
        }
    }
}

/// `050-1234@example.jp` → `###-****@example.jp`.
pub fn mask(text: &str) -> String {
    let mut out: Vec<char> = text
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    let ats: Vec<usize> = (0..out.len()).filter(|&i| out[i] == '@').collect();
    for at in ats {
        let mut i = at;
        while i > 0 && !matches!(out[i - 1], ' ' | '<' | '"' | ',' | ':' | '(' | '\t') {
            i -= 1;
            out[i] = '*';
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_hides_numbers_and_local_parts() {
        assert_eq!(
            mask("dial 05012345678 for <050-1234-5678@example.jp>, taro@x.jp"),
            "dial ########### for <*************@example.jp>, ****@x.jp"
        );
    }
}

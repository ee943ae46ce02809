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
//! survives a crash). An evaluation only hands over what it already holds
//! (the message view is shared, not copied); the writer takes what is
//! waiting every 50 ms and builds, masks and serializes the lines. The message is written once per queue id and file
//! (each recipient's line has its envelope); [`read`] puts it back into
//! every record of that queue id.
//! With `decision_log_redact = true` addresses and numbers are masked and
//! the input is left out, so those records cannot be replayed.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::bindings::mailcall::rule::types::{Envelope, Message};
use super::chain::{Route, Step, StepDecision, Verdict};
use super::generation::GenerationId;

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
    /// In the file only on the first record of its queue id; [`read`]
    /// fills in the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
}

/// What an evaluation hands to the writer thread.
struct Evaluation {
    at_ms: u64,
    queue_id: String,
    envelope: Envelope,
    message: Arc<Message>,
    route: Route,
    rule: Option<String>,
    reason: String,
    generation: Option<GenerationId>,
    steps: Vec<Step>,
}

const CURRENT: &str = "current.jsonl";
const PREVIOUS: &str = "previous.jsonl";

/// Records waiting for the writer; more are dropped (and counted), so a
/// slow disk never holds up an evaluation.
const BACKLOG: usize = 4096;

/// How often the writer takes what is waiting. An evaluation never wakes
/// it: a wake-up is a system call, dearer than recording itself.
const WRITE_EVERY: Duration = Duration::from_millis(50);

/// The log a server writes. Records are built, serialized and written by a
/// thread of their own: an evaluation only hands its parts over.
pub struct DecisionLog {
    waiting: Arc<Waiting>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// What evaluations hand over, taken by the writer in batches.
#[derive(Default)]
struct Waiting {
    evaluations: Mutex<Vec<Evaluation>>,
    closing: AtomicBool,
    dropped: AtomicU64,
}

/// The writer thread's side.
struct Writer {
    dir: PathBuf,
    /// Bytes `current.jsonl` may reach before it is rotated.
    rotate_at: u64,
    file: Option<(File, u64)>,
    redact: bool,
    /// Queue ids whose message is in `current.jsonl` already.
    messages_written: HashSet<String>,
}

/// Queue ids remembered per file; past that the set starts over (a message
/// is then written once more, which costs space, not correctness).
const MESSAGES_REMEMBERED: usize = 65_536;

impl DecisionLog {
    /// The log in `dir` (made 0700), kept within `limit` bytes.
    pub fn open(dir: &Path, limit: u64, redact: bool) -> std::io::Result<DecisionLog> {
        crate::private::folder(dir)?;
        let waiting = Arc::new(Waiting::default());
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            rotate_at: (limit / 2).max(4096),
            file: None,
            redact,
            messages_written: HashSet::new(),
        };
        let writer = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn({
                let waiting = waiting.clone();
                move || loop {
                    // Closing is read before the batch is taken, so nothing
                    // handed over before the log is dropped is left behind.
                    let closing = waiting.closing.load(Ordering::Acquire);
                    let batch = std::mem::take(&mut *waiting.lock());
                    for evaluation in batch {
                        if let Err(error) = writer.write(evaluation) {
                            tracing::warn!(dir = %writer.dir.display(), "decision not recorded: {error}");
                        }
                    }
                    if closing {
                        break;
                    }
                    std::thread::park_timeout(WRITE_EVERY);
                }
            })?;
        Ok(DecisionLog {
            waiting,
            writer: Some(writer),
        })
    }

    /// Records one evaluation, taking its steps (the rest of the verdict
    /// is left to the caller); a full backlog or a failure to write is
    /// logged, never passed on (the delivery does not depend on it).
    pub fn record(
        &self,
        queue_id: String,
        envelope: Envelope,
        message: &Arc<Message>,
        verdict: &mut Verdict,
        at_ms: u64,
    ) {
        let mut waiting = self.waiting.lock();
        if waiting.len() >= BACKLOG {
            drop(waiting);
            let dropped = self.waiting.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "decision log backlog full: records dropped");
            }
            return;
        }
        waiting.push(Evaluation {
            at_ms,
            queue_id,
            envelope,
            message: Arc::clone(message),
            route: verdict.route.clone(),
            rule: verdict.rule.clone(),
            reason: verdict.reason.clone(),
            generation: verdict.generation.clone(),
            steps: std::mem::take(&mut verdict.steps),
        });
    }
}

impl DecisionLog {
    /// Records dropped so far because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.waiting.dropped.load(Ordering::Relaxed)
    }

    /// Records waiting for the writer now.
    pub fn backlog(&self) -> usize {
        self.waiting.lock().len()
    }
}

impl Waiting {
    fn lock(&self) -> MutexGuard<'_, Vec<Evaluation>> {
        self.evaluations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for DecisionLog {
    /// Writes what is waiting before the log goes.
    fn drop(&mut self) {
        self.waiting.closing.store(true, Ordering::Release);
        if let Some(writer) = self.writer.take() {
            writer.thread().unpark();
            let _ = writer.join();
        }
    }
}

impl Writer {
    fn write(&mut self, evaluation: Evaluation) -> std::io::Result<()> {
        let Evaluation {
            at_ms,
            queue_id,
            envelope,
            message,
            route,
            rule,
            reason,
            generation,
            steps,
        } = evaluation;
        let mut record = DecisionRecord {
            at_ms,
            recipient: envelope.rcpt_to.clone(),
            generation: generation
                .as_ref()
                .map_or_else(String::new, ToString::to_string),
            route: route.to_string(),
            rule,
            reason,
            steps,
            redacted: false,
            input: None,
            queue_id,
        };
        if self.redact {
            redact(&mut record);
        } else {
            self.rotate_if_full()?;
            let first = !self.messages_written.contains(&record.queue_id);
            record.input = Some(RecordedInput {
                envelope,
                message: first.then(|| Message::clone(&message)),
            });
        }
        let mut line = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.append(&line)?;
        if record.input.as_ref().is_some_and(|i| i.message.is_some()) {
            if self.messages_written.len() >= MESSAGES_REMEMBERED {
                self.messages_written.clear();
            }
            self.messages_written.insert(record.queue_id);
        }
        Ok(())
    }

    /// Starts a new `current.jsonl` when this one has reached its share.
    fn rotate_if_full(&mut self) -> std::io::Result<()> {
        if self
            .file
            .as_ref()
            .is_some_and(|(_, size)| *size >= self.rotate_at)
        {
            self.file = None;
            self.messages_written.clear();
            std::fs::rename(self.dir.join(CURRENT), self.dir.join(PREVIOUS))?;
        }
        Ok(())
    }

    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.rotate_if_full()?;
        let current = self.dir.join(CURRENT);
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

/// Every record in the log in `dir`, oldest first, each with its message;
/// unreadable lines (a line cut by a crash) are skipped.
pub fn read(dir: &Path) -> std::io::Result<Vec<DecisionRecord>> {
    let mut records = Vec::new();
    for name in [PREVIOUS, CURRENT] {
        let file = match File::open(dir.join(name)) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        // The message of each queue id, from its first record in this file.
        let mut messages: HashMap<String, Message> = HashMap::new();
        for line in BufReader::new(file).lines() {
            let Ok(mut record) = serde_json::from_str::<DecisionRecord>(&line?) else {
                continue;
            };
            if let Some(input) = record.input.as_mut() {
                match &input.message {
                    Some(message) => {
                        messages.insert(record.queue_id.clone(), message.clone());
                    }
                    None => input.message = messages.get(&record.queue_id).cloned(),
                }
            }
            records.push(record);
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
    use super::super::chain::Route;
    use super::*;

    fn verdict() -> Verdict {
        Verdict {
            route: Route::Smtp,
            rule: None,
            reason: "no rule had an opinion".into(),
            version: None,
            generation: None,
            failures: Vec::new(),
            shadows: Vec::new(),
            steps: Vec::new(),
        }
    }

    fn envelope(rcpt: &str) -> Envelope {
        Envelope {
            mail_from: "a@x.example".into(),
            rcpt_to: rcpt.into(),
            client_address: "192.0.2.1".into(),
            helo: "x.example".into(),
        }
    }

    #[test]
    fn a_message_is_written_once_per_queue_id_and_file_and_read_back_into_each_record() {
        let dir = tempfile::tempdir().unwrap();
        let body = "0123456789".repeat(150);
        let message = Arc::new(Message {
            headers: Vec::new(),
            subject: Some("once".into()),
            from: Vec::new(),
            to: Vec::new(),
            cc: Vec::new(),
            body_text: body.clone(),
            body_truncated: false,
        });
        let recipients: Vec<String> = (0..12).map(|n| format!("r{n}@y.example")).collect();
        {
            // Each file may reach 4096 bytes: the message and a dozen
            // records do not fit in one.
            let log = DecisionLog::open(dir.path(), 8192, false).unwrap();
            for rcpt in &recipients {
                log.record("Q1".into(), envelope(rcpt), &message, &mut verdict(), 1);
            }
        }
        let mut lines = 0;
        for name in [PREVIOUS, CURRENT] {
            let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert_eq!(
                text.matches(&body).count(),
                1,
                "{name} holds the message once"
            );
            assert!(
                text.lines().next().unwrap().contains(&body),
                "in its first line"
            );
            lines += text.lines().count();
        }
        assert_eq!(lines, recipients.len());

        let records = read(dir.path()).unwrap();
        let read_back: Vec<_> = records.iter().map(|r| r.recipient.clone()).collect();
        assert_eq!(read_back, recipients);
        for record in &records {
            let input = record.input.as_ref().unwrap();
            assert_eq!(input.envelope.rcpt_to, record.recipient);
            assert_eq!(input.message.as_ref().unwrap().body_text, body);
        }
    }

    #[test]
    fn masking_hides_numbers_and_local_parts() {
        assert_eq!(
            mask("dial 05012345678 for <050-1234-5678@example.jp>, taro@x.jp"),
            "dial ########### for <*************@example.jp>, ****@x.jp"
        );
    }
}

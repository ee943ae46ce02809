//! Delivery history: for every attempt at every recipient, the path it
//! took (local, call, relay), the number and the rule that chose it, the
//! Call-ID, the SIP and SMTP replies, and the time it took — what the
//! patent promises the sender: knowing at once what became of the mail.
//!
//! Records are JSON lines appended to `data_dir/history.jsonl`;
//! `mailcall history` reads and filters them. The history is the patent's
//! communication record: each line is on disk with the outcome it reports
//! (see [`History`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::queue::spool::{Companion, Lines};
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
    /// No delivery: an operator's action on the queue (hold, release,
    /// retry, delete, bounce).
    Operator,
}

impl DeliveryPath {
    /// As the history table, the console and the metrics show it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryPath::Local => "local",
            DeliveryPath::Call => "call",
            DeliveryPath::Relay => "relay",
            DeliveryPath::Operator => "operator",
        }
    }
}

impl std::fmt::Display for DeliveryPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// The operator's actions (with [`DeliveryPath::Operator`]); a bounce
    /// is `Failed`.
    Held,
    Released,
    Retried,
    Deleted,
    /// The callee's record of a message that came in over a call (with
    /// [`DeliveryPath::Call`] and the ladder as this side saw it).
    Received,
}

impl AttemptOutcome {
    /// As the history table and the JSON show it.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Deferred => "deferred",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::FellBack => "fell-back",
            AttemptOutcome::Held => "held",
            AttemptOutcome::Released => "released",
            AttemptOutcome::Retried => "retried",
            AttemptOutcome::Deleted => "deleted",
            AttemptOutcome::Received => "received",
        }
    }

    /// True when the recipient is finished (delivered, failed for good or
    /// deleted).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            AttemptOutcome::Delivered | AttemptOutcome::Failed | AttemptOutcome::Deleted
        )
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

/// The history file, fed by the spool ([`Companion`]).
///
/// The lines of an outcome travel in the spool's outcome record and are
/// appended here as it is written; the file is synced before a segment
/// leaves the spool, and at start the spool gives back the lines a crash
/// took. So every outcome on disk has its lines in the history after any
/// crash, at the price of one sync per outcome (the spool's). A line may
/// be written twice after a crash (or after the file was rotated away),
/// never lost.
pub struct History {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    file: Mutex<Appender>,
    /// Lines written since the last sync.
    dirty: AtomicBool,
    /// A line could not be written: syncs fail until a restore gives it
    /// back, so no spool segment carrying it goes before.
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

    /// The open file (opened, or made and its name synced, on first use).
    fn open(&self, appender: &mut Appender) -> std::io::Result<Arc<dyn AppendFile>> {
        if let Some(file) = &appender.file {
            return Ok(file.clone());
        }
        let existed = self.storage.exists(&self.path);
        let opened = self.storage.open_append(&self.path)?;
        // A new file's name must be durable like its lines.
        if let Some(folder) = self.path.parent().filter(|_| !existed) {
            self.storage.sync_dir(folder)?;
        }
        appender.size = opened.size()?;
        appender.file = Some(opened.clone());
        Ok(opened)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Appender> {
        self.file.lock().unwrap_or_else(|p| p.into_inner())
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

impl History {
    /// Writes `lines` at the end; a write that fails is cut back off, so
    /// the next line is whole. Where they went, or would have gone (past
    /// any end if the file could not be opened or cut back), and whether
    /// they were written.
    fn write(&self, lines: &str) -> (u64, std::io::Result<()>) {
        let mut appender = self.lock();
        let written = self.open(&mut appender).and_then(|file| {
            let at = appender.size;
            file.write_all(lines.as_bytes()).inspect_err(|_| {
                if file.truncate(at).is_err() {
                    // Start afresh at the next line: the size is unknown.
                    appender.file = None;
                }
            })
        });
        let at = match appender.file {
            Some(_) => appender.size,
            None => u64::MAX,
        };
        if written.is_ok() {
            appender.size += lines.len() as u64;
            self.dirty.store(true, Ordering::SeqCst);
        }
        (at, written)
    }

    /// Appends lines that no spool record carries (the callee's record of
    /// a call), at best: a line that cannot be written is logged and
    /// dropped, and never holds up the spool's syncs.
    pub fn note(&self, lines: &str) {
        if let (_, Err(error)) = self.write(lines) {
            tracing::warn!(path = %self.path.display(), "cannot write the history: {error}");
        }
    }
}

impl Companion for History {
    /// A line that cannot be written is logged; the spool gives it back
    /// before its record goes (until then, syncs fail).
    fn append(&self, lines: &str) -> u64 {
        let (at, written) = self.write(lines);
        if let Err(error) = written {
            tracing::warn!(path = %self.path.display(), "cannot write the history: {error}");
            self.lost.store(true, Ordering::SeqCst);
        }
        at
    }

    fn sync(&self) -> std::io::Result<()> {
        let _syncing = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        if self.lost.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("a history line could not be written"));
        }
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let file = self.lock().file.clone();
        let result = file.map_or(Ok(()), |file| file.sync());
        if result.is_err() {
            self.dirty.store(true, Ordering::SeqCst);
        }
        result
    }

    fn restore(&self, lines: &[Lines]) -> std::io::Result<()> {
        let _syncing = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        let mut appender = self.lock();
        let restored = self.restore_locked(&mut appender, lines);
        if restored.is_err() {
            // What is in the file is unknown now: read it again next time.
            appender.file = None;
        }
        self.lost.store(restored.is_err(), Ordering::SeqCst);
        self.dirty.store(restored.is_err(), Ordering::SeqCst);
        restored
    }
}

impl History {
    /// Lines are checked where they were written: from the first that is
    /// not there on, the file is cut and they are written again, in their
    /// order (what followed in the file was later, and torn). A file
    /// shorter than where the lines start (rotated away) gets them at its
    /// end.
    fn restore_locked(&self, appender: &mut Appender, lines: &[Lines]) -> std::io::Result<()> {
        let Some(first) = lines.first() else {
            return Ok(());
        };
        let file = self.open(appender)?;
        let size = appender.size;
        // Normally from the first line; past the end, the last stretch,
        // so a torn line there can be cut.
        let from = if first.at <= size {
            first.at
        } else {
            size.saturating_sub(1 << 20)
        };
        let bytes = self.storage.read_at(&self.path, from, size - from)?;
        // Where whole lines end, at or after `end` (a torn line is cut).
        let whole_after = |end: usize| {
            let torn = bytes[end..].iter().rposition(|&b| b == b'\n');
            // No line end in a stretch read from the middle: a long line.
            let none = if end == 0 && from > 0 {
                bytes.len()
            } else {
                end
            };
            from + torn.map_or(none, |last| end + last + 1) as u64
        };
        let in_place = |lines: &Lines| {
            let start = lines.at.checked_sub(from)? as usize;
            let found = bytes.get(start..start.checked_add(lines.text.len())?)?;
            (found == lines.text.as_bytes()).then_some(start + lines.text.len())
        };
        let missing = lines.iter().position(|lines| in_place(lines).is_none());
        let (keep, rewrite) = match missing {
            // All there: only a torn line after them may need cutting.
            None => {
                let end = lines.last().and_then(in_place).unwrap_or(0);
                (whole_after(end), &lines[lines.len()..])
            }
            Some(index) if lines[index].at <= size => (lines[index].at, &lines[index..]),
            Some(index) => (whole_after(0), &lines[index..]),
        };
        if keep < size {
            file.truncate(keep)?;
            appender.size = keep;
        }
        if !rewrite.is_empty() {
            // What is kept may end in a torn line (never synced, its line
            // end lost): it is ended, so the first line given back is whole.
            let ended = keep == 0 || self.storage.read_at(&self.path, keep - 1, 1)? == b"\n";
            let mut text = String::from(if ended { "" } else { "\n" });
            text.extend(rewrite.iter().map(|lines| lines.text.as_str()));
            tracing::warn!(path = %self.path.display(), lines = rewrite.len(), "history lines lost in a crash written again from the spool");
            file.write_all(text.as_bytes())?;
            appender.size += text.len() as u64;
        }
        file.sync()
    }
}

/// Which attempts a list shows (`mailcall history`'s and the console's
/// filters); empty matches every attempt.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub path: Option<DeliveryPath>,
    pub outcome: Option<AttemptOutcome>,
    /// A part of the recipient's address (any case).
    pub recipient: Option<String>,
    /// The queue id or the Message-ID (with or without its `<>`).
    pub id: Option<String>,
}

impl Filter {
    pub fn matches(&self, attempt: &Attempt) -> bool {
        self.path.is_none_or(|path| attempt.path == path)
            && self
                .outcome
                .is_none_or(|outcome| attempt.outcome == outcome)
            && self.recipient.as_ref().is_none_or(|part| {
                let part = part.to_lowercase();
                attempt.recipient.to_lowercase().contains(&part)
            })
            && self.id.as_ref().is_none_or(|id| {
                let id = id.trim_matches(['<', '>']);
                attempt.queue_id == id || attempt.message_id.as_deref() == Some(id)
            })
    }
}

/// Up to `take` attempts matching `filter`, newest first, after the first
/// `skip` of them, and whether more follow. The file is read backwards in
/// blocks, so a page costs what it shows and what it skips, never the
/// whole history's memory.
pub fn newest(
    data_dir: &Path,
    filter: &Filter,
    skip: usize,
    take: usize,
) -> std::io::Result<(Vec<Attempt>, bool)> {
    use std::io::{Read, Seek, SeekFrom};
    const BLOCK: u64 = 64 << 10;
    let mut file = match std::fs::File::open(data_dir.join(HISTORY_FILE)) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Vec::new(), false))
        }
        Err(error) => return Err(error),
    };
    let mut end = file.seek(SeekFrom::End(0))?;
    // The start of the line the block before will finish.
    let mut partial: Vec<u8> = Vec::new();
    let mut found = Vec::new();
    let mut skipped = 0;
    let needle = filter
        .id
        .as_deref()
        .map(|id| id.trim_matches(['<', '>']).as_bytes())
        .filter(|id| !id.is_empty())
        .map(memchr::memmem::Finder::new);
    loop {
        let start = end.saturating_sub(BLOCK);
        let mut block = vec![0; (end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&partial);
        // The first line of a block may begin in the block before.
        let first_whole = if start == 0 {
            0
        } else {
            block
                .iter()
                .position(|&b| b == b'\n')
                .map_or(block.len(), |p| p + 1)
        };
        partial = block[..first_whole].to_vec();
        for line in block[first_whole..].rsplit(|&b| b == b'\n') {
            // Most lines are not the message sought: skip them unparsed.
            if needle.as_ref().is_some_and(|n| n.find(line).is_none()) {
                continue;
            }
            let Ok(attempt) = serde_json::from_slice::<Attempt>(line) else {
                continue;
            };
            if !filter.matches(&attempt) {
                continue;
            }
            if skipped < skip {
                skipped += 1;
            } else if found.len() == take {
                return Ok((found, true));
            } else {
                found.push(attempt);
            }
        }
        if start == 0 {
            return Ok((found, false));
        }
        end = start;
    }
}

/// The history lines of `attempts`, as the spool carries them.
pub fn lines(attempts: &[Attempt]) -> String {
    let mut text = String::new();
    for attempt in attempts {
        if let Ok(line) = serde_json::to_string(attempt) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    text
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
            Side::Local => "A  .  A",
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
            [
                a.queue_id.clone(),
                a.recipient.clone(),
                a.path.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::spool::{Envelope, Outcome, Spool, SpoolOptions};
    use crate::storage::sim::SimStorage;

    fn attempt(recipient: &str) -> Attempt {
        Attempt {
            at_ms: 1_795_000_000_000,
            queue_id: "Q1".into(),
            message_id: None,
            recipient: recipient.into(),
            path: DeliveryPath::Relay,
            outcome: AttemptOutcome::Delivered,
            detail: "250 ok".into(),
            number: None,
            rule: None,
            rule_version: None,
            policy: None,
            reason: None,
            shadow_disagreements: Vec::new(),
            call_id: None,
            sip_status: None,
            peer: Some("127.0.0.1:25".into()),
            elapsed_ms: 3,
            ladder: Vec::new(),
        }
    }

    fn open(storage: &Arc<dyn Storage>) -> Spool {
        let history = Arc::new(History::on(storage.clone(), Path::new("/data")));
        let options = SpoolOptions::default();
        Spool::open_with(
            storage.clone(),
            Path::new("/data/queue"),
            options,
            Some(history),
        )
        .unwrap()
        .0
    }

    #[test]
    fn pages_are_read_newest_first_from_the_end_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        // Lines across many 64 KiB blocks, some of them long.
        let mut text = String::new();
        for n in 0..3000usize {
            let mut attempt = attempt(&format!("r{n}@far.example"));
            attempt.queue_id = format!("Q{}", n % 7);
            if n.is_multiple_of(500) {
                attempt.detail = "x".repeat(70_000);
            }
            text.push_str(&lines(&[attempt]));
        }
        text.push_str("{\"torn\": ");
        std::fs::write(dir.path().join(HISTORY_FILE), text).unwrap();
        let all = Filter::default();
        let (first, more) = newest(dir.path(), &all, 0, 50).unwrap();
        assert!(more);
        let recipients: Vec<&str> = first.iter().map(|a| a.recipient.as_str()).collect();
        assert_eq!(
            recipients[..3],
            [
                "r2999@far.example",
                "r2998@far.example",
                "r2997@far.example"
            ]
        );
        let (page, _) = newest(dir.path(), &all, 2950, 50).unwrap();
        assert_eq!(page.len(), 50);
        assert_eq!(page[49].recipient, "r0@far.example");
        assert_eq!(page[0].recipient, "r49@far.example");
        let (rest, more) = newest(dir.path(), &all, 2990, 50).unwrap();
        assert_eq!((rest.len(), more), (10, false));
        // Filters: by queue id (each 7th line), by recipient part.
        let q3 = Filter {
            id: Some("Q3".into()),
            ..Filter::default()
        };
        let (found, _) = newest(dir.path(), &q3, 0, usize::MAX).unwrap();
        assert_eq!(found.len(), (0..3000).filter(|n| n % 7 == 3).count());
        assert!(found.iter().all(|a| a.queue_id == "Q3"));
        let part = Filter {
            recipient: Some("R1234@".into()),
            ..Filter::default()
        };
        let (found, _) = newest(dir.path(), &part, 0, 10).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].recipient, "r1234@far.example");
    }

    #[test]
    fn lines_a_power_cut_took_come_back_from_the_spool() {
        for seed in 0..16 {
            let sim = SimStorage::new(seed);
            let storage: Arc<dyn Storage> = Arc::new(sim.clone());
            let spool = open(&storage);
            let envelope = Envelope {
                mail_from: "a@sender.example".into(),
                recipients: vec!["b@far.example".into(), "c@far.example".into()],
                received_at: 1_795_000_000,
                received_at_ms: 0,
                client_address: "127.0.0.1".into(),
                helo: "client.example".into(),
                envelope_id: None,
                return_full: None,
                notify: Vec::new(),
                original_recipients: Vec::new(),
            };
            let id = spool.enqueue(envelope, b"hello").unwrap();
            let delivered = || Outcome::Delivered {
                detail: "250 ok".into(),
            };
            // A failed call and the relay after it, then another recipient.
            let mut fell_back = attempt("b@far.example");
            fell_back.outcome = AttemptOutcome::FellBack;
            let first = [fell_back, attempt("b@far.example")];
            spool.record(id, 0, delivered(), lines(&first)).unwrap();
            spool
                .record(id, 1, delivered(), lines(&[attempt("c@far.example")]))
                .unwrap();
            // Nothing synced the history file itself: the cut tears it.
            drop(spool);
            sim.restart();
            drop(open(&storage));
            let read = History::read_on(storage.as_ref(), Path::new("/data")).unwrap();
            let expected = [first.to_vec(), vec![attempt("c@far.example")]].concat();
            assert_eq!(read, expected, "seed {seed}");
            // Once given back, a second start writes nothing again.
            drop(open(&storage));
            let again = History::read_on(storage.as_ref(), Path::new("/data")).unwrap();
            assert_eq!(again, expected, "seed {seed}");
        }
    }
}

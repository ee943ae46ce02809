//! The spool: an append-only journal in segment files, with group commit.
//!
//! An accepted message is one record (its envelope and its bytes) appended
//! to the current segment; what happens to its recipients later (delivered,
//! bounced, deferred) is appended as small records. [`Spool::enqueue`] and
//! [`Spool::record`] return only once their record is on disk (`fsync`), so
//! the SMTP server may answer `250`. Sessions that commit at the same time
//! share one `fsync`: whoever finds no sync in progress syncs everything
//! written so far, the others wait for it (group commit). So durability is
//! never traded for speed, and throughput grows with concurrency.
//!
//! Records are framed as `length (u32 LE) | CRC-32 (u32 LE) | payload`. On
//! start every segment is replayed in order; a torn record at the end of the
//! last segment (a crash mid-write, before its `fsync`, so never
//! acknowledged) ends the replay of that segment. A segment whose messages
//! are all finished is deleted.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// A new segment is started when the current one passes this size.
const SEGMENT_LIMIT: u64 = 64 << 20;
/// The largest record accepted (a message and its envelope).
const RECORD_LIMIT: usize = 256 << 20;

/// A spool operation failed: the disk, or a damaged segment.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("spool {path}: damaged record at offset {offset}: {reason}")]
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("message {0} is not in the spool")]
    Unknown(MessageId),
    #[error("record of {0} bytes is over the limit")]
    TooLarge(usize),
}

/// A message's identity in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub u64);

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// The envelope kept with a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// `MAIL FROM`, empty for the null sender.
    pub mail_from: String,
    /// The recipients, in `RCPT TO` order.
    pub recipients: Vec<String>,
    /// Seconds since the Unix epoch when the message was accepted.
    pub received_at: u64,
    /// The client's address and EHLO name, for the rules and the log.
    pub client_address: String,
    pub helo: String,
    /// RFC 3461 parameters, kept for the delivery status notifications:
    /// `ENVID`, `RET` (true: FULL), and per recipient `NOTIFY` (as
    /// smtp-proto's flags) and `ORCPT`.
    #[serde(default)]
    pub envelope_id: Option<String>,
    #[serde(default)]
    pub return_full: Option<bool>,
    #[serde(default)]
    pub notify: Vec<u64>,
    #[serde(default)]
    pub original_recipients: Vec<Option<String>>,
}

/// What happened to one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Accepted by the final or next server, or stored locally: finished.
    Delivered { detail: String },
    /// Refused for good, or expired: finished (a bounce goes to the sender).
    Failed { detail: String },
    /// A temporary failure: try again at `retry_at` (Unix seconds).
    Deferred {
        detail: String,
        attempts: u32,
        retry_at: u64,
    },
}

impl Outcome {
    fn is_final(&self) -> bool {
        !matches!(self, Outcome::Deferred { .. })
    }
}

/// A message in the queue, as recovered or as kept while it is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: MessageId,
    pub envelope: Envelope,
    /// The latest outcome of each recipient (by index); `None`: not tried.
    pub outcomes: Vec<Option<Outcome>>,
}

impl Queued {
    /// A message just accepted: no recipient tried yet.
    fn new(id: MessageId, envelope: Envelope) -> Queued {
        let outcomes = vec![None; envelope.recipients.len()];
        Queued {
            id,
            envelope,
            outcomes,
        }
    }

    /// True when every recipient has a final outcome.
    pub fn is_finished(&self) -> bool {
        self.outcomes
            .iter()
            .all(|o| o.as_ref().is_some_and(Outcome::is_final))
    }
}

#[derive(Serialize, Deserialize)]
enum Record {
    Message {
        id: MessageId,
        envelope: Envelope,
        body_length: u64,
    },
    Recipient {
        id: MessageId,
        index: usize,
        outcome: Outcome,
    },
}

/// Where a message's bytes are.
#[derive(Debug, Clone, Copy)]
struct BodyLocation {
    segment: u64,
    offset: u64,
    length: u64,
}

struct Writer {
    segment: u64,
    file: File,
    size: u64,
    /// Records written (to the page cache) and known to be on disk.
    written: u64,
    synced: u64,
    syncing: bool,
    next_id: u64,
    /// Unfinished messages per segment, to delete finished segments.
    live: BTreeMap<u64, usize>,
    messages: HashMap<MessageId, (Queued, BodyLocation)>,
}

/// The journal of accepted messages.
pub struct Spool {
    dir: PathBuf,
    writer: Mutex<Writer>,
    synced: Condvar,
}

impl Spool {
    /// Opens (or creates) the spool in `dir` and replays it; returns the
    /// unfinished messages.
    pub fn open(dir: &Path) -> Result<(Spool, Vec<Queued>), SpoolError> {
        let io = |error| SpoolError::Io {
            path: dir.to_path_buf(),
            error,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let segments = list_segments(dir)?;
        // Ids grow across restarts even when the spool was left empty: they
        // start from the clock (microseconds), so a message is never given
        // the id of one delivered before.
        let mut next_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let mut messages = replay_all(dir, &segments, &mut next_id)?;
        messages.retain(|_, (queued, _)| !queued.is_finished());
        let mut live = BTreeMap::new();
        for (_, location) in messages.values() {
            *live.entry(location.segment).or_insert(0) += 1;
        }
        // Segments with nothing unfinished are done; a new segment starts.
        for &segment in &segments {
            if !live.contains_key(&segment) {
                let _ = std::fs::remove_file(segment_path(dir, segment));
            }
        }
        let segment = segments.last().map_or(1, |last| last + 1);
        let file = create_segment(dir, segment)?;
        let mut recovered: Vec<Queued> = messages
            .values()
            .map(|(queued, _)| queued.clone())
            .collect();
        recovered.sort_by_key(|queued| queued.id);
        let spool = Spool {
            dir: dir.to_path_buf(),
            writer: Mutex::new(Writer {
                segment,
                file,
                size: 0,
                written: 0,
                synced: 0,
                syncing: false,
                next_id,
                live,
                messages,
            }),
            synced: Condvar::new(),
        };
        Ok((spool, recovered))
    }

    /// The unfinished messages of the spool in `dir`, read without changing
    /// anything, so it is safe while a server has the spool open.
    pub fn inspect(dir: &Path) -> Result<Vec<Queued>, SpoolError> {
        let segments = match list_segments(dir) {
            Err(SpoolError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
                Vec::new()
            }
            other => other?,
        };
        let messages = replay_all(dir, &segments, &mut 0)?;
        let mut pending: Vec<Queued> = messages
            .into_values()
            .map(|(queued, _)| queued)
            .filter(|queued| !queued.is_finished())
            .collect();
        pending.sort_by_key(|queued| queued.id);
        Ok(pending)
    }

    /// Stores a message durably; returns once it is on disk.
    pub fn enqueue(&self, envelope: Envelope, body: &[u8]) -> Result<MessageId, SpoolError> {
        let mut writer = self.lock();
        let id = MessageId(writer.next_id);
        writer.next_id += 1;
        let record = Record::Message {
            id,
            envelope: envelope.clone(),
            body_length: body.len() as u64,
        };
        let (segment, offset) = self.append(&mut writer, &record, body)?;
        let location = BodyLocation {
            segment,
            offset,
            length: body.len() as u64,
        };
        writer
            .messages
            .insert(id, (Queued::new(id, envelope), location));
        *writer.live.entry(segment).or_insert(0) += 1;
        self.wait_synced(writer)?;
        Ok(id)
    }

    /// Records what happened to recipient `index` of message `id`; returns
    /// once it is on disk. When the message is finished it leaves the spool.
    pub fn record(&self, id: MessageId, index: usize, outcome: Outcome) -> Result<(), SpoolError> {
        let mut writer = self.lock();
        let known = writer
            .messages
            .get(&id)
            .is_some_and(|(q, _)| index < q.outcomes.len());
        if !known {
            return Err(SpoolError::Unknown(id));
        }
        let record = Record::Recipient {
            id,
            index,
            outcome: outcome.clone(),
        };
        self.append(&mut writer, &record, &[])?;
        let finished = match writer.messages.get_mut(&id) {
            Some((queued, _)) => {
                queued.outcomes[index] = Some(outcome);
                queued.is_finished()
            }
            None => false,
        };
        self.wait_synced(writer)?;
        // Only once the outcome is on disk may the message's segment go.
        if finished {
            let mut writer = self.lock();
            if let Some((_, location)) = writer.messages.remove(&id) {
                self.release(&mut writer, location.segment);
            }
        }
        Ok(())
    }

    /// The bytes of message `id`.
    pub fn body(&self, id: MessageId) -> Result<Vec<u8>, SpoolError> {
        let location = {
            let writer = self.lock();
            writer.messages.get(&id).ok_or(SpoolError::Unknown(id))?.1
        };
        let path = segment_path(&self.dir, location.segment);
        let io = |error| SpoolError::Io {
            path: path.clone(),
            error,
        };
        let mut file = File::open(&path).map_err(io)?;
        file.seek(SeekFrom::Start(location.offset)).map_err(io)?;
        let mut body = vec![0; location.length as usize];
        file.read_exact(&mut body).map_err(io)?;
        Ok(body)
    }

    /// Message `id`, if it is unfinished.
    pub fn get(&self, id: MessageId) -> Option<Queued> {
        self.lock()
            .messages
            .get(&id)
            .map(|(queued, _)| queued.clone())
    }

    /// The unfinished messages, oldest first.
    pub fn pending(&self) -> Vec<Queued> {
        let writer = self.lock();
        let mut pending: Vec<Queued> = writer.messages.values().map(|(q, _)| q.clone()).collect();
        pending.sort_by_key(|q| q.id);
        pending
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends one record (to the page cache); returns the segment and the
    /// offset of `body` in it.
    fn append(
        &self,
        writer: &mut Writer,
        record: &Record,
        body: &[u8],
    ) -> Result<(u64, u64), SpoolError> {
        if writer.size > SEGMENT_LIMIT {
            let segment = writer.segment + 1;
            writer.file = create_segment(&self.dir, segment)?;
            let old = writer.segment;
            writer.segment = segment;
            writer.size = 0;
            if !writer.live.contains_key(&old) {
                let _ = std::fs::remove_file(segment_path(&self.dir, old));
            }
        }
        let header = serde_json::to_vec(record).expect("records serialize");
        let payload_length = 4 + header.len() + body.len();
        if payload_length > RECORD_LIMIT {
            return Err(SpoolError::TooLarge(payload_length));
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&(header.len() as u32).to_le_bytes());
        hasher.update(&header);
        hasher.update(body);
        let mut frame = Vec::with_capacity(8 + payload_length);
        frame.extend_from_slice(&(payload_length as u32).to_le_bytes());
        frame.extend_from_slice(&hasher.finalize().to_le_bytes());
        frame.extend_from_slice(&(header.len() as u32).to_le_bytes());
        frame.extend_from_slice(&header);
        let body_offset = writer.size + frame.len() as u64;
        frame.extend_from_slice(body);
        let path = segment_path(&self.dir, writer.segment);
        writer
            .file
            .write_all(&frame)
            .map_err(|error| SpoolError::Io { path, error })?;
        writer.size += frame.len() as u64;
        writer.written += 1;
        Ok((writer.segment, body_offset))
    }

    /// Group commit: returns once everything this caller wrote is on disk,
    /// syncing it (and whatever others wrote meanwhile) if no one else is.
    fn wait_synced<'a>(&'a self, mut writer: MutexGuard<'a, Writer>) -> Result<(), SpoolError> {
        let mine = writer.written;
        loop {
            if writer.synced >= mine {
                return Ok(());
            }
            if writer.syncing {
                writer = self.synced.wait(writer).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            writer.syncing = true;
            let target = writer.written;
            let path = segment_path(&self.dir, writer.segment);
            let file = writer.file.try_clone();
            drop(writer);
            let result = file.and_then(|file| file.sync_data());
            writer = self.lock();
            writer.syncing = false;
            if result.is_ok() {
                writer.synced = writer.synced.max(target);
            }
            self.synced.notify_all();
            result.map_err(|error| SpoolError::Io { path, error })?;
        }
    }

    fn release(&self, writer: &mut Writer, segment: u64) {
        let Some(count) = writer.live.get_mut(&segment) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            writer.live.remove(&segment);
            if segment != writer.segment {
                let _ = std::fs::remove_file(segment_path(&self.dir, segment));
            }
        }
    }
}

/// The segments in `dir`, oldest first.
fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let entries = std::fs::read_dir(dir).map_err(|error| SpoolError::Io {
        path: dir.to_path_buf(),
        error,
    })?;
    let mut segments: Vec<u64> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            u64::from_str_radix(name.strip_suffix(".seg")?, 16).ok()
        })
        .collect();
    segments.sort();
    Ok(segments)
}

/// Replays `segments` in order; `next_id` ends above every id seen.
fn replay_all(
    dir: &Path,
    segments: &[u64],
    next_id: &mut u64,
) -> Result<HashMap<MessageId, (Queued, BodyLocation)>, SpoolError> {
    let mut messages = HashMap::new();
    for &segment in segments {
        replay(&segment_path(dir, segment), segment, &mut messages, next_id)?;
    }
    Ok(messages)
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016x}.seg"))
}

/// Creates a segment and makes its name durable (directory fsync).
fn create_segment(dir: &Path, segment: u64) -> Result<File, SpoolError> {
    let path = segment_path(dir, segment);
    let io = |error| SpoolError::Io {
        path: path.clone(),
        error,
    };
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(file)
}

/// Replays one segment into `messages`.
fn replay(
    path: &Path,
    segment: u64,
    messages: &mut HashMap<MessageId, (Queued, BodyLocation)>,
    next_id: &mut u64,
) -> Result<(), SpoolError> {
    let bytes = std::fs::read(path).map_err(|error| SpoolError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let damaged = |offset: usize, reason: &str| SpoolError::Damaged {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason: reason.to_string(),
    };
    let mut offset = 0;
    while offset + 8 <= bytes.len() {
        let length = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap());
        let Some(payload) = bytes.get(offset + 8..offset + 8 + length) else {
            break; // torn tail: written, never synced, never acknowledged
        };
        if crc32fast::hash(payload) != crc || length < 4 {
            break; // the same: a partial write
        }
        let header_length = u32::from_le_bytes(payload[..4].try_into().unwrap()) as usize;
        let header = payload
            .get(4..4 + header_length)
            .ok_or_else(|| damaged(offset, "header length"))?;
        let record: Record =
            serde_json::from_slice(header).map_err(|e| damaged(offset, &e.to_string()))?;
        match record {
            Record::Message {
                id,
                envelope,
                body_length,
            } => {
                let location = BodyLocation {
                    segment,
                    offset: (offset + 8 + 4 + header_length) as u64,
                    length: body_length,
                };
                *next_id = (*next_id).max(id.0 + 1);
                messages.insert(id, (Queued::new(id, envelope), location));
            }
            Record::Recipient { id, index, outcome } => {
                if let Some(slot) = messages
                    .get_mut(&id)
                    .and_then(|(q, _)| q.outcomes.get_mut(index))
                {
                    *slot = Some(outcome);
                }
            }
        }
        offset += 8 + length;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn envelope(recipients: &[&str]) -> Envelope {
        Envelope {
            mail_from: "a@sender.example".into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            received_at: 1_795_000_000,
            client_address: "127.0.0.1".into(),
            helo: "client.example".into(),
            envelope_id: None,
            return_full: None,
            notify: Vec::new(),
            original_recipients: Vec::new(),
        }
    }

    #[test]
    fn messages_and_outcomes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, recovered) = Spool::open(dir.path()).unwrap();
        assert!(recovered.is_empty());
        let first = spool
            .enqueue(
                envelope(&["x@y.example", "z@y.example"]),
                b"Subject: 1\r\n\r\none\r\n",
            )
            .unwrap();
        let second = spool
            .enqueue(envelope(&["w@y.example"]), b"Subject: 2\r\n\r\ntwo\r\n")
            .unwrap();
        spool
            .record(
                first,
                0,
                Outcome::Delivered {
                    detail: "250 ok".into(),
                },
            )
            .unwrap();
        let deferred = Outcome::Deferred {
            detail: "451 later".into(),
            attempts: 1,
            retry_at: 42,
        };
        spool.record(first, 1, deferred.clone()).unwrap();
        spool
            .record(
                second,
                0,
                Outcome::Failed {
                    detail: "550 no".into(),
                },
            )
            .unwrap();
        drop(spool);

        assert_eq!(Spool::inspect(dir.path()).unwrap().len(), 1);
        let (spool, recovered) = Spool::open(dir.path()).unwrap();
        assert_eq!(recovered.len(), 1, "the finished message is gone");
        assert_eq!(recovered[0].id, first);
        assert_eq!(recovered[0].outcomes[1], Some(deferred));
        assert_eq!(spool.body(first).unwrap(), b"Subject: 1\r\n\r\none\r\n");
        // Ids keep growing after a restart.
        let third = spool.enqueue(envelope(&["v@y.example"]), b"3").unwrap();
        assert!(third > second);
    }

    #[test]
    fn a_torn_record_at_the_end_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let id = spool.enqueue(envelope(&["x@y.example"]), b"kept").unwrap();
        drop(spool);
        let segment = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
        drop(file);
        let (spool, recovered) = Spool::open(dir.path()).unwrap();
        assert_eq!(recovered.len(), 1);
        assert_eq!(spool.body(id).unwrap(), b"kept");
    }

    #[test]
    fn concurrent_sessions_share_fsyncs_and_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let spool = Arc::new(spool);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let spool = spool.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| {
                            spool
                                .enqueue(envelope(&["x@y.example"]), format!("{t}-{i}").as_bytes())
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let ids: Vec<MessageId> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(ids.len(), 200);
        drop(spool);
        let (spool, recovered) = Spool::open(dir.path()).unwrap();
        assert_eq!(recovered.len(), 200);
        let mut bodies: Vec<Vec<u8>> = recovered
            .iter()
            .map(|q| spool.body(q.id).unwrap())
            .collect();
        bodies.sort();
        bodies.dedup();
        assert_eq!(bodies.len(), 200);
    }

    #[test]
    fn finished_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let id = spool.enqueue(envelope(&["x@y.example"]), b"x").unwrap();
        spool
            .record(
                id,
                0,
                Outcome::Delivered {
                    detail: "250".into(),
                },
            )
            .unwrap();
        drop(spool);
        let (_spool, recovered) = Spool::open(dir.path()).unwrap();
        assert!(recovered.is_empty());
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(segments, 1, "only the new, empty segment is left");
    }
}

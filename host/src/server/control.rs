//! The control socket: how `mailcall reload`, `mailcall rules rollback`,
//! `mailcall rules status` and the queue actions (`mailcall queue hold`
//! and the rest) talk to the running server, as `postqueue` talks
//! to Postfix and `kamcmd` to Kamailio. A Unix socket in the data folder
//! (0700, so only the server's user reaches it); one JSON request line,
//! one JSON answer line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use tokio::sync::mpsc::UnboundedSender;

use super::Work;
use crate::policy::{LatencySnapshot, PolicyEngine, ReloadReport};
use crate::queue::action::{self, Action};
use crate::queue::spool::{MessageId, Spool};

/// The socket's name in the data folder.
pub const CONTROL_SOCKET: &str = "control.sock";

/// A command for the running server.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Policy(PolicyRequest),
    /// An operator's action on queued messages (queue ids, or `ALL`).
    Queue {
        action: Action,
        ids: Vec<String>,
    },
}

/// A command about the rule policy.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyRequest {
    /// Rebuild the policy, from `config` if given.
    Reload { config: Option<PathBuf> },
    /// Put a kept generation back in force (`None`: the one before).
    Rollback { to: Option<u64> },
    /// The policy in force, the kept generations and each rule's counters.
    Status,
}

/// The server's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    /// False when the command was refused.
    pub ok: bool,
    /// The generation in force afterwards.
    pub generation: Option<String>,
    /// Why it was refused.
    pub error: Option<String>,
    /// Changed settings ignored until a restart.
    #[serde(default)]
    pub needs_restart: Vec<String>,
    #[serde(default)]
    pub status: Option<Status>,
    /// What a queue action did, a line per message.
    #[serde(default)]
    pub lines: Vec<String>,
}

/// `mailcall rules status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// The kept generations, oldest first: id, when it was built (Unix
    /// seconds), whether it is in force.
    pub generations: Vec<(String, u64, bool)>,
    pub rules: Vec<RuleStatus>,
    /// Reloads since start: put in force, refused.
    #[serde(default)]
    pub reloads: (u64, u64),
}

/// One rule of the active generation.
#[derive(Debug, Serialize, Deserialize)]
pub struct RuleStatus {
    pub name: String,
    pub digest: Option<String>,
    /// The rule contract version its module was built against.
    #[serde(default)]
    pub contract: Option<String>,
    /// active, shadow, canary N %.
    #[serde(default)]
    pub mode: String,
    /// How long its evaluations took.
    #[serde(default)]
    pub latency: LatencySnapshot,
    pub evaluations: u64,
    pub dials: u64,
    pub smtp: u64,
    pub no_opinion: u64,
    pub failures: u64,
    pub timeouts: u64,
    pub memory_caps: u64,
    pub shadow_evaluations: u64,
    pub shadow_disagreements: u64,
    pub deferrals: u64,
    pub fallbacks: u64,
    pub breaker_trips: u64,
}

/// Why the server could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no server answers on {path} (is it running with this data folder?): {error}")]
    Connect {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the server's answer could not be read: {0}")]
    Answer(String),
}

/// Sends `request` to the server running on `data_dir` and waits for its
/// answer (a reload may compile modules: allow it a minute).
pub fn ask(data_dir: &Path, request: &Request) -> Result<Answer, ControlError> {
    let path = data_dir.join(CONTROL_SOCKET);
    let connect_error = |error| ControlError::Connect {
        path: path.clone(),
        error,
    };
    let mut stream = UnixStream::connect(&path).map_err(connect_error)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(connect_error)?;
    let mut line = serde_json::to_vec(request).map_err(|e| ControlError::Answer(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(connect_error)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| ControlError::Answer(e.to_string()))?;
    serde_json::from_str(&answer).map_err(|e| ControlError::Answer(format!("{e}: {answer:?}")))
}

/// What the queue actions need of the server.
#[derive(Clone)]
pub struct QueueControl {
    pub spool: Arc<Spool>,
    /// The reporting server's name in a bounce.
    pub hostname: String,
    /// The scheduler: released and retried messages go to it at once.
    pub work: UnboundedSender<Work>,
}

impl QueueControl {
    /// Carries out `action` on `ids` (`ALL`: every queued message) for
    /// operator `by`; a line per message, and whether all of them went.
    pub fn act(&self, action: Action, ids: &[String], by: &str) -> (Vec<String>, bool) {
        let ids: Vec<Result<MessageId, String>> = if ids.iter().any(|id| id == "ALL") {
            self.spool.pending().iter().map(|q| Ok(q.id)).collect()
        } else {
            ids.iter()
                .map(|id| {
                    u64::from_str_radix(id, 16)
                        .map(MessageId)
                        .map_err(|_| format!("{id}: not a queue id"))
                })
                .collect()
        };
        let mut all_went = true;
        let lines = ids
            .into_iter()
            .map(|id| {
                let outcome = id.and_then(|id| {
                    action::apply(&self.spool, &self.hostname, action, id, by)
                        .map(|acted| (id, acted))
                        .map_err(|error| error.to_string())
                });
                match outcome {
                    Ok((id, acted)) => {
                        if acted.due_now {
                            let _ = self.work.send(Work::Deliver(id));
                        }
                        let mut line = format!("{id}: {action}: {} recipients", acted.changed);
                        if let Some(report) = acted.report {
                            let _ = self.work.send(Work::Deliver(report));
                            line.push_str(&format!(", report {report} to the sender"));
                        }
                        line
                    }
                    Err(error) => {
                        all_went = false;
                        error
                    }
                }
            })
            .collect();
        (lines, all_went)
    }
}

/// Answers control requests until the task is dropped.
pub async fn listen(data_dir: &Path, policy: Option<Arc<PolicyEngine>>, queue: QueueControl) {
    let path = data_dir.join(CONTROL_SOCKET);
    // A socket left by a server that did not stop cleanly.
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(socket = %path.display(), "no control socket, `mailcall reload` will not reach this server: {error}");
            return std::future::pending().await;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (policy, queue) = (policy.clone(), queue.clone());
        tokio::spawn(async move {
            let (reader, mut writer) = stream.into_split();
            let mut line = String::new();
            // One request line, bounded.
            let mut reader =
                tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(reader, 64 * 1024));
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let answer = match serde_json::from_str::<Request>(&line) {
                Ok(request) => {
                    match tokio::task::spawn_blocking(move || {
                        answer(policy.as_deref(), &queue, request)
                    })
                    .await
                    {
                        Ok(answer) => answer,
                        Err(error) => refused(format!("the request failed: {error}")),
                    }
                }
                Err(error) => refused(format!("not a request: {error}")),
            };
            let mut bytes = serde_json::to_vec(&answer).unwrap_or_default();
            bytes.push(b'\n');
            let _ = writer.write_all(&bytes).await;
        });
    }
}

fn refused(error: String) -> Answer {
    Answer {
        ok: false,
        generation: None,
        error: Some(error),
        needs_restart: Vec::new(),
        status: None,
        lines: Vec::new(),
    }
}

/// Carries out one request (blocking: a reload compiles modules).
fn answer(policy: Option<&PolicyEngine>, queue: &QueueControl, request: Request) -> Answer {
    let request = match request {
        Request::Queue { action, ids } => {
            let (lines, ok) = queue.act(action, &ids, "mailcall queue");
            return Answer {
                ok,
                error: (!ok).then(|| format!("not every message could be given {action}")),
                lines,
                ..refused(String::new())
            };
        }
        Request::Policy(request) => request,
    };
    let Some(policy) = policy else {
        return refused("this server runs no rule chain ([policy] chain is empty)".into());
    };
    match request {
        PolicyRequest::Reload { config } => {
            let ReloadReport {
                outcome,
                needs_restart,
                ..
            } = policy.reload(config.as_deref());
            match outcome {
                Ok(id) => Answer {
                    ok: true,
                    generation: Some(id.to_string()),
                    error: None,
                    needs_restart,
                    status: None,
                    lines: Vec::new(),
                },
                Err(error) => Answer {
                    generation: Some(policy.active().id.to_string()),
                    needs_restart,
                    ..refused(error.to_string())
                },
            }
        }
        PolicyRequest::Rollback { to } => match policy.rollback(to) {
            Ok(id) => Answer {
                ok: true,
                generation: Some(id.to_string()),
                error: None,
                needs_restart: Vec::new(),
                status: None,
                lines: Vec::new(),
            },
            Err(error) => Answer {
                generation: Some(policy.active().id.to_string()),
                ..refused(error.to_string())
            },
        },
        PolicyRequest::Status => Answer {
            ok: true,
            generation: Some(policy.active().id.to_string()),
            error: None,
            needs_restart: Vec::new(),
            status: Some(policy_status(policy)),
            lines: Vec::new(),
        },
    }
}

/// The policy's kept generations and the counters of each rule in force
/// (`mailcall rules status`, the console's rules page).
pub fn policy_status(policy: &PolicyEngine) -> Status {
    let active = policy.active();
    let generations = policy
        .generations()
        .iter()
        .map(|g| {
            let at = g
                .built_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            (g.id.to_string(), at, g.id == active.id)
        })
        .collect();
    let rules = policy
        .counters()
        .into_iter()
        .zip(active.rules())
        .map(|((name, counters), rule)| RuleStatus {
            name,
            digest: rule.digest,
            contract: rule.contract,
            mode: rule.mode,
            latency: counters.latency.snapshot(),
            evaluations: counters.evaluations.load(Ordering::Relaxed),
            dials: counters.dials.load(Ordering::Relaxed),
            smtp: counters.smtp.load(Ordering::Relaxed),
            no_opinion: counters.no_opinion.load(Ordering::Relaxed),
            failures: counters.failures.load(Ordering::Relaxed),
            timeouts: counters.timeouts.load(Ordering::Relaxed),
            memory_caps: counters.memory_caps.load(Ordering::Relaxed),
            shadow_evaluations: counters.shadow_evaluations.load(Ordering::Relaxed),
            shadow_disagreements: counters.shadow_disagreements.load(Ordering::Relaxed),
            deferrals: counters.deferrals.load(Ordering::Relaxed),
            fallbacks: counters.fallbacks.load(Ordering::Relaxed),
            breaker_trips: counters.breaker_trips.load(Ordering::Relaxed),
        })
        .collect();
    Status {
        generations,
        rules,
        reloads: policy.reload_counts(),
    }
}

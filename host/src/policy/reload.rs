//! Hot reload: watch the folders of the configuration file, the rule
//! modules and the table files, wait for a changed file to be quiet, then
//! hand it to the engine, which rebuilds the policy if it is made of it.
//!
//! Editors write a temporary file and rename it; `cp` writes in several
//! steps; the host's own reads show up as access events. So the watcher
//! reacts to writes that close, creations, renames and removals, ignores
//! reads, and acts on a path only after [`QUIET`] without events on it. A
//! writer slower than that gets a truncated module refused (the old one
//! stays in force) and the module reloaded when its last write closes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use super::PolicyEngine;

/// How long a file must be left alone before it is reloaded.
pub const QUIET: Duration = Duration::from_millis(300);

/// Watches files for the engine until dropped.
pub struct ReloadWatcher {
    _watcher: Arc<Mutex<Watched>>,
}

/// The watcher and the folders it watches; the debounce thread adds the
/// folders a new generation uses.
struct Watched {
    watcher: RecommendedWatcher,
    dirs: Vec<PathBuf>,
}

impl Watched {
    fn watch_new(&mut self, dirs: Vec<PathBuf>) {
        for dir in dirs {
            if self.dirs.contains(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => self.dirs.push(dir),
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), "cannot watch for policy changes: {error}")
                }
            }
        }
    }
}

impl ReloadWatcher {
    pub(super) fn start(engine: Weak<PolicyEngine>) -> Result<ReloadWatcher, notify::Error> {
        let (events, received) = mpsc::channel();
        let watcher = notify::recommended_watcher(move |event| {
            // The receiver only goes away when the watcher does.
            let _ = events.send(event);
        })?;
        let dirs = engine
            .upgrade()
            .map(|e| e.watched_dirs())
            .unwrap_or_default();
        let mut watched = Watched {
            watcher,
            dirs: Vec::new(),
        };
        for dir in &dirs {
            watched.watcher.watch(dir, RecursiveMode::NonRecursive)?;
            watched.dirs.push(dir.clone());
        }
        let watched = Arc::new(Mutex::new(watched));
        let weak = Arc::downgrade(&watched);
        std::thread::Builder::new()
            .name("rule-reload".into())
            .spawn(move || debounce(received, engine, weak))
            .map_err(|e| notify::Error::generic(&format!("cannot start the reload thread: {e}")))?;
        Ok(ReloadWatcher { _watcher: watched })
    }
}

/// Collects events per path and hands each path to the engine once it is
/// quiet. Ends when the watcher (the sender) or the engine goes away.
fn debounce(
    events: mpsc::Receiver<notify::Result<notify::Event>>,
    engine: Weak<PolicyEngine>,
    watched: Weak<Mutex<Watched>>,
) {
    let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
    loop {
        let wait = pending
            .values()
            .map(|last| (*last + QUIET).saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(Duration::from_secs(3600));
        match events.recv_timeout(wait) {
            Ok(Ok(event)) if is_change(&event.kind) => {
                for path in event.paths {
                    pending.insert(path, Instant::now());
                }
            }
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Err(error)) => tracing::warn!("file watch error: {error}"),
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let quiet: Vec<PathBuf> = pending
            .iter()
            .filter(|(_, last)| now.duration_since(**last) >= QUIET)
            .map(|(path, _)| path.clone())
            .collect();
        for path in quiet {
            pending.remove(&path);
            let Some(engine) = engine.upgrade() else {
                return;
            };
            if is_candidate(&path) {
                engine.file_changed(&path);
                if let Some(watched) = watched.upgrade() {
                    let dirs = engine.watched_dirs();
                    watched
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .watch_new(dirs);
                }
            }
        }
    }
}

/// Events that may change a file's content; reads (including the host's
/// own) are not.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => false,
    }
}

/// Editors' temporary and backup files are never rules or tables.
fn is_candidate(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    !(name.starts_with('.') || name.ends_with('~') || name.ends_with(".swp"))
}

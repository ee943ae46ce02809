//! The policy engine (step S4): runs the chain of WebAssembly rules that
//! decides, per recipient, between calling a number and normal SMTP.
//!
//! It does four things and nothing else: **load** rule components (compiled
//! off the hot path, cached by content hash), **limit** every call (memory
//! cap, epoch deadline, a WASI context that grants nothing), **run** the
//! chain, and **swap** generations: the whole policy (chain, modules,
//! limits, tables, numbering plan) is rebuilt and checked when a file it is
//! made of changes, and put in force only when every part of it is good.
//! A rule that traps, loops, runs out of memory or does not implement the
//! world is logged with its name, counted, and treated as having no opinion.

mod address;
mod bindings;
mod chain;
mod counters;
pub mod decisions;
pub mod fixtures;
mod generation;
mod keywords;
mod message;
pub mod numbers;
mod reload;
mod rule;
mod runtime;
mod sandbox;
mod tables;
pub mod text;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

pub use bindings::mailcall::rule::types::{
    Decision, Dial, Envelope, Header, Mailbox, Message, NumberingPlan,
};
pub use chain::{canary_share, Route, ShadowDecision, Step, StepDecision, StepRole, Verdict};
pub use counters::{LatencySnapshot, RuleCounters, LATENCY_BOUNDS_US};
pub use generation::{BuildError, Generation, GenerationId, PolicySpec, RuleInForce};
pub use message::{message_view, NotAMessage};
pub use reload::ReloadWatcher;
pub use rule::RuleFailure;
pub use runtime::{default_cache_dir, LoadError};
pub use sandbox::ImportCall;
pub use tables::{Table, TableError, TableSet};

use crate::config::Config;
use counters::Counters;
use decisions::DecisionLog;
use generation::OnBadRule;
use runtime::{PoolSizes, Runtime};

/// The engine could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Engine(LoadError),
}

/// What happened when a change was tried.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    pub at: SystemTime,
    /// The file whose change started it (or the command that asked).
    pub file: PathBuf,
    /// The generation put in force, or why the one in force stays.
    pub outcome: Result<GenerationId, BuildError>,
    /// Settings that changed but need a restart, ignored until then.
    pub needs_restart: Vec<String>,
    /// From the change to the new generation in force.
    pub took: Duration,
}

/// Reports kept for `recent_reloads`.
const RELOAD_REPORTS_KEPT: usize = 32;

/// Why a rollback was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    #[error("generation {0} is not kept (the kept ones: {1})")]
    NotKept(u64, String),
    #[error("no earlier generation is kept")]
    NothingEarlier,
}

/// Where the policy comes from: the configuration file it is rebuilt from
/// on change, if there is one.
struct Source {
    config_file: Option<PathBuf>,
    /// The configuration text's sections that need a restart, as loaded.
    fixed: toml::Table,
    /// Every file the latest attempted generation is made of, to tell
    /// which changes concern the policy.
    files: Vec<PathBuf>,
}

/// The policy generation in force and everything it needs to run.
pub struct PolicyEngine {
    runtime: Runtime,
    pool: PoolSizes,
    active: ArcSwap<Generation>,
    /// The latest generations, oldest first, the active one among them.
    kept: Mutex<VecDeque<Arc<Generation>>>,
    keep: usize,
    next_number: AtomicU64,
    /// Where the last generation number is kept across restarts.
    number_file: Option<PathBuf>,
    counters: Counters,
    /// One build at a time: a reload waits for the one in progress.
    building: Mutex<()>,
    source: Mutex<Source>,
    body_limit: usize,
    slots: Slots,
    reloads: Mutex<Vec<ReloadReport>>,
    /// Reloads since start: put in force, refused.
    reload_counts: [AtomicU64; 2],
    hot_reload: bool,
    /// Where each evaluation of a queued message is recorded (servers).
    decisions: Option<DecisionLog>,
}

impl PolicyEngine {
    /// The engine for the configuration's chain; every rule must load.
    /// For tools that check a configuration (`rules test`, `check-config`).
    pub fn from_config(config: &Config) -> Result<PolicyEngine, PolicyError> {
        PolicyEngine::new(
            config,
            PolicySpec::of(config),
            OnBadRule::Refuse,
            None,
            false,
        )
    }

    /// The engine for `rules test` and `rules check`: the configured chain,
    /// or `rules` (name and module file) instead, every rule required to
    /// load, on an engine that counts each rule's instructions. (The
    /// server's engine never does: fuel changes the compiled code.)
    pub fn metered(
        config: &Config,
        rules: Option<Vec<(String, PathBuf)>>,
    ) -> Result<PolicyEngine, PolicyError> {
        let spec = match rules {
            Some(rules) => PolicySpec::with_rules(config, rules),
            None => PolicySpec::of(config),
        };
        PolicyEngine::new(config, spec, OnBadRule::Refuse, None, true)
    }

    /// The engine for the configuration's chain, for a server: a rule that
    /// fails to load is logged and stays in the chain as a failing rule (no
    /// opinion) until a good module is written to its file. Generation
    /// numbers continue from the last one kept in `state_dir`.
    pub fn for_server(config: &Config, state_dir: &Path) -> Result<PolicyEngine, PolicyError> {
        let number_file = state_dir.join("policy-generation");
        let mut engine = PolicyEngine::new(
            config,
            PolicySpec::of(config),
            OnBadRule::KeepFailing,
            Some(number_file),
            false,
        )?;
        let policy = &config.policy;
        if policy.decision_log_mib > 0 {
            let dir = state_dir.join("decisions");
            let limit = u64::from(policy.decision_log_mib) << 20;
            match DecisionLog::open(&dir, limit, policy.decision_log_redact) {
                Ok(log) => engine.decisions = Some(log),
                Err(error) => {
                    tracing::error!(dir = %dir.display(), "no decision log: {error}")
                }
            }
        }
        Ok(engine)
    }

    /// As [`PolicyEngine::for_server`], without keeping generation numbers.
    pub fn from_config_skipping_bad_rules(config: &Config) -> Result<PolicyEngine, PolicyError> {
        PolicyEngine::new(
            config,
            PolicySpec::of(config),
            OnBadRule::KeepFailing,
            None,
            false,
        )
    }

    /// The engine for the given module files, in order, instead of the
    /// configured chain; each rule is named after its file (`x.wasm` is `x`)
    /// and takes that rule's settings from the configuration, if any.
    pub fn with_rule_files(
        config: &Config,
        files: &[PathBuf],
    ) -> Result<PolicyEngine, PolicyError> {
        let rules = files.iter().map(|file| named_after(file)).collect();
        PolicyEngine::with_named_rules(config, rules)
    }

    /// The engine for the given rules (name and module file), in order,
    /// each with that name's settings from the configuration.
    pub fn with_named_rules(
        config: &Config,
        rules: Vec<(String, PathBuf)>,
    ) -> Result<PolicyEngine, PolicyError> {
        let mut engine = PolicyEngine::new(
            config,
            PolicySpec::with_rules(config, rules),
            OnBadRule::Refuse,
            None,
            false,
        )?;
        // Not the configuration's chain: a change to the file does not
        // rebuild this one from it.
        engine
            .source
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .config_file = None;
        Ok(engine)
    }

    fn new(
        config: &Config,
        spec: PolicySpec,
        on_bad_rule: OnBadRule,
        number_file: Option<PathBuf>,
        metered: bool,
    ) -> Result<PolicyEngine, PolicyError> {
        let policy = &config.policy;
        // Evaluations in flight, plus warm pools twice over (old and new
        // generations overlap during a reload), plus slack.
        let pool = PoolSizes {
            instances: policy.max_concurrent_evaluations + 2 * spec.warm_instances() + 4,
            max_memory: spec.max_memory(),
        };
        let cache_dir = Some(
            policy
                .cache_dir
                .as_ref()
                .map(|dir| config.resolve(dir))
                .unwrap_or_else(default_cache_dir),
        );
        let runtime = Runtime::new(pool, cache_dir, metered).map_err(PolicyError::Engine)?;
        let first_number = number_file
            .as_deref()
            .and_then(|file| std::fs::read_to_string(file).ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map_or(1, |last| last + 1);
        let counters = Counters::default();
        let first = Generation::build(&runtime, spec, first_number, on_bad_rule, &counters, None)?;
        tracing::info!(generation = %first.id, rules = ?first.chain.names(), "policy in force");
        let first = Arc::new(first);
        let engine = PolicyEngine {
            runtime,
            pool,
            active: ArcSwap::new(first.clone()),
            kept: Mutex::new(VecDeque::from([first.clone()])),
            keep: policy.keep_generations.max(1) as usize,
            next_number: AtomicU64::new(first_number + 1),
            number_file,
            counters,
            building: Mutex::new(()),
            source: Mutex::new(Source {
                config_file: config.source.clone(),
                fixed: config
                    .source
                    .as_deref()
                    .map(fixed_sections)
                    .unwrap_or_default(),
                files: policy_files(config.source.as_deref(), &first.spec),
            }),
            body_limit: policy.body_limit_kib as usize * 1024,
            slots: Slots::new(policy.max_concurrent_evaluations as usize),
            reloads: Mutex::new(Vec::new()),
            reload_counts: Default::default(),
            hot_reload: policy.hot_reload,
            decisions: None,
        };
        engine.remember_number(first_number);
        Ok(engine)
    }

    /// Parses a raw message into the view rules see, with the configured
    /// body limit.
    pub fn view(&self, raw: &[u8]) -> Result<Message, NotAMessage> {
        message_view(raw, self.body_limit)
    }

    /// Runs the active generation's chain for the one recipient in
    /// `envelope` (step S4). The generation is taken once: a reload during
    /// the evaluation does not change what it runs. The rules' imports read
    /// the message too (`part`), so it is copied once into a shared view;
    /// the server's path, [`PolicyEngine::evaluate_queued`], shares its own.
    pub fn evaluate(&self, envelope: &Envelope, message: &Message) -> Verdict {
        self.run("", envelope, &Arc::new(message.clone()))
    }

    /// As [`PolicyEngine::evaluate`], for a recipient of the message queued
    /// as `queue_id` (which chooses the canaries' share), recorded in the
    /// decision log if the engine keeps one (the view is shared with the
    /// log's writer, not copied; the queue id, the envelope and the
    /// verdict's `steps` are moved to the log).
    pub fn evaluate_queued(
        &self,
        queue_id: String,
        envelope: Envelope,
        message: &Arc<Message>,
    ) -> Verdict {
        let mut verdict = self.run(&queue_id, &envelope, message);
        if let Some(log) = &self.decisions {
            let at_ms = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            log.record(queue_id, envelope, message, &mut verdict, at_ms);
        }
        verdict
    }

    fn run(&self, queue_id: &str, envelope: &Envelope, message: &Arc<Message>) -> Verdict {
        let _slot = self.slots.acquire();
        let generation = self.active.load_full();
        let mut verdict = generation.chain.evaluate(
            &self.runtime,
            &generation.tables,
            queue_id,
            envelope,
            message,
        );
        verdict.generation = Some(generation.id.clone());
        trace_verdict(envelope, &verdict);
        verdict
    }

    /// Decision records dropped because the log's writer was behind.
    pub fn decisions_dropped(&self) -> u64 {
        self.decisions.as_ref().map_or(0, DecisionLog::dropped)
    }

    /// The generation in force.
    pub fn active(&self) -> Arc<Generation> {
        self.active.load_full()
    }

    /// The kept generations, oldest first (the active one among them).
    pub fn generations(&self) -> Vec<Arc<Generation>> {
        self.lock_kept().iter().cloned().collect()
    }

    fn lock_kept(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Generation>>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_source(&self) -> std::sync::MutexGuard<'_, Source> {
        self.source.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counters of every rule of the active generation, in chain order.
    pub fn counters(&self) -> Vec<(String, Arc<RuleCounters>)> {
        self.active()
            .chain
            .names()
            .into_iter()
            .map(|name| (name.to_string(), self.counters.of(name)))
            .collect()
    }

    /// The SHA-256 of the module in force for rule `name`.
    pub fn rule_digest(&self, name: &str) -> Option<String> {
        Some(self.active().rule(name)?.digest.clone())
    }

    /// The largest linear memory an instance of rule `name` grew to, in
    /// bytes (initial memory included).
    pub fn rule_peak_memory(&self, name: &str) -> Option<usize> {
        Some(self.active().rule(name)?.peak_memory())
    }

    /// Reloads since start: put in force, and refused.
    pub fn reload_counts(&self) -> (u64, u64) {
        let [applied, refused] = &self.reload_counts;
        (
            applied.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
        )
    }

    /// The latest reload outcomes, oldest first.
    pub fn recent_reloads(&self) -> Vec<ReloadReport> {
        self.reloads.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Starts watching the configuration file, the rule modules and the
    /// table files, if the configuration allows hot reload; the watch ends
    /// when the returned watcher is dropped.
    pub fn watch(self: &Arc<Self>) -> Result<Option<ReloadWatcher>, notify::Error> {
        if !self.hot_reload {
            return Ok(None);
        }
        ReloadWatcher::start(Arc::downgrade(self)).map(Some)
    }

    /// The folders holding the files the policy is made of (for the
    /// watcher, which adds folders as the policy comes to use new ones).
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .lock_source()
            .files
            .iter()
            .map(|file| parent_dir(file).to_path_buf())
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// A file changed: when the policy is made of it, the next generation
    /// is built and, if every part of it is good, put in force. Called by
    /// the watcher once the file has been quiet for a while.
    pub fn file_changed(&self, path: &Path) {
        let concerned = self
            .lock_source()
            .files
            .iter()
            .any(|file| tables::same_file(file, path));
        if concerned {
            self.rebuild(path, None);
        }
    }

    /// Rebuilds the policy now (`SIGHUP`, `mailcall reload`): from
    /// `config_file` if given (it becomes the file watched), else from the
    /// configuration file the engine was made from, else from the files of
    /// the generation in force.
    pub fn reload(&self, config_file: Option<&Path>) -> ReloadReport {
        let source = config_file
            .map(Path::to_path_buf)
            .or_else(|| self.lock_source().config_file.clone())
            .unwrap_or_else(|| PathBuf::from("(reload)"));
        self.rebuild(&source, config_file)
    }

    fn rebuild(&self, changed: &Path, config_file: Option<&Path>) -> ReloadReport {
        let started = Instant::now();
        let _building = self.building.lock().unwrap_or_else(|p| p.into_inner());
        let mut needs_restart = Vec::new();
        let outcome = self
            .next_spec(config_file, &mut needs_restart)
            .and_then(|spec| self.build_and_activate(spec));
        let report = ReloadReport {
            at: SystemTime::now(),
            file: changed.to_path_buf(),
            outcome,
            needs_restart,
            took: started.elapsed(),
        };
        match &report.outcome {
            Ok(id) => {
                tracing::info!(generation = %id, file = %changed.display(), took_ms = report.took.as_millis() as u64, "policy reloaded")
            }
            Err(error) => {
                tracing::error!(file = %changed.display(), "policy not reloaded, generation {} stays in force: {error}", self.active().id)
            }
        }
        for section in &report.needs_restart {
            tracing::warn!("{section} changed: needs a restart, ignored until then");
        }
        self.report(report.clone());
        report
    }

    /// What the next generation is built from: the configuration file as
    /// it is now, or the active generation's spec (files re-read).
    fn next_spec(
        &self,
        config_file: Option<&Path>,
        needs_restart: &mut Vec<String>,
    ) -> Result<PolicySpec, BuildError> {
        let file = config_file
            .map(Path::to_path_buf)
            .or_else(|| self.lock_source().config_file.clone());
        let Some(file) = file else {
            return Ok(self.active().spec.clone());
        };
        let config = Config::load(&file).map_err(|e| BuildError::Config(e.to_string()))?;
        let spec = PolicySpec::of(&config);
        let mut source = self.lock_source();
        source.files = policy_files(Some(&file), &spec);
        let fixed = fixed_sections(&file);
        for (section, value) in &fixed {
            if source.fixed.get(section) != Some(value) {
                needs_restart.push(describe_section(section));
            }
        }
        for section in source.fixed.keys() {
            if !fixed.contains_key(section) {
                needs_restart.push(describe_section(section));
            }
        }
        source.config_file = Some(file);
        drop(source);
        if spec.max_memory() > self.pool.max_memory {
            return Err(BuildError::NeedsRestart(format!(
                "a rule's memory limit ({} MiB) is above what the engine was started with ({} MiB)",
                spec.max_memory() >> 20,
                self.pool.max_memory >> 20
            )));
        }
        Ok(spec)
    }

    fn build_and_activate(&self, spec: PolicySpec) -> Result<GenerationId, BuildError> {
        let active = self.active();
        let mut generation = Generation::build(
            &self.runtime,
            spec,
            0,
            OnBadRule::Refuse,
            &self.counters,
            Some(&active),
        )?;
        if generation.id.digest == active.id.digest {
            // Nothing that decides a route changed (a file touched, or
            // written again as it was): the generation in force stays, its
            // rules' circuit breakers closed again.
            active.chain.close_breakers();
            return Ok(active.id.clone());
        }
        let number = self.next_number.fetch_add(1, Ordering::SeqCst);
        generation.id.number = number;
        let id = generation.id.clone();
        self.activate(Arc::new(generation));
        self.remember_number(number);
        Ok(id)
    }

    /// Puts `generation` in force; evaluations already running finish on
    /// the one they started with.
    fn activate(&self, generation: Arc<Generation>) {
        let mut kept = self.lock_kept();
        kept.retain(|g| g.id != generation.id);
        kept.push_back(generation.clone());
        while kept.len() > self.keep {
            kept.pop_front();
        }
        self.active.store(generation);
    }

    /// Puts a kept generation back in force: `to` by number, or the one
    /// before the active one.
    pub fn rollback(&self, to: Option<u64>) -> Result<GenerationId, RollbackError> {
        let _building = self.building.lock().unwrap_or_else(|p| p.into_inner());
        let active = self.active();
        let target = {
            let kept = self.lock_kept();
            match to {
                Some(number) => kept
                    .iter()
                    .find(|g| g.id.number == number)
                    .cloned()
                    .ok_or_else(|| {
                        let numbers: Vec<String> =
                            kept.iter().map(|g| g.id.number.to_string()).collect();
                        RollbackError::NotKept(number, numbers.join(", "))
                    })?,
                None => kept
                    .iter()
                    .rev()
                    .skip_while(|g| g.id != active.id)
                    .nth(1)
                    .cloned()
                    .ok_or(RollbackError::NothingEarlier)?,
            }
        };
        let id = target.id.clone();
        // The order of the kept ones stays: a second rollback goes further
        // back, and the rolled-back generation can be reactivated by number.
        self.active.store(target);
        tracing::warn!(generation = %id, from = %active.id, "policy rolled back");
        self.report(ReloadReport {
            at: SystemTime::now(),
            file: PathBuf::from("(rollback)"),
            outcome: Ok(id.clone()),
            needs_restart: Vec::new(),
            took: Duration::ZERO,
        });
        Ok(id)
    }

    fn remember_number(&self, number: u64) {
        if let Some(file) = &self.number_file {
            if let Err(error) = crate::private::write_file(file, format!("{number}\n").as_bytes()) {
                tracing::warn!(file = %file.display(), "cannot keep the policy generation number: {error}");
            }
        }
    }

    fn report(&self, report: ReloadReport) {
        let refused = usize::from(report.outcome.is_err());
        self.reload_counts[refused].fetch_add(1, Ordering::Relaxed);
        if let Ok(mut reports) = self.reloads.lock() {
            if reports.len() == RELOAD_REPORTS_KEPT {
                reports.remove(0);
            }
            reports.push(report);
        }
    }
}

/// A rule named after its module file (`x.wasm` is `x`), for the tools'
/// `--rule FILE.wasm`.
pub fn named_after(file: &Path) -> (String, PathBuf) {
    let name = file
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string());
    (name, file.to_path_buf())
}

/// The files a policy is made of: its configuration file, its modules and
/// its tables.
fn policy_files(config_file: Option<&Path>, spec: &PolicySpec) -> Vec<PathBuf> {
    config_file
        .map(Path::to_path_buf)
        .into_iter()
        .chain(spec.rules.iter().map(|rule| rule.file.clone()))
        .chain(spec.rules.iter().filter_map(|rule| rule.fixtures.clone()))
        .chain(spec.tables.values().cloned())
        .collect()
}

/// The sections of the configuration file that a reload cannot change
/// (listen addresses, folders, users, ...), as written, by name; the
/// policy's own sections are left out, and the `[policy]` settings that
/// size the engine are kept as `policy.NAME`.
fn fixed_sections(file: &Path) -> toml::Table {
    const POLICY_SECTIONS: [&str; 4] = ["policy", "rules", "tables", "numbering_plan"];
    const ENGINE_SETTINGS: [&str; 6] = [
        "max_concurrent_evaluations",
        "cache_dir",
        "body_limit_kib",
        "hot_reload",
        "decision_log_mib",
        "decision_log_redact",
    ];
    let Ok(text) = std::fs::read_to_string(file) else {
        return toml::Table::new();
    };
    let Ok(mut table) = text.parse::<toml::Table>() else {
        return toml::Table::new();
    };
    let policy = table.remove("policy");
    table.retain(|name, _| !POLICY_SECTIONS.contains(&name));
    if let Some(toml::Value::Table(policy)) = policy {
        for (name, value) in policy {
            if ENGINE_SETTINGS.contains(&String::as_str(&name)) {
                table.insert(format!("policy.{name}"), value);
            }
        }
    }
    table
}

fn describe_section(name: &str) -> String {
    match name.split_once('.') {
        Some((section, setting)) => format!("[{section}] {setting}"),
        None => format!("[{name}]"),
    }
}

fn parent_dir(file: &Path) -> &Path {
    file.parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn trace_verdict(envelope: &Envelope, verdict: &Verdict) {
    tracing::info!(
        step = "S4",
        rcpt = %envelope.rcpt_to,
        number = verdict.number().unwrap_or("-"),
        rule = verdict.rule.as_deref().unwrap_or("-"),
        generation = %verdict.generation.as_ref().map_or("-".to_string(), ToString::to_string),
        "{}",
        verdict.reason
    );
}

/// A counting semaphore for blocking callers: bounds evaluations in flight
/// to what the instance pool was sized for.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn new(count: usize) -> Slots {
        Slots {
            free: Mutex::new(count),
            freed: Condvar::new(),
        }
    }

    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self
            .free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *free -= 1;
        SlotGuard { slots: self }
    }
}

struct SlotGuard<'a> {
    slots: &'a Slots,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut free = self
            .slots
            .free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *free += 1;
        self.slots.freed.notify_one();
    }
}

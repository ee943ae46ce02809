//! The policy engine (step S4): runs the chain of WebAssembly rules that
//! decides, per recipient, between calling a number and normal SMTP.
//!
//! It does four things and nothing else: **load** rule components (compiled
//! off the hot path, cached by content hash), **limit** every call (memory
//! cap, epoch deadline, a WASI context that grants nothing), **run** the
//! chain, and **swap** a rule or table in atomically when its file changes.
//! A rule that traps, loops, runs out of memory or does not implement the
//! world is logged with its name, counted, and treated as having no opinion.

mod bindings;
mod chain;
mod message;
mod reload;
mod rule;
mod runtime;
mod sandbox;
mod tables;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

pub use bindings::mailcall::rule::types::{
    Decision, Dial, Envelope, Header, Mailbox, Message, NumberingPlan,
};
pub use chain::{Route, Verdict};
pub use message::{message_view, NotAMessage};
pub use reload::ReloadWatcher;
pub use rule::RuleFailure;
pub use runtime::{default_cache_dir, LoadError};
pub use tables::{Table, TableError, TableSet, Tables};

use crate::config::{Config, Isolation, RuleSettings};
use chain::{Chain, Link};
use rule::{LoadedRule, RuleLimits};
use runtime::{PoolSizes, Runtime};
use sandbox::RuleContext;

/// The engine could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("rule {rule}: {error}")]
    Load { rule: String, error: LoadError },
    #[error(transparent)]
    Engine(LoadError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("no rules to run: the configuration's [policy] chain is empty")]
    NoRules,
}

/// Where one rule comes from and how it runs; kept to reload it.
#[derive(Debug, Clone)]
struct RuleSpec {
    name: String,
    file: PathBuf,
    settings: RuleSettings,
}

/// What happened when a changed file was reloaded.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    pub at: SystemTime,
    pub file: PathBuf,
    /// The rule or table reloaded.
    pub target: String,
    /// `Ok(())` when the new version is in force; otherwise why the old
    /// version stays in force.
    pub outcome: Result<(), String>,
}

/// Counters of one rule, kept across reloads.
#[derive(Debug, Default)]
pub struct RuleCounters {
    pub evaluations: AtomicU64,
    pub dials: AtomicU64,
    pub smtp: AtomicU64,
    pub no_opinion: AtomicU64,
    pub failures: AtomicU64,
    pub timeouts: AtomicU64,
    pub memory_caps: AtomicU64,
}

/// Reports kept for `recent_reloads`.
const RELOAD_REPORTS_KEPT: usize = 32;

/// The rule chain in force and everything it needs to run.
pub struct PolicyEngine {
    runtime: Runtime,
    chain: ArcSwap<Chain>,
    specs: Vec<RuleSpec>,
    tables: Tables,
    plan: NumberingPlan,
    memory_limit: usize,
    deadline: Duration,
    body_limit: usize,
    slots: Slots,
    counters: HashMap<String, Arc<RuleCounters>>,
    reloads: Mutex<Vec<ReloadReport>>,
    hot_reload: bool,
}

impl PolicyEngine {
    /// The engine for the configuration's chain; every rule must load.
    /// For tools that check a configuration (`rules test`, `check-config`).
    pub fn from_config(config: &Config) -> Result<PolicyEngine, PolicyError> {
        PolicyEngine::new(config, chain_files(config), OnBadRule::Fail)
    }

    /// The engine for the configuration's chain, for a server: a rule that
    /// fails to load is logged and stays in the chain as a failing rule (no
    /// opinion) until a good module is written to its file.
    pub fn from_config_skipping_bad_rules(config: &Config) -> Result<PolicyEngine, PolicyError> {
        PolicyEngine::new(config, chain_files(config), OnBadRule::Skip)
    }

    /// The engine for the given module files, in order, instead of the
    /// configured chain; each rule is named after its file (`x.wasm` is `x`)
    /// and takes that rule's settings from the configuration, if any.
    pub fn with_rule_files(
        config: &Config,
        files: &[PathBuf],
    ) -> Result<PolicyEngine, PolicyError> {
        let rules = files
            .iter()
            .map(|file| {
                let name = file
                    .file_stem()
                    .map(|stem| stem.to_string_lossy().into_owned())
                    .unwrap_or_else(|| file.display().to_string());
                (name, file.clone())
            })
            .collect();
        PolicyEngine::new(config, rules, OnBadRule::Fail)
    }

    fn new(
        config: &Config,
        rules: Vec<(String, PathBuf)>,
        on_bad_rule: OnBadRule,
    ) -> Result<PolicyEngine, PolicyError> {
        if rules.is_empty() {
            return Err(PolicyError::NoRules);
        }
        let policy = &config.policy;
        let specs: Vec<RuleSpec> = rules
            .into_iter()
            .map(|(name, file)| RuleSpec {
                settings: config.rule_settings(&name),
                name,
                file,
            })
            .collect();

        let mib = |mib: u32| mib as usize * 1024 * 1024;
        let memory_limit = mib(policy.memory_limit_mib);
        let max_memory = specs
            .iter()
            .filter_map(|spec| spec.settings.memory_limit_mib.map(mib))
            .fold(memory_limit, usize::max);
        let warm: u32 = specs
            .iter()
            .filter(|spec| spec.settings.isolation == Isolation::Pooled)
            .map(|spec| spec.settings.pool_size)
            .sum();
        // Evaluations in flight, plus warm pools twice over (old and new
        // versions overlap during a reload), plus slack.
        let instances = policy.max_concurrent_evaluations + 2 * warm + 4;
        let cache_dir = Some(
            policy
                .cache_dir
                .as_ref()
                .map(|dir| config.resolve(dir))
                .unwrap_or_else(default_cache_dir),
        );
        let runtime = Runtime::new(
            PoolSizes {
                instances,
                max_memory,
            },
            cache_dir,
        )
        .map_err(PolicyError::Engine)?;

        let tables = Tables::load(
            config
                .tables
                .iter()
                .map(|(name, table)| (name.clone(), config.resolve(&table.file)))
                .collect::<BTreeMap<_, _>>(),
        )?;
        let plan = NumberingPlan {
            country_code: config.numbering_plan.country_code.clone(),
            trunk_prefix: config.numbering_plan.trunk_prefix.clone(),
            prefixes: config.numbering_plan.prefixes.clone(),
            digits: config.numbering_plan.digits,
        };

        let mut engine = PolicyEngine {
            runtime,
            chain: ArcSwap::from_pointee(Chain::default()),
            counters: specs
                .iter()
                .map(|spec| (spec.name.clone(), Arc::default()))
                .collect(),
            specs,
            tables,
            plan,
            memory_limit,
            deadline: Duration::from_millis(policy.deadline_ms.into()),
            body_limit: policy.body_limit_kib as usize * 1024,
            slots: Slots::new(policy.max_concurrent_evaluations as usize),
            reloads: Mutex::new(Vec::new()),
            hot_reload: policy.hot_reload,
        };
        let mut chain = Chain::default();
        for spec in &engine.specs {
            match engine.load_rule(spec) {
                Ok(rule) => {
                    tracing::info!(rule = %spec.name, file = %spec.file.display(), digest = %&rule.digest[..12], "rule loaded");
                    chain.links.push(Link::Ready(Arc::new(rule)));
                }
                Err(source) if on_bad_rule == OnBadRule::Skip => {
                    tracing::error!(rule = %spec.name, "rule not loaded, skipped until its file is fixed: {source}");
                    chain.links.push(Link::Unavailable {
                        name: spec.name.clone(),
                        reason: source.to_string(),
                    });
                }
                Err(source) => {
                    return Err(PolicyError::Load {
                        rule: spec.name.clone(),
                        error: source,
                    })
                }
            }
        }
        engine.chain = ArcSwap::from_pointee(chain);
        Ok(engine)
    }

    fn load_rule(&self, spec: &RuleSpec) -> Result<LoadedRule, LoadError> {
        let (pre, digest) = self.runtime.load(&spec.file)?;
        let settings = &spec.settings;
        let context = RuleContext {
            name: spec.name.as_str().into(),
            plan: self.plan.clone(),
            config: settings.config_values(),
            memory_limit: settings
                .memory_limit_mib
                .map_or(self.memory_limit, |mib| mib as usize * 1024 * 1024),
            peak_memory: Default::default(),
        };
        let limits = RuleLimits {
            deadline: settings
                .deadline_ms
                .map_or(self.deadline, |ms| Duration::from_millis(ms.into())),
            isolation: settings.isolation,
            pool_size: settings.pool_size as usize,
            max_calls_per_instance: settings.max_calls_per_instance,
        };
        Ok(LoadedRule::new(context, digest, pre, limits))
    }

    /// Parses a raw message into the view rules see, with the configured
    /// body limit.
    pub fn view(&self, raw: &[u8]) -> Result<Message, NotAMessage> {
        message_view(raw, self.body_limit)
    }

    /// Runs the chain for the one recipient in `envelope` (step S4).
    pub fn evaluate(&self, envelope: &Envelope, message: &Message) -> Verdict {
        let _slot = self.slots.acquire();
        let chain = self.chain.load_full();
        let tables = self.tables.snapshot();
        let mut failures = Vec::new();
        for link in &chain.links {
            let counters = &self.counters[link.name()];
            counters.evaluations.fetch_add(1, Ordering::Relaxed);
            let decided = |route: Route, reason: String, failures| Verdict {
                route,
                rule: Some(link.name().to_string()),
                reason,
                version: match link {
                    Link::Ready(rule) => Some(rule.digest.clone()),
                    Link::Unavailable { .. } => None,
                },
                failures,
            };
            let outcome = match link {
                Link::Ready(rule) => rule.evaluate(&self.runtime, &tables, envelope, message),
                Link::Unavailable { reason, .. } => Err(RuleFailure::Unavailable(reason.clone())),
            };
            match outcome {
                Ok(Decision::Dial(dial)) => {
                    counters.dials.fetch_add(1, Ordering::Relaxed);
                    let verdict = decided(
                        Route::Dial {
                            number: dial.number,
                        },
                        dial.reason,
                        failures,
                    );
                    trace_verdict(envelope, &verdict);
                    return verdict;
                }
                Ok(Decision::UseSmtp(reason)) => {
                    counters.smtp.fetch_add(1, Ordering::Relaxed);
                    let verdict = decided(Route::Smtp, reason, failures);
                    trace_verdict(envelope, &verdict);
                    return verdict;
                }
                Ok(Decision::NoOpinion) => {
                    counters.no_opinion.fetch_add(1, Ordering::Relaxed);
                }
                Err(failure) => {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    match failure {
                        RuleFailure::Timeout(_) => {
                            counters.timeouts.fetch_add(1, Ordering::Relaxed)
                        }
                        RuleFailure::MemoryCap(_) => {
                            counters.memory_caps.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => 0,
                    };
                    // A module that did not load was logged when it failed
                    // to; do not repeat it for every recipient.
                    if matches!(failure, RuleFailure::Unavailable(_)) {
                        tracing::debug!(
                            step = "S4",
                            rule = link.name(),
                            "rule not loaded, skipped"
                        );
                    } else {
                        tracing::warn!(
                            step = "S4",
                            rule = link.name(),
                            rcpt = %envelope.rcpt_to,
                            "rule failed, treated as no opinion: {failure}"
                        );
                    }
                    failures.push((link.name().to_string(), failure));
                }
            }
        }
        let verdict = Verdict {
            route: Route::Smtp,
            rule: None,
            reason: "no rule found a number".into(),
            version: None,
            failures,
        };
        trace_verdict(envelope, &verdict);
        verdict
    }

    /// The counters of every rule, in chain order.
    pub fn counters(&self) -> Vec<(String, Arc<RuleCounters>)> {
        self.specs
            .iter()
            .map(|spec| (spec.name.clone(), self.counters[&spec.name].clone()))
            .collect()
    }

    /// The SHA-256 of the module in force for rule `name`.
    pub fn rule_digest(&self, name: &str) -> Option<String> {
        Some(self.chain.load().rule(name)?.digest.clone())
    }

    /// The largest linear memory an instance of rule `name` grew to, in
    /// bytes (initial memory included).
    pub fn rule_peak_memory(&self, name: &str) -> Option<usize> {
        Some(self.chain.load().rule(name)?.peak_memory())
    }

    /// The latest reload outcomes, oldest first.
    pub fn recent_reloads(&self) -> Vec<ReloadReport> {
        self.reloads.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Starts watching rule and table files, if the configuration allows
    /// hot reload; the watch ends when the returned watcher is dropped.
    pub fn watch(self: &Arc<Self>) -> Result<Option<ReloadWatcher>, notify::Error> {
        if !self.hot_reload {
            return Ok(None);
        }
        let mut dirs: Vec<PathBuf> = self
            .specs
            .iter()
            .map(|spec| spec.file.as_path())
            .chain(self.tables.files())
            .map(|file| parent_dir(file).to_path_buf())
            .collect();
        dirs.sort();
        dirs.dedup();
        ReloadWatcher::start(Arc::downgrade(self), &dirs).map(Some)
    }

    /// Reloads whatever rule or table is stored in `path`. Called by the
    /// watcher once the file has been quiet for a while.
    pub fn file_changed(&self, path: &Path) {
        for spec in self
            .specs
            .iter()
            .filter(|spec| tables::same_file(&spec.file, path))
        {
            let outcome = self.reload_rule(spec);
            self.report(path, &spec.name, outcome);
        }
        for name in self.tables.names_for_file(path) {
            let outcome = self.tables.reload(&name).map_err(|e| e.to_string());
            match &outcome {
                Ok(()) => tracing::info!(table = %name, file = %path.display(), "table reloaded"),
                Err(error) => {
                    tracing::error!(table = %name, "table not reloaded, the loaded version stays in force: {error}")
                }
            }
            self.report(path, &name, outcome);
        }
    }

    fn reload_rule(&self, spec: &RuleSpec) -> Result<(), String> {
        if !spec.file.exists() {
            let message = "file removed; the loaded version stays in force".to_string();
            tracing::warn!(rule = %spec.name, file = %spec.file.display(), "{message}");
            return Err(message);
        }
        match self.load_rule(spec) {
            Ok(rule) => {
                if self.rule_digest(&spec.name).as_deref() == Some(rule.digest.as_str()) {
                    return Ok(());
                }
                tracing::info!(rule = %spec.name, digest = %&rule.digest[..12], "rule reloaded");
                let link = Link::Ready(Arc::new(rule));
                self.chain.rcu(|chain| chain.with_replaced(&link));
                Ok(())
            }
            Err(error) => {
                tracing::error!(rule = %spec.name, "rule not reloaded, the loaded version stays in force: {error}");
                Err(error.to_string())
            }
        }
    }

    fn report(&self, file: &Path, target: &str, outcome: Result<(), String>) {
        if let Ok(mut reports) = self.reloads.lock() {
            if reports.len() == RELOAD_REPORTS_KEPT {
                reports.remove(0);
            }
            reports.push(ReloadReport {
                at: SystemTime::now(),
                file: file.to_path_buf(),
                target: target.to_string(),
                outcome,
            });
        }
    }
}

/// What to do when a rule's module does not load at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnBadRule {
    Fail,
    Skip,
}

fn chain_files(config: &Config) -> Vec<(String, PathBuf)> {
    config
        .policy
        .chain
        .iter()
        .map(|name| (name.clone(), config.rule_file(name)))
        .collect()
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

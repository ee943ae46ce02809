//! Policy generations: everything that decides a route — the chain order,
//! each rule's module, limits and `[rules.NAME.config]`, the tables, the
//! numbering plan — built and checked as one unit, then put in force as a
//! whole. A generation is identified by a counter and a content hash, so
//! the history can say which version of the policy decided a delivery, and
//! two generations built from the same files have the same hash.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::bindings::mailcall::rule::types::NumberingPlan;
use super::chain::{Chain, Link, Role};
use super::counters::Counters;
use super::fixtures;
use super::message::message_view;
use super::rule::{LoadedRule, RuleLimits};
use super::runtime::Runtime;
use super::sandbox::RuleContext;
use super::tables::{TableError, TableSet};
use crate::config::{Config, Isolation, OnRuleError, RuleSettings};

/// Where one rule comes from and how it runs.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    pub name: String,
    pub file: PathBuf,
    pub settings: RuleSettings,
    /// Its fixtures (`[rules.NAME] fixtures`), resolved.
    pub fixtures: Option<PathBuf>,
}

/// A policy as the configuration states it: what a generation is built
/// from. Building reads the files it names.
#[derive(Debug, Clone)]
pub struct PolicySpec {
    pub rules: Vec<RuleSpec>,
    /// Table name to its file.
    pub tables: BTreeMap<String, PathBuf>,
    pub plan: NumberingPlan,
    /// `[policy]` limits every rule gets unless its own settings say more.
    pub memory_limit: usize,
    pub deadline: Duration,
    /// How much of the body rules see, in bytes (fixtures are run so).
    pub body_limit: usize,
}

impl PolicySpec {
    /// The configuration's chain.
    pub fn of(config: &Config) -> PolicySpec {
        let rules = config
            .policy
            .chain
            .iter()
            .map(|name| (name.clone(), config.rule_file(name)))
            .collect();
        PolicySpec::with_rules(config, rules)
    }

    /// The given rules, in order, with the configuration's settings for
    /// each name (defaults for names it does not list).
    pub fn with_rules(config: &Config, rules: Vec<(String, PathBuf)>) -> PolicySpec {
        let policy = &config.policy;
        PolicySpec {
            rules: rules
                .into_iter()
                .map(|(name, file)| {
                    let settings = config.rule_settings(&name);
                    RuleSpec {
                        fixtures: settings.fixtures.as_ref().map(|f| config.resolve(f)),
                        settings,
                        name,
                        file,
                    }
                })
                .collect(),
            tables: config
                .tables
                .iter()
                .map(|(name, table)| (name.clone(), config.resolve(&table.file)))
                .collect(),
            plan: NumberingPlan {
                country_code: config.numbering_plan.country_code.clone(),
                trunk_prefix: config.numbering_plan.trunk_prefix.clone(),
                prefixes: config.numbering_plan.prefixes.clone(),
                digits: config.numbering_plan.digits,
            },
            memory_limit: mib(policy.memory_limit_mib),
            deadline: Duration::from_millis(policy.deadline_ms.into()),
            body_limit: policy.body_limit_kib as usize * 1024,
        }
    }

    /// The most memory any of its rules may use, in bytes.
    pub fn max_memory(&self) -> usize {
        self.rules
            .iter()
            .filter_map(|rule| rule.settings.memory_limit_mib.map(mib))
            .fold(self.memory_limit, usize::max)
    }

    /// Warm instances its pooled rules keep.
    pub fn warm_instances(&self) -> u32 {
        self.rules
            .iter()
            .filter(|rule| rule.settings.isolation == Isolation::Pooled)
            .map(|rule| rule.settings.pool_size)
            .sum()
    }
}

fn mib(mib: u32) -> usize {
    mib as usize * 1024 * 1024
}

/// Which generation: a number counted up by the server, and the content
/// hash of what it was built from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GenerationId {
    pub number: u64,
    /// SHA-256 (hex) over the rules' names, modules, limits and config, the
    /// tables' contents and the numbering plan.
    pub digest: String,
}

impl fmt::Display for GenerationId {
    /// `7-3f2a9c1b0e4d`: the number and the first 12 hex digits of the hash.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            self.number,
            &self.digest[..12.min(self.digest.len())]
        )
    }
}

/// Why a generation was not built: what, where, and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("rule {rule}: {file}: {reason}")]
    Rule {
        rule: String,
        file: PathBuf,
        reason: String,
    },
    #[error("table {table}: {file}: {reason}")]
    Table {
        table: String,
        file: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("needs a restart: {0}")]
    NeedsRestart(String),
    #[error("no rules to run: the configuration's [policy] chain is empty")]
    NoRules,
}

impl From<TableError> for BuildError {
    fn from(error: TableError) -> BuildError {
        match error {
            TableError::Read { name, path, error } => BuildError::Table {
                table: name,
                file: path,
                reason: error.to_string(),
            },
            TableError::Parse {
                name,
                path,
                message,
            } => BuildError::Table {
                table: name,
                file: path,
                reason: message,
            },
        }
    }
}

/// What to do with a rule whose module does not load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBadRule {
    /// Refuse the whole generation (every reload; tools at start).
    Refuse,
    /// Keep it in the chain as a failing rule (a server's first generation:
    /// the server starts, and the rule runs once its file is fixed).
    KeepFailing,
}

/// One built policy, ready to evaluate. Immutable: a change builds the next
/// generation, and an evaluation runs on one generation from start to end.
pub struct Generation {
    pub id: GenerationId,
    pub spec: PolicySpec,
    pub built_at: SystemTime,
    pub(super) chain: Chain,
    pub(super) tables: Arc<TableSet>,
}

impl fmt::Debug for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generation")
            .field("id", &self.id)
            .field("rules", &self.chain.names())
            .finish()
    }
}

impl Generation {
    /// Reads, compiles (through the compile cache) and links every rule of
    /// `spec` and parses every table. Slow for large modules: call it off
    /// the hot path.
    pub(super) fn build(
        runtime: &Runtime,
        spec: PolicySpec,
        number: u64,
        on_bad_rule: OnBadRule,
        counters: &Counters,
        previous: Option<&Generation>,
    ) -> Result<Generation, BuildError> {
        if spec.rules.is_empty() {
            return Err(BuildError::NoRules);
        }
        let mut hash = Sha256::new();
        let tables = TableSet::load(&spec.tables)?;
        for (name, digest) in tables.digests() {
            hash.update(format!("table {name} {digest}\n"));
        }
        hash.update(format!("plan {:?}\n", spec.plan));
        hash.update(format!(
            "limits {} {:?}\n",
            spec.memory_limit, spec.deadline
        ));
        let mut chain = Chain::default();
        for rule in &spec.rules {
            let role = Role::of(&rule.settings);
            let link = match load_rule(runtime, &spec, rule) {
                Ok(loaded) => {
                    hash.update(format!(
                        "rule {} {} {:?}\n",
                        rule.name, loaded.digest, rule.settings
                    ));
                    let fallback = match role.on_error {
                        OnRuleError::Previous => fallback_for(previous, &rule.name, &loaded.digest),
                        _ => None,
                    };
                    Link::ready(Arc::new(loaded), role, fallback, counters.of(&rule.name))
                }
                Err(reason) if on_bad_rule == OnBadRule::KeepFailing => {
                    tracing::error!(rule = %rule.name, "rule not loaded, failing until its file is fixed: {reason}");
                    hash.update(format!("rule {} unavailable\n", rule.name));
                    Link::unavailable(&rule.name, reason, role, counters.of(&rule.name))
                }
                Err(reason) => {
                    return Err(BuildError::Rule {
                        rule: rule.name.clone(),
                        file: rule.file.clone(),
                        reason,
                    })
                }
            };
            chain.links.push(link);
        }
        let tables = Arc::new(tables);
        for rule in &spec.rules {
            if let (Some(fixtures), Some(link)) = (&rule.fixtures, chain.link(&rule.name)) {
                hash.update(format!("fixtures {}\n", rule.name));
                check_fixtures(runtime, &spec, &tables, rule, fixtures, link)?;
            }
        }
        let digest = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Generation {
            id: GenerationId { number, digest },
            spec,
            built_at: SystemTime::now(),
            chain,
            tables,
        })
    }

    /// The rule called `name`, if it is loaded in this generation.
    pub(super) fn rule(&self, name: &str) -> Option<&Arc<LoadedRule>> {
        self.chain.rule(name)
    }

    /// The rules in chain order.
    pub fn rules(&self) -> Vec<RuleInForce> {
        self.chain
            .links
            .iter()
            .map(|link| RuleInForce {
                name: link.name().to_string(),
                digest: link.loaded().map(|rule| rule.digest.clone()),
                contract: link.loaded().map(|rule| rule.contract().to_string()),
                mode: link.mode(),
            })
            .collect()
    }
}

/// One rule of a generation's chain, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInForce {
    pub name: String,
    /// The SHA-256 of its module; `None` when it did not load.
    pub digest: Option<String>,
    /// The rule contract version the module was built against (`0.1.0`).
    pub contract: Option<String>,
    /// active, shadow, canary N %.
    pub mode: String,
}

/// Runs a rule's fixtures against the rule alone: any failing case refuses
/// the generation, naming the case and the difference.
fn check_fixtures(
    runtime: &Runtime,
    spec: &PolicySpec,
    tables: &Arc<TableSet>,
    rule: &RuleSpec,
    fixtures: &std::path::Path,
    link: &Link,
) -> Result<(), BuildError> {
    let refuse = |reason: String| BuildError::Rule {
        rule: rule.name.clone(),
        file: fixtures.to_path_buf(),
        reason,
    };
    let Some(module) = link.module() else {
        return Ok(());
    };
    let cases = fixtures::load(fixtures).map_err(refuse)?;
    let base = fixtures.parent().unwrap_or(std::path::Path::new("."));
    // A chain of the rule alone, with counters of its own.
    let alone = Chain {
        links: vec![Link::ready(
            module.clone(),
            Role::default(),
            None,
            Default::default(),
        )],
    };
    for case in &cases {
        let raw = case.message(base).map_err(refuse)?;
        let view = message_view(&raw, spec.body_limit)
            .map(Arc::new)
            .map_err(|e| refuse(format!("case {:?}: {e}", case.name)))?;
        let verdict = alone.evaluate(runtime, tables, "", &case.envelope(), &view);
        let differences = case.differences(&verdict);
        if !differences.is_empty() {
            return Err(refuse(format!(
                "fixture {:?} fails: {}",
                case.name,
                differences.join("; ")
            )));
        }
    }
    Ok(())
}

/// The module `on_error = "previous"` falls back to: the rule's module in
/// the previous generation when it differs from the new one, else the one
/// that generation fell back to.
fn fallback_for(
    previous: Option<&Generation>,
    name: &str,
    digest: &str,
) -> Option<Arc<LoadedRule>> {
    let link = previous?.chain.link(name)?;
    match link.digest() {
        Some(own) if own != digest => link.module().cloned(),
        _ => link.fallback().cloned(),
    }
}

fn load_rule(runtime: &Runtime, spec: &PolicySpec, rule: &RuleSpec) -> Result<LoadedRule, String> {
    if !rule.file.exists() {
        return Err("no such file".into());
    }
    let (pre, digest) = runtime.load(&rule.file).map_err(|e| e.to_string())?;
    let settings = &rule.settings;
    let context = RuleContext {
        name: rule.name.as_str().into(),
        plan: spec.plan.clone(),
        config: settings.config_values(),
        memory_limit: settings.memory_limit_mib.map_or(spec.memory_limit, mib),
        peak_memory: Default::default(),
    };
    let limits = RuleLimits {
        deadline: settings
            .deadline_ms
            .map_or(spec.deadline, |ms| Duration::from_millis(ms.into())),
        isolation: settings.isolation,
        pool_size: settings.pool_size as usize,
        max_calls_per_instance: settings.max_calls_per_instance,
    };
    Ok(LoadedRule::new(context, digest, pre, limits))
}

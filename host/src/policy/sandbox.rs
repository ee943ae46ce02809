//! What a rule instance is given: the imports of the rule world (of either
//! contract version; 0.2.0's helpers are thin wrappers over `text`,
//! `numbers` and `tables`, where the logic lives), a WASI context that
//! grants nothing, and a memory cap.
//!
//! Rust's standard library on `wasm32-wasip2` imports `wasi:cli`, `wasi:io`
//! and friends even when a rule never uses them, so the host links WASI, but
//! with no preopened folder, no environment, no arguments, no network, no
//! name look-up, and clocks frozen at zero: a rule has no file system,
//! network or clock of its own. Standard output is dropped; standard error
//! is kept (capped) so that a panicking rule's message reaches the log.
//! Imports outside the rule world and WASI (`wasi:http`, …) load as traps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use super::bindings::mailcall::rule::types::{
    AddressMatch, Envelope, FoundNumber, KeyKind, KeywordMatch, LogLevel, Mailbox, Message,
    NumberingPlan, Part, TableEntry,
};
use super::bindings::mailcall::rule::{config, log, numbering, numbers, tables, text, types};
use super::bindings::v0_1;
use super::tables::TableSet;

/// Bytes of a rule's standard error kept for the log.
const STDERR_CAPACITY: usize = 4096;
/// Log lines a rule may write per evaluation, and their length.
const LOG_LINES_PER_EVALUATION: u32 = 64;
const LOG_LINE_MAX: usize = 1024;
/// Table elements an instance may grow to (function tables of large
/// runtimes such as Python reach tens of thousands).
const TABLE_ELEMENTS_MAX: usize = 1 << 20;

/// The part of a rule's context that does not change between evaluations.
#[derive(Debug)]
pub struct RuleContext {
    /// The rule's name, for the log.
    pub name: Arc<str>,
    /// The numbering plan, as the `numbering` import returns it.
    pub plan: NumberingPlan,
    /// The rule's own configuration values.
    pub config: BTreeMap<String, String>,
    /// Memory the instance may use, in bytes.
    pub memory_limit: usize,
    /// The largest memory any instance of this rule grew to, in bytes.
    pub peak_memory: AtomicUsize,
}

/// The state of one rule instance's store.
pub struct RuleState {
    context: Arc<RuleContext>,
    /// The tables of the evaluation in progress.
    tables: Arc<TableSet>,
    /// The recipient and message of the evaluation in progress, which the
    /// helpers read when a rule names a `part` of them.
    input: Option<(Envelope, Arc<Message>)>,
    wasi: WasiCtx,
    resources: ResourceTable,
    stderr: MemoryOutputPipe,
    log_lines: u32,
    /// Set when the memory cap refused a growth, to name the failure.
    memory_refused: Arc<AtomicBool>,
    /// The host imports called during this evaluation, for its decision
    /// record.
    imports: Vec<ImportCall>,
}

/// One host import a rule called, with its arguments and result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportCall {
    /// `tables.get`, `tables.entries`, `config.get`, `numbering.plan`.
    pub import: String,
    pub args: Vec<String>,
    /// The result as text (`none`, a value, or `N entries`).
    pub result: String,
}

/// What an evaluation left besides its decision, for its record.
#[derive(Debug, Default)]
pub struct EvaluationTrace {
    pub imports: Vec<ImportCall>,
    /// WebAssembly instructions executed (fuel), when the engine meters
    /// them (`rules test`, `rules check`; never the server's engine).
    pub instructions: Option<u64>,
}

/// Imports recorded per evaluation; a rule calling more (in a loop) has the
/// rest counted, not kept.
const IMPORTS_KEPT: usize = 64;

impl RuleState {
    pub fn new(context: Arc<RuleContext>, tables: Arc<TableSet>) -> RuleState {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        RuleState {
            context,
            tables,
            input: None,
            wasi,
            resources: ResourceTable::new(),
            stderr,
            log_lines: 0,
            memory_refused: Arc::new(AtomicBool::new(false)),
            imports: Vec::new(),
        }
    }

    /// Prepares a (possibly warm) instance for the next evaluation.
    pub fn begin_evaluation(
        &mut self,
        tables: Arc<TableSet>,
        envelope: &Envelope,
        message: Arc<Message>,
    ) {
        self.tables = tables;
        self.input = Some((envelope.clone(), message));
        self.log_lines = 0;
        self.memory_refused.store(false, Ordering::Relaxed);
        self.imports.clear();
    }

    /// The imports called since the evaluation began.
    pub fn take_imports(&mut self) -> Vec<ImportCall> {
        std::mem::take(&mut self.imports)
    }

    fn called(&mut self, import: &str, args: &[&str], result: String) {
        if self.imports.len() < IMPORTS_KEPT {
            self.imports.push(ImportCall {
                import: import.to_string(),
                args: args.iter().map(|a| shown(a)).collect(),
                result: shown(&result),
            });
        }
    }

    /// The keyword of `table` that `text` mentions first, as the contract
    /// gives it (`search-keywords` and `search-keywords-in`).
    fn keyword_in(&self, table: &str, text: &str) -> Option<KeywordMatch> {
        let found = self
            .tables
            .get(table)?
            .search_keywords(table, text, &self.context.plan)?;
        Some(KeywordMatch {
            keyword: found.keyword,
            value: found.value,
            number: found.number,
            offset: offset(found.offset),
        })
    }

    /// The text a rule names with `part`: empty where the message has none.
    fn part(&self, part: Part) -> &str {
        let Some((envelope, message)) = &self.input else {
            return "";
        };
        match part {
            Part::RcptTo => &envelope.rcpt_to,
            Part::Subject => message.subject.as_deref().unwrap_or(""),
            Part::Header(i) => message
                .headers
                .get(i as usize)
                .map_or("", |header| header.value.as_str()),
            Part::ToName(i) => display_name(&message.to, i),
            Part::CcName(i) => display_name(&message.cc, i),
            Part::Body => &message.body_text,
        }
    }

    /// What the rule wrote to standard error, for a failure report.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_string()
    }

    /// Whether the memory cap refused a growth during this evaluation.
    pub fn memory_refused(&self) -> bool {
        self.memory_refused.load(Ordering::Relaxed)
    }
}

impl WasiView for RuleState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.resources,
        }
    }
}

impl ResourceLimiter for RuleState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.context.memory_limit {
            self.memory_refused.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        self.context
            .peak_memory
            .fetch_max(desired, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }
}

/// Longest argument or result kept in a record as it is: a rule may pass a
/// whole message body to a helper.
const SHOWN_MAX: usize = 120;

fn shown(text: &str) -> String {
    if text.len() <= SHOWN_MAX {
        return text.to_string();
    }
    let cut = text.floor_char_boundary(SHOWN_MAX);
    format!("{}… ({} bytes)", &text[..cut], text.len())
}

fn shown_option(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "none".into())
}

/// The display name of mailbox `i`, empty if there is none.
fn display_name(mailboxes: &[Mailbox], i: u32) -> &str {
    mailboxes
        .get(i as usize)
        .and_then(|mailbox| mailbox.name.as_deref())
        .unwrap_or("")
}

fn shown_keyword(found: &KeywordMatch) -> String {
    format!("{} = {} at {}", found.keyword, found.value, found.offset)
}

fn shown_part(part: Part) -> String {
    match part {
        Part::RcptTo => "rcpt-to".into(),
        Part::Subject => "subject".into(),
        Part::Header(i) => format!("header({i})"),
        Part::ToName(i) => format!("to-name({i})"),
        Part::CcName(i) => format!("cc-name({i})"),
        Part::Body => "body".into(),
    }
}

fn shown_found(found: &FoundNumber) -> String {
    format!("{} ({:?} at {})", found.number, found.written, found.offset)
}

/// A character offset as the contract's `u32` (texts are far smaller).
fn offset(chars: usize) -> u32 {
    u32::try_from(chars).unwrap_or(u32::MAX)
}

fn found_number(found: super::numbers::Found) -> FoundNumber {
    FoundNumber {
        number: found.number,
        written: found.written,
        offset: offset(found.char_offset),
    }
}

/// A clock that always reads zero: rules get no clock of their own.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl types::Host for RuleState {}

impl tables::Host for RuleState {
    fn get(&mut self, table: String, key: String) -> Option<String> {
        let value = self
            .tables
            .get(&table)
            .and_then(|t| t.get(&key))
            .map(str::to_string);
        self.called("tables.get", &[&table, &key], shown_option(&value));
        value
    }

    fn entries(&mut self, name: String) -> Vec<TableEntry> {
        let entries: Vec<TableEntry> = match self.tables.get(&name) {
            Some(table) => table
                .entries()
                .iter()
                .map(|(key, value)| TableEntry {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            None => Vec::new(),
        };
        self.called(
            "tables.entries",
            &[&name],
            format!("{} entries", entries.len()),
        );
        entries
    }

    fn match_address(&mut self, table: String, address: String) -> Option<AddressMatch> {
        let found = self
            .tables
            .get(&table)
            .and_then(|t| t.match_address(&table, &address, &self.context.plan))
            .map(|m| AddressMatch {
                key: m.key,
                kind: m.kind,
                value: m.value,
                number: m.number,
            });
        let result = found.as_ref().map_or("none".into(), |m| {
            let kind = match m.kind {
                KeyKind::Address => "address",
                KeyKind::Domain => "domain",
                KeyKind::Wildcard => "wildcard",
            };
            format!("{kind} entry {} = {}", m.key, m.value)
        });
        self.called("tables.match-address", &[&table, &address], result);
        found
    }

    fn search_keywords(&mut self, table: String, text: String) -> Option<KeywordMatch> {
        let found = self.keyword_in(&table, &text);
        let result = found.as_ref().map_or("none".into(), shown_keyword);
        self.called("tables.search-keywords", &[&table, &text], result);
        found
    }

    fn search_keywords_in(&mut self, table: String, part: Part) -> Option<KeywordMatch> {
        let found = self.keyword_in(&table, self.part(part));
        let result = found.as_ref().map_or("none".into(), shown_keyword);
        self.called(
            "tables.search-keywords-in",
            &[&table, &shown_part(part)],
            result,
        );
        found
    }
}

impl text::Host for RuleState {
    fn fold(&mut self, text: String) -> String {
        let folded = super::text::fold(&text);
        self.called("text.fold", &[&text], folded.clone());
        folded
    }

    fn is_human_header(&mut self, name: String) -> bool {
        let human = super::text::is_human_header(&name);
        self.called("text.is-human-header", &[&name], human.to_string());
        human
    }
}

impl numbers::Host for RuleState {
    fn find_all(&mut self, text: String) -> Vec<FoundNumber> {
        let found: Vec<FoundNumber> = super::numbers::find_all(&text, &self.context.plan)
            .into_iter()
            .map(found_number)
            .collect();
        let result = found.iter().map(shown_found).collect::<Vec<_>>().join(", ");
        self.called("numbers.find-all", &[&text], format!("[{result}]"));
        found
    }

    fn find_first(&mut self, text: String) -> Option<FoundNumber> {
        let found = super::numbers::find_first(&text, &self.context.plan).map(found_number);
        let result = found.as_ref().map_or("none".into(), shown_found);
        self.called("numbers.find-first", &[&text], result);
        found
    }

    fn find_first_in(&mut self, part: Part) -> Option<FoundNumber> {
        let found =
            super::numbers::find_first(self.part(part), &self.context.plan).map(found_number);
        let result = found.as_ref().map_or("none".into(), shown_found);
        self.called("numbers.find-first-in", &[&shown_part(part)], result);
        found
    }

    fn normalize(&mut self, written: String) -> Option<String> {
        let number = super::numbers::normalize(&written, &self.context.plan);
        self.called("numbers.normalize", &[&written], shown_option(&number));
        number
    }
}

impl numbering::Host for RuleState {
    fn plan(&mut self) -> NumberingPlan {
        let plan = self.context.plan.clone();
        let shown = format!(
            "+{} trunk {} prefixes {} digits {}",
            plan.country_code,
            plan.trunk_prefix,
            plan.prefixes.join(","),
            plan.digits
        );
        self.called("numbering.plan", &[], shown);
        plan
    }
}

impl config::Host for RuleState {
    fn get(&mut self, key: String) -> Option<String> {
        let value = self.context.config.get(&key).cloned();
        self.called("config.get", &[&key], shown_option(&value));
        value
    }
}

impl log::Host for RuleState {
    fn write(&mut self, level: LogLevel, message: String) {
        self.log_lines += 1;
        if self.log_lines > LOG_LINES_PER_EVALUATION {
            if self.log_lines == LOG_LINES_PER_EVALUATION + 1 {
                tracing::warn!(rule = %self.context.name, "rule log limit reached; further lines dropped");
            }
            return;
        }
        let line = &message[..message.floor_char_boundary(LOG_LINE_MAX)];
        let rule = &*self.context.name;
        match level {
            LogLevel::Trace => tracing::trace!(rule, "{line}"),
            LogLevel::Debug => tracing::debug!(rule, "{line}"),
            LogLevel::Info => tracing::info!(rule, "{line}"),
            LogLevel::Warn => tracing::warn!(rule, "{line}"),
            LogLevel::Error => tracing::error!(rule, "{line}"),
        }
    }
}

// The 0.1.0 contract's imports are the same functions as 0.2.0's.

impl v0_1::mailcall::rule::tables::Host for RuleState {
    fn get(&mut self, table: String, key: String) -> Option<String> {
        tables::Host::get(self, table, key)
    }

    fn entries(&mut self, table: String) -> Vec<TableEntry> {
        tables::Host::entries(self, table)
    }
}

impl v0_1::mailcall::rule::numbering::Host for RuleState {
    fn plan(&mut self) -> NumberingPlan {
        numbering::Host::plan(self)
    }
}

impl v0_1::mailcall::rule::config::Host for RuleState {
    fn get(&mut self, key: String) -> Option<String> {
        config::Host::get(self, key)
    }
}

impl v0_1::mailcall::rule::log::Host for RuleState {
    fn write(&mut self, level: LogLevel, message: String) {
        log::Host::write(self, level, message)
    }
}

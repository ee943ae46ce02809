//! The configuration file (TOML): what mailcall runs and with which limits.
//!
//! Relative paths in the file are resolved against the file's own folder, so
//! a configuration and the tables next to it can be moved together.

mod file;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mailcall_sip::Network;
use serde::Deserialize;

pub use file::ConfigFile;

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A syntax or type error; toml's message names the line and column.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The mail server: names, addresses, folders, limits.
    #[serde(default)]
    pub server: ServerSettings,
    /// Local mailboxes, by user name (the local part in every local domain).
    #[serde(default = "default_users")]
    pub users: BTreeMap<String, UserSettings>,
    /// The rule chain and the limits rules run under.
    #[serde(default)]
    pub policy: PolicySettings,
    /// The numbering plan rules recognise and normalize numbers against.
    #[serde(default)]
    pub numbering_plan: NumberingPlanSettings,
    /// Operator-edited tables, by the name rules use for them.
    #[serde(default)]
    pub tables: BTreeMap<String, TableSettings>,
    /// Static routes for relaying (S8): a domain, or `*` for a smarthost,
    /// to the `address:port` of the server that takes its mail.
    #[serde(default)]
    pub routes: BTreeMap<String, std::net::SocketAddr>,
    /// Per-rule settings, by rule name; rules not listed get the defaults.
    #[serde(default)]
    pub rules: BTreeMap<String, RuleSettings>,
    /// Outbound SMTP (S8): TLS, timeouts, parallelism, DNS.
    #[serde(default)]
    pub relay: RelaySettings,
    /// How deferred mail is retried, and for how long.
    #[serde(default)]
    pub queue: QueueSettings,
    /// Delivery over calls (S5–S7): what a failed call leads to.
    #[serde(default)]
    pub call: CallSettings,
    /// The operator console and `/metrics`.
    #[serde(default)]
    pub admin: AdminSettings,
    /// How the server's log is written.
    #[serde(default)]
    pub log: LogSettings,
    /// The SIP user agent: placing calls (S5–S7) and answering them. A file
    /// without `[sip]` runs no user agent; the embedded default listens on
    /// 127.0.0.1:5060 (UDP and TCP).
    pub sip: Option<mailcall_sip::SipSettings>,
    /// The folder relative paths are resolved against (the file's folder).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file it was loaded from, if any: a running server rebuilds its
    /// policy from it when it changes.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[server]`: what the mail server listens on, stores where, and accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// The name in the greeting and in `Received:` headers.
    pub hostname: String,
    /// Where the queue and the mailboxes live.
    pub data_dir: PathBuf,
    /// The SMTP listener.
    pub smtp_listen: std::net::SocketAddr,
    /// The POP3 listener.
    pub pop3_listen: std::net::SocketAddr,
    /// Domains whose mail is delivered to local mailboxes.
    pub local_domains: Vec<String>,
    /// Client networks allowed to relay to other domains (`127.0.0.0/8`,
    /// `2001:db8::/32`); none by default.
    pub relay_networks: Vec<Network>,
    /// Largest message accepted, in KiB.
    pub max_message_size_kib: u32,
    /// Most recipients per message.
    pub max_recipients: u32,
    /// Protocol errors before a session is closed.
    pub max_errors: u32,
    /// SMTP sessions at once, and POP3 sessions at once; more are turned
    /// away (SMTP `421`, POP3 `-ERR [SYS/TEMP]`).
    pub max_sessions: u32,
    /// The longest delay, in seconds, before answering a login from a
    /// client address whose logins failed (SMTP `AUTH`, POP3 `PASS`): 2 s
    /// after one failure, doubling after each, up to this; `0` turns the
    /// delay off (for a benchmark).
    pub auth_penalty_max_secs: u32,
    /// Seconds to wait for a command, and for each read of message data.
    pub command_timeout_secs: u32,
    pub data_timeout_secs: u32,
    /// Synchronous mode: for clients in these networks, and these users
    /// once authenticated, the reply to the end of data waits (at most
    /// `synchronous_timeout_secs`) until the message was tried, so a `250`
    /// can mean "the final server took it" and a final server's refusal
    /// comes back as a `5xx` in the same session.
    pub synchronous_networks: Vec<Network>,
    pub synchronous_users: Vec<String>,
    pub synchronous_timeout_secs: u32,
    /// The TLS certificate chain and key (PEM) for `STARTTLS` and `STLS`.
    /// Without them a self-signed certificate is generated on first start
    /// and kept in `data_dir/tls/`.
    pub tls_certificate: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// `[relay]`: how mail for other domains is sent on (S8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySettings {
    /// `may`: use `STARTTLS` whenever the server offers it, without checking
    /// its certificate (Postfix's `smtp_tls_security_level = may`); `none`.
    pub tls: RelayTls,
    /// Seconds to wait for a connection, and for each reply.
    pub connect_timeout_secs: u32,
    pub reply_timeout_secs: u32,
    /// Messages delivered at once.
    pub max_parallel: u32,
    /// The port of the servers found by MX look-up.
    pub mx_port: u16,
    /// Name servers for MX and address look-ups (`address:port`); default:
    /// the system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<std::net::SocketAddr>,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            tls: RelayTls::May,
            connect_timeout_secs: 30,
            reply_timeout_secs: 300,
            max_parallel: 20,
            mx_port: 25,
            dns_servers: Vec::new(),
        }
    }
}

/// Whether relaying uses TLS.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    #[default]
    May,
    None,
}

/// `[admin]`: the operator console (HTML pages and `/metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    pub enabled: bool,
    pub listen: std::net::SocketAddr,
    /// HTTPS with the SMTP server's certificate (`[server] tls_certificate`
    /// and `tls_key`, or the generated one). Required off loopback.
    pub tls: bool,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            enabled: true,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8025)),
            tls: false,
        }
    }
}

/// `[log]`: the server's log (on stderr; the level from `RUST_LOG`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
}

/// `text` for people, `json` (a JSON object per line) for log shippers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[call]`: delivery over calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallSettings {
    /// What a failed call (busy, no answer, channel broken, final server
    /// answering `4xx`) leads to: `relay` at once (the patent's S8), `retry`
    /// the call on the queue's schedule, or `retry-then-relay`.
    pub on_failure: OnCallFailure,
    /// With `retry-then-relay`: calls retried before relaying.
    pub retries: u32,
    /// Place and answer calls only over TLS signalling (`[sip] tls_listen`,
    /// `sips:` or `transport=tls` targets), so the channel's fingerprint in
    /// the SDP cannot be swapped on the way. A call that cannot be placed
    /// so fails, and `on_failure` decides what follows.
    pub require_tls: bool,
}

impl Default for CallSettings {
    fn default() -> Self {
        CallSettings {
            on_failure: OnCallFailure::Relay,
            retries: 3,
            require_tls: false,
        }
    }
}

/// What follows a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnCallFailure {
    Relay,
    Retry,
    RetryThenRelay,
}

/// `[queue]`: the retry schedule, Postfix's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    /// How often deferred mail is looked at (`queue_run_delay`).
    pub queue_run_delay_secs: u32,
    /// The wait after the first failed attempt, doubled after each one
    /// (`minimal_backoff_time`).
    pub minimal_backoff_secs: u32,
    /// The longest wait between attempts (`maximal_backoff_time`).
    pub maximal_backoff_secs: u32,
    /// How long a message is tried before it is bounced
    /// (`maximal_queue_lifetime`).
    pub maximal_lifetime_secs: u32,
    /// A new spool segment is started when the current one passes this
    /// size; finished segments are compacted away. Small values are for
    /// tests that want many rotations.
    pub segment_size_kib: u32,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            queue_run_delay_secs: 300,
            minimal_backoff_secs: 300,
            maximal_backoff_secs: 4000,
            maximal_lifetime_secs: 5 * 24 * 3600,
            segment_size_kib: 64 * 1024,
        }
    }
}

impl Default for ServerSettings {
    /// Loopback only, so a new user can try it at once.
    fn default() -> Self {
        ServerSettings {
            hostname: "localhost".into(),
            data_dir: PathBuf::from("mailcall-data"),
            smtp_listen: ([127, 0, 0, 1], 2525).into(),
            pop3_listen: ([127, 0, 0, 1], 1110).into(),
            local_domains: vec!["localhost".into()],
            relay_networks: Vec::new(),
            max_message_size_kib: 10 * 1024,
            max_recipients: 100,
            max_errors: 20,
            max_sessions: 100,
            auth_penalty_max_secs: 15,
            command_timeout_secs: 300,
            data_timeout_secs: 180,
            tls_certificate: None,
            tls_key: None,
            synchronous_networks: Vec::new(),
            synchronous_users: Vec::new(),
            synchronous_timeout_secs: 30,
        }
    }
}

/// `[users.NAME]`: one local mailbox.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserSettings {
    /// Other local parts delivered to this mailbox (`root`, `abuse`).
    pub aliases: Vec<String>,
    /// The POP3 password as an argon2 PHC string (`mailcall hash-password`);
    /// without one the user cannot log in.
    pub password_hash: Option<String>,
    /// May log in to the console and act on the queue there.
    pub admin: bool,
}

/// RFC 5321 asks every domain for a `postmaster` mailbox.
fn default_users() -> BTreeMap<String, UserSettings> {
    BTreeMap::from([("postmaster".to_string(), UserSettings::default())])
}

/// `[policy]`: the rule chain and the limits every rule runs under.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySettings {
    /// Where rule modules live; a rule `NAME` is `rules_dir/NAME.wasm`
    /// unless its `[rules.NAME] file` says otherwise. Watched for changes.
    pub rules_dir: PathBuf,
    /// The rules to run, in order: the first that dials wins.
    pub chain: Vec<String>,
    /// Where compiled rules are cached, by content hash. Default: the
    /// user's cache folder (`$XDG_CACHE_HOME/mailcall` or `~/.cache/mailcall`).
    pub cache_dir: Option<PathBuf>,
    /// Memory a rule instance may use, in MiB.
    pub memory_limit_mib: u32,
    /// Time a rule may run per evaluation (instantiation included), in ms.
    pub deadline_ms: u32,
    /// How much of the message's text body rules see, in KiB.
    pub body_limit_kib: u32,
    /// Evaluations that may run at once; more wait for a free slot. Sizes
    /// the pooling allocator.
    pub max_concurrent_evaluations: u32,
    /// Whether the configuration file, the rules folder and the table
    /// files are watched, and the policy rebuilt when they change.
    pub hot_reload: bool,
    /// Policy generations kept in memory for `mailcall rules rollback`.
    pub keep_generations: u32,
    /// The decision log's size in the data folder, in MiB (0: none).
    pub decision_log_mib: u32,
    /// Mask addresses and numbers in the decision log (its records then
    /// cannot be replayed).
    pub decision_log_redact: bool,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            rules_dir: PathBuf::from("rules"),
            chain: Vec::new(),
            cache_dir: None,
            memory_limit_mib: 16,
            deadline_ms: 10,
            body_limit_kib: 64,
            max_concurrent_evaluations: 16,
            hot_reload: true,
            keep_generations: 5,
            decision_log_mib: 64,
            decision_log_redact: false,
        }
    }
}

/// `[numbering_plan]`: what a callable number looks like.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NumberingPlanSettings {
    /// Country code, digits only (`81`).
    pub country_code: String,
    /// Trunk prefix of national numbers, dropped in international form (`0`).
    pub trunk_prefix: String,
    /// National prefixes that mark a callable number (`050`, `080`).
    pub prefixes: Vec<String>,
    /// Digits of a national number in all, trunk prefix included (11).
    pub digits: u8,
}

impl Default for NumberingPlanSettings {
    /// Japan's IP phone numbers, as in the patent.
    fn default() -> Self {
        NumberingPlanSettings {
            country_code: "81".into(),
            trunk_prefix: "0".into(),
            prefixes: vec!["050".into(), "080".into()],
            digits: 11,
        }
    }
}

/// `[tables.NAME]`: one operator-edited table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSettings {
    /// The table's file (TOML: `"key" = "value"` lines).
    pub file: PathBuf,
}

/// How a rule's instances are reused between evaluations.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A fresh instance per evaluation: nothing of one message can reach
    /// the evaluation of another. The default.
    #[default]
    Fresh,
    /// A small pool of warm instances, each used for up to
    /// `max_calls_per_instance` evaluations and thrown away after a failure.
    /// For runtimes whose instantiation is slow (JavaScript, Python); a rule
    /// could then see state left by an earlier message.
    Pooled,
}

/// Whether a rule decides (`[rules.NAME] mode`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuleMode {
    /// It decides in its place in the chain. The default.
    #[default]
    Active,
    /// It is evaluated for every recipient beside the chain and never
    /// decides; where it would have decided otherwise, the difference is
    /// recorded.
    Shadow,
    /// It decides for `canary` percent of the messages (by a hash of the
    /// queue id) and is a shadow for the rest.
    Canary,
}

/// What a failing rule leads to (`[rules.NAME] on_error`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnRuleError {
    /// As if it had no opinion: the chain goes on. The default.
    #[default]
    Skip,
    /// The recipient is deferred (retried later), for rules that must not
    /// be silently skipped.
    Defer,
    /// The rule's module of the previous generation decides instead.
    Previous,
}

/// `[rules.NAME]`: settings of one rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleSettings {
    /// The module file; default `rules_dir/NAME.wasm`.
    pub file: Option<PathBuf>,
    /// Fresh instance per evaluation, or a pool of warm ones.
    pub isolation: Isolation,
    /// Warm instances kept when `isolation = "pooled"`.
    pub pool_size: u32,
    /// Evaluations a warm instance serves before it is replaced.
    pub max_calls_per_instance: u32,
    /// Overrides `[policy] memory_limit_mib` for this rule.
    pub memory_limit_mib: Option<u32>,
    /// Overrides `[policy] deadline_ms` for this rule.
    pub deadline_ms: Option<u32>,
    /// Active, shadow, or canary.
    pub mode: RuleMode,
    /// With `mode = "canary"`: the percentage of messages it decides.
    pub canary: u32,
    /// What a failure of the rule leads to.
    pub on_error: OnRuleError,
    /// The circuit breaker: after `max_failures` failures within
    /// `failure_window_secs`, the rule is switched off (or its previous
    /// module used, with `on_error = "previous"`) until the next reload.
    pub max_failures: u32,
    pub failure_window_secs: u32,
    /// A case list the rule must pass for a generation to be put in force.
    pub fixtures: Option<PathBuf>,
    /// The rule's own values, read with the `config` import. Nested tables
    /// flatten to dotted keys (`sender."example.com"` is `sender.example.com`).
    pub config: toml::Table,
}

impl Default for RuleSettings {
    fn default() -> Self {
        RuleSettings {
            file: None,
            isolation: Isolation::Fresh,
            pool_size: 4,
            max_calls_per_instance: 1000,
            memory_limit_mib: None,
            deadline_ms: None,
            mode: RuleMode::Active,
            canary: 10,
            on_error: OnRuleError::Skip,
            max_failures: 20,
            failure_window_secs: 60,
            fixtures: None,
            config: toml::Table::new(),
        }
    }
}

impl RuleSettings {
    /// The rule's configuration values as flat text key/value pairs.
    pub fn config_values(&self) -> BTreeMap<String, String> {
        let mut values = BTreeMap::new();
        flatten(&self.config, "", &mut values);
        values
    }
}

fn flatten(table: &toml::Table, prefix: &str, out: &mut BTreeMap<String, String>) {
    for (key, value) in table {
        let key = format!("{prefix}{key}");
        match value {
            toml::Value::Table(inner) => flatten(inner, &format!("{key}."), out),
            toml::Value::String(text) => {
                out.insert(key, text.clone());
            }
            other => {
                out.insert(key, other.to_string());
            }
        }
    }
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut config = Config::parse(&text, path, base_dir)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses configuration text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path, base_dir: PathBuf) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: error.to_string().trim_end().to_string(),
        })?;
        config.base_dir = if base_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base_dir
        };
        config.complete_sip();
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: match line_of(text, &message) {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            },
        })?;
        Ok(config)
    }

    /// The embedded default: every setting at its default, no rule chain.
    /// `mailcall serve` runs on it without `--config`; `rules test` with
    /// `--rule` only.
    pub fn defaults() -> Config {
        Config {
            routes: BTreeMap::new(),
            server: ServerSettings::default(),
            users: default_users(),
            policy: PolicySettings::default(),
            numbering_plan: NumberingPlanSettings::default(),
            tables: BTreeMap::new(),
            rules: BTreeMap::new(),
            relay: RelaySettings::default(),
            queue: QueueSettings::default(),
            call: CallSettings::default(),
            admin: AdminSettings::default(),
            log: LogSettings::default(),
            sip: Some(mailcall_sip::SipSettings::default()),
            base_dir: PathBuf::from("."),
            source: None,
        }
    }

    /// What `[sip]` takes from the rest of the file: `[call] require_tls`,
    /// the numbering plan (for ENUM), the relay's name servers unless it
    /// names its own, and its TLS files made absolute.
    fn complete_sip(&mut self) {
        let (call, plan, relay) = (&self.call, &self.numbering_plan, &self.relay);
        let resolved: Vec<Option<PathBuf>> = self
            .sip
            .iter()
            .flat_map(|sip| [&sip.tls_certificate, &sip.tls_key, &sip.tls_ca_file])
            .map(|path| path.as_deref().map(|path| self.resolve(path)))
            .collect();
        let Some(sip) = &mut self.sip else {
            return;
        };
        sip.require_tls = call.require_tls;
        sip.numbering = mailcall_sip::E164Plan {
            country_code: plan.country_code.clone(),
            trunk_prefix: plan.trunk_prefix.clone(),
        };
        if sip.dns_servers.is_empty() {
            sip.dns_servers = relay.dns_servers.clone();
        }
        if let [certificate, key, ca_file] = &resolved[..] {
            (sip.tls_certificate, sip.tls_key, sip.tls_ca_file) =
                (certificate.clone(), key.clone(), ca_file.clone());
        }
    }

    /// `path` made absolute against the configuration's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The settings of rule `name` (the defaults if it has none).
    pub fn rule_settings(&self, name: &str) -> RuleSettings {
        self.rules.get(name).cloned().unwrap_or_default()
    }

    /// The module file of rule `name`.
    pub fn rule_file(&self, name: &str) -> PathBuf {
        match self.rules.get(name).and_then(|rule| rule.file.as_ref()) {
            Some(file) => self.resolve(file),
            None => self
                .resolve(&self.policy.rules_dir)
                .join(format!("{name}.wasm")),
        }
    }

    /// The mailbox (user name) of a local part, following aliases.
    pub fn mailbox_of(&self, local_part: &str) -> Option<&str> {
        let local_part = local_part.to_lowercase();
        self.users.iter().find_map(|(user, settings)| {
            let matches = user.to_lowercase() == local_part
                || settings
                    .aliases
                    .iter()
                    .any(|alias| alias.to_lowercase() == local_part);
            matches.then_some(user.as_str())
        })
    }

    fn validate(&self) -> Result<(), String> {
        let server = &self.server;
        if server.local_domains.is_empty() {
            return Err("[server] local_domains must name at least one domain".into());
        }
        for (name, value) in [
            ("max_message_size_kib", server.max_message_size_kib),
            ("max_recipients", server.max_recipients),
            ("max_errors", server.max_errors),
            ("max_sessions", server.max_sessions),
            ("command_timeout_secs", server.command_timeout_secs),
            ("data_timeout_secs", server.data_timeout_secs),
        ] {
            if value == 0 {
                return Err(format!("[server] {name} must be at least 1"));
            }
        }
        if server.tls_certificate.is_some() != server.tls_key.is_some() {
            return Err("[server] tls_certificate and tls_key go together".into());
        }
        let admin = &self.admin;
        if admin.enabled && !admin.tls && !admin.listen.ip().to_canonical().is_loopback() {
            return Err(format!(
                "[admin] listen = {}: a console reachable from other hosts needs TLS; \
                 set [admin] tls = true (it uses the SMTP server's certificate), \
                 or listen on loopback",
                admin.listen
            ));
        }
        let relay = &self.relay;
        for (name, value) in [
            ("connect_timeout_secs", relay.connect_timeout_secs),
            ("reply_timeout_secs", relay.reply_timeout_secs),
            ("max_parallel", relay.max_parallel),
            ("mx_port", relay.mx_port.into()),
        ] {
            if value == 0 {
                return Err(format!("[relay] {name} must be at least 1"));
            }
        }
        let queue = &self.queue;
        for (name, value) in [
            ("queue_run_delay_secs", queue.queue_run_delay_secs),
            ("minimal_backoff_secs", queue.minimal_backoff_secs),
            ("maximal_lifetime_secs", queue.maximal_lifetime_secs),
            ("segment_size_kib", queue.segment_size_kib),
        ] {
            if value == 0 {
                return Err(format!("[queue] {name} must be at least 1"));
            }
        }
        if queue.maximal_backoff_secs < queue.minimal_backoff_secs {
            return Err(
                "[queue] maximal_backoff_secs must not be below minimal_backoff_secs".into(),
            );
        }
        for (name, rule) in &self.rules {
            if rule.canary > 100 {
                return Err(format!("[rules.{name}] canary is a percentage: 0 to 100"));
            }
            if rule.max_failures == 0 || rule.failure_window_secs == 0 {
                return Err(format!(
                    "[rules.{name}] max_failures and failure_window_secs must be at least 1"
                ));
            }
        }
        if server.synchronous_timeout_secs == 0 {
            return Err("[server] synchronous_timeout_secs must be at least 1".into());
        }
        for user in self.users.keys() {
            let valid = !user.is_empty()
                && user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
                && !user.starts_with('.');
            if !valid {
                return Err(format!(
                    "[users.{user}]: a user name is letters, digits and . _ - +"
                ));
            }
        }
        let policy = &self.policy;
        let mut seen = std::collections::HashSet::new();
        for name in &policy.chain {
            if !seen.insert(name) {
                return Err(format!("[policy] chain names rule {name:?} twice"));
            }
            if name.is_empty() || name.contains(['/', '\\']) {
                return Err(format!("[policy] chain: {name:?} is not a rule name"));
            }
        }
        if policy.memory_limit_mib == 0 || policy.memory_limit_mib > 4096 {
            return Err("[policy] memory_limit_mib must be between 1 and 4096".into());
        }
        if policy.deadline_ms == 0 || policy.deadline_ms > 60_000 {
            return Err("[policy] deadline_ms must be between 1 and 60000".into());
        }
        if policy.max_concurrent_evaluations == 0 || policy.max_concurrent_evaluations > 1024 {
            return Err("[policy] max_concurrent_evaluations must be between 1 and 1024".into());
        }
        for (name, rule) in &self.rules {
            if rule
                .memory_limit_mib
                .is_some_and(|mib| mib == 0 || mib > 4096)
            {
                return Err(format!(
                    "[rules.{name}] memory_limit_mib must be between 1 and 4096"
                ));
            }
            if rule.deadline_ms.is_some_and(|ms| ms == 0 || ms > 60_000) {
                return Err(format!(
                    "[rules.{name}] deadline_ms must be between 1 and 60000"
                ));
            }
            if rule.isolation == Isolation::Pooled && !(1..=64).contains(&rule.pool_size) {
                return Err(format!("[rules.{name}] pool_size must be between 1 and 64"));
            }
            if rule.max_calls_per_instance == 0 {
                return Err(format!(
                    "[rules.{name}] max_calls_per_instance must be at least 1"
                ));
            }
        }
        if let Some(sip) = &self.sip {
            sip.validate()?;
        }
        self.numbering_plan.validate()
    }
}

/// The line a validation message is about. Messages start with the table
/// and, most, the key (`[relay] mx_port must be ...`); the line is that
/// key's in that table, else the table's header. `None` when the table is
/// not in the file (a default is wrong).
fn line_of(text: &str, message: &str) -> Option<usize> {
    let rest = message.strip_prefix('[')?;
    let (table, rest) = rest.split_once(']')?;
    let key = rest
        .trim_start_matches(':')
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_end_matches(':');
    let header = format!("[{table}]");
    let mut lines = text.lines().enumerate();
    let (header_index, _) = lines.find(|(_, line)| line.trim() == header)?;
    let in_table = lines.take_while(|(_, line)| !line.trim_start().starts_with('['));
    for (index, line) in in_table {
        let line = line.trim_start();
        let matches = !key.is_empty()
            && line
                .strip_prefix(key)
                .is_some_and(|after| after.starts_with(|c: char| c == '=' || c.is_whitespace()));
        if matches {
            return Some(index + 1);
        }
    }
    Some(header_index + 1)
}

impl NumberingPlanSettings {
    fn validate(&self) -> Result<(), String> {
        let digits_only = |text: &str| text.chars().all(|c| c.is_ascii_digit());
        if self.country_code.is_empty() || !digits_only(&self.country_code) {
            return Err("[numbering_plan] country_code must be digits, without +".into());
        }
        if !digits_only(&self.trunk_prefix) {
            return Err("[numbering_plan] trunk_prefix must be digits".into());
        }
        if !(4..=20).contains(&self.digits) {
            return Err("[numbering_plan] digits must be between 4 and 20".into());
        }
        if self.prefixes.is_empty() {
            return Err("[numbering_plan] prefixes must name at least one prefix".into());
        }
        for prefix in &self.prefixes {
            if prefix.is_empty()
                || !digits_only(prefix)
                || prefix.len() >= self.digits as usize
                || !prefix.starts_with(&self.trunk_prefix)
            {
                return Err(format!(
                    "[numbering_plan] prefix {prefix:?} must be digits that start with the \
                     trunk prefix and are shorter than a number"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), PathBuf::from("/etc/mailcall"))
    }

    #[test]
    fn defaults_are_the_patents_plan_and_safe_limits() {
        let config = parse("").unwrap();
        assert_eq!(config.numbering_plan.prefixes, ["050", "080"]);
        assert_eq!(config.policy.memory_limit_mib, 16);
        assert_eq!(config.policy.deadline_ms, 10);
        assert_eq!(config.policy.body_limit_kib, 64);
    }

    #[test]
    fn paths_resolve_against_the_files_folder() {
        let config = parse("[policy]\nrules_dir = \"rules\"\nchain = [\"a\"]\n").unwrap();
        assert_eq!(
            config.rule_file("a"),
            PathBuf::from("/etc/mailcall/rules/a.wasm")
        );
    }

    #[test]
    fn errors_name_the_line() {
        let error = parse("[policy]\nchain = [\"a\"]\ndeadline_ms = \"soon\"\n").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("line 3"), "{message}");

        let error = parse("[policy]\nchian = []\n").unwrap_err().to_string();
        assert!(
            error.contains("unknown field") && error.contains("line 2"),
            "{error}"
        );
    }

    #[test]
    fn invalid_values_name_their_line() {
        let error = parse("[server]\nhostname = \"mx\"\n\n[relay]\ntls = \"may\"\nmx_port = 0\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 6: [relay] mx_port"), "{error}");
        let error = parse("[policy]\nchain = [\"a\", \"a\"]\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 2: [policy] chain"), "{error}");
        let error = parse("[users.\"bad name\"]\n").unwrap_err().to_string();
        assert!(error.contains("a user name is"), "{error}");
    }

    #[test]
    fn invalid_values_are_refused() {
        assert!(parse("[policy]\nchain = [\"a\", \"a\"]\n").is_err());
        assert!(parse("[policy]\nmemory_limit_mib = 0\n").is_err());
        assert!(parse("[numbering_plan]\nprefixes = [\"5O\"]\n").is_err());
        assert!(parse("[rules.x]\nisolation = \"pooled\"\npool_size = 0\n").is_err());
    }

    #[test]
    fn rule_config_values_flatten_to_text() {
        let config =
            parse("[rules.custom.config]\nsender.\"example.com\" = \"050-1\"\nlimit = 3\n")
                .unwrap();
        let values = config.rule_settings("custom").config_values();
        assert_eq!(values["sender.example.com"], "050-1");
        assert_eq!(values["limit"], "3");
    }
}

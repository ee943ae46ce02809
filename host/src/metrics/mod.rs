//! The server's counters, in one registry that `/metrics` (Prometheus)
//! and the console's pages read. Labels are bounded sets (a path, an
//! outcome, a result, a SIP status): never a recipient, a number or a
//! message id.

mod metered;
pub mod recent;

pub use metered::Metered;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::history::{AttemptOutcome, DeliveryPath};
use crate::policy::{LatencySnapshot, LATENCY_BOUNDS_US};
use crate::queue::spool::RecipientStates;
use crate::server::control::Status;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    path: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds from 1 ms to about 9 hours, doubling.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 25))
}

/// The gauges, as they are at a scrape.
pub struct Now {
    pub queued: usize,
    pub states: RecipientStates,
    pub calls_in_progress: usize,
}

/// Every counter of the server.
pub struct Metrics {
    registry: Registry,
    sessions: Family<ServiceLabel, Counter>,
    messages: Family<ResultLabel, Counter>,
    deliveries: Family<DeliveryLabels, Counter>,
    delivery_seconds: Histograms<PathLabel>,
    calls: Family<StatusLabel, Counter>,
    call_setup_seconds: Histogram,
    channel_bytes: Family<DirectionLabel, Counter>,
    calls_in_progress: Gauge,
    queue: Gauge,
    queue_recipients: Family<StateLabel, Gauge>,
    /// Since start, for the console: accepted, and final outcomes.
    accepted: AtomicU64,
    /// The last hour by minute, for the console.
    pub recent: recent::Recent,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mailcall");
        let sessions = Family::<ServiceLabel, Counter>::default();
        registry.register(
            "sessions",
            "Client sessions opened, by service (smtp, pop3)",
            sessions.clone(),
        );
        let messages = Family::<ResultLabel, Counter>::default();
        registry.register(
            "smtp_messages",
            "Messages offered over SMTP, by result (accepted: 250 after fsync; refused)",
            messages.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Delivery attempts per recipient, by path (local, call, relay) and outcome",
            deliveries.clone(),
        );
        let delivery_seconds: Histograms<PathLabel> = Family::new_with_constructor(seconds);
        registry.register(
            "delivery_seconds",
            "From acceptance to a recipient's final outcome, by path",
            delivery_seconds.clone(),
        );
        let calls = Family::<StatusLabel, Counter>::default();
        registry.register(
            "calls",
            "Calls placed, by final SIP status (none: no answer)",
            calls.clone(),
        );
        let call_setup_seconds = seconds();
        registry.register(
            "call_setup_seconds",
            "From a call's INVITE to its 200 OK",
            call_setup_seconds.clone(),
        );
        let channel_bytes = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "channel_bytes",
            "Bytes over calls' channels, by direction (sent, received), as caller and callee",
            channel_bytes.clone(),
        );
        let calls_in_progress = Gauge::default();
        registry.register(
            "calls_in_progress",
            "Calls in progress, as caller or callee",
            calls_in_progress.clone(),
        );
        let queue = Gauge::default();
        registry.register(
            "queue_messages",
            "Messages in the queue with a recipient not finished",
            queue.clone(),
        );
        let queue_recipients = Family::<StateLabel, Gauge>::default();
        registry.register(
            "queue_recipients",
            "Unfinished recipients in the queue, by state (waiting, deferred, held)",
            queue_recipients.clone(),
        );
        Metrics {
            registry,
            sessions,
            messages,
            deliveries,
            delivery_seconds,
            calls,
            call_setup_seconds,
            channel_bytes,
            calls_in_progress,
            queue,
            queue_recipients,
            accepted: AtomicU64::new(0),
            recent: recent::Recent::default(),
        }
    }

    /// A client session was opened on `service` (`smtp`, `pop3`).
    pub fn session(&self, service: &str) {
        self.sessions
            .get_or_create(&ServiceLabel {
                service: service.to_string(),
            })
            .inc();
    }

    /// A message was offered over SMTP: accepted (on disk) or refused.
    pub fn message(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "refused" };
        if accepted {
            self.accepted.fetch_add(1, Ordering::Relaxed);
            self.recent.accepted();
        }
        self.messages
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    /// A recipient's attempt ended; `since_accepted` is set for a final
    /// outcome.
    pub fn delivery(
        &self,
        path: DeliveryPath,
        outcome: AttemptOutcome,
        since_accepted: Option<Duration>,
    ) {
        self.recent.attempt(path, outcome);
        let path = path.as_str().to_string();
        self.deliveries
            .get_or_create(&DeliveryLabels {
                path: path.clone(),
                outcome: outcome.as_str().to_string(),
            })
            .inc();
        if let Some(elapsed) = since_accepted {
            self.delivery_seconds
                .get_or_create(&PathLabel { path })
                .observe(elapsed.as_secs_f64());
        }
    }

    /// A call ended with SIP `status` (none: it got no final answer), set
    /// up in `setup` when it was answered.
    pub fn call(&self, status: Option<u16>, setup: Option<Duration>) {
        let status = status.map_or_else(|| "none".to_string(), |s| s.to_string());
        self.calls.get_or_create(&StatusLabel { status }).inc();
        if let Some(setup) = setup {
            self.call_setup_seconds.observe(setup.as_secs_f64());
        }
    }

    /// `stream` (a call's channel) with its bytes counted.
    pub fn metered<S>(&self, stream: S) -> Metered<S> {
        let counter = |direction: &str| {
            self.channel_bytes
                .get_or_create(&DirectionLabel {
                    direction: direction.to_string(),
                })
                .clone()
        };
        Metered::new(stream, counter("sent"), counter("received"))
    }

    /// Messages accepted over SMTP since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Attempts since start with this path and outcome.
    pub fn deliveries(&self, path: DeliveryPath, outcome: AttemptOutcome) -> u64 {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                path: path.as_str().to_string(),
                outcome: outcome.as_str().to_string(),
            })
            .get()
    }

    /// The registry in Prometheus's text format (0.0.4, what `promtool
    /// check metrics` and every scraper read), with the queue's size as it
    /// is now.
    /// The rule engine's figures (`policy`: its status now) follow, if it
    /// runs.
    pub fn encode(&self, now: &Now, policy: Option<&Status>) -> String {
        self.queue.set(now.queued as i64);
        for (state, count) in [
            ("waiting", now.states.waiting),
            ("deferred", now.states.deferred),
            ("held", now.states.held),
        ] {
            self.queue_recipients
                .get_or_create(&StateLabel {
                    state: state.to_string(),
                })
                .set(count as i64);
        }
        self.calls_in_progress.set(now.calls_in_progress as i64);
        let mut open_metrics = String::new();
        // Writing into a String cannot fail.
        let _ =
            prometheus_client::encoding::text::encode_registry(&mut open_metrics, &self.registry);
        if let Some(status) = policy {
            let _ = prometheus_client::encoding::text::encode_registry(
                &mut open_metrics,
                &policy_registry(status),
            );
        }
        prometheus_text(&open_metrics)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleKindLabels {
    rule: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GenerationLabel {
    generation: String,
}

/// The rule engine's counters as a registry of their own, made at each
/// scrape from the counters the engine keeps per rule (labels: the rule
/// names of the configuration, a bounded set).
fn policy_registry(status: &Status) -> Registry {
    let mut registry = Registry::with_prefix("mailcall");
    let evaluations = Family::<RuleLabel, Counter>::default();
    let decisions = Family::<RuleKindLabels, Counter>::default();
    let failures = Family::<RuleKindLabels, Counter>::default();
    let disagreements = Family::<RuleLabel, Counter>::default();
    let generation = Family::<GenerationLabel, Gauge>::default();
    let latency = Family::<RuleLabel, RuleSeconds>::default();
    for rule in &status.rules {
        latency
            .get_or_create(&RuleLabel {
                rule: rule.name.clone(),
            })
            .set(&rule.latency);
        let name = || rule.name.clone();
        evaluations
            .get_or_create(&RuleLabel { rule: name() })
            .inc_by(rule.evaluations);
        let by_kind = [
            (
                &decisions,
                [
                    ("dial", rule.dials),
                    ("smtp", rule.smtp),
                    ("no-opinion", rule.no_opinion),
                ],
            ),
            (
                &failures,
                [
                    ("error", rule.failures),
                    ("timeout", rule.timeouts),
                    ("memory", rule.memory_caps),
                ],
            ),
        ];
        for (family, counts) in by_kind {
            for (kind, count) in counts {
                let labels = RuleKindLabels {
                    rule: name(),
                    kind: kind.into(),
                };
                family.get_or_create(&labels).inc_by(count);
            }
        }
        disagreements
            .get_or_create(&RuleLabel { rule: name() })
            .inc_by(rule.shadow_disagreements);
    }
    for (id, _, active) in &status.generations {
        if *active {
            generation
                .get_or_create(&GenerationLabel {
                    generation: id.clone(),
                })
                .set(1);
        }
    }
    registry.register("rule_evaluations", "Rule evaluations, by rule", evaluations);
    registry.register(
        "rule_decisions",
        "Rule decisions, by rule and kind (dial, smtp, no-opinion)",
        decisions,
    );
    registry.register(
        "rule_failures",
        "Rule failures, by rule and kind (error, timeout, memory)",
        failures,
    );
    registry.register(
        "rule_shadow_disagreements",
        "Shadow rule decisions unlike the chain's, by rule",
        disagreements,
    );
    let reloads = Family::<ResultLabel, Counter>::default();
    for (result, count) in [("applied", status.reloads.0), ("refused", status.reloads.1)] {
        reloads
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc_by(count);
    }
    registry.register(
        "policy_reloads",
        "Policy reloads since start, by result (applied, refused)",
        reloads,
    );
    registry.register(
        "rule_seconds",
        "How long a rule's evaluations took, by rule",
        latency,
    );
    registry.register(
        "policy_generation",
        "The policy generation in force (1)",
        generation,
    );
    registry
}

/// A rule's evaluation times as a histogram, from the engine's buckets
/// (made at a scrape, as the other rule figures are).
#[derive(Debug, Clone, Default)]
struct RuleSeconds(Arc<Mutex<LatencySnapshot>>);

impl RuleSeconds {
    fn set(&self, snapshot: &LatencySnapshot) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = snapshot.clone();
    }
}

impl TypedMetric for RuleSeconds {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for RuleSeconds {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let bounds = LATENCY_BOUNDS_US
            .iter()
            .map(|us| *us as f64 / 1e6)
            .chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(snapshot.counts.iter().copied()).collect();
        encoder.encode_histogram::<NoLabelSet>(
            snapshot.sum_us as f64 / 1e6,
            snapshot.count(),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// OpenMetrics text as Prometheus text: a counter's HELP and TYPE name its
/// samples (`…_total`), and there is no `# EOF`.
fn prometheus_text(open_metrics: &str) -> String {
    let counters: Vec<&str> = open_metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_as_their_samples_and_there_is_no_eof() {
        let metrics = Metrics::new();
        metrics.message(true);
        metrics.delivery(DeliveryPath::Call, AttemptOutcome::Delivered, None);
        let now = Now {
            queued: 3,
            states: RecipientStates {
                waiting: 1,
                deferred: 2,
                held: 0,
            },
            calls_in_progress: 1,
        };
        let text = metrics.encode(&now, None);
        assert!(
            text.contains("# HELP mailcall_smtp_messages_total Messages"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mailcall_smtp_messages_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("mailcall_smtp_messages_total{result=\"accepted\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("mailcall_deliveries_total{path=\"call\",outcome=\"delivered\"} 1"));
        assert!(
            text.contains("# TYPE mailcall_queue_messages gauge\nmailcall_queue_messages 3\n"),
            "{text}"
        );
        assert!(
            text.contains("mailcall_queue_recipients{state=\"deferred\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("mailcall_calls_in_progress 1\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert_eq!(
            metrics.deliveries(DeliveryPath::Call, AttemptOutcome::Delivered),
            1
        );
    }

    #[test]
    fn rule_latency_is_a_histogram_and_reloads_are_counted() {
        use crate::server::control::RuleStatus;
        let mut latency = LatencySnapshot {
            counts: vec![0; LATENCY_BOUNDS_US.len() + 1],
            sum_us: 45,
        };
        latency.counts[0] = 2; // ≤ 10 µs
        latency.counts[2] = 1; // ≤ 40 µs
        let status = Status {
            generations: vec![("3-abc".into(), 0, true)],
            rules: vec![RuleStatus {
                name: "keywords".into(),
                digest: None,
                contract: None,
                mode: "active".into(),
                latency,
                evaluations: 3,
                dials: 0,
                smtp: 0,
                no_opinion: 3,
                failures: 0,
                timeouts: 0,
                memory_caps: 0,
                shadow_evaluations: 0,
                shadow_disagreements: 0,
                deferrals: 0,
                fallbacks: 0,
                breaker_trips: 0,
            }],
            reloads: (2, 1),
        };
        let now = Now {
            queued: 0,
            states: RecipientStates::default(),
            calls_in_progress: 0,
        };
        let text = Metrics::new().encode(&now, Some(&status));
        for sample in [
            "# TYPE mailcall_rule_seconds histogram\n",
            "mailcall_rule_seconds_bucket{le=\"0.00001\",rule=\"keywords\"} 2\n",
            "mailcall_rule_seconds_bucket{le=\"0.00004\",rule=\"keywords\"} 3\n",
            "mailcall_rule_seconds_bucket{le=\"+Inf\",rule=\"keywords\"} 3\n",
            "mailcall_rule_seconds_count{rule=\"keywords\"} 3\n",
            "mailcall_policy_reloads_total{result=\"applied\"} 2\n",
            "mailcall_policy_reloads_total{result=\"refused\"} 1\n",
        ] {
            assert!(text.contains(sample), "{sample:?} missing:\n{text}");
        }
    }
}

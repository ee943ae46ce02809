//! The delivery planner: for each recipient of a queued message, the
//! patent's flow from S2 on.
//!
//! | step | here |
//! |---|---|
//! | S2 | [`Planner::plan`]: is the recipient in one of our local domains? |
//! | S3 | yes: store it in the user's Maildir, with a [`return_path`] ([`Planner::deliver_local`]) |
//! | S4 | no: does a rule find a number? ([`Planner::choose`], the policy engine) |
//! | S5–S7 | yes: call it and send the message over the call ([`Planner::call`], a [`call::Caller`]) |
//! | S8 | no number, or the call failed: normal SMTP relay ([`Planner::relay`]; servers from [`destination`]) |
//!
//! Recipients that resolve to the same number share one call; those of one
//! domain share one relay transaction. Every outcome is recorded in the
//! spool before the message is left, so a crash repeats at most the
//! deliveries in progress, and in the [history](crate::history). Disk work
//! (the spool's fsync, Maildir) runs off the async workers.

pub mod call;
pub mod destination;
pub mod return_path;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Config, OnCallFailure, RelayTls};
use crate::history::{self, Attempt, AttemptOutcome, DeliveryPath};
use crate::mailbox::maildir::Maildir;
use crate::metrics::Metrics;
use crate::policy::{self, PolicyEngine, Route, Verdict};
use crate::queue::bounce::{self, Action, Notice};
use crate::queue::schedule::{NextAttempt, RetrySchedule};
use crate::queue::spool::{Envelope, MessageId, Outcome, Queued, Spool, SpoolError};
use crate::smtp::client::{self, ClientSettings, Outgoing, Relayed, ServerReply};
use call::Caller;
use destination::{Destination, Router};

/// Where one recipient's copy goes (S2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// S3: the local mailbox of this user.
    Local { mailbox: String },
    /// A local domain, but no such user (accepted earlier, since removed).
    NoSuchUser,
    /// S4–S8: another domain.
    Remote { domain: String },
}

/// Delivers queued messages.
pub struct Planner {
    spool: Arc<Spool>,
    config: Arc<Config>,
    local_domains: HashSet<String>,
    mail_dir: PathBuf,
    schedule: RetrySchedule,
    router: Router,
    client: ClientSettings,
    /// S4: the rule chain; without one every remote recipient is relayed.
    policy: Option<Arc<PolicyEngine>>,
    /// S5–S7; without it numbers found are not called.
    caller: Option<Arc<dyn Caller>>,
    metrics: Arc<Metrics>,
}

/// What is known of one recipient's attempt, for the history.
#[derive(Default)]
struct Trace {
    number: Option<String>,
    rule: Option<String>,
    rule_version: Option<String>,
    policy: Option<String>,
    reason: Option<String>,
    shadow_disagreements: Vec<String>,
    call_id: Option<String>,
    sip_status: Option<u16>,
    peer: Option<String>,
    ladder: Vec<mailcall_sip::Rung>,
}

impl Trace {
    fn of(verdict: Option<&Verdict>) -> Trace {
        Trace {
            number: verdict.and_then(|v| v.number().map(str::to_string)),
            rule: verdict.and_then(|v| v.rule.clone()),
            rule_version: verdict.and_then(|v| v.version.clone()),
            policy: verdict.and_then(|v| Some(v.generation.as_ref()?.to_string())),
            reason: verdict.map(|v| v.reason.clone()),
            shadow_disagreements: verdict
                .map(|v| {
                    v.shadows
                        .iter()
                        .filter(|s| s.disagrees)
                        .map(|s| format!("{}: {} (chain: {})", s.rule, s.decision, v.route))
                        .collect()
                })
                .unwrap_or_default(),
            ..Trace::default()
        }
    }
}

/// One recipient on its way: its index in the envelope, the verdict of the
/// rule chain (if it ran), and when the attempt started.
struct Pending {
    index: usize,
    verdict: Option<Verdict>,
    started: Instant,
    started_ms: u64,
    /// Attempts already made in this delivery (a call that failed before
    /// the relay): their history lines go with the outcome.
    earlier: Vec<Attempt>,
}

/// The attempt about to be made for a recipient with this outcome.
fn attempts_of(outcome: &Option<Outcome>) -> u32 {
    match outcome {
        Some(Outcome::Deferred { attempts, .. }) => attempts + 1,
        _ => 1,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Disk and rule work off the async workers.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

impl Planner {
    /// Must be made inside the tokio runtime (the DNS resolver's home).
    pub fn new(
        spool: Arc<Spool>,
        config: Arc<Config>,
        policy: Option<Arc<PolicyEngine>>,
        caller: Option<Arc<dyn Caller>>,
        metrics: Arc<Metrics>,
    ) -> Planner {
        let local_domains = config
            .server
            .local_domains
            .iter()
            .map(|domain| domain.trim_end_matches('.').to_lowercase())
            .collect();
        let data_dir = config.resolve(&config.server.data_dir);
        Planner {
            spool,
            local_domains,
            mail_dir: data_dir.join("mail"),
            schedule: RetrySchedule::new(&config.queue),
            router: Router::new(&config),
            client: client_settings(&config),
            policy,
            caller,
            metrics,
            config,
        }
    }

    /// S2: local or remote.
    pub fn plan(&self, recipient: &str) -> Target {
        let Some((local, domain)) = recipient.rsplit_once('@') else {
            return Target::NoSuchUser;
        };
        let domain = domain.trim_end_matches('.').to_lowercase();
        if !self.local_domains.contains(&domain) {
            return Target::Remote { domain };
        }
        match self.config.mailbox_of(local) {
            Some(mailbox) => Target::Local {
                mailbox: mailbox.to_string(),
            },
            None => Target::NoSuchUser,
        }
    }

    /// The messages with a recipient due now (`force`: every unfinished
    /// one, as `mailcall queue flush` asks).
    pub fn due(&self, force: bool) -> Vec<MessageId> {
        let now = now_ms() / 1000;
        self.spool
            .pending()
            .into_iter()
            .filter(|queued| queued.outcomes.iter().any(|o| is_due(o, force, now)))
            .map(|queued| queued.id)
            .collect()
    }

    /// Delivers every due recipient of message `id` (`force`: deferred
    /// ones too). Returns what happened, with the notices the sender asked
    /// for, for [`Planner::send_report`].
    pub async fn deliver(&self, id: MessageId, force: bool) -> Result<Attempted, SpoolError> {
        let Some(queued) = self.spool.get(id) else {
            return Ok(Attempted::default());
        };
        let now = now_ms() / 1000;
        let due: Vec<usize> = (0..queued.outcomes.len())
            .filter(|&index| is_due(&queued.outcomes[index], force, now))
            .collect();
        if due.is_empty() {
            return Ok(Attempted::default());
        }
        let body = blocking(|| self.spool.body(id))?;
        let mut delivery = Delivery {
            queued: &queued,
            body: &body,
            message_id: message_id_of(&body),
            stored: None,
            attempted: Attempted::default(),
        };
        let mut view = None;
        // Recipients sharing a number share a call; those of one domain
        // share a relay transaction.
        let mut calls: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
        let mut relays: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
        for index in due {
            let recipient = &queued.envelope.recipients[index];
            let pending = Pending {
                index,
                verdict: None,
                started: Instant::now(),
                started_ms: now_ms(),
                earlier: Vec::new(),
            };
            let route = self.plan(recipient);
            tracing::info!(step = "S2", %id, rcpt = %recipient, route = ?route, "planned");
            match route {
                Target::Local { mailbox } => {
                    self.deliver_local(&mut delivery, &mailbox, pending)?
                }
                Target::NoSuchUser => {
                    let outcome = Outcome::Failed {
                        detail: "5.1.1 no such local user".into(),
                        code: 550,
                    };
                    self.finish(
                        &mut delivery,
                        pending,
                        DeliveryPath::Local,
                        Trace::default(),
                        outcome,
                    )?;
                }
                Target::Remote { domain } => {
                    let verdict = self.choose(&queued, index, &body, &mut view);
                    if verdict.as_ref().is_some_and(|v| v.route == Route::Defer) {
                        // A rule that must not be skipped failed: later.
                        let trace = Trace::of(verdict.as_ref());
                        let reason = trace.reason.clone().unwrap_or_default();
                        let outcome = self.defer(&reason, &queued, index);
                        let pending = Pending { verdict, ..pending };
                        self.finish(&mut delivery, pending, DeliveryPath::Relay, trace, outcome)?;
                        continue;
                    }
                    let number = verdict
                        .as_ref()
                        .and_then(Verdict::number)
                        .filter(|_| self.may_call(&queued, index))
                        .map(str::to_string);
                    let pending = Pending { verdict, ..pending };
                    match number {
                        Some(number) => calls.entry(number).or_default().push(pending),
                        None => relays.entry(domain).or_default().push(pending),
                    }
                }
            }
        }
        for (number, recipients) in calls {
            let fell_back = self.call(&mut delivery, &number, recipients).await?;
            for (domain, pending) in fell_back {
                relays.entry(domain).or_default().push(pending);
            }
        }
        for (domain, recipients) in relays {
            self.relay(&mut delivery, &domain, recipients).await?;
        }
        let mut attempted = delivery.attempted;
        if !attempted.notices.is_empty() {
            // Kept for the report: a finished message leaves the spool.
            attempted.original = Some((queued.envelope.clone(), body.clone()));
        }
        Ok(attempted)
    }

    /// S4: runs the rule chain for one recipient; `None` without rules.
    fn choose(
        &self,
        queued: &Queued,
        index: usize,
        body: &[u8],
        view: &mut Option<Arc<policy::Message>>,
    ) -> Option<Verdict> {
        let policy = self.policy.as_ref()?;
        if view.is_none() {
            *view = Some(Arc::new(policy.view(body).unwrap_or_else(|_| empty_view())));
        }
        let envelope = policy::Envelope {
            mail_from: queued.envelope.mail_from.clone(),
            rcpt_to: queued.envelope.recipients[index].clone(),
            client_address: queued.envelope.client_address.clone(),
            helo: queued.envelope.helo.clone(),
        };
        let message = view.as_ref()?;
        let queue_id = queued.id.to_string();
        Some(blocking(|| {
            policy.evaluate_queued(queue_id, envelope, message)
        }))
    }

    /// Whether this attempt may be a call: there is a caller, and with
    /// `retry-then-relay` the calls are not used up.
    fn may_call(&self, queued: &Queued, index: usize) -> bool {
        let attempt = attempts_of(&queued.outcomes[index]);
        self.caller.is_some()
            && (self.config.call.on_failure != OnCallFailure::RetryThenRelay
                || attempt <= self.config.call.retries + 1)
    }

    /// S5–S7: one call to `number` for these recipients. Returns those to
    /// relay now (S8) because the call failed and the configuration says so.
    async fn call(
        &self,
        delivery: &mut Delivery<'_>,
        number: &str,
        recipients: Vec<Pending>,
    ) -> Result<Vec<(String, Pending)>, SpoolError> {
        let Some(caller) = &self.caller else {
            return Ok(Vec::new());
        };
        let queued = delivery.queued;
        let addresses: Vec<String> = recipients
            .iter()
            .map(|p| queued.envelope.recipients[p.index].clone())
            .collect();
        tracing::info!(step = "S5", id = %queued.id, %number, rcpts = ?addresses, "calling");
        let outgoing = Outgoing {
            mail_from: &queued.envelope.mail_from,
            recipients: &addresses,
            message: delivery.body,
        };
        let report = caller.deliver(number, outgoing).await;
        let mut fell_back = Vec::new();
        for (position, pending) in recipients.into_iter().enumerate() {
            let mut trace = Trace::of(pending.verdict.as_ref());
            trace.call_id = report.call_id.clone();
            trace.sip_status = report.sip_status;
            trace.ladder = report.ladder.clone();
            trace.peer = Some(format!("call {number}"));
            // The final server's reply; anything else is a failed call.
            let reply = match &report.result {
                Ok(Relayed::Replies(replies)) => Ok(&replies[position]),
                Ok(Relayed::Failed(reply)) if reply.is_permanent() => Ok(reply),
                Ok(Relayed::Failed(reply)) => Err(reply.to_string()),
                Err(reason) => Err(reason.clone()),
            };
            let failure = match reply {
                Ok(reply) if reply.is_positive() || reply.is_permanent() => {
                    let detail = format!("{reply} (over a call to {number})");
                    let outcome = if reply.is_positive() {
                        Outcome::Delivered { detail }
                    } else {
                        Outcome::Failed {
                            detail,
                            code: reply.code,
                        }
                    };
                    self.finish(delivery, pending, DeliveryPath::Call, trace, outcome)?;
                    continue;
                }
                Ok(reply) => reply.to_string(),
                Err(reason) => reason,
            };
            tracing::info!(step = "S5", id = %queued.id, %number, "call failed: {failure}");
            let attempt = attempts_of(&queued.outcomes[pending.index]);
            let retry = match self.config.call.on_failure {
                OnCallFailure::Relay => false,
                OnCallFailure::Retry => true,
                OnCallFailure::RetryThenRelay => attempt <= self.config.call.retries,
            };
            let detail = format!("4.4.0 call to {number} failed: {failure}");
            if retry {
                let outcome = self.defer(&detail, queued, pending.index);
                self.finish(delivery, pending, DeliveryPath::Call, trace, outcome)?;
            } else {
                // The failed call goes in the history with the relay's
                // outcome, which follows.
                let failed_call = self.attempt(
                    delivery,
                    &pending,
                    DeliveryPath::Call,
                    trace,
                    AttemptOutcome::FellBack,
                    &detail,
                );
                let recipient = &queued.envelope.recipients[pending.index];
                let domain = recipient.rsplit_once('@').map_or("", |(_, d)| d);
                let domain = domain.trim_end_matches('.').to_lowercase();
                let mut pending = Pending {
                    started: Instant::now(),
                    started_ms: now_ms(),
                    ..pending
                };
                self.count(queued, &failed_call);
                pending.earlier.push(failed_call);
                fell_back.push((domain, pending));
            }
        }
        Ok(fell_back)
    }

    /// S8: normal SMTP relay of a message's recipients in one domain,
    /// trying the domain's servers in order until one answers for them.
    async fn relay(
        &self,
        delivery: &mut Delivery<'_>,
        domain: &str,
        recipients: Vec<Pending>,
    ) -> Result<(), SpoolError> {
        let queued = delivery.queued;
        let addresses: Vec<String> = recipients
            .iter()
            .map(|p| queued.envelope.recipients[p.index].clone())
            .collect();
        let servers = match self.router.destination(domain).await {
            Destination::Servers(servers) => servers,
            Destination::Unreachable { permanent, detail } => {
                tracing::info!(step = "S8", id = %queued.id, %domain, "{detail}");
                for pending in recipients {
                    let outcome = if permanent {
                        Outcome::Failed {
                            detail: detail.clone(),
                            code: 550,
                        }
                    } else {
                        self.defer(&detail, queued, pending.index)
                    };
                    let trace = Trace::of(pending.verdict.as_ref());
                    self.finish(delivery, pending, DeliveryPath::Relay, trace, outcome)?;
                }
                return Ok(());
            }
        };
        let outgoing = Outgoing {
            mail_from: &queued.envelope.mail_from,
            recipients: &addresses,
            message: delivery.body,
        };
        let mut result = None;
        for server in &servers {
            tracing::info!(step = "S8", id = %queued.id, to = %server.address, mx = %server.name, rcpts = ?addresses, "relaying");
            let relayed = client::relay(server.address, &server.name, &self.client, outgoing).await;
            let done = match &relayed {
                Relayed::Replies(_) => true,
                // A temporary failure of one server: try the next.
                Relayed::Failed(reply) => reply.is_permanent(),
            };
            result = Some((relayed, server));
            if done {
                break;
            }
            tracing::info!(step = "S8", id = %queued.id, to = %server.address, "server failed, trying the next");
        }
        let Some((relayed, server)) = result else {
            return Ok(());
        };
        for (position, pending) in recipients.into_iter().enumerate() {
            let reply = match &relayed {
                Relayed::Replies(replies) => &replies[position],
                Relayed::Failed(reply) => reply,
            };
            let outcome =
                self.outcome_of(reply, &server.address.to_string(), queued, pending.index);
            let mut trace = Trace::of(pending.verdict.as_ref());
            trace.peer = Some(server.address.to_string());
            self.finish(delivery, pending, DeliveryPath::Relay, trace, outcome)?;
        }
        Ok(())
    }

    /// A recipient's outcome from the server's reply.
    fn outcome_of(
        &self,
        reply: &ServerReply,
        from: &str,
        queued: &Queued,
        index: usize,
    ) -> Outcome {
        let detail = format!("{reply} (from {from})");
        if reply.is_positive() {
            Outcome::Delivered { detail }
        } else if reply.is_permanent() {
            Outcome::Failed {
                detail,
                code: reply.code,
            }
        } else {
            self.defer(&detail, queued, index)
        }
    }

    /// Records a recipient's outcome in the spool and the history; one the
    /// sender wants to hear of joins the delivery's notices.
    fn finish(
        &self,
        delivery: &mut Delivery<'_>,
        pending: Pending,
        path: DeliveryPath,
        trace: Trace,
        outcome: Outcome,
    ) -> Result<(), SpoolError> {
        let queued = delivery.queued;
        let index = pending.index;
        let recipient = &queued.envelope.recipients[index];
        // (The planner makes no holds nor deletions: the operator does.)
        let name = match &outcome {
            Outcome::Delivered { .. } => AttemptOutcome::Delivered,
            Outcome::Deferred { .. } => AttemptOutcome::Deferred,
            Outcome::Failed { .. } => AttemptOutcome::Failed,
            Outcome::Held { .. } => AttemptOutcome::Held,
            Outcome::Deleted { .. } => AttemptOutcome::Deleted,
        };
        let detail = outcome.detail();
        tracing::info!(id = %queued.id, rcpt = %recipient, path = ?path, outcome = %name, "{detail}");
        let attempt = self.attempt(delivery, &pending, path, trace, name, detail);
        // RFC 3464: "delivered" when it reached the final mailbox (here, or
        // the final server over a call); "relayed" when handed on.
        let action = match &outcome {
            Outcome::Failed { .. } => Some(Action::Failed),
            // Only the first deferral is announced.
            Outcome::Deferred { attempts: 1, .. } => Some(Action::Delayed),
            Outcome::Deferred { .. } => None,
            Outcome::Delivered { .. } if path == DeliveryPath::Relay => Some(Action::Relayed),
            Outcome::Delivered { .. } => Some(Action::Delivered),
            Outcome::Held { .. } | Outcome::Deleted { .. } => None,
        };
        delivery.attempted.outcomes.push((path, outcome.clone()));
        if let Some(notice) =
            action.and_then(|action| bounce::notice(&queued.envelope, index, action, detail))
        {
            delivery.attempted.notices.push(notice);
        }
        // The lines travel with the outcome: on disk together (S1's promise
        // covers the communication record too).
        self.count(queued, &attempt);
        let mut attempts = pending.earlier;
        attempts.push(attempt);
        let lines = history::lines(&attempts);
        blocking(|| self.spool.record(queued.id, index, outcome, lines))?;
        Ok(())
    }

    /// The attempt in the metrics: its path and outcome, the time since
    /// the message was accepted when it is final, and a call's status and
    /// setup time (INVITE to its final answer).
    fn count(&self, queued: &Queued, attempt: &Attempt) {
        let since_accepted = attempt.outcome.is_final().then(|| {
            let envelope = &queued.envelope;
            let accepted = match envelope.received_at_ms {
                0 => Duration::from_secs(envelope.received_at),
                ms => Duration::from_millis(ms),
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            now.saturating_sub(accepted)
        });
        self.metrics
            .delivery(attempt.path, attempt.outcome, since_accepted);
        if attempt.path == DeliveryPath::Call && attempt.call_id.is_some() {
            let answered = attempt
                .ladder
                .iter()
                .find(|rung| rung.label == mailcall_sip::Label::R2);
            let setup = answered.map(|rung| Duration::from_micros(rung.at_us));
            self.metrics.call(attempt.sip_status, setup);
        }
    }

    fn attempt(
        &self,
        delivery: &Delivery<'_>,
        pending: &Pending,
        path: DeliveryPath,
        trace: Trace,
        outcome: AttemptOutcome,
        detail: &str,
    ) -> Attempt {
        Attempt {
            at_ms: pending.started_ms,
            queue_id: delivery.queued.id.to_string(),
            message_id: delivery.message_id.clone(),
            recipient: delivery.queued.envelope.recipients[pending.index].clone(),
            path,
            outcome,
            detail: detail.to_string(),
            number: trace.number,
            rule: trace.rule,
            rule_version: trace.rule_version,
            policy: trace.policy,
            reason: trace.reason,
            shadow_disagreements: trace.shadow_disagreements,
            call_id: trace.call_id,
            sip_status: trace.sip_status,
            peer: trace.peer,
            elapsed_ms: pending.started.elapsed().as_millis() as u64,
            ladder: trace.ladder,
        }
    }

    /// Queues a delivery status report on message `id` (a bounce, or the
    /// notices the sender asked for), if there is anything to report; the
    /// scheduler delivers it like any message.
    pub fn send_report(
        &self,
        id: MessageId,
        attempted: &Attempted,
    ) -> Result<Option<MessageId>, SpoolError> {
        let Some((envelope, body)) = attempted
            .original
            .as_ref()
            .filter(|_| !attempted.notices.is_empty())
        else {
            return Ok(None);
        };
        let (report_envelope, bytes) = bounce::report(
            &self.config.server.hostname,
            id,
            envelope,
            body,
            &attempted.notices,
        );
        let report = blocking(|| self.spool.enqueue(report_envelope, &bytes))?;
        tracing::info!(%id, %report, to = %envelope.mail_from, "delivery report queued");
        Ok(Some(report))
    }

    /// S3: into the user's Maildir, durably, with the `Return-Path:` of
    /// final delivery. Mail received over a call ends here too.
    fn deliver_local(
        &self,
        delivery: &mut Delivery<'_>,
        mailbox: &str,
        pending: Pending,
    ) -> Result<(), SpoolError> {
        let queued = delivery.queued;
        // Named by message and recipient: a delivery repeated after a crash
        // (before its outcome reached the spool) is stored once.
        let unique = format!(
            "{}.Q{}R{}.{}",
            queued.envelope.received_at,
            queued.id,
            pending.index,
            crate::mailbox::maildir::host_name()
        );
        let (reverse_path, body) = (&queued.envelope.mail_from, delivery.body);
        let message = delivery
            .stored
            .get_or_insert_with(|| return_path::with_return_path(reverse_path, body));
        let stored = blocking(|| {
            Maildir::open(&self.mail_dir.join(mailbox))
                .and_then(|maildir| maildir.deliver_as(&unique, message))
        });
        let outcome = match stored {
            Ok(()) => {
                tracing::info!(step = "S3", id = %queued.id, mailbox, file = %unique, "stored in the local mailbox");
                Outcome::Delivered {
                    detail: format!("2.0.0 stored in mailbox {mailbox}"),
                }
            }
            Err(error) => {
                tracing::error!(step = "S3", id = %queued.id, mailbox, "cannot store: {error}");
                self.defer(
                    &format!("4.3.0 cannot store: {error}"),
                    queued,
                    pending.index,
                )
            }
        };
        let trace = Trace {
            peer: Some(format!("mailbox {mailbox}")),
            ..Trace::default()
        };
        self.finish(delivery, pending, DeliveryPath::Local, trace, outcome)
    }

    fn defer(&self, detail: &str, queued: &Queued, index: usize) -> Outcome {
        let attempts = attempts_of(&queued.outcomes[index]);
        match self
            .schedule
            .after_failure(attempts, queued.envelope.received_at, now_ms() / 1000)
        {
            NextAttempt::At(retry_at) => Outcome::Deferred {
                detail: detail.to_string(),
                attempts,
                retry_at,
            },
            NextAttempt::GiveUp => Outcome::Failed {
                detail: format!("{detail}; gave up after {attempts} attempts"),
                code: 554,
            },
        }
    }
}

/// One message being delivered: what every step needs, and what came of it.
struct Delivery<'a> {
    queued: &'a Queued,
    body: &'a [u8],
    message_id: Option<String>,
    /// The message as local mailboxes store it (with `Return-Path:`),
    /// made once for all its local recipients.
    stored: Option<Vec<u8>>,
    attempted: Attempted,
}

/// What one delivery run did to a message.
#[derive(Debug, Default)]
pub struct Attempted {
    /// Each recipient tried, in the order finished: the path and outcome.
    pub outcomes: Vec<(DeliveryPath, Outcome)>,
    /// The notices the sender asked for (failures, delays, successes).
    pub notices: Vec<Notice>,
    /// The message's envelope and bytes, when there are notices to report.
    pub original: Option<(Envelope, Vec<u8>)>,
}

/// The SMTP client as `[server]` and `[relay]` configure it, for relaying
/// and (without STARTTLS) for the call path.
pub fn client_settings(config: &Config) -> ClientSettings {
    let relay = &config.relay;
    ClientSettings {
        hostname: config.server.hostname.clone(),
        tls: (relay.tls == RelayTls::May).then(crate::tls::opportunistic_client_config),
        connect_timeout: Duration::from_secs(relay.connect_timeout_secs.into()),
        reply_timeout: Duration::from_secs(relay.reply_timeout_secs.into()),
    }
}

/// Whether a recipient with this outcome is to be tried now.
fn is_due(outcome: &Option<Outcome>, force: bool, now: u64) -> bool {
    match outcome {
        None => true,
        Some(Outcome::Deferred { retry_at, .. }) => force || *retry_at <= now,
        Some(_) => false,
    }
}

/// The `Message-ID` of a message, without angle brackets.
fn message_id_of(body: &[u8]) -> Option<String> {
    let message = mail_parser::MessageParser::new().parse_headers(body)?;
    message.message_id().map(str::to_string)
}

/// What rules see of a message that does not parse: nothing but the
/// envelope.
fn empty_view() -> policy::Message {
    policy::Message {
        headers: Vec::new(),
        subject: None,
        from: Vec::new(),
        to: Vec::new(),
        cc: Vec::new(),
        body_text: String::new(),
        body_truncated: false,
    }
}

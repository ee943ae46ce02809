//! The delivery planner: for each recipient of a queued message, the
//! patent's flow from S2 on.
//!
//! | step | here |
//! |---|---|
//! | S2 | [`Planner::plan`]: is the recipient in one of our local domains? |
//! | S3 | yes: store it in the user's Maildir ([`Planner::deliver_local`]) |
//! | S4–S7 | no, and a rule finds a number: deliver over a call (to come) |
//! | S8 | no number, or the call failed: normal SMTP relay ([`Planner::relay`]; servers from [`destination`]) |
//!
//! Every outcome is recorded in the spool before the message is left, so a
//! crash repeats at most the deliveries in progress. Disk work (the spool's
//! fsync, Maildir) runs off the async workers.

pub mod destination;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{Config, RelayTls};
use crate::mailbox::maildir::Maildir;
use crate::queue::bounce::{self, Action, Notice};
use crate::queue::schedule::{NextAttempt, RetrySchedule};
use crate::queue::spool::{MessageId, Outcome, Queued, Spool, SpoolError};
use crate::smtp::client::{self, ClientSettings, Outgoing, Relayed, ServerReply};
use destination::{Destination, Router};

/// Where one recipient's copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
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
}

/// The attempt about to be made for a recipient with this outcome.
fn attempts_of(outcome: &Option<Outcome>) -> u32 {
    match outcome {
        Some(Outcome::Deferred { attempts, .. }) => attempts + 1,
        _ => 1,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Disk work (fsync) off the async workers.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

impl Planner {
    /// Must be made inside the tokio runtime (the DNS resolver's home).
    pub fn new(spool: Arc<Spool>, config: Arc<Config>) -> Planner {
        let local_domains = config
            .server
            .local_domains
            .iter()
            .map(|domain| domain.trim_end_matches('.').to_lowercase())
            .collect();
        let mail_dir = config.resolve(&config.server.data_dir).join("mail");
        let relay = &config.relay;
        let client = ClientSettings {
            hostname: config.server.hostname.clone(),
            tls: (relay.tls == RelayTls::May).then(crate::tls::opportunistic_client_config),
            connect_timeout: Duration::from_secs(relay.connect_timeout_secs.into()),
            reply_timeout: Duration::from_secs(relay.reply_timeout_secs.into()),
        };
        Planner {
            spool,
            local_domains,
            mail_dir,
            schedule: RetrySchedule::new(&config.queue),
            router: Router::new(&config),
            client,
            config,
        }
    }

    /// S2: local or remote.
    pub fn plan(&self, recipient: &str) -> Route {
        let Some((local, domain)) = recipient.rsplit_once('@') else {
            return Route::NoSuchUser;
        };
        let domain = domain.trim_end_matches('.').to_lowercase();
        if !self.local_domains.contains(&domain) {
            return Route::Remote { domain };
        }
        match self.config.mailbox_of(local) {
            Some(mailbox) => Route::Local {
                mailbox: mailbox.to_string(),
            },
            None => Route::NoSuchUser,
        }
    }

    /// The messages with a recipient due now (`force`: every unfinished
    /// one, as `mailcall queue flush` asks).
    pub fn due(&self, force: bool) -> Vec<MessageId> {
        let now = now();
        self.spool
            .pending()
            .into_iter()
            .filter(|queued| queued.outcomes.iter().any(|o| is_due(o, force, now)))
            .map(|queued| queued.id)
            .collect()
    }

    /// Delivers every due recipient of message `id` (`force`: deferred
    /// ones too). Returns the delivery report it queued for the sender, if
    /// any, for the caller to deliver in turn.
    pub async fn deliver(
        &self,
        id: MessageId,
        force: bool,
    ) -> Result<Option<MessageId>, SpoolError> {
        let Some(queued) = self.spool.get(id) else {
            return Ok(None);
        };
        let now = now();
        let due: Vec<usize> = (0..queued.outcomes.len())
            .filter(|&index| is_due(&queued.outcomes[index], force, now))
            .collect();
        if due.is_empty() {
            return Ok(None);
        }
        let body = blocking(|| self.spool.body(id))?;
        let mut notices = Vec::new();
        // Remote recipients, grouped by domain: one transaction carries all
        // of a message's recipients there.
        let mut remote: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for index in due {
            let recipient = &queued.envelope.recipients[index];
            let route = self.plan(recipient);
            tracing::info!(step = "S2", %id, rcpt = %recipient, route = ?route, "planned");
            let outcome = match route {
                Route::Local { mailbox } => self.deliver_local(&mailbox, &body, &queued, index),
                Route::NoSuchUser => Outcome::Failed {
                    detail: "5.1.1 no such local user".into(),
                },
                Route::Remote { domain } => {
                    remote.entry(domain).or_default().push(index);
                    continue;
                }
            };
            self.record(&queued, index, outcome, Action::Delivered, &mut notices)?;
        }
        for (domain, recipients) in remote {
            self.relay(&queued, &body, &domain, &recipients, &mut notices)
                .await?;
        }
        if notices.is_empty() {
            return Ok(None);
        }
        self.send_report(&queued, &body, &notices).map(Some)
    }

    /// S8: normal SMTP relay of a message's recipients in one domain,
    /// trying the domain's servers in order until one answers for them.
    async fn relay(
        &self,
        queued: &Queued,
        body: &[u8],
        domain: &str,
        recipients: &[usize],
        notices: &mut Vec<Notice>,
    ) -> Result<(), SpoolError> {
        let addresses: Vec<String> = recipients
            .iter()
            .map(|&index| queued.envelope.recipients[index].clone())
            .collect();
        let servers = match self.router.destination(domain).await {
            Destination::Servers(servers) => servers,
            Destination::Unreachable { permanent, detail } => {
                tracing::info!(step = "S8", id = %queued.id, %domain, "{detail}");
                for &index in recipients {
                    let outcome = if permanent {
                        Outcome::Failed {
                            detail: detail.clone(),
                        }
                    } else {
                        self.defer(&detail, queued, index)
                    };
                    self.record(queued, index, outcome, Action::Relayed, notices)?;
                }
                return Ok(());
            }
        };
        let outgoing = Outgoing {
            mail_from: &queued.envelope.mail_from,
            recipients: &addresses,
            message: body,
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
        for (position, &index) in recipients.iter().enumerate() {
            let reply = match &relayed {
                Relayed::Replies(replies) => &replies[position],
                Relayed::Failed(reply) => reply,
            };
            let outcome = self.outcome_of(reply, &server.address.to_string(), queued, index);
            self.record(queued, index, outcome, Action::Relayed, notices)?;
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
            Outcome::Failed { detail }
        } else {
            self.defer(&detail, queued, index)
        }
    }

    /// Records a recipient's outcome; one the sender wants to hear of
    /// (`success` names what a delivery was) joins `notices`.
    fn record(
        &self,
        queued: &Queued,
        index: usize,
        outcome: Outcome,
        success: Action,
        notices: &mut Vec<Notice>,
    ) -> Result<(), SpoolError> {
        let recipient = &queued.envelope.recipients[index];
        tracing::info!(id = %queued.id, rcpt = %recipient, outcome = ?outcome, "recorded");
        let (action, detail) = match &outcome {
            Outcome::Failed { detail } => (Action::Failed, detail),
            // Only the first deferral is announced.
            Outcome::Deferred {
                detail, attempts, ..
            } if *attempts == 1 => (Action::Delayed, detail),
            Outcome::Deferred { .. } => {
                return blocking(|| self.spool.record(queued.id, index, outcome))
            }
            Outcome::Delivered { detail } => (success, detail),
        };
        if bounce::wants_notice(&queued.envelope, index, action) {
            notices.push(Notice {
                address: recipient.clone(),
                original: queued
                    .envelope
                    .original_recipients
                    .get(index)
                    .cloned()
                    .flatten(),
                action,
                detail: detail.clone(),
            });
        }
        blocking(|| self.spool.record(queued.id, index, outcome))
    }

    /// Queues a delivery status report (a bounce, or a notice the sender
    /// asked for); the server's worker delivers it like any message.
    fn send_report(
        &self,
        queued: &Queued,
        body: &[u8],
        notices: &[Notice],
    ) -> Result<MessageId, SpoolError> {
        let (envelope, bytes) = bounce::report(
            &self.config.server.hostname,
            queued.id,
            &queued.envelope,
            body,
            notices,
        );
        let id = blocking(|| self.spool.enqueue(envelope, &bytes))?;
        tracing::info!(id = %queued.id, report = %id, to = %queued.envelope.mail_from, "delivery report queued");
        Ok(id)
    }

    /// S3: into the user's Maildir, durably.
    fn deliver_local(&self, mailbox: &str, body: &[u8], queued: &Queued, index: usize) -> Outcome {
        // Named by message and recipient: a delivery repeated after a crash
        // (before its outcome reached the spool) is stored once.
        let unique = format!(
            "{}.Q{}R{index}.{}",
            queued.envelope.received_at,
            queued.id,
            crate::mailbox::maildir::host_name()
        );
        let delivered = blocking(|| {
            Maildir::open(&self.mail_dir.join(mailbox))
                .and_then(|maildir| maildir.deliver_as(&unique, body))
        });
        match delivered {
            Ok(()) => {
                tracing::info!(step = "S3", id = %queued.id, mailbox, file = %unique, "stored in the local mailbox");
                Outcome::Delivered {
                    detail: format!("2.0.0 stored in mailbox {mailbox}"),
                }
            }
            Err(error) => {
                tracing::error!(step = "S3", id = %queued.id, mailbox, "cannot store: {error}");
                self.defer(&format!("4.3.0 cannot store: {error}"), queued, index)
            }
        }
    }

    fn defer(&self, detail: &str, queued: &Queued, index: usize) -> Outcome {
        let attempts = attempts_of(&queued.outcomes[index]);
        match self
            .schedule
            .after_failure(attempts, queued.envelope.received_at, now())
        {
            NextAttempt::At(retry_at) => Outcome::Deferred {
                detail: detail.to_string(),
                attempts,
                retry_at,
            },
            NextAttempt::GiveUp => Outcome::Failed {
                detail: format!("{detail}; gave up after {attempts} attempts"),
            },
        }
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

//! The delivery planner: for each recipient of a queued message, the
//! patent's flow from S2 on.
//!
//! | step | here |
//! |---|---|
//! | S2 | [`plan`]: is the recipient in one of our local domains? |
//! | S3 | yes: store it in the user's Maildir ([`Planner::deliver_local`]) |
//! | S4–S7 | no, and a rule finds a number: deliver over a call (to come) |
//! | S8 | no number, or the call failed: normal SMTP relay ([`Planner::relay`], static routes so far) |
//!
//! Every outcome is recorded in the spool before the next recipient, so a
//! crash repeats at most the delivery in progress.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::mailbox::maildir::Maildir;
use crate::queue::bounce::{self, FailedRecipient};
use crate::queue::schedule::{NextAttempt, RetrySchedule};
use crate::queue::spool::{MessageId, Outcome, Queued, Spool, SpoolError};
use crate::smtp::client::{self, Relayed};

/// How long the relay client waits for a connection or a reply.
const RELAY_TIMEOUT: Duration = Duration::from_secs(60);

/// The attempt about to be made for a recipient with this outcome.
fn attempts_of(outcome: &Option<Outcome>) -> u32 {
    match outcome {
        Some(Outcome::Deferred { attempts, .. }) => attempts + 1,
        _ => 1,
    }
}

/// Where one recipient's copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// S3: the local mailbox of this user.
    Local { mailbox: String },
    /// A local domain, but no such user (accepted earlier, since removed).
    NoSuchUser,
    /// S4–S8: another domain.
    Remote,
}

/// Delivers queued messages.
pub struct Planner {
    spool: Arc<Spool>,
    config: Arc<Config>,
    local_domains: HashSet<String>,
    mail_dir: PathBuf,
    schedule: RetrySchedule,
}

impl Planner {
    pub fn new(spool: Arc<Spool>, config: Arc<Config>) -> Planner {
        let local_domains = config
            .server
            .local_domains
            .iter()
            .map(|domain| domain.trim_end_matches('.').to_lowercase())
            .collect();
        let mail_dir = config.resolve(&config.server.data_dir).join("mail");
        Planner {
            spool,
            config,
            local_domains,
            mail_dir,
            schedule: RetrySchedule::default(),
        }
    }

    /// S2: local or remote.
    pub fn plan(&self, recipient: &str) -> Route {
        let Some((local, domain)) = recipient.rsplit_once('@') else {
            return Route::NoSuchUser;
        };
        if !self
            .local_domains
            .contains(&domain.trim_end_matches('.').to_lowercase())
        {
            return Route::Remote;
        }
        match self.config.mailbox_of(local) {
            Some(mailbox) => Route::Local {
                mailbox: mailbox.to_string(),
            },
            None => Route::NoSuchUser,
        }
    }

    /// Delivers every recipient of message `id` that is not finished.
    pub fn deliver(&self, id: MessageId) -> Result<(), SpoolError> {
        let Some(queued) = self.spool.get(id) else {
            return Ok(());
        };
        self.deliver_queued(&queued, false)
    }

    /// Delivers every unfinished message whose time has come (after a
    /// restart, and on each queue run).
    pub fn deliver_pending(&self) -> Result<(), SpoolError> {
        for queued in self.spool.pending() {
            self.deliver_queued(&queued, false)?;
        }
        Ok(())
    }

    /// Tries every unfinished recipient now, deferred or not
    /// (`mailcall queue flush`).
    pub fn flush(&self) -> Result<(), SpoolError> {
        for queued in self.spool.pending() {
            self.deliver_queued(&queued, true)?;
        }
        Ok(())
    }

    fn deliver_queued(&self, queued: &Queued, force: bool) -> Result<(), SpoolError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let due = |outcome: &Option<Outcome>| match outcome {
            None => true,
            Some(Outcome::Deferred { retry_at, .. }) => force || *retry_at <= now,
            Some(_) => false,
        };
        if !queued.outcomes.iter().any(due) {
            return Ok(());
        }
        let body = self.spool.body(queued.id)?;
        // Remote recipients, grouped by the server that takes their mail:
        // one transaction carries all of a message's recipients there.
        let mut relays: BTreeMap<Option<SocketAddr>, Vec<(usize, u32)>> = BTreeMap::new();
        let mut failed = Vec::new();
        for (index, recipient) in queued.envelope.recipients.iter().enumerate() {
            if !due(&queued.outcomes[index]) {
                continue;
            }
            let attempts = attempts_of(&queued.outcomes[index]);
            let route = self.plan(recipient);
            tracing::info!(step = "S2", id = %queued.id, rcpt = %recipient, route = ?route, "planned");
            let outcome = match route {
                Route::Local { mailbox } => {
                    self.deliver_local(&mailbox, &body, attempts, queued, index)
                }
                Route::NoSuchUser => Outcome::Failed {
                    detail: "5.1.1 no such local user".into(),
                },
                Route::Remote => {
                    relays
                        .entry(self.route_of(recipient))
                        .or_default()
                        .push((index, attempts));
                    continue;
                }
            };
            self.record(queued, index, outcome, &mut failed)?;
        }
        for (destination, recipients) in relays {
            self.relay(queued, &body, destination, &recipients, &mut failed)?;
        }
        if !failed.is_empty() {
            self.send_bounce(queued, &body, &failed)?;
        }
        Ok(())
    }

    /// The server that takes mail for `recipient`'s domain: a static route
    /// for the domain, else the smarthost (`*`).
    fn route_of(&self, recipient: &str) -> Option<SocketAddr> {
        let domain = recipient.rsplit_once('@').map_or("", |(_, d)| d);
        let domain = domain.trim_end_matches('.').to_lowercase();
        let routes = &self.config.routes;
        routes
            .iter()
            .find(|(key, _)| key.to_lowercase() == domain)
            .or_else(|| routes.get_key_value("*"))
            .map(|(_, address)| *address)
    }

    /// S8: normal SMTP relay of some recipients of a message.
    fn relay(
        &self,
        queued: &Queued,
        body: &[u8],
        destination: Option<SocketAddr>,
        recipients: &[(usize, u32)],
        failed: &mut Vec<FailedRecipient>,
    ) -> Result<(), SpoolError> {
        let addresses: Vec<String> = recipients
            .iter()
            .map(|(index, _)| queued.envelope.recipients[*index].clone())
            .collect();
        let Some(destination) = destination else {
            for (index, attempts) in recipients {
                let outcome = self.defer(
                    "4.4.4 no route to the recipient's domain (no MX look-up yet)",
                    *attempts,
                    queued,
                );
                self.record(queued, *index, outcome, failed)?;
            }
            return Ok(());
        };
        tracing::info!(step = "S8", id = %queued.id, to = %destination, rcpts = ?addresses, "relaying");
        let relayed = client::relay(
            destination,
            &self.config.server.hostname,
            &queued.envelope.mail_from,
            &addresses,
            body,
            RELAY_TIMEOUT,
        );
        for (position, (index, attempts)) in recipients.iter().enumerate() {
            let reply = match &relayed {
                Relayed::Replies(replies) => &replies[position],
                Relayed::Failed(reply) => reply,
            };
            let detail = format!("{reply} (from {destination})");
            let outcome = if reply.is_positive() {
                Outcome::Delivered { detail }
            } else if reply.is_permanent() {
                Outcome::Failed { detail }
            } else {
                self.defer(&detail, *attempts, queued)
            };
            self.record(queued, *index, outcome, failed)?;
        }
        Ok(())
    }

    /// Records a recipient's outcome; a failure the sender wants to hear
    /// of joins `failed`, for the bounce.
    fn record(
        &self,
        queued: &Queued,
        index: usize,
        outcome: Outcome,
        failed: &mut Vec<FailedRecipient>,
    ) -> Result<(), SpoolError> {
        let recipient = &queued.envelope.recipients[index];
        tracing::info!(id = %queued.id, rcpt = %recipient, outcome = ?outcome, "recorded");
        if let Outcome::Failed { detail } = &outcome {
            if bounce::wants_failure_notice(&queued.envelope, index) {
                failed.push(FailedRecipient {
                    address: recipient.clone(),
                    original: queued
                        .envelope
                        .original_recipients
                        .get(index)
                        .cloned()
                        .flatten(),
                    detail: detail.clone(),
                });
            }
        }
        self.spool.record(queued.id, index, outcome)
    }

    /// Queues a bounce for `failed` recipients and delivers it.
    fn send_bounce(
        &self,
        queued: &Queued,
        body: &[u8],
        failed: &[FailedRecipient],
    ) -> Result<(), SpoolError> {
        let (envelope, bytes) = bounce::bounce(
            &self.config.server.hostname,
            queued.id,
            &queued.envelope,
            body,
            failed,
        );
        let id = self.spool.enqueue(envelope, &bytes)?;
        tracing::info!(id = %queued.id, bounce = %id, to = %queued.envelope.mail_from, "bounce queued");
        self.deliver(id)
    }

    /// S3: into the user's Maildir, durably.
    fn deliver_local(
        &self,
        mailbox: &str,
        body: &[u8],
        attempts: u32,
        queued: &Queued,
        index: usize,
    ) -> Outcome {
        // Named by message and recipient: a delivery repeated after a crash
        // (before its outcome reached the spool) is stored once.
        let unique = format!(
            "{}.Q{}R{index}.{}",
            queued.envelope.received_at,
            queued.id,
            crate::mailbox::maildir::host_name()
        );
        let delivered = Maildir::open(&self.mail_dir.join(mailbox))
            .and_then(|maildir| maildir.deliver_as(&unique, body));
        match delivered {
            Ok(()) => {
                tracing::info!(step = "S3", id = %queued.id, mailbox, file = %unique, "stored in the local mailbox");
                Outcome::Delivered {
                    detail: format!("2.0.0 stored in mailbox {mailbox}"),
                }
            }
            Err(error) => {
                tracing::error!(step = "S3", id = %queued.id, mailbox, "cannot store: {error}");
                self.defer(&format!("4.3.0 cannot store: {error}"), attempts, queued)
            }
        }
    }

    fn defer(&self, detail: &str, attempts: u32, queued: &Queued) -> Outcome {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match self
            .schedule
            .after_failure(attempts, queued.envelope.received_at, now)
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

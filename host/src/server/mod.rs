//! `mailcall serve`: the listeners and the delivery worker around the queue.
//!
//! Like Postfix, a pipeline of small stages around a durable queue: the
//! SMTP listener ([`smtp`]) accepts and commits a message to the spool
//! before its `250`, then hands its id to the delivery scheduler, which
//! runs the planner ([`crate::delivery`]) for up to `[relay] max_parallel`
//! messages at once; a queue run every `[queue] queue_run_delay_secs`
//! retries what was deferred.

pub mod callee;
pub mod control;
pub mod listener;
mod notify;
pub mod smtp;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};

use crate::admin;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::delivery::call::Caller;
use crate::delivery::Attempted;
use crate::delivery::Planner;
use crate::history::{DeliveryPath, History};
use crate::metrics::Metrics;
use crate::policy::PolicyEngine;
use crate::pop3::session::Pop3Policy;
use crate::pop3::Pop3Shared;
use crate::queue::spool::Outcome;
use crate::queue::spool::{MessageId, Spool, SpoolError, SpoolOptions};
use crate::smtp::reply::Reply;
use crate::smtp::session::SessionPolicy;
use crate::storage::Disk;
use mailcall_sip::UserAgent;

/// What the delivery scheduler is asked to do.
#[derive(Debug)]
pub enum Work {
    /// Deliver a message just accepted.
    Deliver(MessageId),
    /// Deliver a message just accepted, and answer the waiting client
    /// (synchronous mode).
    DeliverAndAnswer(MessageId, tokio::sync::oneshot::Sender<Reply>),
    /// Try every unfinished recipient now (`mailcall queue flush`).
    Flush,
}

/// The file holding the server's process id, in the data folder, for
/// `mailcall queue flush`.
pub const PID_FILE: &str = "mailcall.pid";

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Sip(#[from] mailcall_sip::SipError),
    #[error("cannot write the pid file {path}: {error}")]
    PidFile {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("cannot start the delivery runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot start the password verifiers: {0}")]
    Verifiers(std::io::Error),
    #[error("data folder {path}: {error}")]
    DataDir {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("[admin] tls = true, but the server has no certificate (see the TLS error above)")]
    ConsoleWithoutTls,
    #[error("cannot listen on {address}: {error}")]
    Listen {
        address: std::net::SocketAddr,
        error: std::io::Error,
    },
}

/// What every connection shares.
pub struct Shared {
    pub policy: SessionPolicy,
    pub spool: Arc<Spool>,
    /// Work for the delivery scheduler.
    pub deliveries: mpsc::UnboundedSender<Work>,
    pub config: Arc<Config>,
    /// For `STARTTLS` and `STLS`; `None` if TLS could not be set up.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Checks `AUTH` passwords (shared with POP3).
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
}

/// Runs the server until `shutdown` completes.
pub async fn serve(
    config: Arc<Config>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let data_dir = config.resolve(&config.server.data_dir);
    // The data folder holds mail, the queue, the history and the TLS key:
    // only the server's user may enter it (0700, also when found wider).
    crate::private::folder(&data_dir).map_err(|error| ServerError::DataDir {
        path: data_dir.clone(),
        error,
    })?;
    // A configured certificate that does not load stops the start: the
    // operator who configured TLS wants TLS, not a server that quietly
    // sends passwords and mail in clear. The generated certificate is a
    // convenience: if it cannot be made, the server still takes mail (and
    // logs why), and clients see no STARTTLS.
    let tls = match crate::tls::server_config(&config) {
        Ok(tls) => {
            tracing::info!(
                certificate = %tls.certificate.path.display(),
                fingerprint = %tls.certificate.fingerprint_hex(),
                "TLS certificate (SHA-256 fingerprint, for clients that pin it)"
            );
            Some(tokio_rustls::TlsAcceptor::from(tls.config))
        }
        Err(error) if config.server.tls_certificate.is_some() => return Err(error.into()),
        Err(error) => {
            tracing::error!("TLS is off: {error}");
            None
        }
    };
    let options = SpoolOptions {
        segment_limit: u64::from(config.queue.segment_size_kib) * 1024,
    };
    // The history rides in the spool's outcome records (one sync for both).
    let history = Arc::new(History::new(&data_dir));
    let (spool, recovery) = Spool::open_with(
        Disk::shared(),
        &data_dir.join("queue"),
        options,
        Some(history.clone()),
    )?;
    let spool = Arc::new(spool);
    tracing::info!(messages = recovery.messages.len(), damaged = recovery.damage.len(), dir = %data_dir.display(), "queue recovered");

    let pid_file = data_dir.join(PID_FILE);
    crate::private::write_file(&pid_file, format!("{}\n", std::process::id()).as_bytes()).map_err(
        |error| ServerError::PidFile {
            path: pid_file,
            error,
        },
    )?;
    let (deliveries, received) = mpsc::unbounded_channel();
    let flushes = deliveries.clone();
    let queue_control = control::QueueControl {
        spool: spool.clone(),
        hostname: config.server.hostname.clone(),
        work: deliveries.clone(),
    };
    // S4: the rule chain, rebuilt as one generation when the files it is
    // made of change, on SIGHUP and on `mailcall reload`. A rule that does
    // not load at start is logged and skipped until its file is fixed.
    let policy = if config.policy.chain.is_empty() {
        None
    } else {
        Some(Arc::new(PolicyEngine::for_server(&config, &data_dir)?))
    };
    let _watcher = match policy.as_ref().map(PolicyEngine::watch).transpose() {
        Ok(watcher) => watcher.flatten(),
        Err(error) => {
            tracing::error!("rules will not be reloaded: {error}");
            None
        }
    };
    let server = &config.server;
    let local_domains: HashSet<String> = server
        .local_domains
        .iter()
        .map(|d| d.trim_end_matches('.').to_lowercase())
        .collect();
    let local_addresses = local_domains
        .iter()
        .flat_map(|domain| {
            config.users.iter().flat_map(move |(user, settings)| {
                std::iter::once(user.clone())
                    .chain(settings.aliases.iter().cloned())
                    .map(move |local| format!("{}@{domain}", local.to_lowercase()))
            })
        })
        .collect();
    let session_policy = SessionPolicy {
        hostname: server.hostname.clone(),
        local_domains,
        local_addresses,
        relay_networks: server.relay_networks.clone(),
        max_message_size: server.max_message_size_kib as usize * 1024,
        max_recipients: server.max_recipients as usize,
        max_errors: server.max_errors,
        tls_available: tls.is_some(),
        over_call: false,
        synchronous_networks: server.synchronous_networks.clone(),
        synchronous_users: server
            .synchronous_users
            .iter()
            .map(|user| user.to_lowercase())
            .collect(),
    };
    // One authenticator for SMTP and POP3: the cost of password checks and
    // the penalties for failed ones are the same whichever server is tried.
    let auth = Arc::new(Authenticator::new(config.clone()).map_err(ServerError::Verifiers)?);
    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(Shared {
        metrics: metrics.clone(),
        auth: auth.clone(),
        policy: session_policy,
        spool: spool.clone(),
        deliveries: deliveries.clone(),
        config: config.clone(),
        tls: tls.clone(),
    });

    // S5–S7: the SIP user agent places calls for the planner and answers
    // calls to our numbers with the SMTP server (local domains only).
    let user_agent = match &config.sip {
        Some(settings) => {
            let mut settings = settings.clone();
            if settings.tls_listen.is_some() && settings.tls_certificate.is_none() {
                let (certificate, key) = crate::tls::certificate_files(&config)?;
                settings.tls_certificate = Some(certificate);
                settings.tls_key = Some(key);
            }
            let callee = Arc::new(callee::SmtpOverCall::new(shared.clone(), history.clone()));
            let agent = UserAgent::start(settings, Some(callee)).await?;
            Some(Arc::new(agent))
        }
        None => None,
    };
    let caller = user_agent.clone().map(|agent| {
        Arc::new(crate::delivery::call::SipCaller::new(
            agent,
            &config,
            metrics.clone(),
        )) as Arc<dyn Caller>
    });
    // Deliveries run on a runtime of their own with one worker, as
    // Postfix runs them in processes of their own: however many are in
    // progress, they cannot starve the listeners of CPU, and accepting mail
    // stays fast while the queue drains.
    let delivery_runtime = BackgroundRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("delivery")
            .enable_all()
            .build()
            .map_err(ServerError::Runtime)?,
    ));
    let planner = {
        let _inside = delivery_runtime.handle().enter();
        Arc::new(Planner::new(
            spool.clone(),
            config.clone(),
            policy.clone(),
            caller,
            metrics.clone(),
        ))
    };
    let scheduler = delivery_runtime.handle().spawn(schedule_deliveries(
        planner,
        received,
        deliveries,
        config.clone(),
    ));
    let bind = |address| async move {
        tokio::net::TcpListener::bind(address)
            .await
            .map_err(|error| ServerError::Listen { address, error })
    };
    let smtp_listener = bind(server.smtp_listen).await?;
    let pop3_listener = bind(server.pop3_listen).await?;
    tracing::info!(smtp = %server.smtp_listen, pop3 = %server.pop3_listen, "listening");
    // The operator console, on this runtime. A console that cannot bind is
    // logged and mail goes on (the configuration has refused one off
    // loopback without TLS).
    let _console = if config.admin.enabled {
        let console = admin::Console {
            metrics: metrics.clone(),
            spool: spool.clone(),
            data_dir: data_dir.clone(),
            policy: policy.clone(),
            started: Instant::now(),
            auth: auth.clone(),
            admins: config
                .users
                .iter()
                .filter(|(_, user)| user.admin)
                .map(|(name, _)| name.clone())
                .collect(),
            queue: queue_control.clone(),
            sessions: admin::Sessions::default(),
            sip: user_agent.clone(),
        };
        let (console_tls, scheme) = match (&config.admin.tls, &tls) {
            (false, _) => (None, "http"),
            (true, Some(tls)) => (Some(admin::https(tls)), "https"),
            (true, None) => return Err(ServerError::ConsoleWithoutTls),
        };
        match admin::bind(config.admin.listen, console_tls, console).await {
            Ok(serve) => {
                tracing::info!(address = %config.admin.listen, "console listening: {scheme}://{}/", config.admin.listen);
                Some(AbortOnDrop(tokio::spawn(serve)))
            }
            Err(error) => {
                tracing::error!("the console is not started: {error}");
                None
            }
        }
    } else {
        None
    };
    let pop3 = Arc::new(Pop3Shared {
        policy: Pop3Policy {
            hostname: server.hostname.clone(),
            max_errors: server.max_errors,
            tls_available: tls.is_some(),
        },
        mail_dir: data_dir.join("mail"),
        open: Default::default(),
        tls,
        auth,
        metrics: metrics.clone(),
        command_timeout: Duration::from_secs(server.command_timeout_secs.into()),
        max_sessions: server.max_sessions,
    });
    // The signals are taken now, before READY=1: a SIGHUP or SIGUSR1 sent
    // once systemd (or a script) hears we are ready must not find the
    // default action (which ends the process) still in place.
    use tokio::signal::unix::{signal, SignalKind};
    // SIGUSR1 asks for a queue run now, as `postqueue -f` does.
    let flush_signal = signal(SignalKind::user_defined1());
    let flush_requests = async move {
        let Ok(mut requests) = flush_signal else {
            return std::future::pending().await;
        };
        while requests.recv().await.is_some() {
            tracing::info!("queue flush requested");
            let _ = flushes.send(Work::Flush);
        }
    };
    // SIGHUP rebuilds the policy from the configuration file, as it makes
    // Postfix and Kamailio re-read theirs.
    let hangup_signal = signal(SignalKind::hangup());
    let hangups = {
        let policy = policy.clone();
        async move {
            let (Some(policy), Ok(mut hangups)) = (policy, hangup_signal) else {
                return std::future::pending().await;
            };
            while hangups.recv().await.is_some() {
                let policy = policy.clone();
                let _ = tokio::task::spawn_blocking(move || policy.reload(None)).await;
            }
        }
    };
    // Bound and recovered: connections are taken from here on.
    notify::notify(&format!(
        "READY=1\nSTATUS=SMTP on {}, {} queued",
        server.smtp_listen,
        spool.unfinished_count()
    ));
    tokio::select! {
        () = flush_requests => {}
        () = hangups => {}
        () = control::listen(&data_dir, policy.clone(), queue_control) => {}
        () = smtp::listen(smtp_listener, shared) => {}
        () = crate::pop3::listen(pop3_listener, pop3) => {}
        () = shutdown => tracing::info!("shutting down"),
    }
    notify::notify("STOPPING=1");
    // Unregister our numbers, even while a call is in progress (it fails,
    // and its message stays queued for the next start).
    scheduler.abort();
    let _ = scheduler.await;
    drop(delivery_runtime);
    if let Some(agent) = user_agent {
        agent.shutdown().await;
    }
    Ok(())
}

/// Delivers new messages as they come, and everything due on each queue
/// run (the first at start, for the recovered queue), at most
/// `max_parallel` messages at once and each message in one task at a time.
/// Ends when every sender is gone.
async fn schedule_deliveries(
    planner: Arc<Planner>,
    mut work: mpsc::UnboundedReceiver<Work>,
    more_work: mpsc::UnboundedSender<Work>,
    config: Arc<Config>,
) {
    let slots = Arc::new(Semaphore::new(config.relay.max_parallel as usize));
    let in_flight: Arc<Mutex<HashSet<MessageId>>> = Arc::default();
    let delay = Duration::from_secs(config.queue.queue_run_delay_secs.into());
    let mut queue_runs = tokio::time::interval(delay);
    queue_runs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (ids, force, mut answer) = tokio::select! {
            _ = queue_runs.tick() => (planner.due(false), false, None),
            next = work.recv() => match next {
                Some(Work::Deliver(id)) => (vec![id], false, None),
                Some(Work::DeliverAndAnswer(id, answer)) => (vec![id], false, Some(answer)),
                Some(Work::Flush) => (planner.due(true), true, None),
                None => return,
            },
        };
        for id in ids {
            if !in_flight.lock().is_ok_and(|mut set| set.insert(id)) {
                continue; // being delivered now; that run sees it all
            }
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (planner, in_flight, more_work, answer) = (
                planner.clone(),
                in_flight.clone(),
                more_work.clone(),
                answer.take(),
            );
            tokio::spawn(async move {
                match planner.deliver(id, force).await {
                    Ok(mut attempted) => {
                        if let Some(answer) = answer {
                            answer_client(id, answer, &mut attempted);
                        }
                        match planner.send_report(id, &attempted) {
                            Ok(Some(report)) => {
                                let _ = more_work.send(Work::Deliver(report));
                            }
                            Ok(None) => {}
                            Err(error) => tracing::error!(%id, "cannot queue a report: {error}"),
                        }
                    }
                    Err(error) => tracing::error!(%id, "delivery failed: {error}"),
                }
                if let Ok(mut set) = in_flight.lock() {
                    set.remove(&id);
                }
                drop(slot);
            });
        }
    }
}

/// Synchronous mode: tells the waiting client how the attempt went. When
/// every recipient was refused for good, the client gets the refusal
/// itself, so no bounce is sent for it — unless the client stopped
/// waiting, in which case it got a `250` and the bounce follows.
fn answer_client(
    id: MessageId,
    answer: tokio::sync::oneshot::Sender<Reply>,
    attempted: &mut Attempted,
) {
    let outcomes = &attempted.outcomes;
    let all = |matches: fn(&Outcome) -> bool| {
        !outcomes.is_empty() && outcomes.iter().all(|(_, outcome)| matches(outcome))
    };
    let reply = if all(|o| matches!(o, Outcome::Failed { .. })) {
        // The first refusal, as the final server (or we) gave it.
        match &outcomes[0].1 {
            Outcome::Failed { detail, code } => {
                let text = detail.strip_prefix(&format!("{code} ")).unwrap_or(detail);
                Reply::new(*code, "", text)
            }
            _ => Reply::new(554, "5.0.0", "Transaction failed"),
        }
    } else if all(|o| matches!(o, Outcome::Delivered { .. })) {
        let by_call = outcomes.iter().any(|(path, _)| *path == DeliveryPath::Call);
        let how = if by_call {
            "the final server took it over a call"
        } else {
            "delivered"
        };
        Reply::new(250, "2.0.0", format!("Ok: {how} (queued as {id})"))
    } else {
        Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
    };
    let refused = reply.is_error();
    if answer.send(reply).is_ok() && refused {
        attempted
            .notices
            .retain(|notice| notice.action != crate::queue::bounce::Action::Failed);
    }
}

/// A task that ends with the server.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The deliveries' runtime, shut down without waiting when the server
/// ends, also on an early return (a runtime dropped inside the async
/// server would panic).
struct BackgroundRuntime(Option<tokio::runtime::Runtime>);

impl BackgroundRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }
}

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

//! `mailcall serve`: the listeners and the delivery worker around the queue.
//!
//! Like Postfix, a pipeline of small stages around a durable queue: the
//! SMTP listener ([`smtp`]) accepts and commits a message to the spool
//! before its `250`, then hands its id to the delivery worker, which runs
//! the planner ([`crate::delivery`]); a queue run every
//! [`QUEUE_RUN_INTERVAL`] retries what was deferred.

pub mod smtp;

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::delivery::Planner;
use crate::pop3::session::Pop3Shared;
use crate::queue::spool::{MessageId, Spool, SpoolError};
use crate::smtp::session::SessionPolicy;

/// What the delivery worker is asked to do.
#[derive(Debug, Clone, Copy)]
pub enum Work {
    /// Deliver a message just accepted.
    Deliver(MessageId),
    /// Try every unfinished recipient now (`mailcall queue flush`).
    Flush,
}

/// The file holding the server's process id, in the data folder, for
/// `mailcall queue flush`.
pub const PID_FILE: &str = "mailcall.pid";

/// How often deferred recipients are looked at.
pub const QUEUE_RUN_INTERVAL: Duration = Duration::from_secs(30);

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
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
    /// Work for the delivery worker.
    pub deliveries: mpsc::Sender<Work>,
    pub config: Arc<Config>,
}

/// Runs the server until `shutdown` completes.
pub async fn serve(
    config: Arc<Config>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let data_dir = config.resolve(&config.server.data_dir);
    let (spool, recovered) = Spool::open(&data_dir.join("queue"))?;
    let spool = Arc::new(spool);
    tracing::info!(messages = recovered.len(), dir = %data_dir.display(), "queue recovered");

    let pid_file = data_dir.join(PID_FILE);
    std::fs::write(&pid_file, format!("{}\n", std::process::id())).map_err(|error| {
        SpoolError::Io {
            path: pid_file,
            error,
        }
    })?;
    let (deliveries, received) = mpsc::channel();
    let flushes = deliveries.clone();
    let planner = Planner::new(spool.clone(), config.clone());
    std::thread::Builder::new()
        .name("delivery".into())
        .spawn(move || delivery_worker(planner, received))
        .expect("spawn the delivery thread");

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
    let policy = SessionPolicy {
        hostname: server.hostname.clone(),
        local_domains,
        local_addresses,
        relay_networks: server.relay_networks(),
        max_message_size: server.max_message_size_kib as usize * 1024,
        max_recipients: server.max_recipients as usize,
        max_errors: server.max_errors,
    };
    let shared = Arc::new(Shared {
        policy,
        spool,
        deliveries,
        config: config.clone(),
    });
    let bind = |address| async move {
        tokio::net::TcpListener::bind(address)
            .await
            .map_err(|error| ServerError::Listen { address, error })
    };
    let smtp_listener = bind(server.smtp_listen).await?;
    let pop3_listener = bind(server.pop3_listen).await?;
    tracing::info!(smtp = %server.smtp_listen, pop3 = %server.pop3_listen, "listening");
    let pop3 = Arc::new(Pop3Shared {
        config: config.clone(),
        mail_dir: data_dir.join("mail"),
        open: Default::default(),
    });
    // SIGUSR1 asks for a queue run now, as `postqueue -f` does.
    let flush_requests = async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut requests) = signal(SignalKind::user_defined1()) else {
            return std::future::pending().await;
        };
        while requests.recv().await.is_some() {
            tracing::info!("queue flush requested");
            let _ = flushes.send(Work::Flush);
        }
    };
    tokio::select! {
        () = flush_requests => {}
        () = smtp::listen(smtp_listener, shared) => {}
        () = crate::pop3::listen(pop3_listener, pop3) => {}
        () = shutdown => tracing::info!("shutting down"),
    }
    Ok(())
}

/// Delivers new messages as they come, and everything due on each queue
/// run. Ends when every sender is gone.
fn delivery_worker(planner: Planner, received: mpsc::Receiver<Work>) {
    if let Err(error) = planner.deliver_pending() {
        tracing::error!("queue run failed: {error}");
    }
    loop {
        match received.recv_timeout(QUEUE_RUN_INTERVAL) {
            Ok(Work::Deliver(id)) => {
                if let Err(error) = planner.deliver(id) {
                    tracing::error!(%id, "delivery failed: {error}");
                }
            }
            Ok(Work::Flush) => {
                if let Err(error) = planner.flush() {
                    tracing::error!("queue flush failed: {error}");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(error) = planner.deliver_pending() {
                    tracing::error!("queue run failed: {error}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

//! mailcall's SIP user agent: it registers our numbers, calls other numbers
//! (S5–S7 of DESIGN.md: INVITE, ACK, the SDP-negotiated channel, BYE) and
//! answers calls to ours, handing each call's channel to a handler.
//!
//! rsipstack does the SIP of our calls and registrations (parser,
//! transactions, dialogs, digest); the calls we answer are ours from the
//! socket up (`screen`, `uas`), as rsipstack's server side cost four times
//! sipp's CPU per call. Its types stay inside this crate so it can be
//! swapped. It logs every raw message at INFO: filter `rsipstack=warn`.

mod callee;
mod caller;
mod channel;
mod config;
mod digest;
mod failure;
mod framing;
mod ladder;
mod locate;
mod network;
mod register;
mod screen;
mod sdp;
mod sips;
mod stack;
mod text;
mod tls;
mod transports;
mod uas;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

pub use callee::{Admission, CallHandler};
pub use caller::Call;
pub use channel::Channel;
pub use config::{E164Plan, SipSettings, Transport};
pub use failure::{CallFailure, FailureKind, Stage};
pub use ladder::{Label, Ladder, Rung, Side};
pub use locate::dns_resolver;
pub use network::Network;
pub use sips::AnyCertificate;

/// The parsers the fuzz targets in `fuzz/` drive directly; not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::framing::{next_frame, Frame};
    pub use crate::locate::Substitution;
    pub use crate::screen::{screen, Framing, Rejected, Verdict};
    pub use crate::sdp::ChannelDescription;
}

use crate::channel::PortPool;
use crate::locate::{LocateSettings, Locator};
use crate::register::Registrations;
pub use crate::register::{RegistrationState, Standing};
use crate::stack::Stack;
use crate::tls::ChannelIdentity;

/// What the user agent could not start with.
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("invalid [sip] settings: {0}")]
    Settings(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, String),
    #[error("SIP stack: {0}")]
    Stack(String),
}

/// One call, as the session function and the handler see it.
#[derive(Debug, Clone)]
pub struct CallInfo {
    pub call_id: String,
    /// The number called.
    pub number: String,
    /// The caller's address (From URI).
    pub from: String,
    /// The channel's peer.
    pub peer: SocketAddr,
    /// The call's ladder: the session records its steps into it too.
    pub ladder: Ladder,
}

/// What the user agent holds right now; all zero when idle (the leak test).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Dialogs: in rsipstack's dialog layer (our calls), and the calls we
    /// answer that are not over.
    pub dialogs: usize,
    /// Transactions the endpoint still runs (they linger for their timers).
    pub transactions: usize,
    /// One-shot channel listeners open.
    pub channel_listeners: usize,
    /// Calls in progress, as caller or callee.
    pub calls: usize,
    /// Tasks handling incoming requests (one per request, a call's for its length).
    pub tasks: usize,
}

/// The running user agent.
pub struct UserAgent {
    shared: Arc<Shared>,
    /// Until `shutdown`.
    running: std::sync::Mutex<Option<Running>>,
    /// Where the signalling runs (see `start`); stopped when dropped.
    _runtime: SignallingRuntime,
}

/// The signalling's runtime, stopped without waiting when dropped: it may
/// be dropped inside another runtime, where waiting is not allowed.
struct SignallingRuntime(Option<tokio::runtime::Runtime>);

impl SignallingRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("until dropped").handle()
    }
}

impl Drop for SignallingRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// What `shutdown` stops.
struct Running {
    /// The endpoint and the incoming-request loop.
    tasks: Vec<JoinHandle<()>>,
    registrations: Option<Registrations>,
}

/// What the caller, the callee and the registration share.
pub(crate) struct Shared {
    settings: SipSettings,
    stack: Stack,
    /// Where a number is called (route, ENUM, RFC 3263).
    locator: Locator,
    ports: PortPool,
    /// Our channel certificate, with `channel_tls`.
    identity: Option<ChannelIdentity>,
    handler: Option<Arc<dyn CallHandler>>,
    /// Where the handler's sessions run: the runtime that started us.
    sessions: tokio::runtime::Handle,
    calls: Arc<AtomicUsize>,
    tasks: Arc<AtomicUsize>,
    /// Each number's registration, for `registrations`.
    standings: register::Standings,
}

/// Counts something (a call, a task) while it lives.
pub(crate) struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Counted(count.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl UserAgent {
    /// Binds the transports, starts registration (if a registrar is set)
    /// and answering (calls to our numbers go to `callee`; without one they
    /// get 480).
    ///
    /// The signalling runs on a runtime of its own with one worker, as the
    /// host's deliveries do: every request is answered on that one thread,
    /// in order, without waiting behind the application's work and without
    /// waking another thread per message (under `scripts/bench-sip` a
    /// second worker cost a fifth more CPU per call). `callee`'s sessions
    /// run on the runtime that called `start`.
    pub async fn start(
        settings: SipSettings,
        callee: Option<Arc<dyn CallHandler>>,
    ) -> Result<UserAgent, SipError> {
        settings.validate().map_err(SipError::Settings)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sip")
            .enable_all()
            .build()
            .map_err(|e| SipError::Stack(format!("cannot start the SIP runtime: {e}")))?;
        let runtime = SignallingRuntime(Some(runtime));
        let sessions = tokio::runtime::Handle::current();
        let started = runtime
            .handle()
            .spawn(Self::start_here(settings, callee, sessions));
        let (shared, running) = started
            .await
            .map_err(|e| SipError::Stack(format!("starting: {e}")))??;
        Ok(UserAgent {
            shared,
            running: std::sync::Mutex::new(Some(running)),
            _runtime: runtime,
        })
    }

    /// `start`, on the signalling runtime.
    async fn start_here(
        settings: SipSettings,
        callee: Option<Arc<dyn CallHandler>>,
        sessions: tokio::runtime::Handle,
    ) -> Result<(Arc<Shared>, Running), SipError> {
        let ports = PortPool::new(settings.channel_port_range().map_err(SipError::Settings)?);
        let identity = if settings.channel_tls {
            Some(ChannelIdentity::generate().map_err(SipError::Stack)?)
        } else {
            None
        };
        let (stack, incoming) = Stack::bind(&settings).await?;
        let locator = Locator::new(LocateSettings {
            routes: settings.routes.clone(),
            enum_suffixes: settings.enum_suffixes.clone(),
            outbound_proxy: settings.outbound_proxy.clone(),
            domain: settings.domain.clone(),
            default_transport: settings.transport,
            dns_servers: settings.dns_servers.clone(),
            country_code: settings.numbering.country_code.clone(),
            trunk_prefix: settings.numbering.trunk_prefix.clone(),
        })
        .map_err(|e| SipError::Settings(e.to_string()))?;
        let endpoint = stack.endpoint.clone();
        let shared = Arc::new(Shared {
            settings,
            stack,
            locator,
            ports,
            identity,
            handler: callee,
            sessions,
            calls: Arc::new(AtomicUsize::new(0)),
            tasks: Arc::new(AtomicUsize::new(0)),
            standings: Default::default(),
        });
        let tasks = vec![
            tokio::spawn(Stack::serve(endpoint)),
            tokio::spawn(callee::serve(shared.clone(), incoming)),
        ];
        callee::answer_calls(&shared);
        let registrations = Registrations::start(&shared);
        tracing::info!(
            udp = ?shared.stack.udp,
            tcp = ?shared.stack.tcp,
            tls = ?shared.stack.tls,
            numbers = ?shared.settings.numbers,
            "SIP user agent started"
        );
        let running = Running {
            tasks,
            registrations,
        };
        Ok((shared, running))
    }

    /// S5–S7: calls `number` (by route or outbound proxy), runs `session`
    /// on the negotiated channel, then hangs up.
    pub async fn call<F, Fut, T>(
        &self,
        number: &str,
        ladder: &Ladder,
        session: F,
    ) -> Result<Call<T>, CallFailure>
    where
        F: FnOnce(Channel, CallInfo) -> Fut + Send,
        Fut: Future<Output = T> + Send,
        T: Send,
    {
        caller::call(&self.shared, number, ladder, session).await
    }

    /// The UDP and TCP addresses SIP listens on.
    pub fn local_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        (self.shared.stack.udp, self.shared.stack.tcp)
    }

    /// The TLS address SIP listens on, if any.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.shared.stack.tls
    }

    /// Where each of our numbers stands with the registrar (empty without
    /// one).
    pub fn registrations(&self) -> Vec<RegistrationState> {
        self.shared.standings.lock().expect("not poisoned").clone()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            dialogs: self.shared.stack.dialogs.len() + self.shared.stack.answering.running(),
            transactions: self.shared.stack.transactions(),
            channel_listeners: self.shared.ports.open_listeners(),
            calls: self.shared.calls.load(Ordering::Relaxed),
            tasks: self.shared.tasks.load(Ordering::Relaxed),
        }
    }

    /// Unregisters our numbers, then stops the stack and closes its
    /// sockets; calls still in progress fail. Later calls do nothing.
    pub async fn shutdown(&self) {
        let Some(running) = self.running.lock().expect("not poisoned").take() else {
            return;
        };
        if let Some(registrations) = running.registrations {
            registrations.stop().await;
        }
        self.shared.stack.shutdown();
        for task in running.tasks {
            // Both end on the cancel token; don't wait forever on a stuck one.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        tracing::info!("SIP user agent stopped");
    }
}

/// A boxed future for `CallHandler::handle`.
pub type HandlerFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A boxed future for `CallHandler::admit`.
pub type AdmitFuture = Pin<Box<dyn Future<Output = Admission> + Send>>;

//! Registration: each of our numbers is bound at the registrar, refreshed
//! before the granted expiry runs out (rsipstack's `keep_alive`: 75 % of
//! it), and unbound (`Expires: 0`) on shutdown.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::registration::{RefreshOutcome, Registration};
use rsipstack::sip::typed::Contact;
use rsipstack::sip::{Param, Uri};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::caller::credential;
use crate::ladder::Ladder;
use crate::locate::NextHop;
use crate::stack::transport_of;
use crate::Shared;

/// Where one of our numbers stands with the registrar, for the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationState {
    pub number: String,
    pub registrar: String,
    pub standing: Standing,
    /// When the standing last changed or was refreshed.
    pub since: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Asked, not answered yet.
    Pending,
    /// Bound: the registrar's 2xx.
    Registered(u16),
    /// Refused with this status (after any digest challenge).
    Refused(u16),
    /// No answer, or a transport error.
    Failed(String),
}

impl std::fmt::Display for Standing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Standing::Pending => write!(f, "pending"),
            Standing::Registered(status) => write!(f, "registered ({status})"),
            Standing::Refused(status) => write!(f, "refused ({status})"),
            Standing::Failed(error) => write!(f, "failed: {error}"),
        }
    }
}

/// Each number's standing, by number.
pub(crate) type Standings = Mutex<Vec<RegistrationState>>;

fn note(standings: &Standings, number: &str, standing: Standing) {
    let mut standings = standings.lock().expect("not poisoned");
    if let Some(state) = standings.iter_mut().find(|state| state.number == number) {
        state.standing = standing;
        state.since = SystemTime::now();
    }
}

/// The registration tasks, one per number.
pub(crate) struct Registrations {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Registrations {
    /// Starts registering our numbers, when a registrar is configured.
    pub fn start(shared: &Arc<Shared>) -> Option<Registrations> {
        let registrar = shared.settings.registrar.clone()?;
        *shared.standings.lock().expect("not poisoned") = shared
            .settings
            .numbers
            .iter()
            .map(|number| RegistrationState {
                number: number.clone(),
                registrar: registrar.clone(),
                standing: Standing::Pending,
                since: SystemTime::now(),
            })
            .collect();
        let stop = CancellationToken::new();
        let tasks = shared
            .settings
            .numbers
            .iter()
            .map(|number| {
                tokio::spawn(keep_registered(
                    shared.clone(),
                    registrar.clone(),
                    number.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Some(Registrations { stop, tasks })
    }

    /// Unregisters every number (bounded in time).
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

async fn keep_registered(
    shared: Arc<Shared>,
    registrar: String,
    number: String,
    stop: CancellationToken,
) {
    let mut server = match shared.stack.target(&registrar) {
        Ok(server) => server,
        Err(e) => {
            note(&shared.standings, &number, Standing::Failed(e.to_string()));
            return warn!("registrar {e}");
        }
    };
    // RFC 3263 for the registrar too: the first next hop that takes a
    // connection (TCP, or TLS with the registrar's name checked) gets the
    // REGISTERs, whose URI keeps its name; refreshes reuse the connection.
    let hop = registrar_hop(&shared, &server, &number).await;
    if let Some(hop) = &hop {
        if transport_of(&server) != hop.transport {
            server
                .params
                .retain(|param| !matches!(param, Param::Transport(_)));
            server.params.push(Param::Transport(hop.transport));
        }
    }
    let credential = credential(&shared, &number).unwrap_or_else(|| Credential {
        username: number.clone(),
        password: String::new(),
        realm: None,
        auth_username: None,
    });
    let mut registration = Registration::new(shared.stack.inner(), Some(credential));
    registration.outbound_proxy = hop.map(|hop| hop.address);
    registration.contact = Some(Contact {
        display_name: None,
        uri: shared.stack.contact(&number, transport_of(&server)),
        params: Vec::new(),
    });
    let expires = shared.settings.register_expires_secs;
    registration
        .keep_alive(server.clone(), expires, stop, |outcome| {
            let standing = match outcome {
                RefreshOutcome::Registered(response) => {
                    info!(number = %number, "registered at {registrar}: {}", response.status_code);
                    Standing::Registered(response.status_code.code())
                }
                RefreshOutcome::Rejected(response) => {
                    warn!(number = %number, "registration refused by {registrar}: {}", response.status_code);
                    Standing::Refused(response.status_code.code())
                }
                RefreshOutcome::Failed(error) => {
                    warn!(number = %number, "registration with {registrar} failed: {error}");
                    Standing::Failed(error.to_string())
                }
            };
            note(&shared.standings, &number, standing);
        })
        .await;
    match registration.register(server, Some(0)).await {
        Ok(response) => info!(number = %number, "unregistered: {}", response.status_code),
        Err(e) => warn!(number = %number, "unregistering failed: {e}"),
    }
}

/// The first next hop of the registrar's that takes a connection, if any
/// (none: rsipstack sends to the URI as it is, and reports the failure).
async fn registrar_hop(shared: &Shared, server: &Uri, number: &str) -> Option<NextHop> {
    let hops = match shared.locator.next_hops(server, &Ladder::new()).await {
        Ok(hops) => hops,
        Err(e) => {
            warn!(number = %number, "registrar {server}: {e}");
            return None;
        }
    };
    for hop in hops {
        match shared.stack.prepare(&hop).await {
            Ok(()) => return Some(hop),
            Err(e) => warn!(number = %number, "registrar {server}: {e}"),
        }
    }
    None
}

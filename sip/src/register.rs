//! Registration: each of our numbers is bound at the registrar, refreshed
//! before the granted expiry runs out (rsipstack's `keep_alive`: 75 % of
//! it), and unbound (`Expires: 0`) on shutdown.

use std::sync::Arc;
use std::time::Duration;

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::registration::{RefreshOutcome, Registration};
use rsipstack::sip::typed::Contact;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::caller::credential;
use crate::stack::transport_of;
use crate::Shared;

/// The registration tasks, one per number.
pub(crate) struct Registrations {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Registrations {
    /// Starts registering our numbers, when a registrar is configured.
    pub fn start(shared: &Arc<Shared>) -> Option<Registrations> {
        let registrar = shared.settings.registrar.clone()?;
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
    let server = match shared.stack.target(&registrar) {
        Ok(server) => server,
        Err(e) => return warn!("registrar {e}"),
    };
    let credential = credential(&shared, &number).unwrap_or_else(|| Credential {
        username: number.clone(),
        password: String::new(),
        realm: None,
        auth_username: None,
    });
    let mut registration = Registration::new(shared.stack.inner(), Some(credential));
    registration.contact = Some(Contact {
        display_name: None,
        uri: shared.stack.contact(&number, transport_of(&server)),
        params: Vec::new(),
    });
    let expires = shared.settings.register_expires_secs;
    shared.stack.prepare_tcp(&server).await;
    registration
        .keep_alive(server.clone(), expires, stop, |outcome| match outcome {
            RefreshOutcome::Registered(response) => {
                info!(number = %number, "registered at {registrar}: {}", response.status_code)
            }
            RefreshOutcome::Rejected(response) => {
                warn!(number = %number, "registration refused by {registrar}: {}", response.status_code)
            }
            RefreshOutcome::Failed(error) => {
                warn!(number = %number, "registration with {registrar} failed: {error}")
            }
        })
        .await;
    match registration.register(server, Some(0)).await {
        Ok(response) => info!(number = %number, "unregistered: {}", response.status_code),
        Err(e) => warn!(number = %number, "unregistering failed: {e}"),
    }
}

//! The caller (UAC), steps S5–S7: INVITE with the channel offer (T1),
//! provisional answers (R1), the 200 with the answer (R2), ACK (T2), the
//! channel (T3–T6) and BYE (T7/R4). Every step is recorded in the call's
//! [`Ladder`] (and logged) with its label.

use std::future::Future;
use std::time::{Duration, Instant};

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver};
use rsipstack::dialog::invitation::InviteOption;
use rsipstack::sip::typed::Route;
use rsipstack::sip::{Param, StatusCodeKind, Uri};
use rsipstack::transport::SipAddr;
use tracing::warn;

use crate::channel;
use crate::ladder::{Label, Ladder};
use crate::sdp::{ChannelDescription, Setup};
use crate::stack::transport_of;
use crate::{CallInfo, Channel, Counted, Shared};

/// How long a CANCELled INVITE may take to end with its 487.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// How long a session may go on once the callee has hung up.
const HANG_UP_GRACE: Duration = Duration::from_secs(2);

/// A call that was answered and whose session ran.
#[derive(Debug)]
pub struct Call<T> {
    pub call_id: String,
    /// The final answer to the INVITE (2xx).
    pub sip_status: u16,
    /// What the session function returned.
    pub output: T,
    /// From the INVITE to the 200.
    pub setup_time: Duration,
    /// From the INVITE to the end of the BYE.
    pub total_time: Duration,
}

/// The step that ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// No final answer to the INVITE (we sent CANCEL), or a 408.
    Answer,
    /// The session ran longer than `session_timeout_secs`.
    Session,
}

/// Why a call did not carry a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    #[error("busy ({code}){}", call_id_suffix(call_id))]
    Busy { code: u16, call_id: Option<String> },
    #[error("not found ({code}){}", call_id_suffix(call_id))]
    NotFound { code: u16, call_id: Option<String> },
    #[error("unavailable ({code}){}", call_id_suffix(call_id))]
    Unavailable { code: u16, call_id: Option<String> },
    #[error("rejected: {code} {reason}{}", call_id_suffix(call_id))]
    Rejected {
        code: u16,
        reason: String,
        call_id: Option<String>,
    },
    #[error("timed out waiting for {stage:?}{}", call_id_suffix(call_id))]
    Timeout {
        stage: Stage,
        call_id: Option<String>,
    },
    #[error("channel failed: {reason}{}", call_id_suffix(call_id))]
    Channel {
        reason: String,
        call_id: Option<String>,
    },
    #[error("no route to number {0}")]
    NoRoute(String),
    #[error("SIP transport: {reason}{}", call_id_suffix(call_id))]
    Transport {
        reason: String,
        call_id: Option<String>,
    },
}

fn call_id_suffix(call_id: &Option<String>) -> String {
    call_id
        .as_ref()
        .map(|id| format!(" [call {id}]"))
        .unwrap_or_default()
}

impl CallFailure {
    /// The Call-ID of the failed call, where one was sent.
    pub fn call_id(&self) -> Option<&str> {
        match self {
            CallFailure::Busy { call_id, .. }
            | CallFailure::NotFound { call_id, .. }
            | CallFailure::Unavailable { call_id, .. }
            | CallFailure::Rejected { call_id, .. }
            | CallFailure::Timeout { call_id, .. }
            | CallFailure::Channel { call_id, .. }
            | CallFailure::Transport { call_id, .. } => call_id.as_deref(),
            CallFailure::NoRoute(_) => None,
        }
    }

    /// Maps a final non-2xx answer.
    fn from_status(code: u16, reason: &str, call_id: String) -> Self {
        let call_id = Some(call_id);
        match code {
            486 | 600 => CallFailure::Busy { code, call_id },
            404 | 604 => CallFailure::NotFound { code, call_id },
            480 | 503 => CallFailure::Unavailable { code, call_id },
            408 => CallFailure::Timeout {
                stage: Stage::Answer,
                call_id,
            },
            _ => CallFailure::Rejected {
                code,
                reason: reason.to_string(),
                call_id,
            },
        }
    }
}

/// Where an INVITE for a number goes: the request URI, and the proxy it
/// goes through (loose routing) unless a direct route names the number.
struct Target {
    request_uri: Uri,
    proxy: Option<Uri>,
}

fn resolve(shared: &Shared, number: &str) -> Result<Target, CallFailure> {
    let settings = &shared.settings;
    let stack = &shared.stack;
    let no_route = || CallFailure::NoRoute(number.to_string());
    if let Some(route) = settings
        .routes
        .get(number)
        .or_else(|| settings.routes.get("*"))
    {
        let mut request_uri = stack.target(route).map_err(|_| no_route())?;
        if request_uri.auth.is_none() {
            request_uri.auth = Some(rsipstack::sip::Auth {
                user: number.to_string(),
                password: None,
            });
        }
        return Ok(Target {
            request_uri,
            proxy: None,
        });
    }
    let proxy = settings.outbound_proxy.as_ref().ok_or_else(no_route)?;
    let mut proxy = stack.target(proxy).map_err(|_| no_route())?;
    if !proxy.params.iter().any(|p| matches!(p, Param::Lr)) {
        proxy.params.push(Param::Lr);
    }
    let request_uri =
        Uri::try_from(format!("sip:{number}@{};user=phone", settings.domain).as_str())
            .map_err(|_| no_route())?;
    Ok(Target {
        request_uri,
        proxy: Some(proxy),
    })
}

/// Digest credentials for `user`, when a password is configured.
pub(crate) fn credential(shared: &Shared, user: &str) -> Option<Credential> {
    let settings = &shared.settings;
    settings.password.as_ref().map(|password| Credential {
        username: user.to_string(),
        password: password.clone(),
        realm: None,
        auth_username: settings.username.clone(),
    })
}

pub(crate) async fn call<F, Fut, T>(
    shared: &Shared,
    number: &str,
    ladder: &Ladder,
    session: F,
) -> Result<Call<T>, CallFailure>
where
    F: FnOnce(Channel, CallInfo) -> Fut + Send,
    Fut: Future<Output = T> + Send,
    T: Send,
{
    let _counted = Counted::new(&shared.calls);
    let settings = &shared.settings;
    let stack = &shared.stack;
    let started = Instant::now();
    let target = resolve(shared, number)?;
    let call_id = stack.new_call_id();
    ladder.set_call_id(&call_id);
    let transport_error = |reason: String| CallFailure::Transport {
        reason,
        call_id: Some(call_id.clone()),
    };

    let next_hop = target.proxy.as_ref().unwrap_or(&target.request_uri);
    let our_user = settings
        .numbers
        .first()
        .cloned()
        .unwrap_or_else(|| "mailcall".into());
    let from = Uri::try_from(format!("sip:{our_user}@{}", settings.domain).as_str())
        .map_err(|e| transport_error(e.to_string()))?;
    let offer = ChannelDescription::offer(
        settings.sdp_address(),
        shared.identity.as_ref().map(|i| i.fingerprint),
    );
    let destination = target
        .proxy
        .as_ref()
        .map(SipAddr::try_from)
        .transpose()
        .map_err(|e| transport_error(e.to_string()))?;
    let option = InviteOption {
        caller: from.clone(),
        callee: target.request_uri.clone(),
        destination,
        content_type: Some("application/sdp".into()),
        offer: Some(offer.to_sdp(rand_session_id()).into_bytes()),
        contact: stack.contact(&our_user, transport_of(next_hop)),
        credential: credential(shared, &our_user),
        call_id: Some(call_id.clone()),
        route_set: target
            .proxy
            .iter()
            .filter_map(|proxy| Route::parse(&format!("<{proxy}>")).ok())
            .collect(),
        ..Default::default()
    };

    let via = target
        .proxy
        .as_ref()
        .map(|proxy| format!(" via {proxy}"))
        .unwrap_or_default();
    ladder.step(Label::T1, format!("INVITE {}{via}", target.request_uri));
    let over = if offer.tls { "TCP/TLS" } else { "TCP" };
    ladder.step(Label::T3, format!("offer: smtp over {over}"));
    stack.prepare_tcp(next_hop).await;
    let (state_sender, mut states) = stack.dialogs.new_dialog_state_channel();
    let (dialog, mut answer) = stack
        .dialogs
        .do_invite_async(option, state_sender)
        .map_err(|e| transport_error(e.to_string()))?;

    let deadline = tokio::time::sleep(settings.invite_timeout());
    tokio::pin!(deadline);
    let mut provisional = false;
    let outcome = loop {
        tokio::select! {
            result = &mut answer => break Some(result),
            Some(state) = states.recv() => match state {
                DialogState::Trying(_) => {
                    provisional = true;
                    ladder.step(Label::R1, "100 Trying");
                }
                DialogState::Early(_, response) => {
                    provisional = true;
                    ladder.step(Label::R1, response.status_code.to_string());
                }
                _ => {}
            },
            () = &mut deadline => break None,
        }
    };
    let (dialog_id, response) = match outcome {
        None if !provisional => {
            // Nobody answered at all (unreachable, or a dead port): RFC 3261
            // §9.1 forbids a CANCEL before a provisional response, and
            // waiting out Timer B would only delay the fallback.
            let waited = settings.invite_timeout_secs;
            ladder.step(Label::T1, format!("no response in {waited}s: giving up"));
            answer.abort();
            return Err(CallFailure::Timeout {
                stage: Stage::Answer,
                call_id: Some(call_id),
            });
        }
        None => {
            let waited = settings.invite_timeout_secs;
            ladder.step(Label::T1, format!("CANCEL: no final answer in {waited}s"));
            if let Err(e) = dialog.cancel().await {
                warn!(call_id = %call_id, "CANCEL failed: {e}");
            }
            // A peer that got the CANCEL answers 487 at once; one that never
            // answered at all is left to Timer B in the background.
            let ended = tokio::time::timeout(CANCEL_WAIT, &mut answer).await;
            if let Ok(Ok(Ok((id, Some(response))))) = ended {
                if response.status_code.kind() == StatusCodeKind::Successful {
                    // rsipstack ends a 2xx that crossed our CANCEL with BYE.
                    stack.dialogs.remove_dialog(&id);
                }
            }
            answer.abort();
            return Err(CallFailure::Timeout {
                stage: Stage::Answer,
                call_id: Some(call_id),
            });
        }
        Some(Err(e)) => return Err(transport_error(e.to_string())),
        Some(Ok(Err(e))) => return Err(transport_error(e.to_string())),
        Some(Ok(Ok((_, None)))) => return Err(transport_error("no final answer".into())),
        Some(Ok(Ok((dialog_id, Some(response))))) => (dialog_id, response),
    };
    let code = response.status_code.code();
    if response.status_code.kind() != StatusCodeKind::Successful {
        ladder.step(Label::R2, format!("{}: call failed", response.status_code));
        return Err(CallFailure::from_status(
            code,
            &response.status_code.to_string(),
            call_id,
        ));
    }
    let setup_time = started.elapsed();
    ladder.step(Label::R2, response.status_code.to_string());
    ladder.step(Label::T2, "ACK");

    // From here on the dialog is confirmed: every way out ends with BYE.
    let hang_up = |reason: &'static str| {
        let dialog = dialog.clone();
        let call_id = call_id.clone();
        let dialog_id = dialog_id.clone();
        async move {
            if matches!(dialog.state(), DialogState::Terminated(..)) {
                ladder.step(Label::R4, "the callee hung up first");
            } else {
                ladder.step(Label::T7, format!("BYE ({reason})"));
                match stack.unless_stopped(dialog.bye()).await {
                    Some(Ok(())) => ladder.step(Label::R4, "BYE answered"),
                    Some(Err(e)) => {
                        warn!(call_id = %call_id, "BYE failed: {e}");
                        ladder.step(Label::R4, format!("no answer to BYE: {e}"));
                    }
                    None => ladder.step(Label::R4, "not awaited: the user agent stopped"),
                }
            }
            stack.dialogs.remove_dialog(&dialog_id);
        }
    };
    let answer = match ChannelDescription::parse(&response.body) {
        Ok(answer) if answer.port != 0 && answer.setup != Setup::Active => answer,
        Ok(_) => {
            hang_up("channel declined").await;
            return Err(CallFailure::Channel {
                reason: "the answer declines the channel".into(),
                call_id: Some(call_id),
            });
        }
        Err(e) => {
            hang_up("unusable answer").await;
            return Err(CallFailure::Channel {
                reason: e.to_string(),
                call_id: Some(call_id),
            });
        }
    };
    ladder.step(
        Label::R3,
        format!("answer: smtp at {} (setup:passive)", answer.socket_addr()),
    );
    let tls = match (&shared.identity, answer.tls, answer.fingerprint) {
        (Some(identity), true, Some(fingerprint)) => Some((identity, fingerprint)),
        (None, false, _) => None,
        _ => {
            hang_up("TLS mismatch").await;
            return Err(CallFailure::Channel {
                reason: "the answer does not match our TLS offer".into(),
                call_id: Some(call_id),
            });
        }
    };
    let channel = match channel::connect(
        answer.socket_addr(),
        tls,
        settings.channel_connect_timeout(),
    )
    .await
    {
        Ok(channel) => channel,
        Err(e) => {
            hang_up("channel failed").await;
            return Err(CallFailure::Channel {
                reason: e.to_string(),
                call_id: Some(call_id),
            });
        }
    };
    ladder.step(Label::T4, format!("channel opened to {}", channel.peer()));
    let info = CallInfo {
        call_id: call_id.clone(),
        number: number.to_string(),
        from: from.to_string(),
        peer: channel.peer(),
        ladder: ladder.clone(),
    };
    let session = tokio::time::timeout(settings.session_timeout(), session(channel, info));
    tokio::pin!(session);
    let output = tokio::select! {
        output = &mut session => Some(output),
        () = hung_up(&mut states) => {
            // The callee closes its end of the channel as it hangs up: a
            // session still reading its last answer gets it, or the end.
            ladder.step(Label::R4, "the callee hung up during the session");
            tokio::time::timeout(HANG_UP_GRACE, &mut session).await.ok()
        }
    };
    ladder.step(Label::T6, "channel closed");
    hang_up("session done").await;
    let Some(output) = output else {
        return Err(CallFailure::Channel {
            reason: "the callee hung up before the session ended".into(),
            call_id: Some(call_id),
        });
    };
    let output = output.map_err(|_| CallFailure::Timeout {
        stage: Stage::Session,
        call_id: Some(call_id.clone()),
    })?;
    Ok(Call {
        call_id,
        sip_status: code,
        output,
        setup_time,
        total_time: started.elapsed(),
    })
}

/// Returns when the callee ends the dialog (its BYE); never otherwise.
async fn hung_up(states: &mut DialogStateReceiver) {
    while let Some(state) = states.recv().await {
        if let DialogState::Terminated(..) = state {
            return;
        }
    }
    std::future::pending().await
}

/// The `o=` session id: unique enough per call, without a random crate.
pub(crate) fn rand_session_id() -> u64 {
    let uuid = uuid::Uuid::new_v4();
    u64::from_le_bytes(uuid.as_bytes()[..8].try_into().expect("8 bytes")) >> 1
}

//! The caller (UAC), steps S5–S7, in the ladder's phases: where to call
//! (L: route, ENUM, RFC 3263), the INVITE with the channel offer until the
//! call is confirmed (T1, R1, R2, T2; the next target on a transport error
//! or a 503), the channel (R3, T3, T4), and the session (T5, T6) that ends
//! with BYE (T7, R4). Every step is recorded in the call's [`Ladder`] (and
//! logged) with its label.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver};
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invitation::{InviteAsyncResult, InviteOption};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::dialog::DialogId;
use rsipstack::sip::typed::Route;
use rsipstack::sip::{StatusCodeKind, Transport as SipTransport, Uri};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::channel;
use crate::failure::{CallFailure, FailureKind, Stage};
use crate::ladder::{Label, Ladder};
use crate::locate::{LocateError, NextHop, Target};
use crate::sdp::{ChannelDescription, Setup};
use crate::stack::Stack;
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
    let started = Instant::now();
    let (target, hops) = locate(shared, number, ladder).await?;
    let call_id = shared.stack.new_call_id();
    ladder.set_call_id(&call_id);
    let call = invite(shared, &target, &hops, &call_id, ladder).await?;
    let setup_time = started.elapsed();
    let channel = match call.open_channel(shared).await {
        Ok(channel) => channel,
        Err((reason, why)) => {
            call.hang_up(reason).await;
            return Err(CallFailure::of_call(&call_id, FailureKind::Channel(why)));
        }
    };
    let sip_status = call.status;
    let output = call.run_session(shared, channel, number, session).await?;
    Ok(Call {
        call_id,
        sip_status,
        output,
        setup_time,
        total_time: started.elapsed(),
    })
}

/// L: where the INVITE goes (route, ENUM, outbound proxy), and the next
/// hops that reach it (RFC 3263), TLS ones only under `require_tls`.
async fn locate(
    shared: &Shared,
    number: &str,
    ladder: &Ladder,
) -> Result<(Target, Vec<NextHop>), CallFailure> {
    let failed = |e: LocateError| {
        let kind = match e {
            LocateError::NoRoute(number) => FailureKind::NoRoute(number),
            other => FailureKind::Transport(other.to_string()),
        };
        CallFailure::before_invite(kind)
    };
    let target = shared
        .locator
        .target(number, ladder)
        .await
        .map_err(failed)?;
    let first = target.proxy.as_ref().unwrap_or(&target.request_uri);
    let mut hops = shared
        .locator
        .next_hops(first, ladder)
        .await
        .map_err(failed)?;
    if shared.settings.require_tls {
        hops.retain(|hop| hop.transport == SipTransport::Tls);
        if hops.is_empty() {
            let why = format!("require_tls: no TLS route to {first}");
            ladder.step(Label::L, why.clone());
            return Err(CallFailure::before_invite(FailureKind::NotSecure(why)));
        }
    }
    Ok((target, hops))
}

/// T1–R2, T2: the INVITE to each next hop in turn until one answers; the
/// next is tried on a transport error, no answer at all, or a 503 (RFC 3263
/// §4.3).
async fn invite(
    shared: &Shared,
    target: &Target,
    hops: &[NextHop],
    call_id: &str,
    ladder: &Ladder,
) -> Result<ConfirmedCall, CallFailure> {
    let mut last = None;
    for (index, hop) in hops.iter().enumerate() {
        let more = index + 1 < hops.len();
        match invite_one(shared, target, hop, call_id, ladder).await {
            Ok(call) => return Ok(call),
            Err(Attempt::Final(failure)) => return Err(failure),
            Err(Attempt::NextHop(failure)) => {
                if more {
                    ladder.step(
                        Label::L,
                        format!("{}: trying the next target", failure.kind),
                    );
                }
                last = Some(failure);
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        let why = "no address to send the INVITE to".to_string();
        CallFailure::of_call(call_id, FailureKind::Transport(why))
    }))
}

/// rsipstack's INVITE transaction, running.
type InviteTask = rsipstack::platform::JoinHandle<InviteAsyncResult>;

/// How one INVITE ended, when not with a confirmed call.
enum Attempt {
    /// The call is over.
    Final(CallFailure),
    /// This target failed; another may not.
    NextHop(CallFailure),
}

async fn invite_one(
    shared: &Shared,
    target: &Target,
    hop: &NextHop,
    call_id: &str,
    ladder: &Ladder,
) -> Result<ConfirmedCall, Attempt> {
    let settings = &shared.settings;
    let stack = &shared.stack;
    let failure = |kind| CallFailure::of_call(call_id, kind);
    let transport_error = |why: String| Attempt::NextHop(failure(FailureKind::Transport(why)));
    let our_user = our_user(shared);
    let from = Uri::try_from(format!("sip:{our_user}@{}", settings.domain).as_str())
        .map_err(|e| Attempt::Final(failure(FailureKind::Transport(e.to_string()))))?;
    let offer = ChannelDescription::offer(
        settings.sdp_address(),
        shared.identity.as_ref().map(|i| i.fingerprint),
    );
    let option = InviteOption {
        caller: from.clone(),
        callee: target.request_uri.clone(),
        destination: Some(Stack::destination(hop)),
        content_type: Some("application/sdp".into()),
        offer: Some(offer.to_sdp(rand_session_id()).into_bytes()),
        contact: stack.contact(&our_user, hop.transport),
        credential: credential(shared, &our_user),
        call_id: Some(call_id.to_string()),
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
    let to = format!("{} {}", hop.transport, hop.address);
    ladder.step(
        Label::T1,
        format!("INVITE {}{via} to {to}", target.request_uri),
    );
    if let Err(why) = stack.prepare(hop).await {
        ladder.step(Label::T1, format!("not sent: {why}"));
        return Err(transport_error(why));
    }
    let over = if offer.tls { "TCP/TLS" } else { "TCP" };
    ladder.step(Label::T3, format!("offer: smtp over {over}"));
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
            // waiting out Timer B would only delay the next target.
            let waited = settings.invite_timeout_secs;
            ladder.step(Label::T1, format!("no response in {waited}s: giving up"));
            answer.abort();
            return Err(Attempt::NextHop(failure(FailureKind::Timeout(
                Stage::Answer,
            ))));
        }
        None => {
            let waited = settings.invite_timeout_secs;
            ladder.step(Label::T1, format!("CANCEL: no final answer in {waited}s"));
            cancel(stack, &dialog, &mut answer).await;
            return Err(Attempt::Final(failure(FailureKind::Timeout(Stage::Answer))));
        }
        Some(Err(e)) => return Err(transport_error(e.to_string())),
        Some(Ok(Err(e))) => return Err(transport_error(e.to_string())),
        Some(Ok(Ok((_, None)))) => return Err(transport_error("no final answer".into())),
        Some(Ok(Ok((dialog_id, Some(response))))) => (dialog_id, response),
    };
    let code = response.status_code.code();
    if response.status_code.kind() != StatusCodeKind::Successful {
        ladder.step(Label::R2, format!("{}: call failed", response.status_code));
        let failed = CallFailure::from_status(code, &response.status_code.to_string(), call_id);
        // RFC 3263 §4.3: a 503 sends the request to the next target.
        return Err(match code {
            503 => Attempt::NextHop(failed),
            _ => Attempt::Final(failed),
        });
    }
    ladder.step(Label::R2, response.status_code.to_string());
    ladder.step(Label::T2, "ACK");
    Ok(ConfirmedCall {
        dialog,
        id: dialog_id,
        states,
        answer: response.body,
        status: code,
        call_id: call_id.to_string(),
        ladder: ladder.clone(),
        dialogs: stack.dialogs.clone(),
        stopped: stack.cancel.clone(),
        hung_up: false,
    })
}

/// No final answer in time after a provisional one: CANCEL, and wait a
/// little for the 487.
async fn cancel(stack: &Stack, dialog: &InviteDialog, answer: &mut InviteTask) {
    if let Err(e) = dialog.cancel().await {
        warn!("CANCEL failed: {e}");
    }
    // A peer that got the CANCEL answers 487 at once; one that never
    // answered at all is left to Timer B in the background.
    let ended = tokio::time::timeout(CANCEL_WAIT, &mut *answer).await;
    if let Ok(Ok(Ok((id, Some(response))))) = ended {
        if response.status_code.kind() == StatusCodeKind::Successful {
            // rsipstack ends a 2xx that crossed our CANCEL with BYE.
            stack.dialogs.remove_dialog(&id);
        }
    }
    answer.abort();
}

/// A call the callee answered and we acknowledged: it owns the dialog, and
/// so the hang-up. `hang_up` sends BYE in the ladder's order; a value
/// dropped without it (an early return, a cancelled task) sends it from a
/// task of its own, so every way out of a confirmed call ends with BYE.
struct ConfirmedCall {
    dialog: InviteDialog,
    id: DialogId,
    states: DialogStateReceiver,
    /// The 200's body: the SDP answer.
    answer: Vec<u8>,
    status: u16,
    call_id: String,
    ladder: Ladder,
    dialogs: Arc<DialogLayer>,
    /// The user agent's stop: no BYE is awaited past it.
    stopped: CancellationToken,
    hung_up: bool,
}

impl ConfirmedCall {
    /// R3, T4: the channel the answer names, connected (with TLS when we
    /// offered it). On failure: why, for BYE and for the report.
    async fn open_channel(&self, shared: &Shared) -> Result<Channel, (&'static str, String)> {
        let answer = match ChannelDescription::parse(&self.answer) {
            Ok(answer) if answer.port != 0 && answer.setup != Setup::Active => answer,
            Ok(_) => {
                let why = "the answer declines the channel".to_string();
                return Err(("channel declined", why));
            }
            Err(e) => return Err(("unusable answer", e.to_string())),
        };
        self.ladder.step(
            Label::R3,
            format!("answer: smtp at {} (setup:passive)", answer.socket_addr()),
        );
        let tls = match (&shared.identity, answer.tls, answer.fingerprint) {
            (Some(identity), true, Some(fingerprint)) => Some((identity, fingerprint)),
            (None, false, _) => None,
            _ => {
                let why = "the answer does not match our TLS offer".to_string();
                return Err(("TLS mismatch", why));
            }
        };
        let timeout = shared.settings.channel_connect_timeout();
        let channel = channel::connect(answer.socket_addr(), tls, timeout)
            .await
            .map_err(|e| ("channel failed", e.to_string()))?;
        self.ladder
            .step(Label::T4, format!("channel opened to {}", channel.peer()));
        Ok(channel)
    }

    /// T5, T6: the session on the channel, then BYE. A callee that hangs
    /// up meanwhile ends the session after a short grace.
    async fn run_session<F, Fut, T>(
        mut self,
        shared: &Shared,
        channel: Channel,
        number: &str,
        session: F,
    ) -> Result<T, CallFailure>
    where
        F: FnOnce(Channel, CallInfo) -> Fut + Send,
        Fut: Future<Output = T> + Send,
        T: Send,
    {
        let info = CallInfo {
            call_id: self.call_id.clone(),
            number: number.to_string(),
            from: format!("sip:{}@{}", our_user(shared), shared.settings.domain),
            peer: channel.peer(),
            ladder: self.ladder.clone(),
        };
        let session =
            tokio::time::timeout(shared.settings.session_timeout(), session(channel, info));
        tokio::pin!(session);
        let output = tokio::select! {
            output = &mut session => Some(output),
            () = hung_up(&mut self.states) => {
                // The callee closes its end of the channel as it hangs up: a
                // session still reading its last answer gets it, or the end.
                self.ladder.step(Label::R4, "the callee hung up during the session");
                tokio::time::timeout(HANG_UP_GRACE, &mut session).await.ok()
            }
        };
        self.ladder.step(Label::T6, "channel closed");
        let call_id = self.call_id.clone();
        self.hang_up("session done").await;
        let Some(output) = output else {
            let why = "the callee hung up before the session ended".to_string();
            return Err(CallFailure::of_call(&call_id, FailureKind::Channel(why)));
        };
        output.map_err(|_| CallFailure::of_call(&call_id, FailureKind::Timeout(Stage::Session)))
    }

    /// T7, R4: BYE, unless the callee hung up first.
    async fn hang_up(mut self, reason: &str) {
        self.hung_up = true;
        bye(
            &self.dialog,
            &self.id,
            &self.dialogs,
            &self.stopped,
            &self.ladder,
            reason,
        )
        .await;
    }
}

impl Drop for ConfirmedCall {
    fn drop(&mut self) {
        if self.hung_up {
            return;
        }
        let (dialog, id, dialogs) = (self.dialog.clone(), self.id.clone(), self.dialogs.clone());
        let (stopped, ladder) = (self.stopped.clone(), self.ladder.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                bye(&dialog, &id, &dialogs, &stopped, &ladder, "call abandoned").await;
            });
        }
    }
}

async fn bye(
    dialog: &InviteDialog,
    id: &DialogId,
    dialogs: &DialogLayer,
    stopped: &CancellationToken,
    ladder: &Ladder,
    reason: &str,
) {
    if matches!(dialog.state(), DialogState::Terminated(..)) {
        ladder.step(Label::R4, "the callee hung up first");
    } else {
        ladder.step(Label::T7, format!("BYE ({reason})"));
        let answered = tokio::select! {
            answered = dialog.bye() => Some(answered),
            () = stopped.cancelled() => None,
        };
        match answered {
            Some(Ok(())) => ladder.step(Label::R4, "BYE answered"),
            Some(Err(e)) => {
                warn!(call_id = %ladder.call_id(), "BYE failed: {e}");
                ladder.step(Label::R4, format!("no answer to BYE: {e}"));
            }
            None => ladder.step(Label::R4, "not awaited: the user agent stopped"),
        }
    }
    dialogs.remove_dialog(id);
}

/// The user part of our From.
fn our_user(shared: &Shared) -> String {
    shared
        .settings
        .numbers
        .first()
        .cloned()
        .unwrap_or_else(|| "mailcall".into())
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

/// The `o=` session id: unique per call, counting up from a random start
/// (one draw per process, not a system call per call).
pub(crate) fn rand_session_id() -> u64 {
    static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let uuid = uuid::Uuid::new_v4();
        AtomicU64::new(u64::from_le_bytes(uuid.as_bytes()[..8].try_into().expect("8 bytes")) >> 2)
    });
    next.fetch_add(1, Ordering::Relaxed) & (u64::MAX >> 1)
}

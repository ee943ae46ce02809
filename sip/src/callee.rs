//! The callee (UAS): answers INVITEs for our numbers from allowed sources
//! with 180 and a 200 naming a one-shot channel listener, hands the
//! channel to the handler, and ends the call with BYE. Also answers every
//! other request that reaches us outside a call (OPTIONS, stray BYE, …).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{Header, HeadersExt, Method, Request, StatusCode, Transport as SipTransport};
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transaction::TransactionReceiver;
use tracing::{debug, info, warn};

use crate::ladder::{Label, Ladder};
use crate::screen;
use crate::sdp::{ChannelDescription, Setup};
use crate::stack::{ip_of, Stack};
use crate::tls::ChannelIdentity;
use crate::{AdmitFuture, CallInfo, Channel, Counted, HandlerFuture, Shared};

/// Whether a call to one of our numbers is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Answer,
    /// 486 Busy Here, saying why.
    Busy(String),
    /// 480 Temporarily Unavailable, saying why.
    Unavailable(String),
}

/// What runs on the channel of a call to one of our numbers.
pub trait CallHandler: Send + Sync + 'static {
    /// Decides whether to answer a call to `number` from `from`; asked
    /// while the caller hears ringing, so the caller may still CANCEL.
    /// Answers every call unless overridden.
    fn admit(&self, _number: &str, _from: &str) -> AdmitFuture {
        Box::pin(std::future::ready(Admission::Answer))
    }

    /// Runs until the session is done; the call ends when it returns (we
    /// send BYE) or when the caller hangs up and it returns.
    fn handle(&self, channel: Channel, call: CallInfo) -> HandlerFuture;

    /// An answered call is over: its ladder as this side saw it (the
    /// callee's record of Fig. 4). Does nothing unless overridden.
    fn ended(&self, _call: &CallInfo) {}
}

/// Reads incoming requests until the stack stops.
pub(crate) async fn serve(shared: Arc<Shared>, mut incoming: TransactionReceiver) {
    let stopped = shared.stack.cancel.clone();
    loop {
        let transaction = tokio::select! {
            transaction = incoming.recv() => transaction,
            () = stopped.cancelled() => None,
        };
        let Some(transaction) = transaction else {
            break;
        };
        let counted = Counted::new(&shared.tasks);
        let shared = shared.clone();
        tokio::spawn(async move {
            dispatch(shared, transaction).await;
            drop(counted);
        });
    }
}

async fn dispatch(shared: Arc<Shared>, mut tx: Transaction) {
    let method = tx.original.method;
    let call_id = call_id_of(&tx.original);
    if let Some(mut dialog) = shared.stack.dialogs.match_dialog(&tx) {
        let result = match method {
            // We never renegotiate the channel of a running call.
            Method::Invite => {
                info!(call_id = %call_id, "re-INVITE refused: 488");
                tx.reply(StatusCode::NotAcceptableHere).await
            }
            Method::Options => answer_options(&mut tx).await,
            Method::Bye => {
                let call = shared.call_of(&call_id);
                call.ladder.step(Label::T7, "BYE from the peer");
                let result = dialog.handle(&mut tx).await;
                call.ladder.step(Label::R4, "200 to BYE");
                call.bye_answered.notify_one();
                result
            }
            _ => dialog.handle(&mut tx).await,
        };
        if let Err(e) = result {
            debug!(call_id = %call_id, "{method} in dialog: {e}");
        }
        return;
    }
    let has_to_tag = tx
        .original
        .to_header()
        .ok()
        .and_then(|to| to.tag().ok().flatten())
        .is_some();
    let result = match method {
        Method::Invite if !has_to_tag => {
            // Boxed: the task of every other request need not be as big
            // as a call's (spawning moves it whole).
            Box::pin(answer_invite(shared, tx)).await;
            return;
        }
        Method::Options => answer_options(&mut tx).await,
        Method::Ack => return,
        // In-dialog requests for a dialog we do not have (RFC 3261 §12.2.2).
        _ if has_to_tag => tx.reply(StatusCode::CallTransactionDoesNotExist).await,
        Method::Bye => tx.reply(StatusCode::CallTransactionDoesNotExist).await,
        // Methods we know but do not serve (RFC 3261 §8.2.1).
        _ => {
            tx.reply_with(StatusCode::MethodNotAllowed, vec![allow()], None)
                .await
        }
    };
    if let Err(e) = result {
        debug!(call_id = %call_id, "answering {method}: {e}");
    }
}

fn allow() -> Header {
    Header::Other("Allow".into(), screen::allow_header())
}

/// The capability query: what we can do, and the SDP we take.
async fn answer_options(tx: &mut Transaction) -> rsipstack::Result<()> {
    let headers = vec![
        allow(),
        Header::Other("Accept".into(), "application/sdp".into()),
        Header::Other("Supported".into(), String::new()),
    ];
    tx.reply_with(StatusCode::OK, headers, None).await
}

fn call_id_of(request: &Request) -> String {
    request
        .call_id_header()
        .map(|h| h.value().to_string())
        .unwrap_or_default()
}

/// The request's source: the top Via's `received`, else its host.
fn source_of(request: &Request) -> Option<IpAddr> {
    let via = request.via_header().ok()?.value().to_string();
    let mut parts = via.split(';');
    let sent_by = parts.next()?.split_whitespace().nth(1)?;
    let received = parts.find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("received")
            .then(|| value.trim().to_string())
    });
    if let Some(received) = received {
        return received.parse().ok();
    }
    let host = match sent_by.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => sent_by.split(':').next()?,
    };
    host.parse().ok()
}

fn source_allowed(shared: &Shared, source: IpAddr) -> bool {
    let settings = &shared.settings;
    let servers = [&settings.outbound_proxy, &settings.registrar];
    servers
        .iter()
        .filter_map(|uri| uri.as_deref().and_then(ip_of))
        .any(|server| server.to_canonical() == source.to_canonical())
        || settings
            .allowed_sources
            .iter()
            .any(|network| network.contains(source))
}

/// The reason for a refusal, for people reading traces (RFC 3261 §20.43).
fn warning(why: &str) -> Header {
    Header::Other(
        "Warning".into(),
        format!("399 mailcall \"{}\"", why.replace('"', "'")),
    )
}

/// Rejects an INVITE with `status` and a Warning saying why.
async fn reject(tx: &mut Transaction, call_id: &str, status: StatusCode, why: &str) {
    info!(call_id = %call_id, "R2 {status}: {why}");
    if let Err(e) = tx.reply_with(status, vec![warning(why)], None).await {
        debug!(call_id = %call_id, "rejecting INVITE: {e}");
    }
}

async fn answer_invite(shared: Arc<Shared>, mut tx: Transaction) {
    let _counted = Counted::new(&shared.calls);
    // Read before `tx` is needed mutably, instead of cloning the request.
    let request = &tx.original;
    let call_id = call_id_of(request);
    let number = request.uri.user().unwrap_or_default().to_string();
    let from = request
        .from_header()
        .ok()
        .and_then(|h| h.uri().ok())
        .map(|uri| uri.to_string())
        .unwrap_or_default();
    let ladder = Ladder::new();
    ladder.set_call_id(&call_id);
    ladder.step(Label::T1, format!("INVITE {} from {from}", request.uri));

    let source = source_of(request);
    let offer = ChannelDescription::parse(&request.body);
    match source {
        Some(source) if source_allowed(&shared, source) => {}
        source => {
            let why = format!("source {source:?} may not call us");
            return reject(&mut tx, &call_id, StatusCode::Forbidden, &why).await;
        }
    }
    if !shared.settings.numbers.contains(&number) {
        let why = format!("{number:?} is not our number");
        return reject(&mut tx, &call_id, StatusCode::NotFound, &why).await;
    }
    let Some(handler) = shared.handler.clone() else {
        return reject(
            &mut tx,
            &call_id,
            StatusCode::TemporarilyUnavailable,
            "no handler for calls",
        )
        .await;
    };
    let offer = match offer {
        Ok(offer) if offer.setup != Setup::Passive => offer,
        Ok(_) => {
            let why = "the offer is passive: we only listen";
            return reject(&mut tx, &call_id, StatusCode::NotAcceptableHere, why).await;
        }
        Err(e) => {
            return reject(
                &mut tx,
                &call_id,
                StatusCode::NotAcceptableHere,
                &e.to_string(),
            )
            .await;
        }
    };
    let over = if offer.tls { "TCP/TLS" } else { "TCP" };
    ladder.step(
        Label::T3,
        format!("offer: smtp over {over} from {}", offer.address),
    );
    let tls = match (offer.tls, &shared.identity, offer.fingerprint) {
        (false, _, _) => None,
        (true, Some(identity), Some(fingerprint)) => Some((identity, fingerprint)),
        (true, _, _) => {
            let why = "TCP/TLS offered but channel_tls is off";
            return reject(&mut tx, &call_id, StatusCode::NotAcceptableHere, why).await;
        }
    };
    let stack = &shared.stack;
    let signalling = Signalling::of(&tx);
    if shared.settings.require_tls && signalling.transport != SipTransport::Tls {
        let why = format!("require_tls: the INVITE came over {}", signalling.transport);
        return reject(&mut tx, &call_id, StatusCode::Forbidden, &why).await;
    }
    let transport = signalling.transport;
    let (state_sender, mut states) = stack.dialogs.new_dialog_state_channel();
    let dialog = match stack.dialogs.get_or_create_server_invite(
        &tx,
        state_sender,
        None,
        Some(stack.contact(&number, transport)),
    ) {
        Ok(dialog) => dialog,
        Err(e) => {
            warn!(call_id = %call_id, "cannot make the dialog: {e}");
            return reject(
                &mut tx,
                &call_id,
                StatusCode::ServerInternalError,
                "no dialog",
            )
            .await;
        }
    };
    let dialog_id = dialog.id();
    // Runs the INVITE transaction: 100, our answers, then ACK or CANCEL.
    let mut invite_dialog = dialog.clone();
    let invite = tokio::spawn(async move { invite_dialog.handle(&mut tx).await });
    ladder.step(Label::R1, "100 Trying");
    // In-dialog requests (the caller's BYE) step into the same ladder.
    let known = shared.know_ladder(&call_id, &ladder);

    match ring(&dialog, &ladder) {
        Err(e) => warn!(call_id = %call_id, "cannot ring: {e}"),
        Ok(()) => {
            let admitted = tokio::select! {
                admission = handler.admit(&number, &from) => Some(admission),
                () = until_ended(&mut states, &ladder) => None,
            };
            match admitted {
                None => info!(call_id = %call_id, "the caller gave up while ringing"),
                Some(Admission::Answer) => {
                    let call = Answered {
                        shared: &shared,
                        dialog: &dialog,
                        call_id: &call_id,
                        number,
                        from,
                        ladder: ladder.clone(),
                        bye_answered: known.bye_answered.clone(),
                    };
                    let peers = signalling.channel_peers(offer.address, tls.is_some());
                    call.run(handler, &peers, tls, &mut states).await;
                }
                Some(Admission::Busy(why)) => refuse(&dialog, &call_id, StatusCode::BusyHere, why),
                Some(Admission::Unavailable(why)) => {
                    refuse(&dialog, &call_id, StatusCode::TemporarilyUnavailable, why)
                }
            }
        }
    }
    stack.dialogs.remove_dialog(&dialog_id);
    // The transaction waits for a late ACK or a CANCEL only briefly.
    let abort = invite.abort_handle();
    if tokio::time::timeout(std::time::Duration::from_secs(2), invite)
        .await
        .is_err()
    {
        abort.abort();
    }
}

/// How an INVITE reached us: the transport, and the peer at its end.
struct Signalling {
    transport: SipTransport,
    /// The other end of the connection (or the datagram's source).
    peer: Option<IpAddr>,
}

impl Signalling {
    fn of(tx: &Transaction) -> Signalling {
        let connection = tx.connection.as_ref();
        Signalling {
            transport: connection
                .and_then(|c| c.get_addr().r#type)
                .unwrap_or(SipTransport::Udp),
            peer: connection
                .and_then(|c| c.get_remote_addr())
                .and_then(|remote| match remote.addr.host {
                    rsipstack::sip::Host::IpAddr(ip) => Some(ip),
                    rsipstack::sip::Host::Domain(_) => None,
                }),
        }
    }

    /// Where the caller's channel connection may come from: the address its
    /// offer names and, behind NAT, the address its signalling came from.
    ///
    /// The second is allowed only when the INVITE came over TLS and the
    /// channel is TLS too: the offer's fingerprint then reached us
    /// unchanged, and whoever connects must prove it holds that
    /// certificate's key, so a connection from the signalling peer's
    /// address is the caller (a NAT rewrote its address), not someone who
    /// raced it to our port. Over plain UDP/TCP anyone on the path could
    /// swap the fingerprint, so the offer's address is the only one taken.
    fn channel_peers(&self, offered: IpAddr, channel_tls: bool) -> Vec<IpAddr> {
        let mut peers = vec![offered];
        if let (SipTransport::Tls, true, Some(peer)) = (self.transport, channel_tls, self.peer) {
            if peer.to_canonical() != offered.to_canonical() {
                peers.push(peer);
            }
        }
        peers
    }
}

/// R1 180.
fn ring(dialog: &InviteDialog, ladder: &Ladder) -> Result<(), String> {
    dialog.ringing(None, None).map_err(|e| e.to_string())?;
    ladder.step(Label::R1, "180 Ringing");
    Ok(())
}

/// Refuses a call that is ringing.
fn refuse(dialog: &InviteDialog, call_id: &str, status: StatusCode, why: String) {
    info!(call_id = %call_id, "R2 {status}: {why}");
    if let Err(e) = dialog.reject(Some(status), Some(why)) {
        debug!(call_id = %call_id, "refusing: {e}");
    }
}

/// A call we answer: the channel listener, the 200, the session.
struct Answered<'a> {
    shared: &'a Shared,
    dialog: &'a InviteDialog,
    call_id: &'a str,
    number: String,
    from: String,
    ladder: Ladder,
    bye_answered: Arc<tokio::sync::Notify>,
}

impl Answered<'_> {
    /// `callers` are the addresses the channel may come from (see
    /// `Signalling::channel_peers`); `tls` our identity and the fingerprint
    /// the caller must show.
    async fn run(
        self,
        handler: Arc<dyn CallHandler>,
        callers: &[IpAddr],
        tls: Option<(&ChannelIdentity, [u8; 32])>,
        states: &mut DialogStateReceiver,
    ) {
        let (shared, dialog, call_id) = (self.shared, self.dialog, self.call_id);
        let listener = match shared
            .ports
            .listen(shared.settings.channel_bind_address())
            .await
        {
            Ok(listener) => listener,
            Err(e) => {
                warn!(call_id = %call_id, "{e}");
                let status = StatusCode::ServiceUnavailable;
                return refuse(dialog, call_id, status, e.to_string());
            }
        };
        // The listener's port at the address peers reach us on (NAT).
        let reached_at =
            SocketAddr::new(shared.settings.sdp_address(), listener.local_addr().port());
        let answer = ChannelDescription::answer(reached_at, tls.map(|(i, _)| i.fingerprint));
        let accepted = dialog.accept(
            Some(vec![Header::ContentType("application/sdp".into())]),
            Some(answer.to_sdp(crate::caller::rand_session_id()).into_bytes()),
        );
        if let Err(e) = accepted {
            return warn!(call_id = %call_id, "cannot answer: {e}");
        }
        let ladder = self.ladder;
        ladder.step(Label::R2, "200 OK");
        ladder.step(
            Label::R3,
            format!("answer: smtp at {} (setup:passive)", answer.socket_addr()),
        );

        // The caller's channel may arrive before its ACK: accept at once.
        let timeout = shared.settings.channel_accept_timeout();
        let accepted = tokio::select! {
            accepted = listener.accept(callers, tls, timeout) => Some(accepted),
            () = until_ended(states, &ladder) => None,
        };
        match accepted {
            None => info!(call_id = %call_id, "call ended before the channel opened"),
            Some(Err(e)) => {
                warn!(call_id = %call_id, "channel: {e}");
                hang_up(&shared.stack, dialog, &ladder, "no channel").await;
            }
            Some(Ok(channel)) => {
                let info = CallInfo {
                    call_id: call_id.to_string(),
                    number: self.number,
                    from: self.from,
                    peer: channel.peer(),
                    ladder,
                };
                let bye_answered = &self.bye_answered;
                run_session(shared, handler, channel, info, dialog, states, bye_answered).await;
            }
        }
    }
}

/// How long a session may go on once the caller has hung up.
const SESSION_AFTER_BYE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the callee waits for the caller's BYE after the session.
const BYE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

async fn run_session(
    shared: &Shared,
    handler: Arc<dyn CallHandler>,
    channel: Channel,
    info: CallInfo,
    dialog: &InviteDialog,
    states: &mut DialogStateReceiver,
    bye_answered: &tokio::sync::Notify,
) {
    let call_id = info.call_id.clone();
    let ladder = info.ladder.clone();
    ladder.step(Label::T4, format!("channel opened from {}", channel.peer()));
    ladder.step(Label::T5, "session running");
    let session = tokio::time::timeout(
        shared.settings.session_timeout(),
        handler.handle(channel, info.clone()),
    );
    tokio::pin!(session);
    let caller_hung_up = tokio::select! {
        // The caller ends the call (S7) once its session is over: give its
        // BYE a moment before hanging up ourselves, so that the two ends do
        // not both send BYE.
        _ = &mut session => {
            tokio::time::timeout(BYE_GRACE, until_ended(states, &ladder))
                .await
                .is_ok()
        }
        // A BYE does not cut the handler short at once: the caller closed
        // the channel first, so the handler sees its end and finishes what
        // it received. One still waiting for more is ended with the call.
        () = until_ended(states, &ladder) => {
            match tokio::time::timeout(SESSION_AFTER_BYE, &mut session).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => warn!(call_id = %call_id, "session timed out"),
                Err(_) => info!(call_id = %call_id, "the caller hung up: session ended"),
            }
            true
        }
    };
    ladder.step(Label::T6, "channel closed");
    let bye_seen = ladder.rungs().iter().any(|rung| rung.label == Label::T7);
    if caller_hung_up {
        // The dialog ends as the caller's BYE is answered: let that answer
        // (R4) reach the ladder first.
        if bye_seen {
            let _ = tokio::time::timeout(BYE_GRACE, bye_answered.notified()).await;
        }
    } else {
        hang_up(&shared.stack, dialog, &ladder, "session done").await;
    }
    handler.ended(&info);
}

/// Records the ACK and returns when the dialog ends (BYE, CANCEL, timeout).
async fn until_ended(states: &mut DialogStateReceiver, ladder: &Ladder) {
    while let Some(state) = states.recv().await {
        match state {
            DialogState::Confirmed(..) => ladder.step(Label::T2, "ACK received"),
            DialogState::Terminated(_, reason) => {
                debug!(call_id = %ladder.call_id(), "dialog ended: {reason:?}");
                return;
            }
            _ => {}
        }
    }
}

async fn hang_up(stack: &Stack, dialog: &InviteDialog, ladder: &Ladder, reason: &str) {
    if matches!(dialog.state(), DialogState::Terminated(..)) {
        return;
    }
    let call_id = ladder.call_id();
    ladder.step(Label::T7, format!("BYE ({reason})"));
    match stack.unless_stopped(dialog.bye()).await {
        Some(Ok(())) => ladder.step(Label::R4, "BYE answered"),
        Some(Err(e)) => warn!(call_id = %call_id, "BYE failed: {e}"),
        None => info!(call_id = %call_id, "R4 not awaited: the user agent stopped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite_with_via(via: &str) -> Request {
        let text = format!(
            "INVITE sip:1@127.0.0.1 SIP/2.0\r\nVia: {via}\r\nFrom: <sip:a@x>;tag=1\r\n\
             To: <sip:1@127.0.0.1>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n"
        );
        Request::try_from(text.as_str()).unwrap()
    }

    #[test]
    fn the_source_is_received_else_the_via_host() {
        let cases = [
            ("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1", "10.0.0.1"),
            (
                "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1;received=192.0.2.7",
                "192.0.2.7",
            ),
            ("SIP/2.0/TCP [::1]:5060;branch=z9hG4bK1", "::1"),
        ];
        for (via, expected) in cases {
            let source = source_of(&invite_with_via(via));
            assert_eq!(source, Some(expected.parse().unwrap()), "{via}");
        }
        assert_eq!(
            source_of(&invite_with_via("SIP/2.0/UDP host.example;branch=z9hG4bK1")),
            None
        );
    }
}

//! The callee (UAS) policy: answers INVITEs for our numbers from allowed
//! sources with 180 and a 200 naming a channel listener, hands the channel
//! to the handler (on the application's runtime), and ends the call with
//! BYE; the protocol under it is `uas`'s. Also answers the requests that
//! reach rsipstack outside our calls (OPTIONS, stray BYE, …).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rsipstack::sip::{
    Header, HeadersExt, Method, Request, StatusCode, Transport as SipTransport, Uri,
};
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transaction::TransactionReceiver;
use rsipstack::transport::stream::StreamConnection;
use rsipstack::transport::SipConnection;
use tracing::{debug, info, warn};

use crate::ladder::Label;
use crate::screen::{self, Framing};
use crate::sdp::{ChannelDescription, Setup};
use crate::stack::ip_of;
use crate::tls::ChannelIdentity;
use crate::transports::for_stack;
use crate::uas::{contact_value, Arrival, Ending, Path, ServerInvite};
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

/// Answers each new call in a task of its own.
pub(crate) fn answer_calls(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    shared.stack.answering.on_call(move |invite| {
        // Gone: the user agent is dropped, and the invite with it is refused.
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let counted = Counted::new(&shared.tasks);
        tokio::spawn(async move {
            answer_invite(shared, invite).await;
            drop(counted);
        });
    });
}

/// A request rsipstack made a transaction of: not one of the calls we
/// answer (`uas` took those), except on a connection rsipstack serves
/// itself (TCP ones we opened), whose requests reach us only here.
async fn dispatch(shared: Arc<Shared>, mut tx: Transaction) {
    let answering = &shared.stack.answering;
    if let Some(SipConnection::Tcp(connection)) = &tx.connection {
        let arrival = Arrival {
            transport: SipTransport::Tcp,
            peer: connection
                .get_remote_addr()
                .get_socketaddr()
                .unwrap_or(UNKNOWN_PEER),
            path: Path::Stack(SipConnection::Tcp(connection.clone())),
            connection: SipConnection::Tcp(connection.clone()),
        };
        // Read again as the transports read what they receive themselves.
        let text = tx.original.to_string();
        let passed = screen::check(text.as_bytes(), Framing::Stream, arrival.peer);
        if let Ok(Ok(None)) = passed.map(|passed| for_stack(&passed, &arrival, answering)) {
            return;
        }
    }
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
        Method::Options => answer_options(&mut tx).await,
        Method::Ack => return,
        // In-dialog requests for a dialog we do not have (RFC 3261 §12.2.2),
        // and a CANCEL or BYE of nothing we know.
        _ if has_to_tag => tx.reply(StatusCode::CallTransactionDoesNotExist).await,
        Method::Bye | Method::Cancel => tx.reply(StatusCode::CallTransactionDoesNotExist).await,
        // One `uas` could not tell apart (it needs Call-ID, From tag, CSeq).
        Method::Invite => tx.reply(StatusCode::BadRequest).await,
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

/// For a connection that cannot say its peer.
const UNKNOWN_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

fn allow() -> Header {
    Header::Other("Allow".into(), screen::allow_header().into())
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

/// Refuses a call with `status` and a Warning saying why.
fn reject(invite: &ServerInvite, status: StatusCode, why: &str) {
    info!(call_id = %invite.call_id(), "R2 {status}: {why}");
    invite.refuse(status, why, &[]);
}

async fn answer_invite(shared: Arc<Shared>, invite: ServerInvite) {
    let _counted = Counted::new(&shared.calls);
    let request = &invite.request;
    let number = request.number.clone();
    let from = request.from.clone();
    let ladder = invite.ladder().clone();
    ladder.step(Label::T1, format!("INVITE {} from {from}", request.uri));

    // Where the INVITE came from (a proxy, through one), not what its Via says.
    let source = invite.peer.ip();
    if !source_allowed(&shared, source) {
        let why = format!("source {source} may not call us");
        return reject(&invite, StatusCode::Forbidden, &why);
    }
    if !shared.settings.numbers.contains(&number) {
        let why = format!("{number:?} is not our number");
        return reject(&invite, StatusCode::NotFound, &why);
    }
    let Some(handler) = shared.handler.clone() else {
        let status = StatusCode::TemporarilyUnavailable;
        return reject(&invite, status, "no handler for calls");
    };
    let offer = match ChannelDescription::parse(request.body()) {
        Ok(offer) if offer.setup != Setup::Passive => offer,
        Ok(_) => {
            let why = "the offer is passive: we only listen";
            return reject(&invite, StatusCode::NotAcceptableHere, why);
        }
        Err(e) => return reject(&invite, StatusCode::NotAcceptableHere, &e.to_string()),
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
            return reject(&invite, StatusCode::NotAcceptableHere, why);
        }
    };
    let signalling = Signalling::of(&invite);
    if shared.settings.require_tls && signalling.transport != SipTransport::Tls {
        let why = format!("require_tls: the INVITE came over {}", signalling.transport);
        return reject(&invite, StatusCode::Forbidden, &why);
    }
    let contact = shared.stack.contact(&number, signalling.transport);
    let contact_value = contact_value(&contact);
    if !invite.ring(&contact_value) {
        return info!(call_id = %invite.call_id(), "the caller gave up before ringing");
    }
    ladder.step(Label::R1, "180 Ringing");
    let admitted = tokio::select! {
        admission = handler.admit(&number, &from) => Some(admission),
        _ = invite.ended() => None,
    };
    match admitted {
        None => info!(call_id = %invite.call_id(), "the caller gave up while ringing"),
        Some(Admission::Answer) => {
            let call = Answered {
                shared: &shared,
                invite: &invite,
                contact,
                contact_value,
                number,
                from,
            };
            let peers = signalling.channel_peers(offer.address, tls.is_some());
            call.run(handler, &peers, tls).await;
        }
        Some(Admission::Busy(why)) => reject(&invite, StatusCode::BusyHere, &why),
        Some(Admission::Unavailable(why)) => {
            reject(&invite, StatusCode::TemporarilyUnavailable, &why)
        }
    }
}

/// How an INVITE reached us: the transport, and the peer at its end.
struct Signalling {
    transport: SipTransport,
    /// The other end of the connection (or the datagram's source).
    peer: IpAddr,
}

impl Signalling {
    fn of(invite: &ServerInvite) -> Signalling {
        Signalling {
            transport: invite.transport,
            peer: invite.peer.ip(),
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
        if let (SipTransport::Tls, true) = (self.transport, channel_tls) {
            if self.peer.to_canonical() != offered.to_canonical() {
                peers.push(self.peer);
            }
        }
        peers
    }
}

/// A call we answer: the channel listener, the 200, the session.
struct Answered<'a> {
    shared: &'a Shared,
    invite: &'a ServerInvite,
    /// Our Contact in this call, and as its header value.
    contact: Uri,
    contact_value: String,
    number: String,
    from: String,
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
    ) {
        let (shared, invite) = (self.shared, self.invite);
        let call_id = invite.call_id();
        let listener = match shared
            .ports
            .listen(shared.settings.channel_bind_address())
            .await
        {
            Ok(listener) => listener,
            Err(e) => {
                warn!(call_id = %call_id, "{e}");
                return reject(invite, StatusCode::ServiceUnavailable, &e.to_string());
            }
        };
        // The listener's port at the address peers reach us on (NAT).
        let reached_at =
            SocketAddr::new(shared.settings.sdp_address(), listener.local_addr().port());
        let answer = ChannelDescription::answer(reached_at, tls.map(|(i, _)| i.fingerprint));
        let sdp = answer.to_sdp(crate::caller::rand_session_id());
        if !invite.accept(&self.contact_value, sdp.as_bytes()) {
            return info!(call_id = %call_id, "the caller gave up before the answer");
        }
        let ladder = invite.ladder();
        ladder.step(Label::R2, "200 OK");
        ladder.step(
            Label::R3,
            format!("answer: smtp at {} (setup:passive)", answer.socket_addr()),
        );

        // The caller's channel may arrive before its ACK: accept at once.
        let timeout = shared.settings.channel_accept_timeout();
        let accepted = tokio::select! {
            accepted = listener.accept(callers, tls, timeout) => Ok(accepted),
            ending = invite.ended() => Err(ending),
        };
        match accepted {
            Err(Ending::NoAck) => {
                warn!(call_id = %call_id, "no ACK to our 200");
                hang_up(shared, invite, &self.contact, "no ACK").await;
            }
            Err(_) => info!(call_id = %call_id, "call ended before the channel opened"),
            Ok(Err(e)) => {
                warn!(call_id = %call_id, "channel: {e}");
                hang_up(shared, invite, &self.contact, "no channel").await;
            }
            Ok(Ok(channel)) => {
                let info = CallInfo {
                    call_id: call_id.to_string(),
                    number: self.number,
                    from: self.from,
                    peer: channel.peer(),
                    ladder: ladder.clone(),
                };
                // Boxed, as our BYE is (`hang_up`): each call's task was 13 KB
                // with both inline, copied and allocated at every INVITE;
                // the session's state is made only once a channel opened.
                Box::pin(run_session(
                    shared,
                    handler,
                    channel,
                    info,
                    invite,
                    &self.contact,
                ))
                .await;
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
    invite: &ServerInvite,
    contact: &Uri,
) {
    let call_id = info.call_id.clone();
    let ladder = info.ladder.clone();
    ladder.step(Label::T4, format!("channel opened from {}", channel.peer()));
    ladder.step(Label::T5, "session running");
    // On the application's runtime; cancelled when given up on.
    let session = tokio::time::timeout(
        shared.settings.session_timeout(),
        handler.handle(channel, info.clone()),
    );
    let mut session = Session(shared.sessions.spawn(session));
    let ending = tokio::select! {
        // The caller ends the call (S7) once its session is over: give its
        // BYE a moment before hanging up ourselves, so that the two ends do
        // not both send BYE.
        _ = &mut session.0 => tokio::time::timeout(BYE_GRACE, invite.ended()).await.ok(),
        // A BYE does not cut the handler short at once: the caller closed
        // the channel first, so the handler sees its end and finishes what
        // it received. One still waiting for more is ended with the call.
        ending = invite.ended() => {
            match tokio::time::timeout(SESSION_AFTER_BYE, &mut session.0).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(_))) => warn!(call_id = %call_id, "session timed out"),
                Ok(Err(e)) => warn!(call_id = %call_id, "session failed: {e}"),
                Err(_) => info!(call_id = %call_id, "the caller hung up: session ended"),
            }
            Some(ending)
        }
    };
    ladder.step(Label::T6, "channel closed");
    // The caller's BYE was answered as it came (R4 is in the ladder).
    if ending != Some(Ending::Bye) {
        hang_up(shared, invite, contact, "session done").await;
    }
    drop(session);
    shared.sessions.spawn(async move { handler.ended(&info) });
}

/// A session running on the application's runtime, stopped when dropped.
struct Session(tokio::task::JoinHandle<Result<(), tokio::time::error::Elapsed>>);

impl Drop for Session {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// T7 our BYE, R4 its answer.
async fn hang_up(shared: &Shared, invite: &ServerInvite, contact: &Uri, reason: &str) {
    let call_id = invite.call_id();
    let ladder = invite.ladder();
    ladder.step(Label::T7, format!("BYE ({reason})"));
    invite.end();
    let stack = &shared.stack;
    match stack
        .unless_stopped(Box::pin(invite.bye(&stack.inner(), contact)))
        .await
    {
        Some(Ok(())) => ladder.step(Label::R4, "BYE answered"),
        Some(Err(e)) => warn!(call_id = %call_id, "BYE failed: {e}"),
        None => info!(call_id = %call_id, "R4 not awaited: the user agent stopped"),
    }
}

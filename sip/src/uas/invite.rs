//! A call as the callee answers it: 180, 200 or a refusal, the end of
//! the call, and our BYE.

use std::net::SocketAddr;
use std::sync::Arc;

use rsipstack::sip::{
    Header, HeadersExt, Method, Request, SipMessage, StatusCode, ToTypedHeader,
    Transport as SipTransport, Uri, Version,
};
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::{SipAddr, SipConnection};

use super::answer::{address, header_params, param, warning, Extra, SERVER};
use super::{Answering, Ending, Phase, ServerCall};
use crate::ladder::Ladder;
use crate::screen::{self, Passed};

/// An INVITE as the callee reads it: its Request-URI and the number in
/// it (parsed as rsipstack parses it), the address in its From, its body. The rest is parsed only
/// for our BYE (its Contact, its route set), and most calls end with the
/// caller's: a whole parse per call cost about a tenth of the callee's CPU.
pub(crate) struct Invite {
    /// The Request-URI as it came.
    pub uri: String,
    /// Its user part: the number called.
    pub number: String,
    /// The URI in From, as it came.
    pub from: String,
    /// The message as rsipstack reads it (`Passed::readable`), body last.
    message: Vec<u8>,
    body_len: usize,
}

impl Invite {
    /// Reads what `passed` says; refused as rsipstack's parser refuses a
    /// Request-URI (the only part of a request the screen lets through
    /// that it may not read).
    pub fn read(passed: &Passed) -> Result<Invite, String> {
        let uri = passed.request_uri();
        let parsed = Uri::try_from(uri).map_err(|e| e.to_string())?;
        let from = passed.value("from").map(address).unwrap_or_default();
        Ok(Invite {
            uri: uri.to_string(),
            number: parsed.user().unwrap_or_default().to_string(),
            from: from.to_string(),
            message: passed.readable().into_owned(),
            body_len: passed.body().len(),
        })
    }

    pub fn body(&self) -> &[u8] {
        &self.message[self.message.len() - self.body_len..]
    }

    /// The whole INVITE, parsed by rsipstack.
    fn request(&self) -> Result<Request, String> {
        match SipMessage::try_from(&self.message[..]) {
            Ok(SipMessage::Request(request)) => Ok(request),
            Ok(SipMessage::Response(_)) => Err("the INVITE reads as a response".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A call for the callee to answer: the INVITE, and how to answer it.
/// Dropped before its final answer, it answers 500.
pub(crate) struct ServerInvite {
    pub(super) answering: Arc<Answering>,
    pub(super) call: Arc<ServerCall>,
    pub(super) ladder: Ladder,
    pub request: Invite,
    /// The transport it came over, and its source.
    pub transport: SipTransport,
    pub peer: SocketAddr,
    /// rsipstack's connection it came on, for our BYE.
    pub connection: SipConnection,
}

impl ServerInvite {
    pub fn ladder(&self) -> &Ladder {
        &self.ladder
    }

    pub fn call_id(&self) -> &str {
        &self.call.key.call_id
    }

    /// Our tag: the dialog's local tag.
    pub fn tag(&self) -> &str {
        &self.call.to_tag
    }

    /// 180 with our Contact (`contact_value`), unless the call ended
    /// (CANCEL) or has its final answer.
    pub fn ring(&self, contact: &str) -> bool {
        let mut state = self.call.lock();
        if state.phase != Phase::Proceeding {
            return false;
        }
        let extra = [("Contact", contact)];
        self.call
            .answer(&mut state, StatusCode::Ringing, &extra, None);
        true
    }

    /// 200 with our Contact (`contact_value`) and the SDP answer, retransmitted until the ACK;
    /// false when the call ended first (CANCEL, BYE).
    pub fn accept(&self, contact: &str, sdp: &[u8]) -> bool {
        let mut state = self.call.lock();
        if state.phase != Phase::Proceeding {
            return false;
        }
        let extra = [("Contact", contact), ("Allow", screen::allow_header())];
        let body = Some(("application/sdp", sdp));
        self.call.answer(&mut state, StatusCode::OK, &extra, body);
        self.call.set_phase(&mut state, Phase::Accepted);
        drop(state);
        self.answering.await_ack(&self.call);
        true
    }

    /// A final refusal with a Warning saying why, unless the call ended or
    /// has its final answer already.
    pub fn refuse(&self, status: StatusCode, why: &str, extra: &[Extra]) {
        let mut state = self.call.lock();
        if state.phase != Phase::Proceeding {
            return;
        }
        let warning = warning(why);
        let mut headers = vec![("Warning", warning.as_str())];
        headers.extend_from_slice(extra);
        self.call.answer(&mut state, status, &headers, None);
        self.call
            .set_phase(&mut state, Phase::Refused(Ending::Ours));
        drop(state);
        self.answering.await_ack(&self.call);
    }

    /// Whether the call is over, and how (for the callee, a CANCEL's 487
    /// still awaiting its ACK is over).
    pub fn ending(&self) -> Option<Ending> {
        match self.call.lock().phase {
            Phase::Refused(ending) | Phase::Ended(ending) => Some(ending),
            _ => None,
        }
    }

    /// Returns when the call is over (BYE, CANCEL, no ACK), saying how.
    pub async fn ended(&self) -> Ending {
        loop {
            let changed = self.call.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(ending) = self.ending() {
                return ending;
            }
            changed.await;
        }
    }

    /// Ends an answered call from our side (we send BYE): from now on its
    /// requests are answered as those of an ended call.
    pub fn end(&self) {
        let mut state = self.call.lock();
        if !matches!(state.phase, Phase::Accepted | Phase::Confirmed) {
            return;
        }
        self.call.set_phase(&mut state, Phase::Ended(Ending::Ours));
        drop(state);
        let linger = self.answering.linger(&self.call);
        self.answering.forget_after(&self.call, linger);
    }
}

impl ServerInvite {
    /// Our BYE (§15.1.1), to the caller's Contact through the INVITE's
    /// Record-Route, over the stream the INVITE came on if any; as from
    /// `local` (our Contact). Returns once it is answered.
    pub async fn bye(&self, endpoint: &EndpointInnerRef, local: &Uri) -> Result<(), String> {
        let request = self.request.request()?;
        let target = request
            .typed_contact_headers()
            .map_err(|e| e.to_string())?
            .first()
            .map(|contact| contact.uri.clone())
            .ok_or("the INVITE had no Contact")?;
        let via = endpoint
            .get_via(
                Some(SipAddr {
                    r#type: Some(self.transport),
                    addr: local.host_with_port.clone(),
                }),
                None,
            )
            .map_err(|e| e.to_string())?;
        let mut headers = vec![Header::Via(via.into())];
        for header in request.headers.iter() {
            let value = header.value();
            match header {
                // The dialog's ends swap: their From is our To, and ours
                // is their To with our tag.
                Header::From(_) => headers.push(Header::To(value.to_string().into())),
                Header::To(_) if param(header_params(value), "tag").is_none() => {
                    let from = format!("{value};tag={}", self.tag());
                    headers.push(Header::From(from.into()));
                }
                Header::To(_) => headers.push(Header::From(value.to_string().into())),
                Header::CallId(_) => headers.push(Header::CallId(value.to_string().into())),
                // The route set, in order (§12.1.1).
                Header::RecordRoute(_) => headers.push(Header::Route(value.to_string().into())),
                _ => {}
            }
        }
        headers.push(Header::CSeq("1 BYE".to_string().into()));
        headers.push(Header::MaxForwards(70.into()));
        headers.push(Header::UserAgent(SERVER.to_string().into()));
        let bye = Request {
            method: Method::Bye,
            uri: target,
            version: Version::V2,
            headers: headers.into(),
            body: Vec::new(),
        };
        let key = TransactionKey::from_request(&bye, TransactionRole::Client)
            .map_err(|e| e.to_string())?;
        let affinity = (self.transport != SipTransport::Udp).then(|| self.connection.clone());
        let mut tx = Transaction::new_client(key, bye, endpoint.clone(), affinity);
        if let Some(route) = tx.original.route_header() {
            if let Ok(route) = route.typed() {
                tx.destination = SipAddr::try_from(&route.uri).ok();
            }
        }
        tx.send().await.map_err(|e| e.to_string())?;
        while let Some(message) = tx.receive().await {
            if let SipMessage::Response(response) = message {
                if response.status_code.code() >= 200 {
                    // Any final answer ends the call: a 481 says the caller
                    // had ended it already (§15.1.1).
                    return Ok(());
                }
            }
        }
        Err("no answer to our BYE".into())
    }
}

/// Our Contact, in `<>`: its URI's parameters (`;transport=tls`) would be
/// the header's without them (RFC 3261 §20.10).
pub(crate) fn contact_value(contact: &Uri) -> String {
    format!("<{contact}>")
}

impl Drop for ServerInvite {
    fn drop(&mut self) {
        // Every INVITE gets a final answer, even from a callee that stopped.
        self.refuse(StatusCode::ServerInternalError, "the call was dropped", &[]);
        self.end();
    }
}

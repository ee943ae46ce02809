//! The SMTP listener: one task per connection, driving a
//! [`Session`](crate::smtp::session::Session) over TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::listener::Listener;
use super::Shared;
use crate::queue::spool::{Envelope, MessageId};
use crate::smtp::reply::Reply;
use crate::smtp::session::{Accepted, CommitError, Session, Step};

/// Serves SMTP on `listener` forever; a session beyond `max_sessions` is
/// told `421` and closed.
pub async fn listen(listener: TcpListener, shared: Arc<Shared>) {
    let refusal = Reply::new(
        421,
        "4.3.2",
        format!("{} Too many connections, try later", shared.policy.hostname),
    );
    let listener = Listener::new(
        listener,
        shared.config.server.max_sessions,
        refusal.to_string().into_bytes(),
        "SMTP",
    );
    listener
        .run(|stream, peer| {
            let shared = shared.clone();
            shared.metrics.session("smtp");
            async move { connection(stream, peer, &shared).await }
        })
        .await;
}

async fn connection(stream: TcpStream, peer: SocketAddr, shared: &Shared) -> std::io::Result<()> {
    let mut session = Session::new(shared.policy.clone(), peer.ip());
    let mut stream = stream;
    stream
        .write_all(session.greeting().to_string().as_bytes())
        .await?;
    let Some(stream) = drive(&mut session, stream, peer, shared).await? else {
        return Ok(());
    };
    // STARTTLS: the same session goes on over TLS (it refuses a second one).
    let Some(acceptor) = &shared.tls else {
        return Ok(());
    };
    let timeout = Duration::from_secs(shared.config.server.command_timeout_secs.into());
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::info!(%peer, "TLS handshake failed: {error}");
            return Ok(());
        }
        Err(_) => return Ok(()),
    };
    session.tls_started();
    drive(&mut session, tls, peer, shared).await?;
    Ok(())
}

/// Runs `session` over `stream` until it ends (`None`) or asks for TLS
/// (the stream is handed back for the handshake).
pub async fn drive<S>(
    session: &mut Session,
    mut stream: S,
    peer: SocketAddr,
    shared: &Shared,
) -> std::io::Result<Option<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let command_timeout = Duration::from_secs(shared.config.server.command_timeout_secs.into());
    let data_timeout = Duration::from_secs(shared.config.server.data_timeout_secs.into());
    let mut buffer = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        match session.step(&mut out) {
            Step::NeedInput => {
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
                let timeout = if session.in_data() {
                    data_timeout
                } else {
                    command_timeout
                };
                match tokio::time::timeout(timeout, stream.read(&mut buffer)).await {
                    Ok(Ok(0)) => return Ok(None),
                    Ok(Ok(read)) => session.feed(&buffer[..read]),
                    Ok(Err(error)) => return Err(error),
                    Err(_) => {
                        let reply = Reply::new(
                            421,
                            "4.4.2",
                            format!("{} Error: timeout exceeded", shared.policy.hostname),
                        );
                        stream.write_all(reply.to_string().as_bytes()).await?;
                        return Ok(None);
                    }
                }
            }
            Step::Commit(accepted) => {
                let synchronous = accepted.synchronous;
                let recipients = accepted
                    .recipients
                    .iter()
                    .map(|r| r.address.clone())
                    .collect();
                let committed = commit(shared, peer, *accepted, synchronous).await;
                shared.metrics.message(committed.is_ok());
                if let Ok(id) = &committed {
                    session.note_queued(*id, recipients);
                }
                match committed {
                    Ok(id) if synchronous => {
                        let reply = wait_for_delivery(shared, id).await;
                        session.committed_reply(reply, &mut out);
                    }
                    result => session.committed(result, &mut out),
                }
            }
            Step::StartTls => {
                stream.write_all(&out).await?;
                stream.flush().await?;
                return Ok(Some(stream));
            }
            Step::Authenticate { login, password } => {
                let verdict = shared.auth.verify(peer.ip(), &login, &password).await;
                session.authenticated(verdict, &mut out);
            }
            Step::Close => {
                stream.write_all(&out).await?;
                let _ = stream.shutdown().await;
                return Ok(None);
            }
        }
    }
}

/// Synchronous mode: the message is tried now, and the client hears how
/// it went; after `synchronous_timeout_secs` it gets the usual `250` and
/// the message carries on in the queue.
async fn wait_for_delivery(shared: &Shared, id: MessageId) -> Reply {
    let queued = Reply::new(250, "2.0.0", format!("Ok: queued as {id}"));
    let (answer, answered) = tokio::sync::oneshot::channel();
    if shared
        .deliveries
        .send(super::Work::DeliverAndAnswer(id, answer))
        .is_err()
    {
        return queued;
    }
    let timeout = Duration::from_secs(shared.config.server.synchronous_timeout_secs.into());
    match tokio::time::timeout(timeout, answered).await {
        Ok(Ok(reply)) => reply,
        _ => {
            tracing::info!(%id, "synchronous delivery still running: answered 250");
            queued
        }
    }
}

/// S1: the message goes to disk (group commit) before its `250`, then to
/// the delivery scheduler (unless the client waits for it: synchronous).
async fn commit(
    shared: &Shared,
    peer: SocketAddr,
    accepted: Accepted,
    synchronous: bool,
) -> Result<MessageId, CommitError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let envelope = Envelope {
        mail_from: accepted.mail_from,
        recipients: accepted
            .recipients
            .iter()
            .map(|r| r.address.clone())
            .collect(),
        received_at: now.as_secs(),
        received_at_ms: now.as_millis() as u64,
        client_address: peer.ip().to_string(),
        helo: accepted.helo,
        envelope_id: accepted.envelope_id,
        return_full: accepted.return_full,
        notify: accepted.recipients.iter().map(|r| r.notify).collect(),
        original_recipients: accepted
            .recipients
            .iter()
            .map(|r| r.original.clone())
            .collect(),
    };
    let spool = shared.spool.clone();
    let message = accepted.message;
    let id = tokio::task::spawn_blocking(move || spool.enqueue(envelope, &message))
        .await
        .map_err(|e| CommitError::Interrupted(e.to_string()))??;
    tracing::info!(step = "S1", %id, client = %peer, "accepted");
    if !synchronous {
        let _ = shared.deliveries.send(super::Work::Deliver(id));
    }
    Ok(id)
}

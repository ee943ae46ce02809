//! The operator console: server-rendered pages of what became of the mail
//! (the patent's communication record, 【0005】) with each call's ladder
//! drawn, and `/metrics` for Prometheus. Served by the host's runtime with
//! axum on `[admin] listen`.
//!
//! Reading needs no login on loopback; from elsewhere it needs an
//! administrator (`access`), and such a listener needs TLS (`[admin] tls`,
//! with the SMTP server's certificate: the configuration refuses a
//! non-loopback address without it). Queue actions need a login as a
//! `[users.NAME]` with `admin = true`, a session cookie (`Secure` over
//! TLS) and the session's CSRF token in the form.

mod access;
mod listener;
mod pages;
mod session;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use crate::auth::{Authenticator, Verdict};
use crate::history::{self, AttemptOutcome, DeliveryPath, Filter};
use crate::metrics::{recent, Metrics};
use crate::policy::PolicyEngine;
use crate::queue::action::Action;
use crate::queue::spool::{MessageId, Spool};
use crate::server::control::{self, QueueControl};
use listener::{Client, Incoming};
pub use session::Sessions;
use session::{same_token, Session};

/// Rows on one page of the deliveries list.
const PAGE: usize = 50;

/// The console could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("[admin] listen = {address}: {error}")]
    Listen {
        address: SocketAddr,
        error: std::io::Error,
    },
}

/// What the pages read.
pub struct Console {
    pub metrics: Arc<Metrics>,
    pub spool: Arc<Spool>,
    pub data_dir: PathBuf,
    pub policy: Option<Arc<PolicyEngine>>,
    pub started: Instant,
    /// Checks console logins, with the same penalties as SMTP and POP3.
    pub auth: Arc<Authenticator>,
    /// The users who may log in (`admin = true`).
    pub admins: Vec<String>,
    /// Carries out the queue actions, as `mailcall queue` does.
    pub queue: QueueControl,
    pub sessions: Sessions,
    /// The SIP user agent, if `[sip]` is set: calls in progress and
    /// registrations.
    pub sip: Option<Arc<mailcall_sip::UserAgent>>,
}

impl Console {
    /// Whether `user` may use the console (`[users.NAME] admin = true`).
    fn is_admin(&self, user: &str) -> bool {
        self.admins.iter().any(|admin| admin == user)
    }
}

/// Binds `address` and returns the server to run: HTTPS with `tls`, else
/// HTTP (the configuration allows that on loopback only).
pub async fn bind(
    address: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    console: Console,
) -> Result<impl std::future::Future<Output = ()>, AdminError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| AdminError::Listen { address, error })?;
    let app = router(Arc::new(console));
    Ok(async move {
        let incoming = Incoming::new(listener, tls);
        let app = app.into_make_service_with_connect_info::<Client>();
        if let Err(error) = axum::serve(incoming, app).await {
            tracing::error!("the console stopped: {error}");
        }
    })
}

/// The SMTP server's TLS settings (its certificate), offering HTTP/1.1
/// by ALPN.
pub fn https(smtp: &tokio_rustls::TlsAcceptor) -> tokio_rustls::TlsAcceptor {
    let mut config = (**smtp.config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/events", get(events))
        .route("/deliveries", get(deliveries))
        .route("/deliveries/{id}", get(delivery))
        .route("/queue", get(queue))
        .route("/rules", get(rules))
        .route("/queue/act", post(act))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            access::readers,
        ))
        .with_state(console)
}

/// The gauges now.
fn now(console: &Console) -> crate::metrics::Now {
    crate::metrics::Now {
        queued: console.spool.unfinished_count(),
        states: console.spool.recipient_states(),
        calls_in_progress: console.sip.as_ref().map_or(0, |sip| sip.stats().calls),
    }
}

/// The overview's figures now.
fn current(console: &Console) -> pages::Overview {
    let generation = console
        .policy
        .as_ref()
        .map(|policy| policy.active().id.to_string());
    let counts: Vec<(DeliveryPath, [u64; 4])> = recent::PATHS
        .into_iter()
        .map(|path| {
            let count = |outcome| console.metrics.deliveries(path, outcome);
            (path, recent::OUTCOMES.map(count))
        })
        .collect();
    let now = recent::this_minute();
    pages::Overview {
        accepted: console.metrics.accepted(),
        counts,
        last_hour: console.metrics.recent.last_hour(now),
        series: console.metrics.recent.series(now),
        queued: console.spool.unfinished_count(),
        states: console.spool.recipient_states(),
        calls: console.sip.as_ref().map(|sip| sip.stats().calls),
        registrations: console
            .sip
            .as_ref()
            .map(|sip| sip.registrations())
            .unwrap_or_default(),
        generation,
        uptime_secs: console.started.elapsed().as_secs(),
    }
}

async fn overview(State(console): State<Arc<Console>>) -> Response {
    pages::overview(&current(&console)).into_response()
}

/// How often `/events` sends the overview's figures.
const LIVE_EVERY: Duration = Duration::from_secs(1);

/// Server-sent events: the overview's figures at once, then every second
/// while the page is open (the browser reconnects by itself if the
/// connection drops).
async fn events(
    State(console): State<Arc<Console>>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let figures = futures_util::stream::unfold(true, move |first| {
        let console = console.clone();
        async move {
            if !first {
                tokio::time::sleep(LIVE_EVERY).await;
            }
            let event = Event::default().data(current(&console).values().to_string());
            Some((Ok(event), false))
        }
    });
    Sse::new(figures).keep_alive(KeepAlive::default())
}

/// The deliveries list's filters, as the query string carries them.
#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default, deserialize_with = "empty_is_none")]
    path: Option<DeliveryPath>,
    #[serde(default, deserialize_with = "empty_is_none")]
    outcome: Option<AttemptOutcome>,
    #[serde(default)]
    rcpt: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    page: usize,
}

/// A form's empty choice (`path=`) means no filter.
fn empty_is_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Ok(None);
    }
    T::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(&text)).map(Some)
}

async fn deliveries(
    State(console): State<Arc<Console>>,
    Query(query): Query<ListQuery>,
) -> Response {
    let filter = Filter {
        path: query.path,
        outcome: query.outcome,
        recipient: query.rcpt.clone().filter(|r| !r.is_empty()),
        id: query.id.clone().filter(|i| !i.is_empty()),
    };
    let data_dir = console.data_dir.clone();
    let skip = query.page.saturating_mul(PAGE);
    let read = {
        let filter = filter.clone();
        tokio::task::spawn_blocking(move || history::newest(&data_dir, &filter, skip, PAGE)).await
    };
    match read {
        Ok(Ok((attempts, more))) => {
            pages::deliveries(&filter, query.page, &attempts, more).into_response()
        }
        Ok(Err(error)) => failure(format!("cannot read the history: {error}")),
        Err(error) => failure(format!("cannot read the history: {error}")),
    }
}

async fn delivery(State(console): State<Arc<Console>>, Path(id): Path<String>) -> Response {
    let data_dir = console.data_dir.clone();
    let filter = Filter {
        id: Some(id.clone()),
        ..Filter::default()
    };
    // Every attempt of the message, oldest first.
    let read =
        tokio::task::spawn_blocking(move || history::newest(&data_dir, &filter, 0, usize::MAX))
            .await;
    let queued = u64::from_str_radix(&id, 16)
        .ok()
        .and_then(|number| console.spool.get(MessageId(number)));
    match read {
        Ok(Ok((mut attempts, _))) if !attempts.is_empty() || queued.is_some() => {
            attempts.reverse();
            // By time (a call's record on the callee is dated by its INVITE,
            // before the local delivery it led to); stable, so file order
            // stays among equals.
            attempts.sort_by_key(|attempt| attempt.at_ms);
            pages::delivery(&id, &attempts, queued.as_ref()).into_response()
        }
        Ok(Ok(_)) => (
            StatusCode::NOT_FOUND,
            pages::not_found(&format!("no delivery of {id} is recorded")),
        )
            .into_response(),
        Ok(Err(error)) => failure(format!("cannot read the history: {error}")),
        Err(error) => failure(format!("cannot read the history: {error}")),
    }
}

async fn metrics(State(console): State<Arc<Console>>) -> Response {
    let policy = console.policy.as_deref().map(control::policy_status);
    let text = console.metrics.encode(&now(&console), policy.as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn rules(State(console): State<Arc<Console>>) -> Response {
    let status = console.policy.as_deref().map(control::policy_status);
    pages::rules(status.as_ref()).into_response()
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::COOKIE)?.to_str().ok()
}

async fn queue(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let session = console.sessions.find(cookie(&headers));
    let queued = console.spool.pending();
    pages::queue(&queued, session.as_ref()).into_response()
}

async fn login_page() -> Response {
    pages::login(None).into_response()
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    user: String,
    password: String,
}

async fn login(
    State(console): State<Arc<Console>>,
    ConnectInfo(client): ConnectInfo<Client>,
    Form(form): Form<LoginForm>,
) -> Response {
    let is_admin = |user: &str| console.is_admin(user);
    let verdict = console
        .auth
        .verify_as(client.address.ip(), &form.user, &form.password, is_admin)
        .await;
    let user = match verdict {
        Verdict::Accepted(user) => user,
        Verdict::Unavailable => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                pages::login(Some("too many logins at once: try again shortly")),
            )
                .into_response()
        }
        _ => {
            tracing::info!(client = %client.address, user = form.user, "console login refused");
            return (
                StatusCode::FORBIDDEN,
                pages::login(Some("wrong user name or password, or not an administrator")),
            )
                .into_response();
        }
    };
    let Some(token) = console.sessions.start(&user) else {
        return failure("no randomness for a session token".into());
    };
    tracing::info!(client = %client.address, user, "console login");
    // Over TLS the browser must never send the cookie in clear.
    let secure = if client.tls { "; Secure" } else { "" };
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/queue".to_string()),
            (
                header::SET_COOKIE,
                format!(
                    "{}={token}; HttpOnly; SameSite=Strict; Path=/{secure}",
                    session::COOKIE
                ),
            ),
        ],
    )
        .into_response()
}

/// A form that changes something: its session's CSRF token.
#[derive(Debug, Deserialize)]
struct Signed {
    #[serde(default)]
    csrf: String,
}

/// The session that sent a changing request, or why it is refused.
fn signed_by(console: &Console, headers: &HeaderMap, csrf: &str) -> Result<Session, &'static str> {
    let session = console
        .sessions
        .find(cookie(headers))
        .ok_or("log in as an administrator first")?;
    if !same_token(csrf, &session.csrf) {
        tracing::warn!(
            user = session.user,
            "console form without its session's token"
        );
        return Err("the form does not carry this session's token: reload the page");
    }
    Ok(session)
}

/// A changing request refused: 403, never carried out.
fn forbidden(reason: &str) -> Response {
    (StatusCode::FORBIDDEN, pages::refused(reason)).into_response()
}

async fn logout(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<Signed>,
) -> Response {
    if let Err(reason) = signed_by(&console, &headers, &form.csrf) {
        return forbidden(reason);
    }
    console.sessions.end(cookie(&headers));
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response()
}

#[derive(Debug, Deserialize)]
struct ActionForm {
    action: Action,
    id: String,
    #[serde(default)]
    csrf: String,
}

async fn act(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let session = match signed_by(&console, &headers, &form.csrf) {
        Ok(session) => session,
        Err(reason) => return forbidden(reason),
    };
    let (queue, by, action) = (console.queue.clone(), session.user.clone(), form.action);
    let ids = vec![form.id];
    match tokio::task::spawn_blocking(move || queue.act(action, &ids, &by)).await {
        Ok((lines, ok)) => {
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            (status, pages::acted(action, &lines, &session)).into_response()
        }
        Err(error) => failure(format!("the action failed: {error}")),
    }
}

fn failure(reason: String) -> Response {
    tracing::warn!("console: {reason}");
    (StatusCode::INTERNAL_SERVER_ERROR, reason).into_response()
}

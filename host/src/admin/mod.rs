//! The operator console: server-rendered pages of what became of the mail
//! (the patent's communication record, 【0005】) with each call's ladder
//! drawn, and `/metrics` for Prometheus. Served by the host's runtime with
//! axum on `[admin] listen`.
//!
//! The pages only read; they have no login yet, so the console listens on
//! loopback only (a non-loopback address is refused at start).

mod pages;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::history::{self, AttemptOutcome, DeliveryPath, Filter};
use crate::metrics::Metrics;
use crate::policy::PolicyEngine;
use crate::queue::spool::{MessageId, Spool};

/// Rows on one page of the deliveries list.
const PAGE: usize = 50;

/// The console could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("[admin] listen = {0}: the console has no login yet and listens on loopback only")]
    NotLoopback(SocketAddr),
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
}

/// Binds `address` (loopback only) and returns the server to run.
pub async fn bind(
    address: SocketAddr,
    console: Console,
) -> Result<impl std::future::Future<Output = ()>, AdminError> {
    if !address.ip().is_loopback() {
        return Err(AdminError::NotLoopback(address));
    }
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| AdminError::Listen { address, error })?;
    let app = router(Arc::new(console));
    Ok(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!("the console stopped: {error}");
        }
    })
}

fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/deliveries", get(deliveries))
        .route("/deliveries/{id}", get(delivery))
        .route("/metrics", get(metrics))
        .with_state(console)
}

async fn overview(State(console): State<Arc<Console>>) -> Response {
    let queued = console.spool.unfinished_count();
    let generation = console
        .policy
        .as_ref()
        .map(|policy| policy.active().id.to_string());
    let counts: Vec<(DeliveryPath, [u64; 4])> =
        [DeliveryPath::Local, DeliveryPath::Call, DeliveryPath::Relay]
            .into_iter()
            .map(|path| {
                let count = |outcome| console.metrics.deliveries(path, outcome);
                (
                    path,
                    [
                        count(AttemptOutcome::Delivered),
                        count(AttemptOutcome::Deferred),
                        count(AttemptOutcome::Failed),
                        count(AttemptOutcome::FellBack),
                    ],
                )
            })
            .collect();
    pages::overview(&pages::Overview {
        accepted: console.metrics.accepted(),
        counts,
        queued,
        generation,
        uptime_secs: console.started.elapsed().as_secs(),
    })
    .into_response()
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
    let text = console.metrics.encode(console.spool.unfinished_count());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn failure(reason: String) -> Response {
    tracing::warn!("console: {reason}");
    (StatusCode::INTERNAL_SERVER_ERROR, reason).into_response()
}

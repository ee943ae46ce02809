//! Who may read the console: anyone on loopback; from elsewhere only an
//! administrator, by the session cookie of a login or by HTTP Basic
//! credentials (for a Prometheus scraper's `basic_auth`, or curl). Such a
//! listener always has TLS (the configuration refuses it otherwise), so the
//! password never travels in clear. Changing anything needs a session and
//! its CSRF token wherever the client is (`signed_by`).

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::listener::Client;
use super::{cookie, Console};
use crate::auth::Verdict;

/// Pages anyone may open, to log in.
const OPEN: &[&str] = &["/login"];

/// Lets a request through if its client may read, else sends it to the
/// login page (a browser) or asks for credentials (`/metrics`, `/events`).
pub async fn readers(
    State(console): State<Arc<Console>>,
    ConnectInfo(client): ConnectInfo<Client>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if client.address.ip().to_canonical().is_loopback()
        || OPEN.contains(&path)
        || console.sessions.find(cookie(request.headers())).is_some()
    {
        return next.run(request).await;
    }
    if let Some((user, password)) = basic(request.headers()) {
        let is_admin = |user: &str| console.is_admin(user);
        let verdict = console
            .auth
            .verify_as(client.address.ip(), &user, &password, is_admin)
            .await;
        match verdict {
            Verdict::Accepted(_) => return next.run(request).await,
            Verdict::Unavailable => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many logins at once: try again shortly\n",
                )
                    .into_response()
            }
            _ => tracing::info!(client = %client.address, user, "console credentials refused"),
        }
    }
    if matches!(path, "/metrics" | "/events") {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"mailcall console\", charset=\"UTF-8\"",
            )],
            "an administrator's user name and password are needed from this address\n",
        )
            .into_response();
    }
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response()
}

/// The user name and password of an `Authorization: Basic` header.
fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_read_and_anything_else_is_not() {
        let mut headers = HeaderMap::new();
        assert_eq!(basic(&headers), None);
        // "taro:pa:ss" — a password may hold a colon, a user name may not.
        headers.insert(
            header::AUTHORIZATION,
            "Basic dGFybzpwYTpzcw==".parse().unwrap(),
        );
        assert_eq!(basic(&headers), Some(("taro".into(), "pa:ss".into())));
        for bad in [
            "Bearer dGFybzpwYTpzcw==",
            "Basic !!!",
            "Basic dGFybw==",
            "Basic",
        ] {
            headers.insert(header::AUTHORIZATION, bad.parse().unwrap());
            assert_eq!(basic(&headers), None, "{bad}");
        }
    }
}

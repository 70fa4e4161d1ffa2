//! The emulator's HTTP surface: Graph's subscriptions API, the identity
//! endpoints, the control API, and the one place errors become Graph's
//! error envelope.

mod control;
mod delta;
mod identity;
mod page;
mod subscriptions;
mod throttle;

pub(crate) use subscriptions::is_event_grid;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::json;

use super::Core;
use super::identity::TokenInfo;
use super::store::graph_time;
use crate::catalog::Violation;

/// Largest request body: a subscription with a 4096-bit certificate is ~3 KiB.
const MAX_BODY: usize = 256 * 1024;

/// Largest body of `POST /emulator/changes`: arrays seed many items at once.
const MAX_CHANGES_BODY: usize = 64 * 1024 * 1024;

/// The API version a Graph route was called under (`v1.0` or `beta`).
#[derive(Clone, Copy, Debug)]
struct ApiVersion(&'static str);

pub(crate) fn router(core: Arc<Core>) -> Router {
    let graph = |version: &'static str| {
        Router::new()
            .route(
                "/subscriptions",
                get(subscriptions::list).post(subscriptions::create),
            )
            .route(
                "/subscriptions/{id}",
                get(subscriptions::get)
                    .patch(subscriptions::update)
                    .delete(subscriptions::delete),
            )
            .route(
                "/subscriptions/{id}/reauthorize",
                post(subscriptions::reauthorize),
            )
            // Graph's throttling limits, on the subscription routes above only.
            .route_layer(middleware::from_fn_with_state(
                core.clone(),
                throttle::limit,
            ))
            // Everything else under the version: delta queries, or 404.
            .route("/{*path}", any(delta::serve))
            .layer(axum::Extension(ApiVersion(version)))
    };
    Router::new()
        .nest("/v1.0", graph("v1.0"))
        .nest("/beta", graph("beta"))
        .route("/{tenant}/oauth2/v2.0/token", post(identity::token))
        .route("/{tenant}/oauth2/token", post(identity::token_v1))
        .route(
            "/{tenant}/discovery/instance",
            get(identity::instance_discovery),
        )
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(identity::openid_configuration_v2),
        )
        .route(
            "/{tenant}/.well-known/openid-configuration",
            get(identity::openid_configuration_v1),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(identity::keys))
        .route("/{tenant}/discovery/keys", get(identity::keys))
        .route("/emulator", get(control::info))
        .route(
            "/emulator/changes",
            post(control::changes).layer(DefaultBodyLimit::max(MAX_CHANGES_BODY)),
        )
        .route("/emulator/delta/reset", post(control::delta_reset))
        .route("/emulator/throttle", post(control::throttle))
        .route("/emulator/lifecycle", post(control::lifecycle))
        .route("/emulator/deliveries", get(control::deliveries))
        .route(
            "/emulator/deliveries/{sequence}/body",
            get(control::delivery_body),
        )
        .route("/emulator/endpoints", get(control::endpoints))
        .route("/emulator/subscriptions", get(control::subscriptions))
        .route("/emulator/quotas", get(control::quotas))
        .route("/emulator/", get(page::index))
        .route("/emulator/app.js", get(page::script))
        .route("/emulator/app.css", get(page::style))
        .route("/emulator/emulator.css", get(page::extra_style))
        .route(
            "/emulator/clock",
            get(control::clock).post(control::advance),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(core.clone(), envelope))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(core)
}

async fn not_found() -> GraphError {
    GraphError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        "Resource not found for the segment.",
    )
}

/// An error as Graph reports it. Handlers return it; [`envelope`] turns it
/// into `{"error":{"code","message","innerError":{…}}}` with the request's ids.
#[derive(Clone, Debug)]
pub(crate) struct GraphError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl GraphError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// `400 InvalidRequest`.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidRequest", message)
    }

    /// The body could not be read as a subscription (Graph's wording).
    pub(crate) fn payload() -> Self {
        Self::invalid(
            "Could not process subscription creation payload. Are all property names spelled and camelCased properly?",
        )
    }

    /// `404` for a subscription that is not there (or not the caller's).
    pub(crate) fn subscription_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            format!(
                "The subscription '{id}' was not found: it expired, was deleted, or belongs to another app. Create a new subscription."
            ),
        )
    }

    /// `ExtensionError`: a refusal relayed from the service behind the
    /// subscription (Exchange, Teams, SharePoint…), in the form Graph
    /// writes it, e.g. `403` "Operation: Create; Exception: [Status Code:
    /// Forbidden; Reason: …]" (widely quoted; not on a Microsoft page).
    pub(crate) fn extension(
        status: StatusCode,
        operation: &str,
        reason: impl std::fmt::Display,
    ) -> Self {
        // .NET's `HttpStatusCode` names: the reason phrase without spaces.
        let name: String = status
            .canonical_reason()
            .unwrap_or("Unknown")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        Self::new(
            status,
            "ExtensionError",
            format!("Operation: {operation}; Exception: [Status Code: {name}; Reason: {reason}]"),
        )
    }

    /// `401`: no bearer token, or not one of this emulator's.
    pub(crate) fn unauthorized(message: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            message,
        )
    }

    /// `429 TooManyRequests` with `Retry-After: {retry_after}` seconds:
    /// Graph's throttling answer.
    pub(crate) fn throttled(message: impl Into<String>, retry_after: u64) -> Response {
        let error = Self::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message);
        ([(header::RETRY_AFTER, retry_after.to_string())], error).into_response()
    }
}

impl From<Violation> for GraphError {
    fn from(violation: Violation) -> Self {
        let (status, code) = if violation.is_forbidden() {
            (StatusCode::FORBIDDEN, "Forbidden")
        } else if matches!(violation, Violation::ExpirationTooFar { .. }) {
            (StatusCode::BAD_REQUEST, "ExtensionError")
        } else {
            (StatusCode::BAD_REQUEST, "InvalidRequest")
        };
        Self::new(status, code, violation.to_string())
    }
}

/// The code and message of an error, for [`envelope`] to render.
#[derive(Clone, Debug)]
struct ErrorBody {
    code: &'static str,
    message: String,
}

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(ErrorBody {
            code: self.code,
            message: self.message,
        });
        response
    }
}

/// A `client-request-id` worth echoing: short, visible ASCII.
fn client_request_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("client-request-id")?.to_str().ok()?;
    (!value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| value.to_owned())
}

/// Gives every answer `request-id` and `client-request-id` headers, and
/// renders errors in Graph's envelope.
async fn envelope(State(core): State<Arc<Core>>, request: Request, next: Next) -> Response {
    let request_id = crate::random::uuid();
    let client_id = client_request_id(request.headers()).unwrap_or_else(|| request_id.clone());
    let mut response = next.run(request).await;
    if let Some(error) = response.extensions_mut().remove::<ErrorBody>() {
        let status = response.status();
        let date = graph_time(core.clock.now());
        let body = json!({
            "error": {
                "code": error.code,
                "message": error.message,
                "innerError": {
                    "date": date.get(..19).unwrap_or(&date),
                    "request-id": request_id,
                    "client-request-id": client_id,
                }
            }
        });
        // Keep the handler's headers (`Location`, `Retry-After`).
        let kept = std::mem::take(response.headers_mut());
        response = (status, axum::Json(body)).into_response();
        for (name, value) in &kept {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                response.headers_mut().append(name, value.clone());
            }
        }
    }
    let headers = response.headers_mut();
    for (name, value) in [
        ("request-id", &request_id),
        ("client-request-id", &client_id),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    response
}

/// `{scheme}://{host}` as the request reached the emulator: the scheme it
/// serves, the `Host` header (or HTTP/2's `:authority`) when it is a plain
/// host and port, else the emulator's own address.
pub(crate) fn origin(core: &Core, uri: &Uri, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .filter(|h| usable_host(h));
    match host {
        Some(host) => format!("{}://{host}", core.scheme),
        None => core.base_url.clone(),
    }
}

/// A host, optionally with a port: names, IPv4, bracketed IPv6; no user
/// info, path or spaces.
fn usable_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && !host.starts_with([':', '.', '-'])
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
}

/// The caller of a Graph route, from `Authorization: Bearer …`.
fn authenticate(core: &Core, headers: &HeaderMap) -> Result<TokenInfo, GraphError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| GraphError::unauthorized("Access token is empty."))?;
    core.identity
        .verify(token)
        .ok_or_else(|| GraphError::unauthorized("Access token validation failure."))
}

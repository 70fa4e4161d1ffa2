//! Why a Graph call fails: Graph's error envelope as a type, and the
//! client's error.

use std::fmt;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::preflight::PreflightError;
use super::token::AuthError;

use super::http::clean;

/// An error answer from Graph, from its envelope
/// `{"error":{"code","message","innerError":{"request-id",…}}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GraphError {
    /// The HTTP status.
    pub status: u16,
    /// Graph's error code, e.g. `InvalidRequest`, `ExtensionError`.
    pub code: String,
    /// Graph's message.
    pub message: String,
    /// `request-id`, for Microsoft support.
    pub request_id: Option<String>,
    /// `client-request-id`: the id this client sent.
    pub client_request_id: Option<String>,
    /// When Graph answered.
    pub date: Option<String>,
    /// The `Location` header: where a delta query starts over after a
    /// sync reset (`410 Gone`).
    pub location: Option<String>,
}

impl GraphError {
    /// `404`: the subscription expired, was deleted or removed.
    pub fn is_not_found(&self) -> bool {
        self.status == 404
    }

    /// `409`: a subscription for the same resource and change types exists.
    pub fn is_conflict(&self) -> bool {
        self.status == 409
    }

    /// The id in a `409`'s "Subscription Id `<id>` already exists for the
    /// requested combination".
    pub fn conflicting_id(&self) -> Option<&str> {
        if !self.is_conflict() {
            return None;
        }
        let rest = self.message.split("Subscription Id ").nth(1)?;
        let id = rest.split_whitespace().next()?;
        let id = id.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-');
        (!id.is_empty()
            && id.len() <= 128
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .then_some(id)
    }

    /// The maximum Graph states in a `400` "Subscription expiration can
    /// only be N minutes in the future": the requested expiration was past
    /// it (often a local clock ahead of Graph's).
    pub fn max_expiration_minutes(&self) -> Option<i64> {
        if self.status != 400 {
            return None;
        }
        let message = self.message.to_ascii_lowercase();
        let rest = message.split("expiration can only be ").nth(1)?;
        let (minutes, rest) = rest.split_once(' ')?;
        rest.starts_with("minutes")
            .then(|| minutes.parse().ok())
            .flatten()
            .filter(|m| *m > 0)
    }

    /// Graph's time when it answered, from the envelope's `innerError.date`
    /// (UTC, often without a zone) or the `Date` header.
    pub fn graph_time(&self) -> Option<OffsetDateTime> {
        use time::format_description::well_known::{Rfc2822, Rfc3339};
        let date = self.date.as_deref()?.trim();
        OffsetDateTime::parse(date, &Rfc3339)
            .or_else(|_| OffsetDateTime::parse(&format!("{date}Z"), &Rfc3339))
            .or_else(|_| OffsetDateTime::parse(date, &Rfc2822))
            .ok()
    }

    /// A `400` because the validation handshake with the notification or
    /// lifecycle URL failed (no 200 with the exact token within 10 s):
    /// worth retrying while the endpoint warms up.
    pub fn is_handshake_failure(&self) -> bool {
        let message = self.message.to_ascii_lowercase();
        self.status == 400
            && (message.contains("validation request")
                || message.contains("notification endpoint")
                || message.contains("validationtoken"))
    }
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "graph answered {} {}: {}",
            self.status, self.code, self.message
        )?;
        if let Some(id) = &self.request_id {
            write!(f, " (request-id {id})")?;
        }
        Ok(())
    }
}

impl std::error::Error for GraphError {}

/// Why a Graph call failed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// Graph answered with an error.
    Graph(GraphError),
    /// No access token.
    Token(AuthError),
    /// Graph could not be reached (after the retries).
    Transport(String),
    /// Graph's answer could not be read as what was asked for.
    InvalidResponse(String),
    /// The request breaks a rule of the catalog: it was not sent.
    Preflight(PreflightError),
}

impl ClientError {
    /// The Graph error, if Graph answered with one.
    pub fn graph(&self) -> Option<&GraphError> {
        match self {
            ClientError::Graph(e) => Some(e),
            _ => None,
        }
    }

    /// Whether Graph answered `404`.
    pub fn is_not_found(&self) -> bool {
        self.graph().is_some_and(GraphError::is_not_found)
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Graph(e) => e.fmt(f),
            ClientError::Token(e) => e.fmt(f),
            ClientError::Transport(why) => write!(f, "graph is unreachable: {why}"),
            ClientError::InvalidResponse(why) => write!(f, "graph's answer is unreadable: {why}"),
            ClientError::Preflight(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ClientError {}

#[derive(Deserialize)]
struct Envelope {
    error: EnvelopeError,
}

#[derive(Deserialize)]
struct EnvelopeError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "innerError", alias = "innererror")]
    inner: Option<Map<String, Value>>,
}

pub(super) fn graph_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GraphError {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(clean);
    let envelope: Option<EnvelopeError> = serde_json::from_slice::<Envelope>(body)
        .ok()
        .map(|e| e.error);
    let inner = |name: &str| {
        envelope
            .as_ref()
            .and_then(|e| e.inner.as_ref())
            .and_then(|i| i.get(name))
            .and_then(Value::as_str)
            .map(clean)
    };
    GraphError {
        status: status.as_u16(),
        code: envelope
            .as_ref()
            .and_then(|e| e.code.as_deref())
            .map_or_else(
                || {
                    status
                        .canonical_reason()
                        .unwrap_or("Error")
                        .replace(' ', "")
                },
                clean,
            ),
        message: envelope
            .as_ref()
            .and_then(|e| e.message.as_deref())
            .map_or_else(
                || "the answer carries no Graph error envelope".to_owned(),
                clean,
            ),
        request_id: inner("request-id").or_else(|| header("request-id")),
        client_request_id: inner("client-request-id").or_else(|| header("client-request-id")),
        date: inner("date").or_else(|| header("date")),
        location: header("location"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::http::MAX_MESSAGE;
    use super::*;

    fn error(status: u16, body: &str) -> GraphError {
        graph_error(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    #[test]
    fn envelopes_become_typed_errors() {
        let e = error(
            409,
            r#"{"error":{"code":"Conflict","message":"Subscription Id 4b7c-11 already exists for the requested combination","innerError":{"date":"2026-01-01T00:00:00","request-id":"r-1","client-request-id":"c-1"}}}"#,
        );
        assert_eq!(e.code, "Conflict");
        assert_eq!(e.request_id.as_deref(), Some("r-1"));
        assert_eq!(e.client_request_id.as_deref(), Some("c-1"));
        assert_eq!(e.conflicting_id(), Some("4b7c-11"));
        assert!(e.to_string().contains("request-id r-1"));

        let html = error(502, "<html>bad gateway</html>");
        assert_eq!(html.code, "BadGateway");
        assert!(html.message.contains("no Graph error envelope"));
        assert_eq!(html.conflicting_id(), None);

        let forged = error(
            409,
            r#"{"error":{"code":"Conflict","message":"Subscription Id ../../etc/passwd already exists"}}"#,
        );
        assert_eq!(
            forged.conflicting_id(),
            None,
            "only id-shaped ids are taken"
        );

        let handshake = error(
            400,
            r#"{"error":{"code":"InvalidRequest","message":"Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request."}}"#,
        );
        assert!(handshake.is_handshake_failure());
        let too_far = error(
            400,
            r#"{"error":{"code":"ExtensionError","message":"Subscription expiration can only be 10080 minutes in the future.","innerError":{"date":"2026-12-01T12:00:00"}}}"#,
        );
        assert!(!too_far.is_handshake_failure());
        assert_eq!(too_far.max_expiration_minutes(), Some(10080));
        assert_eq!(
            too_far.graph_time(),
            OffsetDateTime::parse(
                "2026-12-01T12:00:00Z",
                &time::format_description::well_known::Rfc3339
            )
            .ok()
        );
        assert_eq!(handshake.max_expiration_minutes(), None);
    }

    #[test]
    fn remote_text_is_bounded_and_printable() {
        let long = "x".repeat(5000);
        let e = error(
            400,
            &format!(r#"{{"error":{{"code":"a\u0007b","message":"{long}"}}}}"#),
        );
        assert!(e.message.chars().count() <= MAX_MESSAGE + 1);
        assert_eq!(e.code, "a b");
    }

    proptest::proptest! {
        #[test]
        fn any_error_body_is_read_without_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..600), status in 400u16..600) {
            let e = error(status, &String::from_utf8_lossy(&body));
            let _ = e.conflicting_id();
            let _ = e.is_handshake_failure();
            let _ = graph_error(StatusCode::from_u16(status).unwrap(), &HeaderMap::new(), &body);
        }
    }
}

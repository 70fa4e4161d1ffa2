//! Every answer the endpoint gives, mapped to HTTP in this one place.
//!
//! Rejections carry no body: a caller learns the status, never the reason.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::notification::EnvelopeError;
use crate::store::StoreError;

/// What the endpoint answers.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Echo a validation token.
    Handshake(String),
    /// Agree to a CloudEvents sender (Event Grid): `200` with
    /// `WebHook-Allowed-Origin` echoing this origin and `WebHook-Allowed-Rate: *`.
    AbuseProtection(HeaderValue),
    /// The delivery's accepted items are stored (or there were none).
    Accepted,
    /// The request was refused.
    Rejected(Rejection),
}

/// Why a request was refused.
#[derive(Debug)]
pub(crate) enum Rejection {
    /// `validationToken` too long or not UTF-8.
    BadToken,
    /// `WebHook-Request-Origin` empty, repeated, too long or not DNS-like.
    BadOrigin,
    /// Neither a handshake nor a POST.
    Method,
    /// The body is over the limit.
    TooLarge,
    /// The body did not arrive in time.
    BodyTimeout,
    /// The body could not be read (connection error, bad framing).
    BodyError,
    /// Not a notification collection.
    Envelope(EnvelopeError),
    /// The inbox could not store the items: Graph should retry.
    Inbox(StoreError),
}

/// Seconds Graph is asked to wait when the inbox cannot take items.
const RETRY_AFTER_SECS: &str = "5";

impl Answer {
    /// The metric label of the outcome.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Answer::Handshake(_) => "handshake",
            Answer::AbuseProtection(_) => "cloudevents_handshake",
            Answer::Accepted => "accepted",
            Answer::Rejected(r) => match r {
                Rejection::BadToken => "bad_token",
                Rejection::BadOrigin => "bad_origin",
                Rejection::Method => "method_not_allowed",
                Rejection::TooLarge => "too_large",
                Rejection::BodyTimeout => "body_timeout",
                Rejection::BodyError => "body_error",
                Rejection::Envelope(EnvelopeError::NotJson) => "not_json",
                Rejection::Envelope(_) => "not_an_envelope",
                Rejection::Inbox(StoreError::Full) => "inbox_full",
                Rejection::Inbox(_) => "inbox_unavailable",
            },
        }
    }

    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let (status, body) = match self {
            Answer::Handshake(token) => {
                let mut response = Response::new(Full::new(Bytes::from(token)));
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                headers.insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                return response;
            }
            Answer::AbuseProtection(origin) => {
                let mut response = Response::new(Full::new(Bytes::new()));
                let headers = response.headers_mut();
                headers.insert(super::event_grid::ALLOWED_ORIGIN, origin);
                headers.insert(
                    super::event_grid::ALLOWED_RATE,
                    HeaderValue::from_static("*"),
                );
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                return response;
            }
            Answer::Accepted => (StatusCode::ACCEPTED, Bytes::new()),
            Answer::Rejected(rejection) => (rejection.status(), Bytes::new()),
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
            }
            _ => {}
        }
        response
    }
}

impl Rejection {
    fn status(&self) -> StatusCode {
        match self {
            Rejection::BadToken
            | Rejection::BadOrigin
            | Rejection::BodyError
            | Rejection::Envelope(_) => StatusCode::BAD_REQUEST,
            Rejection::Method => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::Inbox(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<Rejection> for Answer {
    fn from(rejection: Rejection) -> Self {
        Answer::Rejected(rejection)
    }
}

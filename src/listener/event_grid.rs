//! Azure Event Grid as the sender: the CloudEvents abuse-protection
//! handshake, and which POSTs carry CloudEvents rather than a Graph
//! notification collection.
//!
//! Event Grid, delivering in the CloudEvents schema to a webhook, first
//! sends an `OPTIONS` request with `WebHook-Request-Origin` (Event Grid's is
//! `eventgrid.azure.net`) and, optionally, `WebHook-Request-Rate`; the
//! endpoint agrees with `200`, `WebHook-Allowed-Origin` (the origin it was
//! sent, or `*`) and `WebHook-Allowed-Rate` (requests per minute, or `*`),
//! which must be there when a rate was requested
//! (<https://learn.microsoft.com/azure/event-grid/webhook-event-delivery>,
//! "Endpoint validation with CloudEvents v1.0").
//!
//! Decisions:
//! - The origin is echoed, not `*`: the answer names the one sender it
//!   agrees to, which is what the handshake asks for.
//! - The rate allowed is `*`: the endpoint has no per-sender budget; back
//!   pressure is the `503` and `Retry-After` it answers when its inbox is
//!   full, which Event Grid retries.
//! - `WebHook-Request-Callback` (the asynchronous variant, where the target
//!   confirms later with a GET to that URL) is never called: the endpoint
//!   makes no outgoing requests on behalf of whoever reaches it. The
//!   synchronous answer is given instead, which the same spec allows.

use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use crate::notification::CloudEventsMode;

/// `WebHook-Request-Origin`: who asks to deliver.
pub(crate) const REQUEST_ORIGIN: HeaderName = HeaderName::from_static("webhook-request-origin");
/// `WebHook-Allowed-Origin`: who the endpoint agrees to.
pub(crate) const ALLOWED_ORIGIN: HeaderName = HeaderName::from_static("webhook-allowed-origin");
/// `WebHook-Allowed-Rate`: the requests per minute the endpoint allows;
/// sent always, so whether or not a `WebHook-Request-Rate` came with the
/// request (must with one, should without).
pub(crate) const ALLOWED_RATE: HeaderName = HeaderName::from_static("webhook-allowed-rate");

/// Longest origin echoed: a DNS name is at most 253 bytes.
const MAX_ORIGIN_BYTES: usize = 253;

/// What an `OPTIONS` request's headers say about the handshake.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AbuseProtection {
    /// No `WebHook-Request-Origin`: not a CloudEvents handshake.
    Absent,
    /// Agree to this origin.
    Origin(HeaderValue),
    /// An origin that is empty, too long, repeated, or not a DNS-like token.
    Invalid,
}

/// Reads the handshake from a request's headers.
pub(crate) fn abuse_protection(headers: &HeaderMap) -> AbuseProtection {
    let mut origins = headers.get_all(REQUEST_ORIGIN).iter();
    let Some(origin) = origins.next() else {
        return AbuseProtection::Absent;
    };
    let bytes = origin.as_bytes();
    let dns_like = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'*'));
    if origins.next().is_some() || bytes.is_empty() || bytes.len() > MAX_ORIGIN_BYTES || !dns_like {
        return AbuseProtection::Invalid;
    }
    AbuseProtection::Origin(origin.clone())
}

/// Whether a POST carries CloudEvents, and in which mode.
pub(crate) fn cloud_events_mode(headers: &HeaderMap) -> Option<CloudEventsMode> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    CloudEventsMode::from_content_type(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append((*name).clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn reads_the_origin() {
        assert_eq!(abuse_protection(&HeaderMap::new()), AbuseProtection::Absent);
        assert_eq!(
            abuse_protection(&headers(&[(&REQUEST_ORIGIN, "eventgrid.azure.net")])),
            AbuseProtection::Origin(HeaderValue::from_static("eventgrid.azure.net"))
        );
        let long = "a".repeat(MAX_ORIGIN_BYTES + 1);
        for bad in ["", "a b", "x\"y", long.as_str()] {
            assert_eq!(
                abuse_protection(&headers(&[(&REQUEST_ORIGIN, bad)])),
                AbuseProtection::Invalid,
                "{bad:?}"
            );
        }
        let twice = headers(&[
            (&REQUEST_ORIGIN, "a.example"),
            (&REQUEST_ORIGIN, "b.example"),
        ]);
        assert_eq!(abuse_protection(&twice), AbuseProtection::Invalid);
    }
}

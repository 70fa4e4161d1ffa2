//! Forwarding to an HTTP endpoint: each event POSTed as JSON, signed per
//! the [Standard Webhooks] specification, so a receiver in any language
//! verifies it with that specification's libraries
//! (`Webhook(secret).verify(body, headers)`).
//!
//! Every request carries three headers:
//!
//! - `webhook-id`: the event's [`Outgoing::id`] (the notification's id),
//!   the same on every retry, for the receiver to deduplicate by;
//! - `webhook-timestamp`: the attempt's time, in Unix seconds;
//! - `webhook-signature`: `v1,` and the base64 HMAC-SHA256, keyed by the
//!   secret, of `{webhook-id}.{webhook-timestamp}.{body}`.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::future::BoxFuture;
use url::Url;
use zeroize::Zeroizing;

use super::{ForwardError, Outgoing, Sink};
use crate::clock::{Clock, SystemClock};

/// How long a target has to answer one request by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The prefix the specification gives serialized symmetric secrets.
const SECRET_PREFIX: &str = "whsec_";

/// The shortest key the specification allows: 24 bytes (192 bits).
const MIN_SECRET_BYTES: usize = 24;

/// Base64 with or without its padding, as the Standard Webhooks libraries
/// read secrets.
const LENIENT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The key webhook signatures are made with.
///
/// Given as the specification serializes it, `whsec_` then base64 (as the
/// Standard Webhooks libraries take it; the prefix may be left out), so the
/// same string configures the sender and the receiver. Its `Debug` is
/// redacted and its bytes are zeroized on drop.
///
/// ```
/// use msgraph_webhooks::forward::http::SigningSecret;
///
/// let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
/// assert_eq!(format!("{secret:?}"), "SigningSecret(..)");
/// assert!(SigningSecret::parse("whsec_c2hvcnQ=").is_err()); // 5 bytes
/// ```
#[derive(Clone)]
pub struct SigningSecret(Arc<Zeroizing<Vec<u8>>>);

impl SigningSecret {
    /// Reads `whsec_<base64>` (or the base64 alone; padded or not).
    ///
    /// # Errors
    ///
    /// When the text is not base64 or the key is shorter than the 24 bytes
    /// the specification requires. The message never quotes the secret.
    pub fn parse(text: &str) -> Result<Self, ForwardError> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .unwrap_or(text.trim());
        let key = LENIENT_BASE64.decode(encoded).map_err(|_| {
            ForwardError::permanent("the forward secret is not whsec_ followed by base64")
        })?;
        if key.len() < MIN_SECRET_BYTES {
            return Err(ForwardError::permanent(format!(
                "the forward secret has {} bytes; Standard Webhooks requires at least {MIN_SECRET_BYTES}",
                key.len()
            )));
        }
        Ok(Self(Arc::new(Zeroizing::new(key))))
    }

    /// The `webhook-signature` value for one message: `v1,` and the base64
    /// HMAC-SHA256 of `{id}.{timestamp}.{body}`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut content = Vec::with_capacity(id.len() + 24 + body.len());
        content.extend_from_slice(id.as_bytes());
        content.push(b'.');
        content.extend_from_slice(timestamp.to_string().as_bytes());
        content.push(b'.');
        content.extend_from_slice(body);
        // HMAC-SHA256 with a key of any length cannot fail.
        let mac = openssl::pkey::PKey::hmac(&self.0)
            .and_then(|key| {
                let mut signer =
                    openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key)?;
                signer.update(&content)?;
                signer.sign_to_vec()
            })
            .expect("HMAC-SHA256 is available in OpenSSL");
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac)
        )
    }
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(..)")
    }
}

/// POSTs each event's JSON line to one URL, signed.
///
/// What an answer means:
///
/// - a 2xx: delivered;
/// - 404, 408, 409, 425, 429, a 5xx, no connection, a timeout:
///   [retryable](ForwardError::retryable), the target is down, slow,
///   overloaded or being redeployed (a proxy answers 404 until the new
///   version is up);
/// - any other status (3xx, since redirects are not followed, and the
///   other 4xx): [permanent](ForwardError::permanent), the target refused
///   this event and will refuse it again (a bad request, a failed signature
///   check): the item goes to the dead letters at once, with the status,
///   to be replayed once the target is fixed.
#[derive(Clone)]
pub struct HttpSink {
    url: Url,
    client: reqwest::Client,
    secret: Option<SigningSecret>,
    clock: Arc<dyn Clock>,
}

impl HttpSink {
    /// A sink POSTing to `url` (http or https), each request given
    /// `timeout` to complete; signed when `secret` is given.
    ///
    /// # Errors
    ///
    /// When `url` is not http(s) or the HTTP client cannot be built.
    pub fn new(
        url: Url,
        secret: Option<SigningSecret>,
        timeout: Duration,
    ) -> Result<Self, ForwardError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ForwardError::permanent(format!(
                "{}:// is not an HTTP URL",
                url.scheme()
            )));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .user_agent(concat!("msgraph-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ForwardError::permanent(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            url,
            client,
            secret,
            clock: Arc::new(SystemClock),
        })
    }

    /// Reads the signatures' timestamps from `clock` instead of the system's.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    async fn post(&self, event: &Outgoing) -> Result<(), ForwardError> {
        let id = header_safe_id(&event.id);
        let timestamp = self.clock.now().unix_timestamp();
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(secret) = &self.secret {
            request = request.header(
                "webhook-signature",
                secret.sign(&id, timestamp, &event.body),
            );
        }
        let answer = request.body(event.body.clone()).send().await;
        let target = self.describe();
        let response = match answer {
            Ok(response) => response,
            Err(e) if e.is_timeout() => {
                return Err(ForwardError::retryable(format!("{target}: timed out")));
            }
            Err(e) => {
                return Err(ForwardError::retryable(format!(
                    "{target}: {}",
                    crate::doctor::error_chain(&e)
                )));
            }
        };
        classify(&target, response.status())
    }
}

/// What a status means for the event (see [`HttpSink`]).
fn classify(target: &str, status: reqwest::StatusCode) -> Result<(), ForwardError> {
    let code = status.as_u16();
    match code {
        200..=299 => Ok(()),
        404 | 408 | 409 | 425 | 429 | 500..=599 => Err(ForwardError::retryable(format!(
            "{target} answered {status}"
        ))),
        _ => Err(ForwardError::permanent(format!(
            "{target} answered {status}: a permanent refusal"
        ))),
    }
}

/// The id as the signature scheme wants it: the specification asks that it
/// hold no `.` (it delimits the signed content), and a header value must be
/// visible ASCII. Graph's ids are GUID-like; anything else is replaced by a
/// stable hash of it, so retries keep one id.
fn header_safe_id(id: &str) -> String {
    let safe = !id.is_empty()
        && id.len() <= 256
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if safe {
        return id.to_owned();
    }
    let digest = openssl::sha::sha256(id.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("h_{hex}")
}

impl Sink for HttpSink {
    fn send<'a>(&'a self, event: &'a Outgoing) -> BoxFuture<'a, Result<(), ForwardError>> {
        Box::pin(self.post(event))
    }

    /// The URL without its query, user or password.
    fn describe(&self) -> String {
        let mut shown = self.url.clone();
        shown.set_query(None);
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        shown.to_string()
    }
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("url", &self.describe())
            .field("signed", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's published example (also in every Standard
    /// Webhooks library's tests).
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: i64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_specifications_test_vector() {
        let secret = SigningSecret::parse(VECTOR_SECRET).unwrap();
        assert_eq!(
            secret.sign(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY),
            VECTOR_SIGNATURE
        );
        // The prefix and the padding are optional, as in the libraries.
        assert!(SigningSecret::parse("whsec_ZmVlZGZhY2VjYWZlYmFiZWRlYWRiZWVmMDEyMw").is_ok());
        let bare = SigningSecret::parse(&VECTOR_SECRET[SECRET_PREFIX.len()..]).unwrap();
        assert_eq!(
            bare.sign(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY),
            VECTOR_SIGNATURE
        );
    }

    #[test]
    fn refuses_secrets_that_are_not_base64_or_too_short_without_quoting_them() {
        for bad in ["whsec_not base64!", "whsec_c2hvcnQ=", "", "whsec_"] {
            let e = SigningSecret::parse(bad).unwrap_err();
            assert!(!e.is_retryable());
            if bad.len() > SECRET_PREFIX.len() {
                assert!(!e.to_string().contains(&bad[SECRET_PREFIX.len()..]), "{e}");
            }
        }
    }

    #[test]
    fn statuses_map_to_delivered_retryable_or_permanent() {
        use reqwest::StatusCode;
        assert!(classify("t", StatusCode::OK).is_ok());
        assert!(classify("t", StatusCode::NO_CONTENT).is_ok());
        for retry in [404, 408, 409, 425, 429, 500, 502, 503, 599] {
            let e = classify("t", StatusCode::from_u16(retry).unwrap()).unwrap_err();
            assert!(e.is_retryable(), "{retry}");
        }
        for refused in [301, 400, 401, 403, 410, 413, 422] {
            let e = classify("t", StatusCode::from_u16(refused).unwrap()).unwrap_err();
            assert!(!e.is_retryable(), "{refused}");
            assert!(e.to_string().contains("permanent"), "{e}");
        }
    }

    #[test]
    fn ids_with_dots_or_header_unsafe_bytes_become_a_stable_hash() {
        assert_eq!(header_safe_id("3f2a-b_C9"), "3f2a-b_C9");
        for hostile in ["a.b", "a\r\nx: y", "", "ü", &"x".repeat(300)] {
            let safe = header_safe_id(hostile);
            assert!(safe.starts_with("h_") && safe.len() == 34, "{safe}");
            assert_eq!(safe, header_safe_id(hostile));
        }
        assert_ne!(header_safe_id("a.b"), header_safe_id("a.c"));
    }

    #[test]
    fn describe_hides_credentials_and_the_query() {
        let sink = HttpSink::new(
            Url::parse("https://user:pw@example.com/hook?token=t").unwrap(),
            None,
            DEFAULT_TIMEOUT,
        )
        .unwrap();
        assert_eq!(sink.describe(), "https://example.com/hook");
        assert!(HttpSink::new(Url::parse("ftp://x/").unwrap(), None, DEFAULT_TIMEOUT).is_err());
    }
}

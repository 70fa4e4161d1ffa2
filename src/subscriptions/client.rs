//! A client for Graph's `/subscriptions`: typed subscriptions, tokens from a
//! [`TokenProvider`], retries with backoff, Graph's error envelope as a type.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::clock::{Clock, SystemClock};
use super::preflight::{self, LifetimePolicy, PreflightError};
use super::token::{TokenError, TokenProvider};
use crate::catalog;
use crate::{ChangeType, ClientState};

/// Graph's v1.0 endpoint.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com/v1.0";

/// Largest answer read from Graph (a page of 100 subscriptions is ~100 KiB).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Most pages `list` follows; a server that links on forever is cut off.
const MAX_PAGES: usize = 1000;

/// What is escaped in a path segment: all but the unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Longest text of a remote error message kept.
const MAX_MESSAGE: usize = 1000;

/// When and how often a failed request is tried again: on `429` and `5xx`
/// answers (after `Retry-After` when Graph sends it) and on connection
/// errors, with exponential backoff.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The wait after the first failure; doubled after each.
    pub base_delay: Duration,
    /// The longest wait between attempts.
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured; longer ones are cut to this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts, waiting `base_delay`, then twice as long each time.
    pub fn new(max_attempts: u32, base_delay: Duration) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            base_delay,
            ..Self::default()
        }
    }

    /// No retries.
    pub fn none() -> Self {
        Self::new(1, Duration::ZERO)
    }

    /// The wait after failed attempt `attempt` (1-based): the exponential
    /// step with up to a quarter of jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_delay);
        step.mul_f64(1.0 - 0.25 * super::manager::unit_random())
    }
}

/// A subscription as Graph returns it.
///
/// `clientState` is `None` in what `get` and `list` return: Graph shows it
/// only in the answers to create and update (Microsoft Learn, "subscription resource type", <https://learn.microsoft.com/graph/api/resources/subscription>).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Subscription {
    /// Graph's id.
    pub id: String,
    /// The resource path.
    #[serde(default)]
    pub resource: String,
    /// The change types, comma-separated.
    #[serde(default)]
    pub change_type: String,
    /// Where notifications go.
    #[serde(default)]
    pub notification_url: String,
    /// Where lifecycle notifications go.
    #[serde(default)]
    pub lifecycle_notification_url: Option<String>,
    /// When it expires.
    #[serde(rename = "expirationDateTime", with = "time::serde::rfc3339")]
    pub expiration: OffsetDateTime,
    /// The `clientState` (create and update answers only).
    #[serde(default)]
    pub client_state: Option<ClientState>,
    /// Whether notifications carry encrypted resource data.
    #[serde(default)]
    pub include_resource_data: Option<bool>,
    /// The certificate id of a rich subscription.
    #[serde(default)]
    pub encryption_certificate_id: Option<String>,
    /// The app that created it.
    #[serde(default)]
    pub application_id: Option<String>,
    /// The user or service principal that created it.
    #[serde(default)]
    pub creator_id: Option<String>,
    /// Every other property, as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The body of `POST /subscriptions`.
///
/// ```
/// use msgraph_webhooks::ChangeType;
/// use msgraph_webhooks::subscriptions::NewSubscription;
/// use time::{Duration, OffsetDateTime};
///
/// let new = NewSubscription::new(
///     "users/ada@contoso.com/messages",
///     [ChangeType::Created, ChangeType::Updated],
///     "https://example.com/notifications",
///     OffsetDateTime::now_utc() + Duration::days(2),
/// )
/// .lifecycle_notification_url("https://example.com/lifecycle");
/// assert_eq!(new.resource, "users/ada@contoso.com/messages");
/// // On the wire as Graph wants it.
/// assert_eq!(new.change_type, "created,updated");
/// ```
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct NewSubscription {
    /// `changeType`: the change types given to [`NewSubscription::new`],
    /// comma-separated as Graph takes them (`created,updated`).
    pub change_type: String,
    /// `notificationUrl`.
    pub notification_url: String,
    /// `resource`.
    pub resource: String,
    /// `expirationDateTime`.
    #[serde(rename = "expirationDateTime", with = "time::serde::rfc3339")]
    pub expiration: OffsetDateTime,
    /// `clientState`: echoed in every notification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_state: Option<ClientState>,
    /// `lifecycleNotificationUrl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle_notification_url: Option<String>,
    /// `includeResourceData`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub include_resource_data: bool,
    /// `encryptionCertificate`: base64 DER.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_certificate: Option<String>,
    /// `encryptionCertificateId`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_certificate_id: Option<String>,
    /// `latestSupportedTlsVersion`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_supported_tls_version: Option<String>,
    /// `notificationUrlAppId`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification_url_app_id: Option<String>,
}

impl NewSubscription {
    /// A basic subscription to `change_types` of `resource` (each named
    /// once, in the order given), notified at `notification_url` until
    /// `expiration`.
    pub fn new(
        resource: impl Into<String>,
        change_types: impl IntoIterator<Item = ChangeType>,
        notification_url: impl Into<String>,
        expiration: OffsetDateTime,
    ) -> Self {
        let change_types: Vec<ChangeType> = change_types.into_iter().collect();
        Self {
            change_type: catalog::join_change_types(&change_types),
            notification_url: notification_url.into(),
            resource: resource.into(),
            expiration,
            client_state: None,
            lifecycle_notification_url: None,
            include_resource_data: false,
            encryption_certificate: None,
            encryption_certificate_id: None,
            latest_supported_tls_version: None,
            notification_url_app_id: None,
        }
    }

    /// Sets `clientState`.
    #[must_use]
    pub fn client_state(mut self, client_state: ClientState) -> Self {
        self.client_state = Some(client_state);
        self
    }

    /// Sets `lifecycleNotificationUrl`.
    #[must_use]
    pub fn lifecycle_notification_url(mut self, url: impl Into<String>) -> Self {
        self.lifecycle_notification_url = Some(url.into());
        self
    }

    /// Asks for resource data, encrypted to this certificate (base64 DER) with this id.
    #[must_use]
    pub fn rich(
        mut self,
        certificate_id: impl Into<String>,
        certificate: impl Into<String>,
    ) -> Self {
        self.include_resource_data = true;
        self.encryption_certificate_id = Some(certificate_id.into());
        self.encryption_certificate = Some(certificate.into());
        self
    }

    /// Sets `includeResourceData` alone (a pre-flight check refuses it
    /// without a certificate where the kind needs one).
    #[must_use]
    pub fn include_resource_data(mut self, include: bool) -> Self {
        self.include_resource_data = include;
        self
    }

    /// Sets the certificate without `includeResourceData` (presence needs it always).
    #[must_use]
    pub fn encryption_certificate(
        mut self,
        certificate_id: impl Into<String>,
        certificate: impl Into<String>,
    ) -> Self {
        self.encryption_certificate_id = Some(certificate_id.into());
        self.encryption_certificate = Some(certificate.into());
        self
    }
}

/// The body of `PATCH /subscriptions/{id}`: what may change.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SubscriptionUpdate {
    /// A new `expirationDateTime` (renews, and reauthorizes).
    #[serde(
        rename = "expirationDateTime",
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expiration: Option<OffsetDateTime>,
    /// A new `notificationUrl` (Graph validates it with a handshake).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification_url: Option<String>,
    /// A new `encryptionCertificate` (base64 DER).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_certificate: Option<String>,
    /// A new `encryptionCertificateId`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_certificate_id: Option<String>,
}

impl SubscriptionUpdate {
    /// A renewal to `expiration`.
    pub fn renew(expiration: OffsetDateTime) -> Self {
        Self {
            expiration: Some(expiration),
            ..Self::default()
        }
    }

    /// Also moves notifications to `url`.
    #[must_use]
    pub fn notification_url(mut self, url: impl Into<String>) -> Self {
        self.notification_url = Some(url.into());
        self
    }

    /// Also moves the subscription to another certificate.
    #[must_use]
    pub fn certificate(
        mut self,
        certificate_id: impl Into<String>,
        certificate: impl Into<String>,
    ) -> Self {
        self.encryption_certificate_id = Some(certificate_id.into());
        self.encryption_certificate = Some(certificate.into());
        self
    }
}

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
    Token(TokenError),
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

/// A remote text made safe to show: control characters replaced, length bounded.
pub(crate) fn clean(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_MESSAGE)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > MAX_MESSAGE {
        out.push('…');
    }
    out
}

/// Reads a body of at most `limit` bytes.
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, String> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(format!("the answer is larger than {limit} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| clean(&e.to_string()))? {
        if body.len() + chunk.len() > limit {
            return Err(format!("the answer is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// `Retry-After` in seconds or as an HTTP date, at most `cap`.
pub(crate) fn retry_after(headers: &HeaderMap, cap: Duration) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at =
            OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
        Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(cap))
}

/// A random GUID-shaped id, for `client-request-id`.
fn request_id() -> String {
    let mut bytes = [0u8; 16];
    // Invariant: OpenSSL's CSPRNG fails only without an OS entropy source.
    openssl::rand::rand_bytes(&mut bytes).expect("the OS random source is available");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

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

fn graph_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GraphError {
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
    }
}

#[derive(Deserialize)]
struct Page {
    value: Vec<Subscription>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    tokens: Arc<dyn TokenProvider>,
    retry: RetryPolicy,
    clock: Arc<dyn Clock>,
}

/// A client for Graph's subscriptions API.
///
/// Every request carries a bearer token from the [`TokenProvider`]; a `401`
/// makes it fetch a new token once. `429` and `5xx` answers and connection
/// errors are retried per the [`RetryPolicy`], after `Retry-After` when
/// Graph sends one. [`create`](Self::create) runs the [pre-flight
/// checks](super::preflight) first and sends nothing that breaks a rule.
/// Cloning is cheap and shares the connection pool.
#[derive(Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphClient")
            .field("base", &self.inner.base)
            .field("retry", &self.inner.retry)
            .finish_non_exhaustive()
    }
}

impl GraphClient {
    /// A client for Graph v1.0 with tokens from `tokens`.
    pub fn new(tokens: impl TokenProvider) -> Self {
        Self {
            inner: Arc::new(Inner {
                http: reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(10))
                    // A create waits for Graph's handshake (10 s) with each URL.
                    .timeout(Duration::from_secs(60))
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("msgraph-webhooks/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .unwrap_or_default(),
                base: DEFAULT_GRAPH_URL.to_owned(),
                tokens: Arc::new(tokens),
                retry: RetryPolicy::default(),
                clock: Arc::new(SystemClock),
            }),
        }
    }

    fn with(self, change: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                http: shared.http.clone(),
                base: shared.base.clone(),
                tokens: shared.tokens.clone(),
                retry: shared.retry.clone(),
                clock: shared.clock.clone(),
            },
        };
        change(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Another Graph base URL (the emulator's, a national cloud, `beta`).
    #[must_use]
    pub fn base_url(self, url: impl Into<String>) -> Self {
        let url = url.into().trim_end_matches('/').to_owned();
        self.with(|inner| inner.base = url)
    }

    /// Retries of failed requests.
    #[must_use]
    pub fn retry(self, retry: RetryPolicy) -> Self {
        self.with(|inner| inner.retry = retry)
    }

    /// The clock the pre-flight checks compare expirations with.
    #[must_use]
    pub fn clock(self, clock: Arc<dyn Clock>) -> Self {
        self.with(|inner| inner.clock = clock)
    }

    /// The Graph base URL in use.
    pub fn graph_url(&self) -> &str {
        &self.inner.base
    }

    pub(crate) fn now(&self) -> OffsetDateTime {
        self.inner.clock.now()
    }

    pub(crate) fn clock_handle(&self) -> Arc<dyn Clock> {
        self.inner.clock.clone()
    }

    fn url(&self, id: &str, suffix: &str) -> String {
        format!(
            "{}/subscriptions/{}{suffix}",
            self.inner.base,
            utf8_percent_encode(id, SEGMENT)
        )
    }

    /// Creates a subscription, after the pre-flight checks (an expiration
    /// over the kind's maximum is an error here; the manager clamps when asked).
    ///
    /// # Errors
    ///
    /// [`ClientError::Preflight`] without sending anything; otherwise what
    /// Graph answered (`400` for a failed handshake, `403` for missing
    /// permissions, `409` for a duplicate, …).
    pub async fn create(
        &self,
        subscription: &NewSubscription,
    ) -> Result<Subscription, ClientError> {
        let checked = preflight::check(subscription, self.now(), LifetimePolicy::Reject)
            .map_err(ClientError::Preflight)?;
        let body = serde_json::to_vec(&checked)
            .map_err(|e| ClientError::InvalidResponse(e.to_string()))?;
        let url = format!("{}/subscriptions", self.inner.base);
        self.call(Method::POST, &url, Some(body)).await
    }

    /// Reads one subscription.
    ///
    /// # Errors
    ///
    /// `404` when it expired or was deleted; transport and token errors.
    pub async fn get(&self, id: &str) -> Result<Subscription, ClientError> {
        self.call(Method::GET, &self.url(id, ""), None).await
    }

    /// Every subscription of the app visible to the token, following
    /// `@odata.nextLink` (only to Graph's own origin: the token is not sent
    /// elsewhere).
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get); [`ClientError::InvalidResponse`] for a next
    /// link to another origin or more than 1000 pages.
    pub async fn list(&self) -> Result<Vec<Subscription>, ClientError> {
        let mut url = format!("{}/subscriptions", self.inner.base);
        let origin = origin(&self.inner.base);
        let mut all = Vec::new();
        for _ in 0..MAX_PAGES {
            let (_, _, body) = self.send(Method::GET, &url, None).await?;
            let page: Page = serde_json::from_slice(&body).map_err(|e| {
                ClientError::InvalidResponse(format!(
                    "a subscriptions page: {}",
                    clean(&e.to_string())
                ))
            })?;
            all.extend(page.value);
            match page.next_link {
                None => return Ok(all),
                Some(next) if origin.is_some() && origin == self::origin(&next) => url = next,
                Some(_) => {
                    return Err(ClientError::InvalidResponse(
                        "@odata.nextLink points away from Graph's origin".to_owned(),
                    ));
                }
            }
        }
        Err(ClientError::InvalidResponse(format!(
            "more than {MAX_PAGES} pages of subscriptions"
        )))
    }

    /// Updates (renews, moves, re-keys) a subscription.
    ///
    /// # Errors
    ///
    /// `404` when it is gone: create a new one instead.
    pub async fn update(
        &self,
        id: &str,
        update: &SubscriptionUpdate,
    ) -> Result<Subscription, ClientError> {
        let body =
            serde_json::to_vec(update).map_err(|e| ClientError::InvalidResponse(e.to_string()))?;
        self.call(Method::PATCH, &self.url(id, ""), Some(body))
            .await
    }

    /// Deletes a subscription.
    ///
    /// # Errors
    ///
    /// `404` when it is already gone.
    pub async fn delete(&self, id: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &self.url(id, ""), None).await?;
        Ok(())
    }

    /// Reauthorizes a subscription (`POST /subscriptions/{id}/reauthorize`):
    /// keeps notifications flowing without changing the expiration.
    ///
    /// # Errors
    ///
    /// `404` when it is gone.
    pub async fn reauthorize(&self, id: &str) -> Result<(), ClientError> {
        self.send(Method::POST, &self.url(id, "/reauthorize"), None)
            .await?;
        Ok(())
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (_, _, bytes) = self.send(method, url, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::InvalidResponse(format!("a subscription: {}", clean(&e.to_string())))
        })
    }

    /// Sends one request with the retries of the policy.
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), ClientError> {
        let retry = &self.inner.retry;
        let client_request_id = request_id();
        let mut attempt = 0;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let token = self
                .inner
                .tokens
                .token()
                .await
                .map_err(ClientError::Token)?;
            let mut request = self
                .inner
                .http
                .request(method.clone(), url)
                .bearer_auth(token.secret())
                .header("accept", "application/json")
                .header("client-request-id", &client_request_id);
            if let Some(body) = &body {
                request = request
                    .header("content-type", "application/json")
                    .body(body.clone());
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) if attempt < retry.max_attempts => {
                    tracing::debug!(error = %e, %method, attempt, "graph request failed; retrying");
                    tokio::time::sleep(retry.backoff(attempt)).await;
                    continue;
                }
                Err(e) => return Err(ClientError::Transport(clean(&e.to_string()))),
            };
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                // The token may have been revoked or expired early: one fresh try.
                self.inner.tokens.invalidate();
                refreshed = true;
                attempt -= 1;
                continue;
            }
            if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                && attempt < retry.max_attempts
            {
                let wait = retry_after(response.headers(), retry.max_retry_after)
                    .unwrap_or_else(|| retry.backoff(attempt));
                tracing::debug!(%status, %method, attempt, ?wait, "graph is busy; retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
            let headers = response.headers().clone();
            let bytes = read_limited(response, MAX_BODY)
                .await
                .map_err(ClientError::Transport)?;
            if status.is_success() {
                return Ok((status, headers, bytes));
            }
            return Err(ClientError::Graph(graph_error(status, &headers, &bytes)));
        }
    }
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    Some(format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str()?,
        url.port_or_known_default()?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(status: u16, body: &str) -> GraphError {
        graph_error(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    #[test]
    fn change_types_go_on_the_wire_comma_separated_each_once() {
        let new = NewSubscription::new(
            "users",
            [
                ChangeType::Updated,
                ChangeType::Deleted,
                ChangeType::Updated,
            ],
            "https://example.com/",
            OffsetDateTime::UNIX_EPOCH,
        );
        let body = serde_json::to_value(&new).unwrap();
        assert_eq!(body["changeType"], "updated,deleted");
        assert_eq!(body["resource"], "users");
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

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy::new(5, Duration::from_millis(100));
        assert!(policy.backoff(1) <= Duration::from_millis(100));
        assert!(policy.backoff(3) >= Duration::from_millis(300));
        assert!(policy.backoff(40) <= policy.max_delay);
    }

    #[test]
    fn retry_after_in_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(
            retry_after(&headers, Duration::from_secs(60)),
            Some(Duration::from_secs(7))
        );
        headers.insert("retry-after", "99999".parse().unwrap());
        assert_eq!(
            retry_after(&headers, Duration::from_secs(60)),
            Some(Duration::from_secs(60))
        );
        headers.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&headers, Duration::from_secs(60)),
            Some(Duration::ZERO)
        );
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&headers, Duration::from_secs(60)), None);
    }

    #[test]
    fn origins() {
        assert_eq!(
            origin("https://graph.microsoft.com/v1.0"),
            origin("https://graph.microsoft.com:443/v1.0/subscriptions?$skiptoken=1")
        );
        assert_ne!(
            origin("https://graph.microsoft.com/v1.0"),
            origin("https://graph.microsoft.com.evil.example/v1.0")
        );
        assert_eq!(origin("not a url"), None);
    }
}

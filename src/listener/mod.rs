//! The endpoint Graph calls: the validation handshake, and notification
//! deliveries authenticated item by item and stored in the inbox before the
//! `202`. [`WebhookService`] is a `tower::Service`, so it mounts as a route
//! of an axum app; [`serve`] runs it standalone on hyper, over TLS too
//! with a [`TlsConfig`].

mod connections;
mod event_grid;
mod handshake;
mod response;
mod server;
mod sniff;
mod tls;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};

use crate::handler::BoxError;
use crate::inspector::{DeliveryPath, Fate, Inspector, Kept, MAX_ITEMS, Seen, item_of};
use crate::metrics::Metrics;
use crate::notification::{Envelope, ItemClass, ItemHead, ValidationTokens, parse_cloud_events};
use crate::registry::{RejectReason, SubscriptionRegistry};
use crate::store::{Inbox, StoreError, StoredItem};
use event_grid::AbuseProtection;
use handshake::Handshake;
use response::{Answer, Rejection};

pub use server::{LISTEN_BACKLOG, ServerConfig, bind, serve};
pub(crate) use server::{Tracked, plain, run};
pub(crate) use tls::CertSummary;
pub use tls::{TlsConfig, TlsError};

/// When the standalone server wants a request's body in full: headers and
/// body share one deadline there (see [`ServerConfig::request_timeout`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestDeadline(pub(crate) Instant);

/// Limits on what one delivery may send.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Limits {
    /// Largest body accepted, in bytes (default 1 MiB). Larger ones get `413`
    /// without being read in full.
    pub max_body: usize,
    /// Time allowed for the whole body to arrive (default 10 s); `408` after it.
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 1024 * 1024,
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// The notification endpoint as a `tower::Service`.
///
/// Answers the validation handshake on any path, and POSTs of notification
/// collections. Cloning is cheap; every clone shares the same registry,
/// inbox and metrics. Built by [`Receiver::service`](crate::Receiver::service).
#[derive(Clone)]
pub struct WebhookService {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) registry: Arc<SubscriptionRegistry>,
    pub(crate) inbox: Arc<dyn Inbox>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: Limits,
    pub(crate) inspector: Option<Arc<Inspector>>,
}

impl std::fmt::Debug for WebhookService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookService")
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

impl WebhookService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The metrics this endpoint records.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Handles one request.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let mut seen = self.shared.inspector.as_ref().map(|_| Seen::new());
        let answer = self.answer(request, seen.as_mut()).await;
        let metrics = &self.shared.metrics;
        metrics.delivery(answer.outcome());
        if !matches!(answer, Answer::Handshake(_) | Answer::AbuseProtection(_)) {
            metrics.ack_latency(started.elapsed());
        }
        let response = answer.into_response();
        if let (Some(inspector), Some(seen)) = (&self.shared.inspector, seen) {
            inspector.record(seen, response.status().as_u16(), started.elapsed());
        }
        response
    }

    /// The request path, top to bottom.
    async fn answer<B>(&self, request: Request<B>, mut seen: Option<&mut Seen>) -> Answer
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let is_get_or_post = matches!(*request.method(), Method::GET | Method::POST);
        match handshake::validation_token(request.uri().query()) {
            Handshake::Token(token) if is_get_or_post => {
                if let Some(seen) = seen {
                    seen.path = DeliveryPath::Handshake;
                }
                return Answer::Handshake(token);
            }
            Handshake::Invalid if is_get_or_post => return Rejection::BadToken.into(),
            _ => {}
        }
        if request.method() == Method::OPTIONS {
            // Event Grid's CloudEvents handshake; any other OPTIONS is a
            // wrong method, as before.
            match event_grid::abuse_protection(request.headers()) {
                AbuseProtection::Origin(origin) => {
                    if let Some(seen) = seen {
                        seen.path = DeliveryPath::Handshake;
                    }
                    return Answer::AbuseProtection(origin);
                }
                AbuseProtection::Invalid => return Rejection::BadOrigin.into(),
                AbuseProtection::Absent => {}
            }
        }
        if request.method() != Method::POST {
            return Rejection::Method.into();
        }
        let cloud_events = event_grid::cloud_events_mode(request.headers());
        let body = match self.read_body(request).await {
            Ok(body) => body,
            Err(rejection) => return rejection.into(),
        };
        // Through Event Grid each CloudEvent's `data` is one item of the
        // same pipeline as a direct delivery's `value`.
        let parsed = match cloud_events {
            Some(mode) => parse_cloud_events(&body, mode),
            None => Envelope::parse(&body),
        };
        let envelope = match parsed {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::debug!(error = %e, "rejecting delivery");
                return Rejection::Envelope(e).into();
            }
        };
        if let Err(e) = self.refresh_registry(&envelope).await {
            // Without the records nothing can be authenticated: let Graph retry.
            tracing::warn!(error = %e, "subscription records unavailable; answering 503");
            return Rejection::Inbox(StoreError::unavailable(e.to_string())).into();
        }
        let accepted = self.authenticate(&envelope, seen.as_deref_mut());
        if accepted.is_empty() {
            return Answer::Accepted;
        }
        match self.shared.inbox.append(accepted).await {
            Ok(()) => Answer::Accepted,
            Err(e) => {
                if matches!(e, StoreError::Full) {
                    full_logged();
                } else {
                    tracing::warn!(error = %e, "inbox refused a delivery; answering 503");
                }
                if let Some(seen) = seen {
                    for (_, kept) in &mut seen.items {
                        if kept.fate == Fate::Accepted {
                            kept.fate = Fate::NotStored;
                        }
                    }
                    // Not stored, so not arrived: Graph sends them again.
                    seen.arrivals.clear();
                }
                Rejection::Inbox(e).into()
            }
        }
    }

    async fn read_body<B>(&self, request: Request<B>) -> Result<Bytes, Rejection>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let limits = &self.shared.limits;
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limits.max_body as u64) {
            return Err(Rejection::TooLarge);
        }
        let mut until = Instant::now() + limits.body_timeout;
        if let Some(RequestDeadline(deadline)) = request.extensions().get() {
            until = until.min(*deadline);
        }
        let body = Limited::new(request.into_body(), limits.max_body);
        let until = tokio::time::Instant::from_std(until);
        match tokio::time::timeout_at(until, body.collect()).await {
            Err(_) => Err(Rejection::BodyTimeout),
            Ok(Err(e)) if e.is::<LengthLimitError>() => Err(Rejection::TooLarge),
            Ok(Err(_)) => Err(Rejection::BodyError),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        }
    }

    /// Fetches the records of subscriptions this instance has not seen, when
    /// the registry has a shared record source (several instances).
    async fn refresh_registry(&self, envelope: &Envelope<'_>) -> Result<(), StoreError> {
        let registry = &self.shared.registry;
        if !registry.has_source() {
            return Ok(());
        }
        let heads: Vec<ItemHead<'_>> = envelope
            .items
            .iter()
            .filter_map(|raw| ItemHead::parse(raw))
            .collect();
        let items: Vec<(&str, Option<&str>)> = heads
            .iter()
            .filter_map(|h| Some((h.subscription_id.as_deref()?, h.client_state.as_deref())))
            .collect();
        registry.refresh(&items).await
    }

    /// Keeps the items whose subscription and clientState check out; counts
    /// and logs the others. Never fails the delivery.
    fn authenticate(
        &self,
        envelope: &Envelope<'_>,
        mut seen: Option<&mut Seen>,
    ) -> Vec<StoredItem> {
        let metrics = &self.shared.metrics;
        let mut accepted = Vec::with_capacity(envelope.items.len());
        let (mut changes, mut lifecycles) = (0, 0);
        let mut dropped = Tally::default();
        // Beyond the limits the tokens are not stored: the encrypted items
        // they would vouch for are dropped, the others need none.
        let tokens_ok = envelope.validation_tokens.within_limits();
        let tokens = if tokens_ok {
            envelope.validation_tokens.clone()
        } else {
            ValidationTokens::Malformed
        };
        if let Some(seen) = seen.as_deref_mut() {
            seen.path = DeliveryPath::Notification;
        }
        for raw in &envelope.items {
            let head = ItemHead::parse(raw);
            let checked = self.check_item(head.as_ref(), tokens_ok);
            if let (Some(seen), Some(inspector)) = (seen.as_deref_mut(), &self.shared.inspector) {
                note(seen, inspector, raw, head.as_ref(), &checked);
            }
            match checked {
                Ok(class) => {
                    match class {
                        ItemClass::Change => changes += 1,
                        ItemClass::Lifecycle => lifecycles += 1,
                    }
                    // A clone of the delivery's tokens shares them (an `Arc`).
                    accepted.push(StoredItem::new((*raw).to_owned(), tokens.clone()));
                }
                Err(reason) => {
                    let subscription = head.as_ref().and_then(|h| h.subscription_id.as_deref());
                    metrics.rejected(reason.as_str(), subscription);
                    dropped.add(reason.as_str());
                }
            }
        }
        // One line per delivery, however many items it drops.
        if !dropped.is_empty() {
            tracing::debug!(accepted = accepted.len(), dropped = %dropped, "dropping items before the ack");
        }
        if changes > 0 {
            metrics.accepted("change", changes);
        }
        if lifecycles > 0 {
            metrics.accepted("lifecycle", lifecycles);
        }
        accepted
    }

    fn check_item(
        &self,
        head: Option<&ItemHead<'_>>,
        tokens_ok: bool,
    ) -> Result<ItemClass, RejectReason> {
        let head = head.ok_or(RejectReason::MalformedItem)?;
        let class = head.class().ok_or(RejectReason::MalformedItem)?;
        let subscription_id = head
            .subscription_id
            .as_deref()
            .ok_or(RejectReason::MalformedItem)?;
        self.shared
            .registry
            .check(subscription_id, head.client_state.as_deref())?;
        if !tokens_ok && head.is_encrypted() {
            return Err(RejectReason::ValidationTokensOverLimit);
        }
        Ok(class)
    }
}

/// Items dropped from one delivery, counted by reason, for its log line.
#[derive(Default)]
struct Tally(Vec<(&'static str, usize)>);

impl Tally {
    fn add(&mut self, reason: &'static str) {
        match self.0.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.0.push((reason, 1)),
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (reason, n)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{reason}={n}")?;
        }
        Ok(())
    }
}

impl<B> tower_service::Service<Request<B>> for WebhookService
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}

/// Keeps what the inspector shows of one item of a delivery.
fn note(
    seen: &mut Seen,
    inspector: &Inspector,
    raw: &serde_json::value::RawValue,
    head: Option<&ItemHead<'_>>,
    checked: &Result<ItemClass, RejectReason>,
) {
    // Accepted items count in their subscription's traffic, kept or not.
    if let (Ok(class), Some(id)) = (checked, head.and_then(|h| h.subscription_id.as_deref())) {
        let lifecycle = match class {
            ItemClass::Lifecycle => {
                seen.path = DeliveryPath::Lifecycle;
                item_of(raw, Fate::Accepted).lifecycle_event
            }
            ItemClass::Change => None,
        };
        seen.arrivals.push((id.to_owned(), lifecycle));
    }
    if seen.items.len() >= MAX_ITEMS {
        seen.more_items += 1;
        return;
    }
    let fate = match checked {
        Ok(_) => Fate::Accepted,
        Err(reason) => Fate::rejected(reason.as_str()),
    };
    seen.items.push((inspector.key(raw), Kept::new(raw, fate)));
}

/// Logs a full inbox at most once per [`FULL_LOG_EVERY`], with how many
/// deliveries it refused since: under sustained overload every delivery is
/// refused, and a line per refusal would only add to the load.
fn full_logged() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static REFUSED: AtomicU64 = AtomicU64::new(0);
    static LOGGED_AT_SECS: AtomicU64 = AtomicU64::new(0);
    let refused = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
    let now = crate::store::unix_ms(std::time::SystemTime::now()).max(0) as u64 / 1000;
    let last = LOGGED_AT_SECS.load(Ordering::Relaxed);
    if now >= last + FULL_LOG_EVERY.as_secs()
        && LOGGED_AT_SECS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        REFUSED.fetch_sub(refused, Ordering::Relaxed);
        tracing::warn!(
            refused,
            "inbox full (its capacity or --max-backlog): answering 503 with Retry-After until the workers catch up"
        );
    }
}

/// How often a full inbox is logged.
const FULL_LOG_EVERY: Duration = Duration::from_secs(10);

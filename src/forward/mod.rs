//! Forwarding verified events to other systems: an HTTP endpoint, NATS
//! JetStream, RabbitMQ, Redis Streams.
//!
//! A [`Sink`] delivers one [`Outgoing`] event and answers only once the
//! target confirmed it (a 2xx, JetStream's publish ack, a publisher
//! confirm, `XADD`'s id). A forwarding handler completes an item in the
//! inbox only after that, so a target that is down means retries and, in
//! the end, dead letters, never loss. Every event keeps the JSON-line shape
//! `listen` prints ([`HandlerEvent::to_json`](crate::HandlerEvent::to_json)),
//! so consumers parse one format whatever the transport.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use url::Url;

use crate::HandlerEvent;

#[cfg(feature = "amqp")]
pub mod amqp;
mod handler;
pub mod http;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis_stream;

pub use handler::{Forward, RouteError, RouteSpec};

/// One event on its way to a target.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Outgoing {
    /// The key consumers and brokers deduplicate by: the notification's
    /// `id`, or for events without one a stable hash of the event's line
    /// (so a retried item gets the same id).
    pub id: String,
    /// `change`, `lifecycle` or `resync`.
    pub kind: &'static str,
    /// The resource kind of a change (`message`, `chatMessage`, …), for routing.
    pub resource_kind: Option<String>,
    /// The event's JSON line ([`HandlerEvent::write_json`](crate::HandlerEvent::write_json)), without a newline.
    pub body: Bytes,
}

impl Outgoing {
    /// The outgoing form of `event`.
    pub fn of(event: &HandlerEvent) -> Self {
        let mut body = Vec::with_capacity(512);
        // Writing to a Vec cannot fail.
        let _ = event.write_json(&mut body);
        let (kind, id, resource_kind) = match event {
            HandlerEvent::Change(change) => (
                "change",
                change.id().map(str::to_owned),
                Some(change.resource_kind().as_str().to_owned()),
            ),
            HandlerEvent::Lifecycle(_) => ("lifecycle", None, None),
            HandlerEvent::Resync(resync) => ("resync", Some(resync.id().to_owned()), None),
        };
        let id = id.unwrap_or_else(|| {
            let digest = openssl::sha::sha256(&body);
            digest[..16].iter().map(|b| format!("{b:02x}")).collect()
        });
        Self {
            id,
            kind,
            resource_kind,
            body: Bytes::from(body),
        }
    }
}

/// Why a target did not take an event.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ForwardError {
    message: String,
    retryable: bool,
}

impl ForwardError {
    /// A failure worth retrying (the target is down, slow, overloaded).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that retrying won't fix (a stream that doesn't exist, a
    /// refused credential): the item goes to the dead letters at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    /// Whether retrying may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ForwardError {}

/// A target events are forwarded to.
pub trait Sink: Send + Sync + 'static {
    /// Delivers one event; `Ok` only once the target confirmed it.
    fn send<'a>(&'a self, event: &'a Outgoing) -> BoxFuture<'a, Result<(), ForwardError>>;

    /// The target for logs: its scheme, host and subject or stream, never a
    /// password or secret.
    fn describe(&self) -> String;
}

/// What [`connect`] needs besides the URL.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SinkOptions {
    /// The key HTTP deliveries are signed with (Standard Webhooks); unsigned without.
    pub secret: Option<http::SigningSecret>,
    /// How long one delivery may take.
    pub timeout: Duration,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            secret: None,
            timeout: http::DEFAULT_TIMEOUT,
        }
    }
}

impl SinkOptions {
    /// Signs HTTP deliveries with `secret`.
    #[must_use]
    pub fn secret(mut self, secret: http::SigningSecret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// Gives each delivery `timeout`.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The sink for `url`, by its scheme: `http`/`https` ([`http::HttpSink`]),
/// `nats`, `amqp`/`amqps`, `redis`/`rediss`.
///
/// A broker that can't be reached now doesn't stop the receiver from
/// starting: the sink connects on a later send (see [`Lazy`]), and until
/// then every send fails retryable, so items wait in the inbox. What the
/// target refuses for good (a bad option, a wrong password, a stream or
/// exchange that doesn't exist) is an error here, at start.
///
/// # Errors
///
/// A scheme that is not a target, or one whose sink is not built in; the
/// target refusing the connection for good.
pub async fn connect(url: &Url, options: &SinkOptions) -> Result<Box<dyn Sink>, ForwardError> {
    match connect_now(url, options).await {
        Err(e) if e.is_retryable() => {
            tracing::warn!(
                target = %describe_url(url),
                error = %e,
                "forwarding target unreachable for now; items wait in the inbox and each send tries again"
            );
            Ok(Box::new(Lazy::new(url.clone(), options.clone())))
        }
        answer => answer,
    }
}

/// Connects to `url` once, with no deferral.
async fn connect_now(url: &Url, options: &SinkOptions) -> Result<Box<dyn Sink>, ForwardError> {
    match url.scheme() {
        "http" | "https" => Ok(Box::new(http::HttpSink::new(
            url.clone(),
            options.secret.clone(),
            options.timeout,
        )?)),
        #[cfg(feature = "nats")]
        "nats" => Ok(Box::new(nats::NatsSink::connect(url).await?)),
        #[cfg(feature = "amqp")]
        "amqp" | "amqps" => Ok(Box::new(amqp::AmqpSink::connect(url).await?)),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(Box::new(redis_stream::RedisStreamSink::connect(url).await?)),
        // Schemes whose feature this build leaves out (none with all on).
        #[allow(unreachable_patterns)]
        scheme @ ("nats" | "amqp" | "amqps" | "redis" | "rediss") => {
            Err(ForwardError::permanent(format!(
                "{scheme}:// forwarding is not built into this version (features nats, amqp, redis)"
            )))
        }
        other => Err(ForwardError::permanent(format!(
            "{other}:// is not a forwarding target: use http(s)://, nats://, amqp(s):// or redis(s)://"
        ))),
    }
}

/// A target for logs before its sink exists: scheme, host, port and path,
/// never credentials or options.
fn describe_url(url: &Url) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.path()
    )
}

/// How long a failed connection attempt answers every send before the
/// next one tries again, so a batch of sends to a broker that is down
/// costs one connection attempt, not one each.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// A sink whose target was unreachable when the receiver started: each send
/// connects first (one attempt at a time, at most one a second), and once
/// connected the real sink does the work and its client reconnects on its
/// own. A permanent refusal met on a later connection (the stream doesn't
/// exist) fails the send permanently, so the item is dead-lettered with the
/// reason.
pub struct Lazy {
    url: Url,
    options: SinkOptions,
    sink: tokio::sync::OnceCell<Box<dyn Sink>>,
    /// When the last connection attempt failed, and why.
    failed: tokio::sync::Mutex<Option<(std::time::Instant, ForwardError)>>,
}

impl Lazy {
    /// A sink for `url` that connects on its first send.
    pub fn new(url: Url, options: SinkOptions) -> Self {
        Self {
            url,
            options,
            sink: tokio::sync::OnceCell::new(),
            failed: tokio::sync::Mutex::new(None),
        }
    }

    async fn sink(&self) -> Result<&dyn Sink, ForwardError> {
        if let Some(sink) = self.sink.get() {
            return Ok(sink.as_ref());
        }
        // One attempt at a time; the others wait for its answer.
        let mut failed = self.failed.lock().await;
        if let Some(sink) = self.sink.get() {
            return Ok(sink.as_ref());
        }
        if let Some((at, error)) = failed.as_ref()
            && at.elapsed() < RECONNECT_PAUSE
        {
            return Err(error.clone());
        }
        match connect_now(&self.url, &self.options).await {
            Ok(sink) => {
                tracing::info!(target = %sink.describe(), "forwarding target reached");
                *failed = None;
                Ok(self.sink.get_or_init(|| async { sink }).await.as_ref())
            }
            Err(error) => {
                *failed = Some((std::time::Instant::now(), error.clone()));
                Err(error)
            }
        }
    }
}

impl Sink for Lazy {
    fn send<'a>(&'a self, event: &'a Outgoing) -> BoxFuture<'a, Result<(), ForwardError>> {
        Box::pin(async move { self.sink().await?.send(event).await })
    }

    fn describe(&self) -> String {
        match self.sink.get() {
            Some(sink) => sink.describe(),
            None => describe_url(&self.url),
        }
    }
}

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("target", &self.describe())
            .field("connected", &self.sink.initialized())
            .finish_non_exhaustive()
    }
}

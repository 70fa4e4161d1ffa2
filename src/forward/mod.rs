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
#[derive(Debug)]
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
/// # Errors
///
/// A scheme that is not a target, or one whose sink is not built in; the
/// target refusing the connection.
pub async fn connect(url: &Url, options: &SinkOptions) -> Result<Box<dyn Sink>, ForwardError> {
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

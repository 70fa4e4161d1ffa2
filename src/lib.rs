//! Receive Microsoft Graph change notifications, correctly.
//!
//! Graph POSTs change notifications (mail, Teams chats, files, users,
//! presence, …) to your HTTPS endpoint. This crate is that endpoint: it
//! answers the validation handshake, authenticates every item by its
//! `clientState`, stores accepted items before answering `202` (well inside
//! Graph's 3-second budget), and hands typed events to your handler — at
//! least once, with panics caught and failures retried.
//!
//! # Quickstart
//!
//! ```no_run
//! use msgraph_webhooks::{ClientState, Receiver, handler_fn};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let receiver = Receiver::builder(handler_fn(|event| async move {
//!         println!("{} {} {}", event.change_type(), event.resource_kind(), event.resource());
//!         Ok(())
//!     }))
//!     .client_state(ClientState::new("the clientState of your subscriptions"))
//!     .build()?;
//!
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     receiver
//!         .serve(listener, &Default::default(), async {
//!             let _ = tokio::signal::ctrl_c().await;
//!         })
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! This receiver keeps accepted items in memory ([`store::MemoryInbox`]):
//! what it acknowledged but has not handled yet is lost if the process
//! stops. Give it a durable [`store::Backend`] (e.g. [`store::Backend::sqlite`])
//! with [`ReceiverBuilder::backend`] to keep every acknowledged item.
//!
//! To mount the endpoint in an axum app instead, take
//! [`Receiver::service`] (a `tower::Service`) as a route and run
//! [`Receiver::spawn_workers`]; `examples/axum_route.rs` shows both.
//!
//! # The pipeline
//!
//! ```text
//! Graph ─POST─► listener ─► notification (envelope, item heads) ─► registry (clientState)
//!                  │                                                      │
//!                  └─ ?validationToken → 200 text/plain                   ▼
//!                                                   inbox.append ── stored ──► 202
//! inbox ─► worker ─► notification (typed item) ─► tokens + crypto (rich items) ─► handler ─► inbox.complete
//!                                              └─ error/panic → retry with backoff → dead letter
//! ```
//!
//! # Rich notifications
//!
//! Items with `encryptedContent` carry the changed resource, encrypted to
//! the app's certificate. Give the receiver the keys and the app ids the
//! validation tokens must be issued to; the handler then sees the decrypted
//! resource in [`ChangeEvent::data`] (typed: [`ChangeEvent::resource_typed`]):
//!
//! ```no_run
//! use msgraph_webhooks::crypto::KeyRing;
//! use msgraph_webhooks::{ClientState, Receiver, handler_fn};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut keys = KeyRing::new();
//! keys.load_spec("cert-2026=certs/dev.pem", None)?;
//! let receiver = Receiver::builder(handler_fn(|event| async move {
//!     println!("{:?}", event.data());
//!     Ok(())
//! }))
//! .client_state(ClientState::new("the clientState of your subscriptions"))
//! .key_ring(keys)
//! .app_ids(["your app's client id"])
//! .build()?;
//! # let _ = receiver;
//! # Ok(()) }
//! ```
//!
//! Tokens are checked before anything is decrypted, and every check fails
//! closed: see [`tokens`] and [`crypto`]. A rejected item is counted in
//! `items_rejected{reason}` and never reaches the handler; Graph still got
//! its `202`.
//!
//! # Modules
//!
//! | module | job |
//! |---|---|
//! | [`catalog`] | what `POST /subscriptions` accepts: paths, kinds, permissions, lifetimes, rules, the notification URL rule |
//! | [`listener`] | the endpoint: handshake, limits, request path, standalone hyper server |
//! | [`notification`] | the envelope, typed change/lifecycle items, [`ResourceKind`], typed resources |
//! | [`registry`] | which subscriptions are ours and the `clientState` each carries |
//! | [`store`] | every storage contract (inbox — the ack boundary —, dead letters, dedupe, subscription records, leases, delta cursors), its one error, and the backends: memory, SQLite, Redis, PostgreSQL |
//! | [`worker`] | behind the ack: claim, verify rich items, build events, call the handler, retry |
//! | [`tokens`] | validation tokens of rich notifications: JWKS, RS256, claims |
//! | [`crypto`] | key ring, decryption of rich notifications, certificate generation |
//! | [`handler`] | the [`Handler`] trait, [`handler_fn`], the events |
//! | [`forward`] | forward events to other systems: the [`Sink`](forward::Sink) contract, the [`Forward`](forward::Forward) handler and its routes, HTTP signed per Standard Webhooks |
//! | [`metrics`] | Prometheus counters and the ack-latency histogram |
//! | [`admin`] | the admin address: `/metrics`, never on the notification port |
//! | [`subscriptions`] | Graph client (model, errors, HTTP, app tokens), pre-flight checks, and a manager (builder, declared, activity, records, the reconcile pass, lifecycle actions, leases) that keeps declared subscriptions alive |
//! | [`resync`] | resync by delta query after missed notifications: cursors, rounds through the inbox, triggers, the periodic safety net |
//! | [`emulator`] | (feature `emulator`) a local Graph: subscriptions API, identity endpoints, handshake, delivery, resources with state and their delta queries |
//! | [`doctor`] | probe an endpoint the way Graph will and explain what fails |
//! | [`tunnel`] | find (and follow) the public URL of a local ngrok tunnel |
//! | [`files`] | bounded reads of the files a user names (keys, JWKS, captures) |
//! | [`clock`] | the one [`Clock`](clock::Clock) trait and the system clock: token checks and the manager run on it; tests and the emulator inject theirs |
//! | [`retry`] | the one [`RetryPolicy`](retry::RetryPolicy): exponential backoff with jitter, for handler failures and Graph requests |
//! | `random` (private) | every random byte: ids, jitter, keys (client states come from [`ClientState::random`]) |
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `sqlite` | yes | [`store::SqliteStore`]: the embedded durable store (SQLite, bundled) |
//! | `redis` | no | `store::RedisStore`: the store for several instances |
//! | `postgres` | no | `store::PostgresStore`: the store for several instances on PostgreSQL (`tokio-postgres`, `deadpool-postgres`) |
//! | `axum` | no | `Receiver::router()`: the endpoint, its lifecycle path and health as an axum `Router` to nest in an app |
//! | `emulator` | no | `emulator`: a local Graph that creates subscriptions by the [`catalog`]'s rules and delivers notifications (axum); implies `axum` |
//! | `nats` | no | `forward::nats::NatsSink`: forwarding to NATS JetStream (`async-nats`) |
//! | `amqp` | no | `forward::amqp::AmqpSink`: forwarding to RabbitMQ with publisher confirms (`lapin`) |
//!
//! With `redis`, `forward::redis_stream::RedisStreamSink` forwards to a Redis stream.
//!
//! The command-line tool is a package of its own (`msgraph-webhooks-cli`,
//! in the repository's `cli/`), so none of its dependencies (clap, a log
//! subscriber) reach a library user.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admin;
pub mod catalog;
pub mod clock;
pub mod crypto;
pub mod doctor;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod files;
pub mod forward;
pub mod handler;
pub mod inspector;
pub mod listener;
pub mod metrics;
pub mod notification;
pub mod registry;
pub mod resync;
pub mod retry;
pub mod store;
pub mod subscriptions;
pub mod tokens;
pub mod tunnel;
pub mod worker;

mod random;
mod receiver;
mod secret;

pub use handler::{BoxError, ChangeEvent, Handler, HandlerEvent, LifecycleEvent, handler_fn};
pub use notification::{ChangeType, LifecycleEventType, ResourceKind};
pub use receiver::{Receiver, ReceiverBuildError, ReceiverBuilder};
pub use registry::SubscriptionRegistry;
pub use secret::ClientState;
/// The `time` crate, whose `OffsetDateTime` and `Duration` the subscription
/// API and the emulator's clock take: use these, not `tokio::time`'s.
pub use time;

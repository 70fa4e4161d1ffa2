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
//! inbox ─► worker ─► notification (typed item) ─► handler ─► inbox.complete
//!                                              └─ error/panic → retry with backoff → dead letter
//! ```
//!
//! # Modules
//!
//! | module | job |
//! |---|---|
//! | [`listener`] | the endpoint: handshake, limits, request path, standalone hyper server |
//! | [`notification`] | the envelope and typed change/lifecycle items, [`ResourceKind`] |
//! | [`registry`] | which subscriptions are ours and the `clientState` each carries |
//! | [`inbox`] | the ack boundary: where accepted items wait for the workers |
//! | [`worker`] | behind the ack: claim, build events, call the handler, retry |
//! | [`handler`] | the [`Handler`] trait, [`handler_fn`], the events |
//! | [`metrics`] | Prometheus counters and the ack-latency histogram |
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `cli` | yes | the `msgraph-webhooks` binary (clap, tracing-subscriber); implies `emulator` |
//! | `emulator` | via `cli` | [`emulator`]: a local Graph that creates subscriptions and delivers notifications |
//!
//! Library users who don't want the CLI's dependencies turn off default features.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod crypto;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod handler;
pub mod inbox;
pub mod listener;
pub mod metrics;
pub mod notification;
pub mod registry;
pub mod tokens;
pub mod worker;

mod receiver;
mod secret;

pub use handler::{BoxError, ChangeEvent, Event, Handler, LifecycleEvent, handler_fn};
pub use notification::{ChangeType, LifecycleEventType, ResourceKind};
pub use receiver::{BuildError, Receiver, ReceiverBuilder};
pub use registry::SubscriptionRegistry;
pub use secret::ClientState;

//! Subscriptions that stay alive: a Graph client for `/subscriptions`, the
//! catalog's pre-flight checks, and a manager that keeps a declared set of
//! subscriptions alive by itself.
//!
//! The top complaints about Graph webhooks are subscriptions that silently
//! lapse, duplicate subscriptions, handshakes that fail for unclear reasons,
//! and copy-pasted ngrok URLs. This module answers them:
//!
//! - [`GraphClient`] creates, reads, lists (following `@odata.nextLink`),
//!   updates, deletes and reauthorizes subscriptions, with tokens from a
//!   [`TokenProvider`] ([`ClientCredentials`] for the app-only flow), retries
//!   with backoff on `429`/`5xx` honouring `Retry-After`, and Graph's error
//!   envelope as a typed [`GraphError`].
//! - [`preflight`] checks a subscription against the
//!   [catalog](crate::catalog) before any request is sent; each problem
//!   names the rule and the fix.
//! - [`SubscriptionManager`] takes the subscriptions the app [declares](Declared),
//!   creates what is missing (once, even with several instances: it holds a
//!   [`Lease`](crate::store::Lease)), renews each at a fraction of its
//!   lifetime with jitter, recreates what disappeared, retries a flaky
//!   handshake, moves subscriptions when the public URL changes, and moves
//!   rich subscriptions to a new certificate. Each subscription gets a random
//!   `clientState` of its own, stored as a [`SubscriptionRecord`] where every
//!   instance's [`SubscriptionRegistry`] finds it.
//! - [`SubscriptionManager::handler`] wraps the app's [`Handler`](crate::Handler)
//!   to act on lifecycle notifications: `reauthorizationRequired` →
//!   reauthorize (or a renewing update, never both within 10 minutes);
//!   `subscriptionRemoved` → recreate, then resync; `missed` → resync.
//!   With [`ManagerBuilder::delta_resync`] a resync runs the resource's
//!   delta query from its stored cursor ([`resync`](crate::resync)); where
//!   the resource has none, and without it, the resync hook is called.
//! - [`GraphClient::delta_page`] fetches delta query pages: next and delta
//!   links, `@removed`, sync resets.
//!
//! ```no_run
//! use std::sync::Arc;
//! use msgraph_webhooks::store::MemoryRecords;
//! use msgraph_webhooks::store::MemoryLease;
//! use msgraph_webhooks::subscriptions::{ClientCredentials, Declared, GraphClient, SubscriptionManager};
//! use msgraph_webhooks::{ChangeType, Receiver, SubscriptionRegistry, handler_fn};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let tokens = ClientCredentials::new("your-tenant-id", "your-client-id", "your-client-secret");
//! let client = GraphClient::new(tokens);
//! let records = Arc::new(MemoryRecords::new());
//! let registry = Arc::new(SubscriptionRegistry::new().source(records.clone()));
//! let manager = SubscriptionManager::builder(client)
//!     .records(records)
//!     .lease(Arc::new(MemoryLease::new()))
//!     .registry(registry.clone())
//!     .public_url("https://example.ngrok-free.app")
//!     .declare(Declared::new("users/ada@contoso.com/messages", [ChangeType::Created, ChangeType::Updated]))
//!     .on_resync(|resync| async move {
//!         println!("run a delta query for {}", resync.resource);
//!         Ok(())
//!     })
//!     .build()?;
//! let receiver = Receiver::builder(manager.handler(handler_fn(|event| async move {
//!     println!("{} {}", event.change_type(), event.resource());
//!     Ok(())
//! })))
//! .registry(registry)
//! .build()?;
//! let running = manager.start();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! receiver.serve(listener, &Default::default(), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! }).await?;
//! running.stop(true).await; // delete on the way out (what no other live instance keeps)
//! # Ok(()) }
//! ```
//!
//! [`SubscriptionRecord`]: crate::store::SubscriptionRecord
//! [`SubscriptionRegistry`]: crate::SubscriptionRegistry

mod client;
mod delta;
mod error;
mod http;
mod manager;
mod model;
pub mod preflight;
mod remote_clock;
mod token;

pub use client::{DEFAULT_GRAPH_URL, GraphClient};
pub use delta::{DeltaError, DeltaItem, DeltaNext, DeltaOptions, DeltaPage, DeltaStart, Removed};
pub use error::{ClientError, GraphError};
pub use manager::{
    Activity, Declared, EncryptionCertificate, Lifecycle, ManagedSubscription, ManagerBuildError,
    ManagerBuilder, Resync, ResyncReason, Running, SubscriptionManager,
};
pub use model::{NewSubscription, Subscription, SubscriptionUpdate};
pub use remote_clock::RemoteClock;
pub use token::{
    AccessToken, AuthError, ClientCredentials, ClientSecret, DEFAULT_TOKEN_URL, GRAPH_SCOPE,
    StaticToken, TokenProvider,
};

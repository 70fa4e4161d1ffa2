//! Durable backends: each implements [`Inbox`](crate::inbox::Inbox),
//! [`DeadLetters`](crate::inbox::DeadLetters) and [`Dedupe`](crate::dedupe::Dedupe).
//!
//! - [`SqliteStore`] (feature `sqlite`): one data directory on local disk;
//!   `202` only after the items are fsynced; several processes may share it.
//! - [`RedisStore`] (feature `redis`): streams and a consumer group, for
//!   several instances behind a load balancer.

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "redis")]
pub use redis::{RedisConfig, RedisStore};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;

/// A store failure outside the inbox (records, leases).
#[derive(Debug)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// A named lease, so that among several instances only one does a job (the
/// subscription manager's renewals, say).
pub trait Lease: Send + Sync + 'static {
    /// Takes the lease `name` for `holder` for `ttl`, or extends it if
    /// `holder` has it. `true` if `holder` holds it now.
    fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Gives the lease up, if `holder` has it.
    fn release(&self, name: &str, holder: &str) -> BoxFuture<'_, Result<(), StoreError>>;
}

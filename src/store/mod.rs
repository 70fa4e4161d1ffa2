//! Durable backends: each implements [`Inbox`](crate::inbox::Inbox),
//! [`DeadLetters`](crate::inbox::DeadLetters) and [`Dedupe`](crate::dedupe::Dedupe).
//!
//! - [`SqliteStore`] (feature `sqlite`): one data directory on local disk;
//!   `202` only after the items are fsynced; several processes may share it.
//! - [`RedisStore`] (feature `redis`): streams and a consumer group, for
//!   several instances behind a load balancer.

#[cfg(feature = "sqlite")]
mod files;
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

/// Leases in process memory: for one process (a single instance needs no
/// coordination, but the subscription manager takes a lease either way).
#[derive(Debug, Default)]
pub struct MemoryLease {
    held: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

impl MemoryLease {
    /// No lease held.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Lease for MemoryLease {
    fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let free = match held.get(name) {
            Some((other, until)) => other == holder || *until <= now,
            None => true,
        };
        if free {
            held.insert(name.to_owned(), (holder.to_owned(), now + ttl));
        }
        Box::pin(std::future::ready(Ok(free)))
    }

    fn release(&self, name: &str, holder: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.get(name).is_some_and(|(other, _)| other == holder) {
            held.remove(name);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_lease() {
        let lease = MemoryLease::new();
        let ttl = Duration::from_secs(60);
        assert!(lease.acquire("leader", "a", ttl).await.unwrap());
        assert!(!lease.acquire("leader", "b", ttl).await.unwrap());
        lease.release("leader", "b").await.unwrap();
        assert!(!lease.acquire("leader", "b", ttl).await.unwrap());
        lease.release("leader", "a").await.unwrap();
        assert!(lease.acquire("leader", "b", ttl).await.unwrap());
    }
}

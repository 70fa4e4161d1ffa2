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

mod error;

pub use error::StoreError;
#[cfg(feature = "redis")]
pub use redis::{RedisConfig, RedisStore};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

use std::time::Duration;

use futures_util::future::BoxFuture;

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

    /// How long until the lease `name` lapses unless its holder extends it;
    /// `None` when nobody holds it. A waiting instance retries then, not later.
    fn expires_in(&self, name: &str) -> BoxFuture<'_, Result<Option<Duration>, StoreError>>;

    /// Marks `member` of the group `group` alive for `ttl`; call again
    /// before it lapses. A member that stops calling (a crash) counts as
    /// alive until then.
    fn join(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Takes `member` out of `group` at once.
    fn leave(&self, group: &str, member: &str) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The live members of `group`. A member that [leaves](Self::leave)
    /// and then reads this sees every member that left before it as gone:
    /// of several that leave at once, the last to read sees none.
    fn members(&self, group: &str) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;
}

/// The lease name a backend keeps `member` of `group` under, for backends
/// that keep presence as leases: one per member, named by group then member.
#[cfg(feature = "sqlite")]
fn member_lease(group: &str, member: &str) -> String {
    format!("{}{member}", member_prefix(group))
}

/// What the lease names of `group`'s members start with.
#[cfg(feature = "sqlite")]
fn member_prefix(group: &str) -> String {
    // The unit separator: in no group name, so no group's members are
    // taken for another's.
    format!("presence\u{1f}{group}\u{1f}")
}

/// Leases in process memory: for one process (a single instance needs no
/// coordination, but the subscription manager takes a lease either way).
#[derive(Debug, Default)]
pub struct MemoryLease {
    held: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
    /// Group → member → alive until.
    groups: std::sync::Mutex<
        std::collections::HashMap<String, std::collections::HashMap<String, std::time::Instant>>,
    >,
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

    fn expires_in(&self, name: &str) -> BoxFuture<'_, Result<Option<Duration>, StoreError>> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let left = held
            .get(name)
            .and_then(|(_, until)| until.checked_duration_since(now))
            .filter(|left| !left.is_zero());
        Box::pin(std::future::ready(Ok(left)))
    }

    fn join(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups
            .entry(group.to_owned())
            .or_default()
            .insert(member.to_owned(), std::time::Instant::now() + ttl);
        Box::pin(std::future::ready(Ok(())))
    }

    fn leave(&self, group: &str, member: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(members) = groups.get_mut(group) {
            members.remove(member);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn members(&self, group: &str) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let mut live: Vec<String> = groups
            .get(group)
            .into_iter()
            .flatten()
            .filter(|(_, until)| **until > now)
            .map(|(member, _)| member.clone())
            .collect();
        live.sort();
        Box::pin(std::future::ready(Ok(live)))
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
        let left = lease.expires_in("leader").await.unwrap().unwrap();
        assert!(left <= ttl && left > Duration::from_secs(50), "{left:?}");
        assert_eq!(lease.expires_in("nobody").await.unwrap(), None);
    }

    #[tokio::test]
    async fn memory_presence() {
        let lease = MemoryLease::new();
        let ttl = Duration::from_secs(60);
        lease.join("g", "a", ttl).await.unwrap();
        lease.join("g", "b", ttl).await.unwrap();
        lease.join("other", "c", ttl).await.unwrap();
        lease.join("g", "gone", Duration::ZERO).await.unwrap();
        assert_eq!(lease.members("g").await.unwrap(), ["a", "b"]);
        lease.leave("g", "a").await.unwrap();
        assert_eq!(lease.members("g").await.unwrap(), ["b"]);
    }
}

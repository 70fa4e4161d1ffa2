use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::store::{Lease, StoreError};

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

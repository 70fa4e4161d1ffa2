use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::{Claim, Dedupe, DedupeError, DedupeKey};

/// Dedupe in process memory: for tests, and for a single process with the
/// in-memory inbox (where a restart loses the inbox anyway).
#[derive(Debug, Default)]
pub struct MemoryDedupe {
    keys: Mutex<HashMap<DedupeKey, Entry>>,
}

#[derive(Debug)]
enum Entry {
    Claimed { owner: String, until: Instant },
    Done { until: Instant },
}

impl MemoryDedupe {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<DedupeKey, Entry>, Instant) -> T) -> T {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Drop expired entries now and then, so the map stays bounded by the TTL.
        if keys.len() > 1024 && keys.len().is_power_of_two() {
            keys.retain(|_, e| match e {
                Entry::Claimed { until, .. } | Entry::Done { until } => *until > now,
            });
        }
        f(&mut keys, now)
    }
}

impl Dedupe for MemoryDedupe {
    fn begin(
        &self,
        key: DedupeKey,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Claim, DedupeError>> {
        let claim = self.with(|keys, now| {
            let claim = match keys.get(&key) {
                Some(Entry::Done { until }) if *until > now => return Claim::Duplicate,
                Some(Entry::Claimed { owner: o, until }) if *until > now && o != owner => {
                    return Claim::InProgress;
                }
                _ => Claim::Proceed,
            };
            keys.insert(
                key,
                Entry::Claimed {
                    owner: owner.to_owned(),
                    until: now + lease,
                },
            );
            claim
        });
        Box::pin(std::future::ready(Ok(claim)))
    }

    fn finish(
        &self,
        key: DedupeKey,
        _owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), DedupeError>> {
        self.with(|keys, now| keys.insert(key, Entry::Done { until: now + ttl }));
        Box::pin(std::future::ready(Ok(())))
    }

    fn abandon(&self, key: DedupeKey, owner: &str) -> BoxFuture<'_, Result<(), DedupeError>> {
        self.with(|keys, _| {
            if matches!(keys.get(&key), Some(Entry::Claimed { owner: o, .. }) if o == owner) {
                keys.remove(&key);
            }
        });
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn claim_finish_abandon() {
        let store = MemoryDedupe::new();
        let key = DedupeKey([1; 32]);
        let lease = Duration::from_secs(60);
        assert_eq!(store.begin(key, "a", lease).await.unwrap(), Claim::Proceed);
        assert_eq!(
            store.begin(key, "b", lease).await.unwrap(),
            Claim::InProgress
        );
        store.abandon(key, "b").await.unwrap();
        assert_eq!(
            store.begin(key, "b", lease).await.unwrap(),
            Claim::InProgress,
            "only the owner abandons"
        );
        store.abandon(key, "a").await.unwrap();
        assert_eq!(store.begin(key, "b", lease).await.unwrap(), Claim::Proceed);
        store
            .finish(key, "b", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            store.begin(key, "a", lease).await.unwrap(),
            Claim::Duplicate
        );
        let expired = DedupeKey([2; 32]);
        store.begin(expired, "a", Duration::ZERO).await.unwrap();
        assert_eq!(
            store.begin(expired, "b", lease).await.unwrap(),
            Claim::Proceed,
            "an expired lease is free"
        );
    }
}

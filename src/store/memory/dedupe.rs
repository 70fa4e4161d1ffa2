use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use crate::store::{Claim, Dedupe, DedupeKey, StoreError};

/// How many handled keys [`MemoryDedupe::new`] remembers at most (each
/// costs on the order of 150 bytes: the key, its entry and its place in
/// the expiry queue).
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Dedupe in process memory: for tests, and for a single process with the
/// in-memory inbox (where a restart loses the inbox anyway).
///
/// Memory stays bounded: handled keys are forgotten when their TTL passes,
/// and the oldest first once more than the limit are kept, so a flood
/// shortens the dedupe window instead of exhausting memory.
#[derive(Debug)]
pub struct MemoryDedupe {
    /// Keys spread over shards by their first byte (they are SHA-256
    /// digests): workers rarely wait on each other, and no map grows so big
    /// that resizing it stalls the thread for long.
    shards: Box<[Mutex<State>]>,
    /// Handled keys each shard keeps at most.
    max_per_shard: usize,
}

const SHARDS: usize = 64;

#[derive(Debug, Default)]
struct State {
    keys: HashMap<DedupeKey, Entry>,
    /// Handled keys in the order they were marked, with their expiry.
    handled: VecDeque<(DedupeKey, Instant)>,
}

#[derive(Debug)]
enum Entry {
    Claimed { owner: String, until: Instant },
    Done { until: Instant },
}

impl Default for MemoryDedupe {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryDedupe {
    /// An empty store remembering up to [`DEFAULT_MAX_KEYS`] handled keys.
    pub fn new() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }

    /// An empty store remembering about `max_keys` handled keys (rounded up
    /// to a multiple of 64).
    pub fn with_max_keys(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            max_per_shard: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    fn with<T>(&self, key: &DedupeKey, f: impl FnOnce(&mut State, Instant) -> T) -> T {
        let shard = &self.shards[usize::from(key.as_bytes()[0]) % SHARDS];
        let mut state = shard.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Claims whose holder vanished (a cancelled task) expire with their
        // lease; drop them now and then so the map stays bounded.
        if state.keys.len() > 1024 && state.keys.len().is_power_of_two() {
            state.keys.retain(|_, e| match e {
                Entry::Claimed { until, .. } | Entry::Done { until } => *until > now,
            });
        }
        f(&mut state, now)
    }
}

impl State {
    /// Marks `key` handled until `until`, forgetting expired keys and the
    /// oldest ones beyond `max_keys`.
    fn mark(&mut self, key: DedupeKey, until: Instant, now: Instant, max_keys: usize) {
        self.keys.insert(key, Entry::Done { until });
        self.handled.push_back((key, until));
        while let Some(&(old, expires)) = self.handled.front() {
            if expires > now && self.handled.len() <= max_keys {
                break;
            }
            self.handled.pop_front();
            // Only if it was not marked again (or claimed) since.
            if matches!(self.keys.get(&old), Some(Entry::Done { until }) if *until == expires) {
                self.keys.remove(&old);
            }
        }
    }
}

impl Dedupe for MemoryDedupe {
    fn begin(
        &self,
        key: DedupeKey,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Claim, StoreError>> {
        let claim = self.with(&key, |State { keys, .. }, now| {
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
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(&key, |state, now| {
            state.mark(key, now + ttl, now, self.max_per_shard);
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn abandon(&self, key: DedupeKey, owner: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(&key, |State { keys, .. }, _| {
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
        let key = DedupeKey::from_bytes([1; 32]);
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
        let expired = DedupeKey::from_bytes([2; 32]);
        store.begin(expired, "a", Duration::ZERO).await.unwrap();
        assert_eq!(
            store.begin(expired, "b", lease).await.unwrap(),
            Claim::Proceed,
            "an expired lease is free"
        );
    }

    #[tokio::test]
    async fn memory_stays_bounded_oldest_forgotten_first() {
        // Three keys per shard; these all fall in shard 0.
        let store = MemoryDedupe::with_max_keys(3 * SHARDS);
        let key = |n: u8| {
            let mut key = [0; 32];
            key[1] = n;
            DedupeKey::from_bytes(key)
        };
        let (lease, ttl) = (Duration::from_secs(60), Duration::from_secs(3600));
        for n in 1..=5u8 {
            assert_eq!(
                store.begin(key(n), "a", lease).await.unwrap(),
                Claim::Proceed
            );
            store.finish(key(n), "a", ttl).await.unwrap();
        }
        {
            let state = store.shards[0].lock().unwrap();
            assert_eq!(state.handled.len(), 3);
            assert_eq!(state.keys.len(), 3);
        }
        for n in 1..=2u8 {
            assert_eq!(
                store.begin(key(n), "b", lease).await.unwrap(),
                Claim::Proceed,
                "key {n} was forgotten"
            );
        }
        for n in 3..=5u8 {
            assert_eq!(
                store.begin(key(n), "b", lease).await.unwrap(),
                Claim::Duplicate
            );
        }
    }

    #[tokio::test]
    async fn expired_keys_are_forgotten() {
        let store = MemoryDedupe::new();
        let lease = Duration::from_secs(60);
        for n in 1..=100u8 {
            let mut key = [7; 32];
            key[1] = n;
            let key = DedupeKey::from_bytes(key);
            store.begin(key, "a", lease).await.unwrap();
            store.finish(key, "a", Duration::ZERO).await.unwrap();
        }
        let state = store.shards[7].lock().unwrap();
        assert!(state.handled.len() <= 1, "{}", state.handled.len());
        assert!(state.keys.len() <= 1, "{}", state.keys.len());
    }
}

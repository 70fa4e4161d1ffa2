//! The storage contracts' test suite, run against every backend: what
//! [`Inbox`], [`DeadLetters`], [`Dedupe`], [`RecordStore`] and [`Lease`]
//! promise, whichever store keeps them. What only one backend does
//! (reopening, lock files, schema migrations, group commits, takeovers by
//! the consumer group) is tested beside it.
//!
//! Each check takes two handles on one store (`a` and `b`): two processes
//! on one data directory or one Redis, or the same memory twice.

use std::time::Duration;

use super::{Backend, Claim, Claimed, DedupeKey, MemoryInbox, StoredItem, SubscriptionRecord};
use crate::ClientState;
use crate::notification::ValidationTokens;

fn item(n: u32) -> StoredItem {
    let raw = serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap();
    StoredItem::new(raw, ValidationTokens::Absent)
}

fn n(claimed: &Claimed) -> u64 {
    let value: serde_json::Value = serde_json::from_str(claimed.item.raw.get()).unwrap();
    value["n"].as_u64().unwrap()
}

/// Appended items are claimed once, completed items are gone, a retry
/// waits its delay, a dead letter is listed with its reason and attempts
/// and replayed as a fresh item.
async fn inbox_and_dead_letters(a: &Backend, b: &Backend) {
    a.inbox().append(vec![item(1), item(2)]).await.unwrap();
    assert_eq!(b.inbox().stats().await.unwrap().depth, 2);
    let mut batch = b.inbox().claim(10, Duration::from_secs(1)).await.unwrap();
    let mut seen: Vec<u64> = batch.iter().map(n).collect();
    seen.sort_unstable();
    assert_eq!(seen, [1, 2]);
    assert!(
        a.inbox()
            .claim(10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "claimed items are nobody else's"
    );
    let first = batch.remove(0);
    b.inbox().complete(first.id.clone()).await.unwrap();
    let mut later = batch.remove(0);
    later.attempts = 1;
    b.inbox()
        .retry(later, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(
        a.inbox()
            .claim(10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "the retry waits an hour"
    );
    assert_eq!(a.inbox().stats().await.unwrap().depth, 1);

    a.inbox().append(vec![item(3)]).await.unwrap();
    let mut dead = a.inbox().claim(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(dead.len(), 1);
    let mut dead = dead.remove(0);
    assert_eq!(n(&dead), 3);
    dead.attempts = 5;
    a.inbox()
        .dead_letter(dead, "handler error: boom".into())
        .await
        .unwrap();
    let letters = b.dead_letters().list(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].attempts, letters[0].reason.as_str()),
        (5, "handler error: boom")
    );
    assert_eq!(
        b.dead_letters()
            .replay(vec![letters[0].id.clone()])
            .await
            .unwrap(),
        1
    );
    assert!(a.dead_letters().list(10).await.unwrap().is_empty());
    let again = a.inbox().claim(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((n(&again[0]), again[0].attempts), (3, 0));
}

/// A key is handled by one owner at a time, released by its own owner
/// only, and once finished its copies are duplicates.
async fn dedupe(a: &Backend) {
    let dedupe = a.dedupe();
    let key = DedupeKey::from_bytes([5; 32]);
    let lease = Duration::from_secs(60);
    assert_eq!(dedupe.begin(key, "a", lease).await.unwrap(), Claim::Proceed);
    assert_eq!(
        dedupe.begin(key, "b", lease).await.unwrap(),
        Claim::InProgress
    );
    dedupe.abandon(key, "b").await.unwrap();
    assert_eq!(
        dedupe.begin(key, "b", lease).await.unwrap(),
        Claim::InProgress,
        "only the holder releases"
    );
    dedupe.abandon(key, "a").await.unwrap();
    assert_eq!(dedupe.begin(key, "b", lease).await.unwrap(), Claim::Proceed);
    dedupe
        .finish(key, "b", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        dedupe.begin(key, "a", lease).await.unwrap(),
        Claim::Duplicate
    );
    let other = DedupeKey::from_bytes([6; 32]);
    assert_eq!(
        dedupe
            .begin_many(vec![key, other], "c", lease)
            .await
            .unwrap(),
        [Claim::Duplicate, Claim::Proceed]
    );
}

/// Records written by one handle are read by the other, with what their
/// owner keeps beside them.
async fn records(a: &Backend, b: &Backend) {
    let mut record = SubscriptionRecord::new("sub-1", Some(ClientState::new("s")));
    record.owner.insert("key".into(), "mail".into());
    a.records().put(record).await.unwrap();
    let found = b
        .records()
        .get_many(vec!["sub-1".into(), "nope".into()])
        .await
        .unwrap();
    let first = found[0].as_ref().unwrap();
    assert!(first.client_state.as_ref().unwrap().matches("s"));
    assert_eq!(first.owner["key"], "mail");
    assert!(found[1].is_none());
    assert_eq!(b.records().all().await.unwrap().len(), 1);
    a.records().remove("sub-1".into()).await.unwrap();
    assert!(b.records().all().await.unwrap().is_empty());
}

/// A lease has one holder until released or lapsed; presence lists the
/// live members of a group.
async fn leases_and_presence(a: &Backend, b: &Backend) {
    let (a, b) = (a.lease(), b.lease());
    let ttl = Duration::from_secs(60);
    assert!(a.acquire("leader", "a", ttl).await.unwrap());
    assert!(!b.acquire("leader", "b", ttl).await.unwrap());
    assert!(
        a.acquire("leader", "a", ttl).await.unwrap(),
        "the holder renews"
    );
    b.release("leader", "b").await.unwrap();
    assert!(
        !b.acquire("leader", "b", ttl).await.unwrap(),
        "only the holder releases"
    );
    a.release("leader", "a").await.unwrap();
    assert!(b.acquire("leader", "b", ttl).await.unwrap());
    assert!(b.acquire("short", "b", Duration::ZERO).await.unwrap());
    // A zero lease lasts the least a backend can keep one (Redis: 1 ms).
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        a.acquire("short", "a", ttl).await.unwrap(),
        "an expired lease is free"
    );
    let left = a.expires_in("short").await.unwrap().unwrap();
    assert!(left <= ttl && left > Duration::from_secs(50), "{left:?}");
    assert_eq!(a.expires_in("nobody").await.unwrap(), None);

    a.join("g", "a", ttl).await.unwrap();
    b.join("g", "b", ttl).await.unwrap();
    b.join("g2", "c", ttl).await.unwrap();
    b.join("g", "gone", Duration::ZERO).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut members = b.members("g").await.unwrap();
    members.sort();
    assert_eq!(members, ["a", "b"]);
    a.join("g", "a", ttl).await.unwrap();
    a.leave("g", "a").await.unwrap();
    assert_eq!(a.members("g").await.unwrap(), ["b"]);
}

/// Every check, on two handles of one store.
async fn all(a: &Backend, b: &Backend) {
    inbox_and_dead_letters(a, b).await;
    dedupe(a).await;
    records(a, b).await;
    leases_and_presence(a, b).await;
}

#[tokio::test]
async fn memory_keeps_every_contract() {
    let backend = Backend::memory(MemoryInbox::new(100));
    all(&backend, &backend.clone()).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_keeps_every_contract() {
    use std::sync::Arc;

    use super::SqliteStore;

    let dir = tempfile::tempdir().unwrap();
    let a = Backend::sqlite(Arc::new(SqliteStore::open(dir.path()).unwrap()));
    let b = Backend::sqlite(Arc::new(SqliteStore::open(dir.path()).unwrap()));
    all(&a, &b).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_keeps_every_contract() {
    use std::sync::Arc;

    use super::redis::tests::{cleanup, redis_url};
    use super::{RedisConfig, RedisStore};

    let Some(url) = redis_url() else { return };
    let config = RedisConfig {
        prefix: format!("msgraph-webhooks-contract-{}", crate::random::hex_id(12)),
        ..RedisConfig::default()
    };
    let a = Arc::new(RedisStore::connect(&url, config.clone()).await.unwrap());
    let b = Arc::new(RedisStore::connect(&url, config).await.unwrap());
    all(&Backend::redis(a.clone()), &Backend::redis(b)).await;
    cleanup(&a).await;
}

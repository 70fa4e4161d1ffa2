use redis::AsyncCommands as _;

use super::*;
use crate::notification::ValidationTokens;
use crate::store::Lease;
use crate::store::{Claim, Dedupe, DedupeKey};
use crate::store::{DeadLetters, Inbox, StoredItem};
use crate::store::{RecordStore, SubscriptionRecord};

/// The Redis of `MSGRAPH_WEBHOOKS_REDIS_URL`, or `None` (and a note) when unset.
pub(crate) fn redis_url() -> Option<String> {
    match std::env::var("MSGRAPH_WEBHOOKS_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped: MSGRAPH_WEBHOOKS_REDIS_URL is not set (Redis tests need it)");
            None
        }
    }
}

async fn store(url: &str) -> RedisStore {
    let config = RedisConfig {
        prefix: format!("msgraph-webhooks-test-{}", random_id()),
        claim_idle: Duration::from_millis(300),
        ..RedisConfig::default()
    };
    RedisStore::connect(url, config).await.unwrap()
}

async fn cleanup(store: &RedisStore) {
    let mut conn = store.conn.clone();
    let keys: Vec<String> = conn
        .keys(format!("{}:*", store.config.prefix))
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = conn.del(keys).await.unwrap();
    }
}

fn item(n: u32) -> StoredItem {
    let raw = serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap();
    StoredItem::new(raw, ValidationTokens::Absent)
}

#[tokio::test]
async fn inbox_dead_letters_and_takeover() {
    let Some(url) = redis_url() else { return };
    let store = store(&url).await;
    store.append((0..3).map(item).collect()).await.unwrap();
    assert_eq!(store.stats().await.unwrap().depth, 3);
    let claimed = store.claim(10, Duration::from_millis(100)).await.unwrap();
    assert_eq!(claimed.len(), 3);
    store.complete(claimed[0].id.clone()).await.unwrap();
    let mut retried = claimed[1].clone();
    retried.attempts = 1;
    store
        .retry(retried, Duration::from_millis(50))
        .await
        .unwrap();
    let mut dead = claimed[2].clone();
    dead.attempts = 5;
    store.dead_letter(dead, "boom".into()).await.unwrap();

    // The retry comes back when due, with its attempt count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = store.claim(10, Duration::from_millis(500)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);

    // Left unacknowledged by a "dead" consumer, it is taken over after the idle time.
    let other = RedisStore {
        consumer: random_id(),
        ..store_clone(&store)
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let taken = other.claim(10, Duration::from_millis(100)).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, again[0].id);
    other.complete(taken[0].id.clone()).await.unwrap();

    let letters = store.list(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].attempts, letters[0].reason.as_str()),
        (5, "boom")
    );
    assert_eq!(store.replay(Vec::new()).await.unwrap(), 1);
    assert!(store.list(10).await.unwrap().is_empty());
    let replayed = store.claim(10, Duration::from_millis(500)).await.unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].attempts, 0);
    cleanup(&store).await;
}

async fn deliveries(store: &RedisStore) -> usize {
    let mut conn = store.conn.clone();
    let keys: Vec<String> = conn
        .keys(format!("{}:delivery:*", store.config.prefix))
        .await
        .unwrap();
    keys.len()
}

#[tokio::test]
async fn a_deliverys_tokens_are_stored_once_and_go_with_its_last_item() {
    let Some(url) = redis_url() else { return };
    let store = store(&url).await;
    let tokens = ValidationTokens::Tokens(vec!["t".repeat(10_000), "u".into()].into());
    let delivery: Vec<StoredItem> = (0..50)
        .map(|n| {
            let raw = serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}"));
            StoredItem::new(raw.unwrap(), tokens.clone())
        })
        .collect();
    store.append(delivery).await.unwrap();
    store.append(vec![item(99)]).await.unwrap();
    let mut conn = store.conn.clone();
    let used: i64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(store.key("inbox"))
        .query_async::<Option<i64>>(&mut conn)
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(used < 50_000, "the stream holds no tokens: {used} bytes");
    assert_eq!(deliveries(&store).await, 1);

    let mut claimed = store.claim(100, Duration::from_millis(100)).await.unwrap();
    assert_eq!(claimed.len(), 51);
    for c in &claimed {
        let v: serde_json::Value = serde_json::from_str(c.item.raw.get()).unwrap();
        let expected = if v["n"] == 99 {
            &ValidationTokens::Absent
        } else {
            &tokens
        };
        assert_eq!(&c.item.validation_tokens, expected);
    }
    // A retried item and a dead letter keep the tokens after the others are gone…
    let mut retried = claimed.remove(0);
    retried.attempts = 1;
    store
        .retry(retried, Duration::from_millis(10))
        .await
        .unwrap();
    let dead = claimed.remove(0);
    store.dead_letter(dead, "boom".into()).await.unwrap();
    let rest = claimed.into_iter().map(|c| c.id).collect();
    store.complete_many(rest).await.unwrap();
    assert_eq!(deliveries(&store).await, 1);
    assert_eq!(
        store.list(10).await.unwrap()[0].item.validation_tokens,
        tokens
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let again = store.claim(10, Duration::from_millis(300)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].attempts, &again[0].item.validation_tokens),
        (1, &tokens)
    );
    store.complete(again[0].id.clone()).await.unwrap();
    // …through its replay, until it is completed.
    assert_eq!(deliveries(&store).await, 1);
    assert_eq!(store.replay(Vec::new()).await.unwrap(), 1);
    let replayed = store.claim(10, Duration::from_millis(300)).await.unwrap();
    assert_eq!(replayed[0].item.validation_tokens, tokens);
    store.complete(replayed[0].id.clone()).await.unwrap();
    assert_eq!(deliveries(&store).await, 0);
    assert_eq!(store.stats().await.unwrap().depth, 0);
    cleanup(&store).await;
}

fn store_clone(store: &RedisStore) -> RedisStore {
    RedisStore {
        config: store.config.clone(),
        consumer: store.consumer.clone(),
        conn: store.conn.clone(),
        blocking: tokio::sync::Mutex::new(store.conn.clone()),
        group_ready: tokio::sync::OnceCell::new(),
        housekeeping: Mutex::default(),
        scripts: Scripts::new(),
    }
}

#[tokio::test]
async fn dedupe_with_set_nx() {
    let Some(url) = redis_url() else { return };
    let store = store(&url).await;
    let key = DedupeKey([5; 32]);
    let lease = Duration::from_secs(60);
    assert_eq!(store.begin(key, "a", lease).await.unwrap(), Claim::Proceed);
    assert_eq!(
        store.begin(key, "b", lease).await.unwrap(),
        Claim::InProgress
    );
    store.abandon(key, "b").await.unwrap();
    assert_eq!(
        store.begin(key, "b", lease).await.unwrap(),
        Claim::InProgress
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
    cleanup(&store).await;
}

#[tokio::test]
async fn records_and_leases() {
    let Some(url) = redis_url() else { return };
    let a = store(&url).await;
    let b = RedisStore {
        consumer: random_id(),
        ..store_clone(&a)
    };
    a.put(SubscriptionRecord::new(
        "sub-1",
        Some(crate::ClientState::new("s")),
    ))
    .await
    .unwrap();
    let found = b
        .get_many(vec!["sub-1".into(), "nope".into()])
        .await
        .unwrap();
    assert!(
        found[0]
            .as_ref()
            .unwrap()
            .client_state
            .as_ref()
            .unwrap()
            .matches("s")
    );
    assert!(found[1].is_none());
    assert_eq!(b.all().await.unwrap().len(), 1);
    a.remove("sub-1".into()).await.unwrap();
    assert!(b.all().await.unwrap().is_empty());

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
    let left = a.expires_in("leader").await.unwrap().unwrap();
    assert!(left <= ttl && left > Duration::from_secs(50), "{left:?}");
    assert_eq!(a.expires_in("nobody").await.unwrap(), None);

    a.join("g", "a", ttl).await.unwrap();
    b.join("g", "b", ttl).await.unwrap();
    b.join("g2", "c", ttl).await.unwrap();
    b.join("g", "gone", Duration::ZERO).await.unwrap();
    assert_eq!(b.members("g").await.unwrap(), ["a", "b"]);
    a.leave("g", "a").await.unwrap();
    assert_eq!(a.members("g").await.unwrap(), ["b"]);
    cleanup(&a).await;
}

#[tokio::test]
async fn an_unreachable_redis_fails_fast() {
    // Nothing listens on port 1.
    let store = RedisStore::connect("redis://127.0.0.1:1", RedisConfig::default())
        .await
        .unwrap();
    assert!(matches!(
        store.append(vec![item(1)]).await,
        Err(StoreError::Unavailable(_))
    ));
}

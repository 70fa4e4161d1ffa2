use redis::AsyncCommands as _;

use super::*;
use crate::notification::ValidationTokens;
use crate::store::{DeadLetters, Inbox, StoredItem};

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

/// Deletes every key of `store`'s prefix.
pub(crate) async fn cleanup(store: &RedisStore) {
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

//! What only the PostgreSQL store does: group commits, takeovers of lapsed
//! claims, migrations raced by several instances, tokens kept per
//! delivery, failing fast while the server is out of reach.

use std::sync::Arc;

use super::*;
use crate::notification::ValidationTokens;
use crate::store::{Claim, Claimed, DeadLetters, Dedupe, DedupeKey, Inbox, StoredItem};

/// The PostgreSQL of `MSGRAPH_WEBHOOKS_POSTGRES_URL`, or `None` (and a
/// note) when unset.
pub(crate) fn postgres_url() -> Option<String> {
    match std::env::var("MSGRAPH_WEBHOOKS_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "skipped: MSGRAPH_WEBHOOKS_POSTGRES_URL is not set (PostgreSQL tests need it)"
            );
            None
        }
    }
}

/// A schema of the test's own, dropped by [`PostgresStore::drop_schema`].
pub(crate) fn test_config() -> PostgresConfig {
    PostgresConfig {
        schema: format!("msgraph_webhooks_test_{}", crate::random::hex_id(8)),
        ..PostgresConfig::default()
    }
}

fn item(n: u32) -> StoredItem {
    let raw = serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap();
    StoredItem::new(raw, ValidationTokens::Absent)
}

fn n(claimed: &Claimed) -> u64 {
    let value: serde_json::Value = serde_json::from_str(claimed.item.raw.get()).unwrap();
    value["n"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits() {
    let Some(url) = postgres_url() else { return };
    let store = Arc::new(PostgresStore::connect(&url, test_config()).await.unwrap());
    const APPENDS: u32 = 200;
    let appends: Vec<_> = (0..APPENDS)
        .map(|k| {
            let store = store.clone();
            tokio::spawn(async move { store.append(vec![item(2 * k), item(2 * k + 1)]).await })
        })
        .collect();
    for append in appends {
        append.await.unwrap().unwrap();
    }
    let commits = store.append_commits();
    assert!(
        commits < u64::from(APPENDS),
        "{commits} commits for {APPENDS} concurrent appends: no group commit"
    );
    assert_eq!(store.stats().await.unwrap().depth, u64::from(2 * APPENDS));
    let mut seen = Vec::new();
    loop {
        let batch = store.claim(500, Duration::ZERO).await.unwrap();
        if batch.is_empty() {
            break;
        }
        seen.extend(batch.iter().map(n));
        store
            .complete_many(batch.into_iter().map(|c| c.id).collect())
            .await
            .unwrap();
    }
    seen.sort_unstable();
    let expected: Vec<u64> = (0..u64::from(2 * APPENDS)).collect();
    assert_eq!(seen, expected, "every appended item, once");
    eprintln!("{APPENDS} concurrent appends in {commits} commits");
    store.drop_schema().await;
}

#[tokio::test]
async fn a_lapsed_claim_is_taken_over_and_retries_wait_their_turn() {
    let Some(url) = postgres_url() else { return };
    let config = PostgresConfig {
        claim_idle: Duration::from_millis(300),
        ..test_config()
    };
    let dead = PostgresStore::connect(&url, config.clone()).await.unwrap();
    let alive = PostgresStore::connect(&url, config).await.unwrap();
    dead.append(vec![item(1), item(2)]).await.unwrap();
    let held = dead.claim(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(held.len(), 2);
    assert!(
        alive.claim(10, Duration::ZERO).await.unwrap().is_empty(),
        "claimed items are nobody else's while the claim lasts"
    );
    // `dead` never settles them: they are claimable again once the claim lapses.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut taken = alive.claim(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(taken.len(), 2);
    taken.sort_by_key(n);
    assert_eq!((n(&taken[0]), n(&taken[1])), (1, 2));

    let mut later = taken.remove(1);
    later.attempts = 3;
    alive
        .retry(later, Duration::from_millis(200))
        .await
        .unwrap();
    alive.complete(taken.remove(0).id).await.unwrap();
    assert!(alive.claim(10, Duration::ZERO).await.unwrap().is_empty());
    let again = alive.claim(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((n(&again[0]), again[0].attempts), (2, 3));
    alive.complete(again[0].id.clone()).await.unwrap();
    assert_eq!(alive.stats().await.unwrap().depth, 0);
    alive.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_stores_starting_at_once_migrate_once() {
    let Some(url) = postgres_url() else { return };
    let config = test_config();
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let (url, config) = (url.clone(), config.clone());
            tokio::spawn(async move { PostgresStore::connect(&url, config).await })
        })
        .collect();
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.unwrap().unwrap());
    }
    for (k, store) in stores.iter().enumerate() {
        store.append(vec![item(k as u32)]).await.unwrap();
    }
    let versions = stores[0].sql("SELECT version FROM {s}.schema_migrations ORDER BY version");
    let rows = stores[0]
        .with(|client| async move { client.query(&versions, &[]).await })
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
    let expected: Vec<i32> = (1..=schema::LATEST).collect();
    assert_eq!(versions, expected, "each migration ran once");
    assert_eq!(stores[3].stats().await.unwrap().depth, 4);
    stores[0].drop_schema().await;
}

#[tokio::test]
async fn a_deliverys_tokens_are_stored_once_and_go_with_its_last_item() {
    let Some(url) = postgres_url() else { return };
    let store = PostgresStore::connect(&url, test_config()).await.unwrap();
    let tokens = ValidationTokens::Tokens(vec!["t".repeat(10_000), "u".into()].into());
    let delivery: Vec<StoredItem> = (0..50)
        .map(|n| {
            let raw = serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}"));
            StoredItem::new(raw.unwrap(), tokens.clone())
        })
        .collect();
    store.append(delivery).await.unwrap();
    store.append(vec![item(99)]).await.unwrap();
    let count = store.sql("SELECT count(*), coalesce(sum(length(tokens)), 0) FROM {s}.deliveries");
    let deliveries = || {
        let count = count.clone();
        async {
            let row = store
                .with(|client| async move { client.query_one(&count, &[]).await })
                .await
                .unwrap();
            (row.get::<_, i64>(0), row.get::<_, i64>(1))
        }
    };
    let (rows, bytes) = deliveries().await;
    assert_eq!(rows, 1, "one delivery row for 50 items");
    assert!(bytes < 11_000, "the tokens once: {bytes} bytes");

    let mut claimed = store.claim(100, Duration::from_secs(1)).await.unwrap();
    assert_eq!(claimed.len(), 51);
    for c in &claimed {
        let expected = if n(c) == 99 {
            &ValidationTokens::Absent
        } else {
            &tokens
        };
        assert_eq!(&c.item.validation_tokens, expected);
    }
    // A dead letter keeps the tokens after the others are gone…
    claimed.sort_by_key(n);
    let dead = claimed.remove(0);
    store.dead_letter(dead, "boom".into()).await.unwrap();
    store
        .complete_many(claimed.into_iter().map(|c| c.id).collect())
        .await
        .unwrap();
    assert_eq!(deliveries().await.0, 1);
    assert_eq!(
        store.list(10).await.unwrap()[0].item.validation_tokens,
        tokens
    );
    // …through its replay, until it is completed.
    assert_eq!(store.replay(Vec::new()).await.unwrap(), 1);
    let replayed = store.claim(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(
        (replayed[0].attempts, &replayed[0].item.validation_tokens),
        (0, &tokens)
    );
    store.complete(replayed[0].id.clone()).await.unwrap();
    assert_eq!(deliveries().await.0, 0);
    assert_eq!(store.stats().await.unwrap().depth, 0);
    store.drop_schema().await;
}

#[tokio::test]
async fn an_unreachable_postgres_connects_and_fails_fast() {
    // Nothing listens on port 1.
    let config = PostgresConfig {
        timeout: Duration::from_millis(500),
        ..PostgresConfig::default()
    };
    let started = std::time::Instant::now();
    let store = PostgresStore::connect("postgres://postgres@127.0.0.1:1/test", config)
        .await
        .unwrap();
    assert!(matches!(
        store.append(vec![item(1)]).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.claim(10, Duration::ZERO).await,
        Err(StoreError::Unavailable(_))
    ));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn bad_schema_names_and_urls_are_refused() {
    for schema in ["", "1abc", "has space", "quote\"d", &"x".repeat(64)] {
        let config = PostgresConfig {
            schema: schema.to_owned(),
            ..PostgresConfig::default()
        };
        let refused = PostgresStore::connect("postgres://postgres@127.0.0.1:1/test", config).await;
        assert!(refused.is_err(), "{schema:?}");
    }
    let refused = PostgresStore::connect("mysql:://nope", PostgresConfig::default()).await;
    assert!(refused.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_completes_leave_no_delivery_behind() {
    let Some(url) = postgres_url() else { return };
    let config = test_config();
    let a = Arc::new(PostgresStore::connect(&url, config.clone()).await.unwrap());
    let b = Arc::new(PostgresStore::connect(&url, config).await.unwrap());
    for d in 0..20u32 {
        let tokens = ValidationTokens::Tokens(vec![format!("token-{d}")].into());
        let delivery = (0..10)
            .map(|k| {
                let raw =
                    serde_json::value::RawValue::from_string(format!("{{\"n\":{}}}", d * 10 + k));
                StoredItem::new(raw.unwrap(), tokens.clone())
            })
            .collect();
        a.append(delivery).await.unwrap();
    }
    // Two workers take small batches that cut across deliveries, and
    // complete them at the same time.
    let drain = |store: Arc<PostgresStore>| {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let batch = store.claim(7, Duration::ZERO).await.unwrap();
                if batch.is_empty() {
                    return seen;
                }
                seen.extend(batch.iter().map(n));
                store
                    .complete_many(batch.into_iter().map(|c| c.id).collect())
                    .await
                    .unwrap();
            }
        })
    };
    let (from_a, from_b) = (drain(a.clone()), drain(b.clone()));
    let mut seen = from_a.await.unwrap();
    seen.extend(from_b.await.unwrap());
    seen.sort_unstable();
    assert_eq!(seen, (0..200).collect::<Vec<u64>>(), "every item, once");
    let count = a.sql("SELECT count(*) FROM {s}.deliveries");
    let left: i64 = a
        .with(|client| async move { client.query_one(&count, &[]).await })
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "each delivery went with its last item");
    a.drop_schema().await;
}

#[tokio::test]
async fn a_database_that_does_not_exist_is_refused_at_connect() {
    let Some(url) = postgres_url() else { return };
    let Ok(mut parsed) = url::Url::parse(&url) else {
        eprintln!("skipped: MSGRAPH_WEBHOOKS_POSTGRES_URL is not a URL this test can edit");
        return;
    };
    parsed.set_path("msgraph_webhooks_no_such_database");
    let refused = PostgresStore::connect(parsed.as_str(), test_config()).await;
    let Err(e) = refused else {
        panic!("connected to a database that does not exist")
    };
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[tokio::test]
async fn the_default_sslmode_encrypts_when_the_server_offers_tls() {
    let Some(url) = postgres_url() else { return };
    let store = PostgresStore::connect(&url, test_config()).await.unwrap();
    let row = store
        .with(|client| async move {
            client
                .query_one(
                    "SELECT current_setting('ssl') = 'on', \
                     (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
                    &[],
                )
                .await
        })
        .await
        .unwrap();
    let (offered, encrypted): (bool, bool) = (row.get(0), row.get(1));
    if url.contains("sslmode=disable") {
        assert!(!encrypted);
    } else {
        assert_eq!(
            encrypted, offered,
            "TLS is used exactly when the server offers it"
        );
    }
    store.drop_schema().await;
}

#[tokio::test]
async fn expired_dedupe_keys_are_swept() {
    let Some(url) = postgres_url() else { return };
    let store = PostgresStore::connect(&url, test_config()).await.unwrap();
    let (lapsed, kept) = (
        DedupeKey::from_bytes([1; 32]),
        DedupeKey::from_bytes([2; 32]),
    );
    store.finish(lapsed, "a", Duration::ZERO).await.unwrap();
    store
        .finish(kept, "a", Duration::from_secs(3600))
        .await
        .unwrap();
    let count = store.sql("SELECT count(*) FROM {s}.dedupe");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let count = count.clone();
        let left: i64 = store
            .with(|client| async move { client.query_one(&count, &[]).await })
            .await
            .unwrap()
            .get(0);
        if left == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} keys left after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        store
            .begin(kept, "b", Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Duplicate
    );
    store.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_stores_append_wakes_a_waiting_claimer_by_notify() {
    let Some(url) = postgres_url() else { return };
    let config = test_config();
    let appender = Arc::new(PostgresStore::connect(&url, config.clone()).await.unwrap());
    let claimer = Arc::new(PostgresStore::connect(&url, config).await.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !claimer.wakeup.listening.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "the claimer listens");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting = tokio::spawn({
        let claimer = claimer.clone();
        async move {
            let claimed = claimer.claim(10, Duration::from_secs(5)).await.unwrap();
            (claimed.len(), std::time::Instant::now())
        }
    });
    // The claimer has polled once and now waits: only a notification wakes
    // it before its next poll, half a second on.
    tokio::time::sleep(Duration::from_millis(100)).await;
    appender.append(vec![item(1)]).await.unwrap();
    let appended = std::time::Instant::now();
    let (claimed, at) = waiting.await.unwrap();
    assert_eq!(claimed, 1);
    let took = at.duration_since(appended);
    assert!(
        took < wakeup::POLL_LISTENING / 2,
        "woken {took:?} after the append: by a poll, not by NOTIFY"
    );
    appender.drop_schema().await;
}

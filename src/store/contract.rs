//! The storage contracts' test suite, run against every backend: what
//! [`Inbox`], [`DeadLetters`], [`Dedupe`], [`RecordStore`], [`Cursors`] and
//! [`Lease`] promise, whichever store keeps them. What only one backend does
//! (reopening, lock files, schema migrations, group commits, takeovers by
//! the consumer group) is tested beside it.
//!
//! Each check takes two handles on one store (`a` and `b`): two processes
//! on one data directory, one Redis or one PostgreSQL schema, or the same
//! memory twice.

use std::time::Duration;

use super::{
    Backend, Claim, Claimed, CursorProgress, DedupeKey, DeltaCursor, MemoryInbox, StoredItem,
    SubscriptionRecord,
};
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

fn progress(resource: &str, delta_link: Option<&str>, next_link: Option<&str>) -> CursorProgress {
    CursorProgress::of(&DeltaCursor {
        resource: resource.into(),
        query: format!("{resource}/delta"),
        delta_link: delta_link.map(Into::into),
        next_link: next_link.map(Into::into),
        last_success_ms: delta_link.map(|_| 1_000),
        ..DeltaCursor::default()
    })
}

/// A cursor's progress is read by the other handle; a due mark creates a
/// cursor or keeps an existing one's links, and only the latest mark stays;
/// a round's save leaves the marks alone, and its clearing spares a mark
/// made after it started.
async fn cursors(a: &Backend, b: &Backend) {
    let (a, b) = (a.cursors(), b.cursors());
    let key = "tenant|users/ada/messages/delta";
    assert_eq!(a.get(key).await.unwrap(), None);
    let saved = progress("users/ada/messages", Some("https://d/1"), None);
    a.save(key, saved.clone()).await.unwrap();
    let cursor = b.get(key).await.unwrap().unwrap();
    assert_eq!(CursorProgress::of(&cursor), saved);
    assert_eq!((cursor.due_reason, cursor.due_at_ms), (None, None));

    b.mark_due(key, "other", "other/delta", "missed", 2_000)
        .await
        .unwrap();
    let cursor = a.get(key).await.unwrap().unwrap();
    assert_eq!(
        CursorProgress::of(&cursor),
        saved,
        "a mark keeps the cursor's links"
    );
    assert_eq!(
        (cursor.due_reason.as_deref(), cursor.due_at_ms),
        (Some("missed"), Some(2_000))
    );
    // A round in progress saves a page: the mark stays.
    let paging = progress(
        "users/ada/messages",
        Some("https://d/1"),
        Some("https://n/2"),
    );
    a.save(key, paging.clone()).await.unwrap();
    let cursor = b.get(key).await.unwrap().unwrap();
    assert_eq!(CursorProgress::of(&cursor), paging);
    assert_eq!(cursor.due_at_ms, Some(2_000), "a save leaves the mark");

    b.mark_due(key, "", "", "trigger", 3_000).await.unwrap();
    let cursor = a.get(key).await.unwrap().unwrap();
    assert_eq!(
        (cursor.due_reason.as_deref(), cursor.due_at_ms),
        (Some("trigger"), Some(3_000)),
        "the latest mark wins"
    );
    a.clear_due(key, 2_999).await.unwrap();
    let cursor = b.get(key).await.unwrap().unwrap();
    assert_eq!(
        cursor.due_at_ms,
        Some(3_000),
        "a mark made after the round started stays"
    );
    a.clear_due(key, 3_000).await.unwrap();
    let cursor = b.get(key).await.unwrap().unwrap();
    assert_eq!(CursorProgress::of(&cursor), paging);
    assert_eq!((cursor.due_reason, cursor.due_at_ms), (None, None));
    b.mark_due(key, "", "", "trigger", 4_000).await.unwrap();
    a.clear_due(key, 9_000).await.unwrap();
    assert_eq!(b.get(key).await.unwrap().unwrap().due_at_ms, None);
    a.clear_due("nobody", 9_000).await.unwrap();
    assert_eq!(
        a.get("nobody").await.unwrap(),
        None,
        "clearing creates nothing"
    );

    let fresh = "tenant|groups/g/delta";
    a.mark_due(fresh, "groups/g", "groups/g/delta", "removed", 5_000)
        .await
        .unwrap();
    let created = b.get(fresh).await.unwrap().unwrap();
    let mut expected = DeltaCursor {
        resource: "groups/g".into(),
        query: "groups/g/delta".into(),
        ..DeltaCursor::default()
    };
    expected.due_reason = Some("removed".into());
    expected.due_at_ms = Some(5_000);
    assert_eq!(created, expected, "a mark creates the cursor with no links");

    let mut all = b.all().await.unwrap();
    all.sort_by(|x, y| x.0.cmp(&y.0));
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, [fresh, key]);
    assert_eq!(all[0].1, expected);
    b.remove(key).await.unwrap();
    assert_eq!(a.get(key).await.unwrap(), None);
    let left: Vec<String> = a.all().await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, [fresh]);
    a.remove(fresh).await.unwrap();
    a.remove(fresh).await.unwrap();
    assert!(b.all().await.unwrap().is_empty());
}

/// Keys and links are stored as given, whatever their characters and
/// length.
async fn cursor_keys_and_links_as_given(a: &Backend, b: &Backend) {
    let (a, b) = (a.cursors(), b.cursors());
    let long_link = format!(
        "https://graph.microsoft.com/v1.0/delta?$deltatoken={}",
        "t".repeat(8 * 1024)
    );
    let keys = [
        "tenant|users('ada')/messages/delta".to_owned(),
        "a|b|c/d/e|".to_owned(),
        r#"quotes ' " ` \ and * ? [ ] { } : spaces"#.to_owned(),
        "unicode: åäö ✓ 日本語 🦀".to_owned(),
        "k".repeat(2 * 1024),
    ];
    for (n, key) in keys.iter().enumerate() {
        let link = if n == 0 {
            long_link.clone()
        } else {
            format!("https://d/{n}")
        };
        a.save(key, progress("r", Some(&link), Some(&link)))
            .await
            .unwrap();
        a.mark_due(key, "", "", "trigger", 1).await.unwrap();
    }
    for (n, key) in keys.iter().enumerate() {
        let cursor = b.get(key).await.unwrap().unwrap();
        let link = if n == 0 {
            long_link.clone()
        } else {
            format!("https://d/{n}")
        };
        assert_eq!(
            cursor.delta_link.as_deref(),
            Some(link.as_str()),
            "{key:.40}"
        );
        assert_eq!(
            cursor.next_link.as_deref(),
            Some(link.as_str()),
            "{key:.40}"
        );
        assert_eq!(cursor.due_at_ms, Some(1), "{key:.40}");
        b.clear_due(key, 1).await.unwrap();
        assert_eq!(a.get(key).await.unwrap().unwrap().due_at_ms, None);
    }
    let mut listed: Vec<String> = b.all().await.unwrap().into_iter().map(|(k, _)| k).collect();
    listed.sort();
    let mut expected = keys.to_vec();
    expected.sort();
    assert_eq!(listed, expected);
    for key in &keys {
        b.remove(key).await.unwrap();
    }
    assert!(a.all().await.unwrap().is_empty());
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
    cursors(a, b).await;
    cursor_keys_and_links_as_given(a, b).await;
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

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_keeps_every_contract() {
    use std::sync::Arc;

    use super::PostgresStore;
    use super::postgres::tests::{postgres_url, test_config};

    let Some(url) = postgres_url() else { return };
    let config = test_config();
    let a = Arc::new(PostgresStore::connect(&url, config.clone()).await.unwrap());
    let b = Arc::new(PostgresStore::connect(&url, config).await.unwrap());
    all(&Backend::postgres(a.clone()), &Backend::postgres(b)).await;
    a.drop_schema().await;
}

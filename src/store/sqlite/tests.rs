use std::time::Duration;

use rusqlite::params;

use super::ops::STATS_SQL;
use super::schema::DEDUPE_PAGE_SIZE;
use super::*;
use crate::notification::ValidationTokens;
use crate::store::{
    Claim, Claimed, CursorProgress, Cursors, DeadLetters, Dedupe, DedupeKey, DeltaCursor, Inbox,
    Lease, RecordStore, StoredItem, SubscriptionRecord,
};

fn item(n: u32) -> StoredItem {
    let raw = serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap();
    StoredItem::new(raw, ValidationTokens::Absent)
}

fn n(claimed: &Claimed) -> u64 {
    let v: serde_json::Value = serde_json::from_str(claimed.item.raw.get()).unwrap();
    v["n"].as_u64().unwrap()
}

/// Marks items as claimed by `consumer` behind the store's back, as a
/// process that died holding them left them (a store dropped in-process
/// releases its claims first).
fn claimed_by(dir: &Path, consumer: &str, ids: &[i64]) {
    let conn = Connection::open(dir.join(DATABASE)).unwrap();
    for id in ids {
        conn.execute(
            "UPDATE items SET claimed_by = ?1, claimed_at_ms = 1 WHERE id = ?2",
            params![consumer, id],
        )
        .unwrap();
    }
}

/// A consumer whose process is gone: its lock file, unlocked.
fn dead_consumer(dir: &Path, name: &str) {
    fs::write(dir.join(CONSUMERS).join(format!("{name}.lock")), b"").unwrap();
}

#[tokio::test]
async fn items_survive_reopening_and_dead_consumers_release_claims() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store.append((0..5).map(item).collect()).await.unwrap();
        let claimed = store.claim(2, Duration::ZERO).await.unwrap();
        assert_eq!(claimed.iter().map(n).collect::<Vec<_>>(), [0, 1]);
        store.complete(claimed[0].id.clone()).await.unwrap();
    }
    // Item 1 (id 2) left claimed by a process that died.
    dead_consumer(dir.path(), "dead");
    claimed_by(dir.path(), "dead", &[2]);
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.stats().await.unwrap().depth, 4);
    let mut seen = Vec::new();
    loop {
        let batch = store.claim(10, Duration::from_millis(200)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for c in batch {
            seen.push(n(&c));
            store.complete(c.id).await.unwrap();
        }
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        [1, 2, 3, 4],
        "item 1, claimed by the dead consumer, is handed out again"
    );
    assert_eq!(store.stats().await.unwrap().depth, 0);
}

#[tokio::test]
async fn claims_of_a_consumer_without_a_lock_file_are_released_before_the_first_claim() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store.append((0..2).map(item).collect()).await.unwrap();
    }
    // Claimed by a consumer whose lock file was removed by hand: no sweep
    // can tell it is dead any more.
    claimed_by(dir.path(), "gone", &[1]);
    let store = SqliteStore::open(dir.path()).unwrap();
    let mut seen = Vec::new();
    for claimed in store.claim(10, Duration::ZERO).await.unwrap() {
        seen.push(n(&claimed));
    }
    seen.sort_unstable();
    assert_eq!(seen, [0, 1], "the orphaned claim was released at once");
}

#[tokio::test]
async fn dedupe_states_persist() {
    let dir = tempfile::tempdir().unwrap();
    let key = DedupeKey::from_bytes([9; 32]);
    let lease = Duration::from_secs(60);
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.begin(key, "a", lease).await.unwrap(), Claim::Proceed);
        assert_eq!(
            store.begin(key, "b", lease).await.unwrap(),
            Claim::InProgress
        );
        store
            .finish(key, "a", Duration::from_secs(60))
            .await
            .unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(
        store.begin(key, "c", lease).await.unwrap(),
        Claim::Duplicate
    );
    let other = DedupeKey::from_bytes([3; 32]);
    assert_eq!(
        store.begin(other, "c", lease).await.unwrap(),
        Claim::Proceed
    );
    store.abandon(other, "c").await.unwrap();
    assert_eq!(
        store.begin(other, "d", lease).await.unwrap(),
        Claim::Proceed
    );
    // Only the holder releases a key.
    store.abandon(other, "e").await.unwrap();
    assert_eq!(
        store.begin(other, "f", lease).await.unwrap(),
        Claim::InProgress
    );
}

fn deliveries(store: &SqliteStore) -> i64 {
    let conn = Connection::open(store.path()).unwrap();
    conn.query_row("SELECT COUNT(*) FROM deliveries", [], |row| row.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_deliverys_tokens_are_stored_once_and_go_with_its_last_item() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let tokens = ValidationTokens::Tokens(vec!["t".repeat(10_000), "u".into()].into());
    let delivery: Vec<StoredItem> = (0..50)
        .map(|n| {
            let raw = serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}"));
            StoredItem::new(raw.unwrap(), tokens.clone())
        })
        .collect();
    store.append(delivery).await.unwrap();
    store.append(vec![item(99)]).await.unwrap();
    let size: i64 = Connection::open(store.path())
        .unwrap()
        .query_row("SELECT SUM(LENGTH(payload)) FROM items", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert!(size < 5_000, "the items hold no tokens: {size} bytes");
    assert_eq!(deliveries(&store), 1);

    let mut claimed = store.claim(100, Duration::ZERO).await.unwrap();
    assert_eq!(claimed.len(), 51);
    for c in &claimed {
        let expected = if n(c) == 99 {
            &ValidationTokens::Absent
        } else {
            &tokens
        };
        assert_eq!(&c.item.validation_tokens, expected);
    }
    // One dead letter keeps the tokens after the other items are gone…
    let dead = claimed.remove(0);
    store.dead_letter(dead, "boom".into()).await.unwrap();
    let rest = claimed.into_iter().map(|c| c.id).collect();
    store.complete_many(rest).await.unwrap();
    assert_eq!(deliveries(&store), 1);
    let letters = store.list(10).await.unwrap();
    assert_eq!(letters[0].item.validation_tokens, tokens);
    // …through its replay, until it is completed.
    assert_eq!(store.replay(Vec::new()).await.unwrap(), 1);
    let again = store.claim(10, Duration::ZERO).await.unwrap();
    assert_eq!(again[0].item.validation_tokens, tokens);
    store.complete(again[0].id.clone()).await.unwrap();
    assert_eq!(deliveries(&store), 0);
    assert_eq!(store.stats().await.unwrap().depth, 0);
}

#[tokio::test]
async fn a_database_of_the_previous_schema_opens_with_its_items_and_depth() {
    let dir = tempfile::tempdir().unwrap();
    {
        // The schema before deliveries and counters, with tokens inline.
        let conn = Connection::open(dir.path().join(DATABASE)).unwrap();
        conn.execute_batch(
            "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL,
                 received_at_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                 not_before_ms INTEGER NOT NULL DEFAULT 0, claimed_by TEXT, claimed_at_ms INTEGER);
             CREATE TABLE dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL,
                 received_at_ms INTEGER NOT NULL, attempts INTEGER NOT NULL, reason TEXT NOT NULL,
                 dead_at_ms INTEGER NOT NULL);",
        )
        .unwrap();
        let tokens = ValidationTokens::Tokens(vec!["t".to_owned()].into());
        for n in 0..3 {
            let raw = serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}"));
            let payload = serde_json::to_vec(&StoredItem::new(raw.unwrap(), tokens.clone()));
            conn.execute(
                "INSERT INTO items (payload, received_at_ms) VALUES (?1, 1)",
                params![payload.unwrap()],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.stats().await.unwrap().depth, 3);
    store.append(vec![item(3)]).await.unwrap();
    assert_eq!(store.stats().await.unwrap().depth, 4);
    let claimed = store.claim(10, Duration::ZERO).await.unwrap();
    assert_eq!(claimed.len(), 4);
    let with_tokens = claimed
        .iter()
        .filter(|c| matches!(c.item.validation_tokens, ValidationTokens::Tokens(_)))
        .count();
    assert_eq!(with_tokens, 3, "the old rows keep their inline tokens");
    store
        .complete_many(claimed.into_iter().map(|c| c.id).collect())
        .await
        .unwrap();
    assert_eq!(store.stats().await.unwrap().depth, 0);
    drop(store);
    // Opened again, the counter is not counted twice.
    let store = SqliteStore::open(dir.path()).unwrap();
    store.append(vec![item(4)]).await.unwrap();
    assert_eq!(store.stats().await.unwrap().depth, 1);
}

#[tokio::test]
async fn a_data_dir_of_the_schema_before_cursors_opens_with_its_records_and_keeps_cursors() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        let mut record = SubscriptionRecord::new("sub-1", None);
        record.owner.insert("key".into(), "mail".into());
        store.put(record).await.unwrap();
        let ttl = Duration::from_secs(60);
        assert!(store.acquire("leader", "a", ttl).await.unwrap());
        store.append(vec![item(1)]).await.unwrap();
    }
    // The previous schema is this one without `cursors`.
    Connection::open(dir.path().join(DATABASE))
        .unwrap()
        .execute_batch("DROP TABLE cursors")
        .unwrap();

    let store = SqliteStore::open(dir.path()).unwrap();
    let records = RecordStore::all(&store).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].owner["key"], "mail");
    assert!(store.expires_in("leader").await.unwrap().is_some());
    assert_eq!(store.stats().await.unwrap().depth, 1);
    assert!(Cursors::all(&store).await.unwrap().is_empty());
    let cursor = DeltaCursor {
        resource: "users/ada/messages".into(),
        query: "users/ada/messages/delta".into(),
        delta_link: Some("https://d/1".into()),
        last_success_ms: Some(1),
        ..DeltaCursor::default()
    };
    store
        .save("t|users/ada/messages/delta", CursorProgress::of(&cursor))
        .await
        .unwrap();
    drop(store);

    // Opened again, the cursor is there and the migration is not repeated.
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(
        Cursors::get(&store, "t|users/ada/messages/delta")
            .await
            .unwrap(),
        Some(cursor)
    );
    assert_eq!(RecordStore::all(&store).await.unwrap().len(), 1);
}

#[tokio::test]
async fn stats_cost_the_same_whatever_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    const BACKLOG: u32 = 20_000;
    for chunk in 0..BACKLOG / 1000 {
        let items = (0..1000).map(|n| item(chunk * 1000 + n)).collect();
        store.append(items).await.unwrap();
    }
    let claimed = store.claim(10, Duration::ZERO).await.unwrap();
    store.complete(claimed[0].id.clone()).await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.depth, u64::from(BACKLOG) - 1);
    assert!(stats.oldest_age.is_some());
    if let Ok(n) = std::env::var("MSGRAPH_WEBHOOKS_STATS_BACKLOG") {
        // Timing at a large backlog, by hand: prints the mean of 100 calls.
        let n: u32 = n.parse().unwrap();
        for chunk in 0..n / 1000 {
            let items = (0..1000).map(|i| item(chunk * 1000 + i)).collect();
            store.append(items).await.unwrap();
        }
        let started = std::time::Instant::now();
        for _ in 0..100 {
            store.stats().await.unwrap();
        }
        eprintln!(
            "stats() at a backlog of {}: {:?}",
            n + BACKLOG - 1,
            started.elapsed() / 100
        );
    }
    // The statements /metrics runs: a few virtual-machine steps each,
    // not one per stored item.
    let conn = Connection::open(store.path()).unwrap();
    for sql in STATS_SQL {
        let mut stmt = conn.prepare(sql).unwrap();
        let mut rows = stmt.query([]).unwrap();
        while rows.next().unwrap().is_some() {}
        drop(rows);
        let steps = stmt.get_status(rusqlite::StatementStatus::VmStep);
        assert!(
            steps < 100,
            "{sql}: {steps} steps over a backlog of {BACKLOG}"
        );
    }
}

#[tokio::test]
async fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let mut tasks = Vec::new();
    for t in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                store.append(vec![item(t * 100 + i)]).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.stats().await.unwrap().depth, 32 * 50);
}

#[tokio::test]
async fn this_processs_workers_take_its_appends_from_memory_and_others_see_them_once_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let a = SqliteStore::open(dir.path()).unwrap();
    let b = SqliteStore::open(dir.path()).unwrap();
    // A worker of `a` claims (nothing yet): from now on `a`'s appends are
    // born claimed by `a`, for its workers.
    assert!(a.claim(10, Duration::ZERO).await.unwrap().is_empty());
    a.append((0..3).map(item).collect()).await.unwrap();
    assert_eq!(b.stats().await.unwrap().depth, 3, "stored before the 202");
    assert!(
        b.claim(10, Duration::ZERO).await.unwrap().is_empty(),
        "another process can't take them while `a` lives"
    );
    let mine = a.claim(2, Duration::ZERO).await.unwrap();
    assert_eq!(mine.iter().map(n).collect::<Vec<_>>(), [0, 1]);
    a.complete_many(mine.into_iter().map(|c| c.id).collect())
        .await
        .unwrap();
    // `a` goes (its lock file unlocked, claims released) with item 2 unhandled.
    drop(a);
    let mut left = Vec::new();
    for _ in 0..50 {
        left = b.claim(10, Duration::from_millis(100)).await.unwrap();
        if !left.is_empty() {
            break;
        }
    }
    assert_eq!(left.iter().map(n).collect::<Vec<_>>(), [2]);
}

#[tokio::test]
async fn a_backlog_in_the_database_goes_first_and_new_appends_wait_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let before = SqliteStore::open(dir.path()).unwrap();
        before.append((0..10).map(item).collect()).await.unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    let first = store.claim(4, Duration::ZERO).await.unwrap();
    assert_eq!(first.iter().map(n).collect::<Vec<_>>(), [0, 1, 2, 3]);
    // A full batch from the database: more is waiting there, so appends
    // go behind it rather than ahead of it in memory.
    store.append((10..12).map(item).collect()).await.unwrap();
    let mut order: Vec<u64> = first.iter().map(n).collect();
    loop {
        let batch = store.claim(4, Duration::ZERO).await.unwrap();
        if batch.is_empty() {
            break;
        }
        order.extend(batch.iter().map(n));
        store
            .complete_many(batch.into_iter().map(|c| c.id).collect())
            .await
            .unwrap();
    }
    assert_eq!(order, (0..12).collect::<Vec<_>>());
}

/// Handles items until every one of `wanted` came by, never letting the
/// store be idle: every round appends an item (numbered from 100) and
/// claims something. Fails after 30 s.
async fn handle_while_busy(store: &SqliteStore, wanted: &[u64]) {
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut next = 100;
    while !wanted.iter().all(|w| seen.contains(w)) {
        assert!(std::time::Instant::now() < deadline, "saw {seen:?}");
        store.append(vec![item(next)]).await.unwrap();
        next += 1;
        let batch = store.claim(10, Duration::ZERO).await.unwrap();
        assert!(!batch.is_empty());
        seen.extend(batch.iter().map(n));
        store
            .complete_many(batch.into_iter().map(|c| c.id).collect())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_busy_process_takes_over_a_dead_ones_claims() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    store.append((0..2).map(item).collect()).await.unwrap();
    dead_consumer(dir.path(), "dead");
    claimed_by(dir.path(), "dead", &[1, 2]);
    // Claims never come back empty here, yet the dead consumer's items
    // come back within a few sweeps.
    handle_while_busy(&store, &[0, 1]).await;
}

#[tokio::test]
async fn handled_keys_of_a_data_dir_from_before_the_dedupe_database_stay_handled() {
    let dir = tempfile::tempdir().unwrap();
    let key = DedupeKey::from_bytes([7; 32]);
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store.append(vec![item(1)]).await.unwrap();
    }
    {
        // Where earlier versions kept the handled keys: the inbox's file.
        let conn = Connection::open(dir.path().join(DATABASE)).unwrap();
        conn.execute_batch(
            "CREATE TABLE dedupe_done (key BLOB PRIMARY KEY, expires_at_ms INTEGER NOT NULL)
                 WITHOUT ROWID;",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO dedupe_done VALUES (?1, ?2)",
            params![&key.as_bytes()[..], now_ms() + 60_000],
        )
        .unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    let lease = Duration::from_secs(60);
    assert_eq!(
        store.begin(key, "a", lease).await.unwrap(),
        Claim::Duplicate
    );
    assert_eq!(store.stats().await.unwrap().depth, 1);
    store.integrity_check().await.unwrap();
    let conn = Connection::open(dir.path().join(DATABASE)).unwrap();
    let left: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'dedupe_done'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "moved, not copied");
    drop(store);
    // Opened again: nothing left to move, the key still handled.
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(
        store.begin(key, "b", lease).await.unwrap(),
        Claim::Duplicate
    );
}

#[tokio::test]
async fn a_key_one_process_handled_is_a_duplicate_for_another() {
    let dir = tempfile::tempdir().unwrap();
    let a = SqliteStore::open(dir.path()).unwrap();
    let b = SqliteStore::open(dir.path()).unwrap();
    let lease = Duration::from_secs(60);
    let keys: Vec<DedupeKey> = (0..100u8).map(|n| DedupeKey::from_bytes([n; 32])).collect();
    let claims = a.begin_many(keys.clone(), "a", lease).await.unwrap();
    assert!(claims.iter().all(|c| *c == Claim::Proceed));
    a.finish_many(keys[..50].to_vec(), "a", Duration::from_secs(60))
        .await
        .unwrap();
    let seen = b.begin_many(keys.clone(), "b", lease).await.unwrap();
    assert!(seen[..50].iter().all(|c| *c == Claim::Duplicate));
    assert!(
        seen[50..].iter().all(|c| *c == Claim::Proceed),
        "held by `a` in its memory only: `b` may handle them (at least once)"
    );
    // The keys' database keeps small pages (see DEDUPE_PAGE_SIZE).
    let conn = Connection::open(dir.path().join(DEDUPE_DATABASE)).unwrap();
    let size: i64 = conn
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .unwrap();
    assert_eq!(size, DEDUPE_PAGE_SIZE);
}

#[tokio::test]
async fn an_append_cancelled_mid_commit_is_handed_out_even_while_busy() {
    use futures_util::FutureExt as _;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(store.claim(10, Duration::ZERO).await.unwrap().is_empty());
    // Polled once (its transaction goes to the writer), then dropped, as a
    // request whose client went away: it commits, claimed by this process,
    // but never reaches the hand-off.
    let mut cancelled = store.append(vec![item(0)]);
    assert!((&mut cancelled).now_or_never().is_none());
    drop(cancelled);
    handle_while_busy(&store, &[0]).await;
}

//! The inbox and the dead letters in PostgreSQL tables.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use tokio_postgres::Row;

use super::writer::Rows;
use super::{PostgresStore, unavailable};
use crate::notification::ValidationTokens;
use crate::store::{
    Claimed, DeadLetter, DeadLetters, EntryId, Inbox, InboxStats, StoreError, StoredItem, unix_ms,
};

/// Claims ready items, and items whose claim lapsed, in one statement:
/// `SKIP LOCKED` so concurrent claimers take different items without
/// waiting on each other. Returns the previous claimer, to log takeovers.
const CLAIM: &str = "
WITH c AS (
    SELECT id, claimed_by FROM {s}.items
    WHERE available_at_ms <= {s}.now_ms()
    ORDER BY available_at_ms, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE {s}.items i SET claimed_by = $1, available_at_ms = {s}.now_ms() + $3
FROM c WHERE i.id = c.id
RETURNING i.id, i.payload, i.attempts, i.delivery_id, c.claimed_by";

/// Removes items and counts them off their deliveries. The deliveries are
/// locked in id order first, so two workers completing items of the same
/// deliveries never wait on each other in a circle (a deadlock).
const COMPLETE: &str = "
WITH gone AS (
    DELETE FROM {s}.items WHERE id = ANY($1) RETURNING delivery_id
), named AS (
    SELECT delivery_id, count(*)::integer AS n FROM gone
    WHERE delivery_id IS NOT NULL GROUP BY delivery_id
), locked AS MATERIALIZED (
    SELECT d.id, named.n FROM {s}.deliveries d JOIN named ON d.id = named.delivery_id
    ORDER BY d.id FOR UPDATE OF d
)
UPDATE {s}.deliveries d SET refs = d.refs - locked.n
FROM locked WHERE d.id = locked.id
RETURNING d.id, d.refs";

/// Moves an item to the dead letters; its delivery's tokens stay, named
/// by the dead letter now.
const DEAD_LETTER: &str = "
WITH gone AS (
    DELETE FROM {s}.items WHERE id = $1 RETURNING payload, received_at_ms, delivery_id
)
INSERT INTO {s}.dead_letters (payload, received_at_ms, delivery_id, attempts, reason, dead_at_ms)
SELECT payload, received_at_ms, delivery_id, $2, $3, {s}.now_ms() FROM gone";

/// Moves dead letters (all of them when `$1` is empty) back as fresh items.
const REPLAY: &str = "
WITH gone AS (
    DELETE FROM {s}.dead_letters WHERE cardinality($1::bigint[]) = 0 OR id = ANY($1)
    RETURNING id, payload, received_at_ms, delivery_id
)
INSERT INTO {s}.items (payload, received_at_ms, delivery_id, available_at_ms)
SELECT payload, received_at_ms, delivery_id, {s}.now_ms() FROM gone ORDER BY id";

pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn parse_id(id: &EntryId) -> Result<i64, StoreError> {
    id.as_str()
        .parse()
        .map_err(|_| StoreError::unavailable(format!("not an item id of this store: {id}")))
}

impl PostgresStore {
    /// One claim statement: up to `max` items, perhaps none.
    async fn claim_now(&self, max: usize) -> Result<Vec<Claimed>, StoreError> {
        let claim = self.sql(CLAIM);
        let tokens = self.sql("SELECT id, tokens FROM {s}.deliveries WHERE id = ANY($1)");
        let (consumer, idle) = (self.consumer.as_str(), ms(self.config.claim_idle));
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        let (rows, tokens) = self
            .with(|client| async move {
                let statement = client.prepare_cached(&claim).await?;
                let rows = client
                    .query(&statement, &[&consumer, &limit, &idle])
                    .await?;
                let mut deliveries: Vec<i64> = rows
                    .iter()
                    .filter_map(|r| r.get::<_, Option<i64>>(3))
                    .collect();
                if deliveries.is_empty() {
                    return Ok((rows, HashMap::new()));
                }
                deliveries.sort_unstable();
                deliveries.dedup();
                let statement = client.prepare_cached(&tokens).await?;
                let found = client.query(&statement, &[&deliveries]).await?;
                Ok((rows, delivery_tokens(&found)))
            })
            .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        let mut taken_over = 0;
        for row in rows {
            let id: i64 = row.get(0);
            let previous: Option<String> = row.get(4);
            if previous.is_some_and(|p| p != self.consumer) {
                taken_over += 1;
            }
            let delivery: Option<i64> = row.get(3);
            let tokens = delivery.map(|d| tokens.get(&d).cloned().unwrap_or_default());
            match StoredItem::from_json(row.get(1), tokens) {
                Ok(item) => claimed.push(Claimed {
                    id: EntryId::new(id.to_string()),
                    item,
                    attempts: u32::try_from(row.get::<_, i32>(2)).unwrap_or(0),
                }),
                Err(e) => {
                    // Nothing can handle it: move it aside rather than loop on it.
                    tracing::error!(id, error = %e, "unreadable item moved to the dead letters");
                    let dead = self.sql(DEAD_LETTER);
                    let reason = format!("unreadable item: {e}");
                    self.with(|client| async move {
                        client.execute(&dead, &[&id, &0i32, &reason]).await
                    })
                    .await?;
                }
            }
        }
        if taken_over > 0 {
            tracing::info!(items = taken_over, "took over items of a silent consumer");
        }
        Ok(claimed)
    }
}

/// The tokens of each delivery row (`id`, `tokens`) read.
fn delivery_tokens(rows: &[Row]) -> HashMap<i64, ValidationTokens> {
    rows.iter()
        .map(|row| {
            // Unreadable: encrypted items then fail closed (no tokens).
            let tokens = serde_json::from_slice(row.get::<_, &[u8]>(1)).unwrap_or_default();
            (row.get(0), tokens)
        })
        .collect()
}

impl Inbox for PostgresStore {
    fn append(&self, items: Vec<StoredItem>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let rows = Rows::of(&items)?;
            self.ensure_migrated().await?;
            tokio::time::timeout(self.config.timeout, self.appends.append(rows))
                .await
                .map_err(|_| unavailable("no answer in time"))??;
            self.wake_claimer();
            Ok(())
        })
    }

    fn claim(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let appended = self.wakeup.appended.notified();
                tokio::pin!(appended);
                appended.as_mut().enable();
                self.wakeup.waking.store(false, Ordering::SeqCst);
                let claimed = self.claim_now(max).await?;
                if claimed.len() >= max {
                    // Perhaps more are waiting: another claimer's turn.
                    self.wake_claimer();
                }
                if !claimed.is_empty() {
                    return Ok(claimed);
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Ok(Vec::new());
                }
                // Appends wake us at once (ours directly, others' by NOTIFY);
                // retries coming due and lapsed claims are polled.
                let poll = self.wakeup.poll();
                let _ = tokio::time::timeout((deadline - now).min(poll), appended).await;
            }
        })
    }

    fn complete(&self, id: EntryId) -> BoxFuture<'_, Result<(), StoreError>> {
        self.complete_many(vec![id])
    }

    fn complete_many(&self, ids: Vec<EntryId>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut ids = ids.iter().map(parse_id).collect::<Result<Vec<_>, _>>()?;
            if ids.is_empty() {
                return Ok(());
            }
            ids.sort_unstable();
            let complete = self.sql(COMPLETE);
            let unnamed = self.sql("DELETE FROM {s}.deliveries WHERE id = ANY($1) AND refs <= 0");
            self.with(|client| async move {
                let statement = client.prepare_cached(&complete).await?;
                let counted = client.query(&statement, &[&ids]).await?;
                let done: Vec<i64> = counted
                    .iter()
                    .filter(|row| row.get::<_, i32>(1) <= 0)
                    .map(|row| row.get(0))
                    .collect();
                // If this fails, the sweep removes them later.
                if !done.is_empty() {
                    let statement = client.prepare_cached(&unnamed).await?;
                    client.execute(&statement, &[&done]).await?;
                }
                Ok(())
            })
            .await
        })
    }

    fn retry(&self, claimed: Claimed, delay: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let id = parse_id(&claimed.id)?;
            let attempts = i32::try_from(claimed.attempts).unwrap_or(i32::MAX);
            let sql = self.sql(
                "UPDATE {s}.items SET claimed_by = NULL, attempts = $2, \
                 available_at_ms = {s}.now_ms() + $3 WHERE id = $1",
            );
            let delay = ms(delay);
            self.with(|client| async move {
                let statement = client.prepare_cached(&sql).await?;
                client.execute(&statement, &[&id, &attempts, &delay]).await
            })
            .await
            .map(drop)
        })
    }

    fn dead_letter(
        &self,
        claimed: Claimed,
        reason: String,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let id = parse_id(&claimed.id)?;
            let attempts = i32::try_from(claimed.attempts).unwrap_or(i32::MAX);
            let sql = self.sql(DEAD_LETTER);
            self.with(|client| async move {
                let statement = client.prepare_cached(&sql).await?;
                client.execute(&statement, &[&id, &attempts, &reason]).await
            })
            .await
            .map(drop)
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, StoreError>> {
        Box::pin(async move {
            // A count of the index, and the oldest item by the primary key.
            let sql = self.sql(
                "SELECT count(*), (SELECT received_at_ms FROM {s}.items ORDER BY id LIMIT 1) \
                 FROM {s}.items",
            );
            let row = self
                .with(|client| async move {
                    let statement = client.prepare_cached(&sql).await?;
                    client.query_one(&statement, &[]).await
                })
                .await?;
            let depth: i64 = row.get(0);
            let oldest: Option<i64> = row.get(1);
            let now = unix_ms(SystemTime::now());
            Ok(InboxStats {
                depth: u64::try_from(depth).unwrap_or(0),
                oldest_age: oldest
                    .map(|t| Duration::from_millis(u64::try_from(now - t).unwrap_or(0))),
            })
        })
    }

    fn is_durable(&self) -> bool {
        true
    }
}

impl DeadLetters for PostgresStore {
    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, StoreError>> {
        Box::pin(async move {
            let list = self.sql(
                "SELECT id, payload, attempts, reason, dead_at_ms, delivery_id \
                 FROM {s}.dead_letters ORDER BY id LIMIT $1",
            );
            let tokens = self.sql("SELECT id, tokens FROM {s}.deliveries WHERE id = ANY($1)");
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let (rows, tokens) = self
                .with(|client| async move {
                    let rows = client.query(&list, &[&limit]).await?;
                    let deliveries: Vec<i64> = rows
                        .iter()
                        .filter_map(|r| r.get::<_, Option<i64>>(5))
                        .collect();
                    let found = client.query(&tokens, &[&deliveries]).await?;
                    Ok((rows, delivery_tokens(&found)))
                })
                .await?;
            Ok(rows
                .iter()
                .filter_map(|row| {
                    let delivery: Option<i64> = row.get(5);
                    let tokens = delivery.map(|d| tokens.get(&d).cloned().unwrap_or_default());
                    Some(DeadLetter {
                        id: EntryId::new(row.get::<_, i64>(0).to_string()),
                        item: StoredItem::from_json(row.get(1), tokens).ok()?,
                        attempts: u32::try_from(row.get::<_, i32>(2)).unwrap_or(0),
                        reason: row.get(3),
                        dead_at_ms: row.get(4),
                    })
                })
                .collect())
        })
    }

    fn replay(&self, ids: Vec<EntryId>) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let ids = ids.iter().map(parse_id).collect::<Result<Vec<_>, _>>()?;
            let sql = self.sql(REPLAY);
            let moved = self
                .with(|client| async move { client.execute(&sql, &[&ids]).await })
                .await?;
            if moved > 0 {
                self.wakeup.appended.notify_waiters();
            }
            Ok(usize::try_from(moved).unwrap_or(usize::MAX))
        })
    }
}

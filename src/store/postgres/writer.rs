//! The append writer: one task per process takes every append waiting and
//! stores them all in one statement, one transaction (group commit).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::schema::Schema;
use super::{describe, unavailable};
use crate::store::{StoreError, StoredItem, token_groups};

/// Items the writer stores in one statement at most; appends beyond wait
/// for the next one.
const MAX_ITEMS: usize = 4096;

/// One statement stores a group: the token sets of its deliveries get ids
/// from the sequence, and each item names its set by its place in the
/// group's list (`token_set`, 1-based; NULL for none). A single statement
/// is a transaction of its own: all of the group's items, or none; its
/// `NOTIFY` on the schema's channel (`$6`) is sent when it commits.
const APPEND: &str = "
WITH d AS (
    SELECT nextval('{s}.delivery_ids') AS id, t.tokens, t.refs, t.n
    FROM unnest($1::bytea[], $2::integer[]) WITH ORDINALITY AS t(tokens, refs, n)
), stored AS (
    INSERT INTO {s}.deliveries (id, tokens, refs) SELECT id, tokens, refs FROM d
), notified AS (
    SELECT pg_notify($6, '')
)
INSERT INTO {s}.items (payload, received_at_ms, delivery_id, available_at_ms)
SELECT i.payload, i.received_at_ms, d.id, {s}.now_ms()
FROM unnest($3::bytea[], $4::bigint[], $5::bigint[])
    WITH ORDINALITY AS i(payload, received_at_ms, token_set, n)
LEFT JOIN d ON d.n = i.token_set
CROSS JOIN notified
ORDER BY i.n";

/// An append as rows: each token set once (JSON) with how many items name
/// it, and each item's payload, arrival and token set (its index).
pub(super) struct Rows {
    tokens: Vec<(Vec<u8>, i32)>,
    items: Vec<(Vec<u8>, i64, Option<usize>)>,
}

impl Rows {
    /// The rows of `items`, their tokens kept once per delivery.
    pub(super) fn of(items: &[StoredItem]) -> Result<Self, StoreError> {
        let (groups, token_sets) = token_groups(items);
        let mut tokens = token_sets
            .iter()
            .map(|t| serde_json::to_vec(t).map(|json| (json, 0)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(unavailable)?;
        let items = items
            .iter()
            .zip(groups)
            .map(|(item, group)| {
                if let Some(g) = group {
                    tokens[g].1 += 1;
                }
                item.to_json(group.is_some())
                    .map(|payload| (payload, item.received_at_ms, group))
                    .map_err(unavailable)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { tokens, items })
    }
}

struct Append {
    rows: Rows,
    reply: oneshot::Sender<Result<(), String>>,
}

/// Where appends are queued for the writer task.
pub(super) struct Appends(mpsc::UnboundedSender<Append>);

impl Appends {
    /// Stores `rows` with the group the writer commits next; resolves after
    /// the commit.
    pub(super) async fn append(&self, rows: Rows) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(Append { rows, reply })
            .map_err(|_| StoreError::Closed)?;
        answer
            .await
            .map_err(|_| StoreError::Closed)?
            .map_err(unavailable)
    }
}

/// Starts the writer task; it ends when the store (the last sender) is dropped.
pub(super) fn spawn(
    pool: Pool,
    schema: Schema,
    timeout: Duration,
    commits: Arc<AtomicU64>,
) -> Appends {
    let (queue, waiting) = mpsc::unbounded_channel();
    tokio::spawn(write_loop(
        pool,
        schema.sql(APPEND),
        schema.channel().to_owned(),
        timeout,
        commits,
        waiting,
    ));
    Appends(queue)
}

async fn write_loop(
    pool: Pool,
    sql: String,
    channel: String,
    timeout: Duration,
    commits: Arc<AtomicU64>,
    mut waiting: mpsc::UnboundedReceiver<Append>,
) {
    // It never waits for more appends to arrive: those that come while a
    // group commits form the next group, so under load groups grow by
    // themselves, and an idle store commits at once.
    while let Some(first) = waiting.recv().await {
        let mut group = vec![first];
        let mut items = group[0].rows.items.len();
        while items < MAX_ITEMS {
            let Ok(next) = waiting.try_recv() else { break };
            items += next.rows.items.len();
            group.push(next);
        }
        // An append whose caller gave up (it answered 503) is not stored.
        group.retain(|append| !append.reply.is_closed());
        if group.is_empty() {
            continue;
        }
        let written =
            match tokio::time::timeout(timeout, write(&pool, &sql, &channel, &group)).await {
                Ok(Ok(())) => {
                    commits.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err("no answer in time".to_owned()),
            };
        if let Err(e) = &written {
            tracing::warn!(error = %e, appends = group.len(), "storing appended items failed");
        }
        for append in group {
            let _ = append.reply.send(written.clone());
        }
    }
}

/// Stores every append of `group` in one statement.
async fn write(pool: &Pool, sql: &str, channel: &str, group: &[Append]) -> Result<(), String> {
    let mut tokens: Vec<&[u8]> = Vec::new();
    let mut refs: Vec<i32> = Vec::new();
    let mut payloads: Vec<&[u8]> = Vec::new();
    let mut received: Vec<i64> = Vec::new();
    let mut token_sets: Vec<Option<i64>> = Vec::new();
    for append in group {
        // This append's token sets follow those of the appends before it.
        let offset = tokens.len();
        for (json, n) in &append.rows.tokens {
            tokens.push(json);
            refs.push(*n);
        }
        for (payload, received_at_ms, set) in &append.rows.items {
            payloads.push(payload);
            received.push(*received_at_ms);
            token_sets.push(set.map(|g| (offset + g + 1) as i64));
        }
    }
    let client = pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => describe(&e),
        e => e.to_string(),
    })?;
    let statement = client.prepare_cached(sql).await.map_err(|e| describe(&e))?;
    client
        .execute(
            &statement,
            &[&tokens, &refs, &payloads, &received, &token_sets, &channel],
        )
        .await
        .map(drop)
        .map_err(|e| describe(&e))
}

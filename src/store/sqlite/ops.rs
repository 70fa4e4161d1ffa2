//! What each operation does to the database, inside the writer's
//! transaction, and the reads beside it.

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, params};

use super::now_ms;
use super::schema::release_claims_without_consumers;
use super::writer::{Done, DueMark, Op};
use crate::notification::ValidationTokens;
use crate::store::{Claimed, EntryId, StoreError, StoredItem};

/// The tokens of each delivery of `ids` (read once each), shared by its items.
pub(super) fn delivery_tokens(
    conn: &Connection,
    ids: impl IntoIterator<Item = i64>,
) -> rusqlite::Result<HashMap<i64, ValidationTokens>> {
    let mut find = conn.prepare_cached("SELECT tokens FROM deliveries WHERE id = ?1")?;
    let mut found = HashMap::new();
    for id in ids {
        if found.contains_key(&id) {
            continue;
        }
        let tokens = find
            .query_row([id], |row| row.get::<_, Vec<u8>>(0))
            .optional()?
            .and_then(|json| serde_json::from_slice(&json).ok())
            // Gone or unreadable: encrypted items then fail closed (no tokens).
            .unwrap_or_default();
        found.insert(id, tokens);
    }
    Ok(found)
}

/// One item or dead letter fewer names each of `deliveries`; a delivery
/// no one names any more is removed.
pub(super) fn release_deliveries(
    conn: &Connection,
    deliveries: impl IntoIterator<Item = i64>,
) -> rusqlite::Result<()> {
    let mut counts: HashMap<i64, i64> = HashMap::new();
    for id in deliveries {
        *counts.entry(id).or_default() += 1;
    }
    let mut release =
        conn.prepare_cached("UPDATE deliveries SET refs = refs - ?2 WHERE id = ?1")?;
    let mut remove = conn.prepare_cached("DELETE FROM deliveries WHERE id = ?1 AND refs <= 0")?;
    for (id, n) in counts {
        release.execute(params![id, n])?;
        remove.execute([id])?;
    }
    Ok(())
}

/// What `/metrics` reads, each query in one step whatever the backlog.
/// The depth is a counter the schema's triggers keep in every transaction
/// that adds or removes items (whichever process writes); the oldest item is
/// the one of lowest id (the primary key), an indexed lookup. (A replayed
/// dead letter gets a new id: the age may overlook one that old.)
pub(super) const STATS_SQL: [&str; 2] = [
    "SELECT n FROM counters WHERE name = 'depth'",
    "SELECT received_at_ms FROM items ORDER BY id LIMIT 1",
];

/// Depth and the oldest item's arrival, for [`Inbox::stats`].
pub(super) fn read_stats(conn: &Connection) -> rusqlite::Result<(i64, Option<i64>)> {
    let depth = conn
        .prepare_cached(STATS_SQL[0])?
        .query_row([], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    let oldest = conn
        .prepare_cached(STATS_SQL[1])?
        .query_row([], |row| row.get::<_, i64>(0))
        .optional()?;
    Ok((depth, oldest))
}

/// Hands every item `consumer` claimed out again.
pub(super) fn release_claims_of(conn: &Connection, consumer: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached("UPDATE items SET claimed_by = NULL WHERE claimed_by = ?1")?
        .execute([consumer])
}

/// Executes one operation inside the open transaction.
pub(super) fn apply(conn: &Connection, consumer: &str, op: &Op) -> rusqlite::Result<Done> {
    let now = now_ms();
    Ok(match op {
        Op::Append(rows, _) => {
            let mut delivery = conn.prepare_cached(
                "INSERT INTO deliveries (tokens, refs) VALUES (?1, ?2) RETURNING id",
            )?;
            let deliveries = rows
                .tokens
                .iter()
                .map(|(tokens, refs)| {
                    delivery.query_row(params![tokens, refs], |row| row.get::<_, i64>(0))
                })
                .collect::<rusqlite::Result<Vec<i64>>>()?;
            let mut insert = conn.prepare_cached(
                "INSERT INTO items (payload, received_at_ms, delivery_id, claimed_by, claimed_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let claimer = rows.claimed.then_some(consumer);
            let mut ids = Vec::with_capacity(rows.items.len());
            for (payload, received_at, group) in &rows.items {
                let delivery_id = group.and_then(|g| deliveries.get(g));
                insert.execute(params![
                    payload,
                    received_at,
                    delivery_id,
                    claimer,
                    claimer.map(|_| now)
                ])?;
                ids.push(conn.last_insert_rowid());
            }
            Done::Ids(ids)
        }
        Op::Claim(max, _) => {
            // The limit is part of the text, not a parameter: SQLite plans
            // with a bound LIMIT's value and so prepares the statement again
            // on every run (a tenth of the writer's time under load).
            let mut claim = conn.prepare_cached(&format!(
                "UPDATE items SET claimed_by = ?1, claimed_at_ms = ?2
                 WHERE id IN (SELECT id FROM items WHERE claimed_by IS NULL AND not_before_ms <= ?2
                              ORDER BY not_before_ms, id LIMIT {max})
                 RETURNING id, payload, attempts, delivery_id"
            ))?;
            let rows: Vec<(i64, Vec<u8>, u32, Option<i64>)> = claim
                .query_map(params![consumer, now], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let tokens = delivery_tokens(conn, rows.iter().filter_map(|row| row.3))?;
            let mut claimed = Vec::with_capacity(rows.len());
            for (id, payload, attempts, delivery) in rows {
                let tokens = delivery.and_then(|d| tokens.get(&d)).cloned();
                match StoredItem::from_json(&payload, tokens) {
                    Ok(item) => claimed.push(Claimed {
                        id: EntryId::new(id.to_string()),
                        item,
                        attempts,
                    }),
                    Err(e) => {
                        // Nothing can handle it: move it aside rather than loop on it.
                        tracing::error!(id, error = %e, "unreadable item moved to the dead letters");
                        conn.execute(
                            "INSERT INTO dead_letters (payload, received_at_ms, attempts, reason, dead_at_ms, delivery_id)
                             SELECT payload, received_at_ms, attempts, ?2, ?3, delivery_id FROM items WHERE id = ?1",
                            params![id, format!("unreadable item: {e}"), now],
                        )?;
                        conn.execute("DELETE FROM items WHERE id = ?1", [id])?;
                    }
                }
            }
            Done::Claimed(claimed)
        }
        Op::Complete(ids, _) => {
            let mut delete =
                conn.prepare_cached("DELETE FROM items WHERE id = ?1 RETURNING delivery_id")?;
            let mut deliveries = Vec::new();
            for id in ids {
                if let Some(Some(delivery)) = delete
                    .query_row([id], |row| row.get::<_, Option<i64>>(0))
                    .optional()?
                {
                    deliveries.push(delivery);
                }
            }
            release_deliveries(conn, deliveries)?;
            Done::Unit
        }
        Op::Retry {
            id,
            attempts,
            not_before_ms,
            ..
        } => {
            conn.prepare_cached(
                "UPDATE items SET claimed_by = NULL, attempts = ?2, not_before_ms = ?3 WHERE id = ?1",
            )?
            .execute(params![id, attempts, not_before_ms])?;
            Done::Unit
        }
        Op::DeadLetter {
            id,
            attempts,
            reason,
            ..
        } => {
            // The delivery's tokens stay: the dead letter names them now.
            conn.prepare_cached(
                "INSERT INTO dead_letters (payload, received_at_ms, attempts, reason, dead_at_ms, delivery_id)
                 SELECT payload, received_at_ms, ?2, ?3, ?4, delivery_id FROM items WHERE id = ?1",
            )?
            .execute(params![id, attempts, reason, now])?;
            conn.prepare_cached("DELETE FROM items WHERE id = ?1")?
                .execute([id])?;
            Done::Unit
        }
        Op::Replay(ids, _) => {
            let ids: Vec<i64> = if ids.is_empty() {
                let mut stmt = conn.prepare("SELECT id FROM dead_letters ORDER BY id")?;
                stmt.query_map([], |row| row.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            } else {
                ids.clone()
            };
            let mut moved = 0;
            for id in ids {
                moved += conn.execute(
                    "INSERT INTO items (payload, received_at_ms, delivery_id)
                     SELECT payload, received_at_ms, delivery_id FROM dead_letters WHERE id = ?1",
                    [id],
                )?;
                conn.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
            }
            Done::Count(moved)
        }
        Op::ReleaseStale {
            older_than_ms,
            held,
            ..
        } => {
            let mine: Vec<i64> = conn
                .prepare_cached(
                    "SELECT id FROM items WHERE claimed_by = ?1 AND claimed_at_ms < ?2",
                )?
                .query_map(params![consumer, older_than_ms], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut released = 0;
            for id in mine.into_iter().filter(|id| !held.contains(id)) {
                released += conn
                    .prepare_cached("UPDATE items SET claimed_by = NULL WHERE id = ?1")?
                    .execute([id])?;
            }
            Done::Count(released)
        }
        Op::ReleaseClaims(dead, _) => Done::Count(release_claims_of(conn, dead)?),
        Op::ReleaseOrphans(consumers, _) => {
            Done::Count(release_claims_without_consumers(conn, consumers)?)
        }
        Op::Finish { keys, ttl_ms, .. } => {
            let mut done = conn.prepare_cached(
                "INSERT OR REPLACE INTO dedupe_done (key, expires_at_ms) VALUES (?1, ?2)",
            )?;
            for key in keys {
                done.execute(params![&key[..], now + ttl_ms])?;
            }
            Done::Unit
        }
        Op::Handled(keys, _) => {
            let mut find =
                conn.prepare_cached("SELECT expires_at_ms FROM dedupe_done WHERE key = ?1")?;
            let handled = keys
                .iter()
                .map(|key| {
                    find.query_row([&key[..]], |row| row.get::<_, i64>(0))
                        .optional()
                        .map(|expires| expires.is_some_and(|e| e > now))
                })
                .collect::<rusqlite::Result<Vec<bool>>>()?;
            Done::Flags(handled)
        }
        Op::PutRecord(id, record, _) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO subscriptions (id, record) VALUES (?1, ?2)",
            )?
            .execute(params![id, record])?;
            Done::Unit
        }
        Op::RemoveRecord(id, _) => {
            conn.prepare_cached("DELETE FROM subscriptions WHERE id = ?1")?
                .execute([id])?;
            Done::Unit
        }
        Op::SaveCursor(key, progress, _) => {
            conn.prepare_cached(
                "INSERT INTO cursors (key, resource, query, delta_link, next_link, last_success_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (key) DO UPDATE SET resource = excluded.resource,
                     query = excluded.query, delta_link = excluded.delta_link,
                     next_link = excluded.next_link, last_success_ms = excluded.last_success_ms",
            )?
            .execute(params![
                key,
                progress.resource,
                progress.query,
                progress.delta_link,
                progress.next_link,
                progress.last_success_ms
            ])?;
            Done::Unit
        }
        Op::MarkDue(mark, _) => {
            let DueMark {
                key,
                resource,
                query,
                reason,
                at_ms,
            } = &**mark;
            // An existing cursor keeps its resource, query and links.
            conn.prepare_cached(
                "INSERT INTO cursors (key, resource, query, due_reason, due_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (key) DO UPDATE SET due_reason = excluded.due_reason,
                     due_at_ms = excluded.due_at_ms",
            )?
            .execute(params![key, resource, query, reason, at_ms])?;
            Done::Unit
        }
        Op::ClearDue { key, seen_ms, .. } => {
            conn.prepare_cached(
                "UPDATE cursors SET due_reason = NULL, due_at_ms = NULL
                 WHERE key = ?1 AND due_at_ms <= ?2",
            )?
            .execute(params![key, seen_ms])?;
            Done::Unit
        }
        Op::RemoveCursor(key, _) => {
            conn.prepare_cached("DELETE FROM cursors WHERE key = ?1")?
                .execute([key])?;
            Done::Unit
        }
        Op::Acquire {
            name,
            holder,
            ttl_ms,
            ..
        } => {
            let current: Option<(String, i64)> = conn
                .prepare_cached("SELECT holder, expires_at_ms FROM leases WHERE name = ?1")?
                .query_row([name], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let free = match current {
                Some((other, expires)) => other == *holder || expires <= now,
                None => true,
            };
            if free {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO leases (name, holder, expires_at_ms) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![name, holder, now + ttl_ms])?;
            }
            Done::Flag(free)
        }
        Op::Release { name, holder, .. } => {
            conn.prepare_cached("DELETE FROM leases WHERE name = ?1 AND holder = ?2")?
                .execute(params![name, holder])?;
            Done::Unit
        }
    })
}

pub(super) fn parse_id(id: &EntryId) -> Result<i64, StoreError> {
    id.as_str()
        .parse()
        .map_err(|_| StoreError::unavailable(format!("not an item id of this store: {id}")))
}

pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

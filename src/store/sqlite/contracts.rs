//! The storage contracts on the embedded store: inbox, dead letters,
//! dedupe, subscription records, delta cursors and leases.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rusqlite::{OptionalExtension as _, Row, params};

use super::ops::{delivery_tokens, ms, parse_id, read_stats};
use super::writer::{DueMark, Op, Rows};
use super::{POLL, SqliteStore, now_ms, unavailable};
use crate::store::{
    Claim, Claimed, CursorProgress, Cursors, DeadLetter, DeadLetters, Dedupe, DedupeKey,
    DeltaCursor, EntryId, Inbox, InboxStats, Lease, RecordStore, StoreError, StoredItem,
    SubscriptionRecord, member_lease, member_prefix,
};

impl Inbox for SqliteStore {
    fn append(&self, items: Vec<StoredItem>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (groups, token_sets) = crate::store::token_groups(&items);
            let mut tokens = token_sets
                .iter()
                .map(|t| serde_json::to_vec(t).map(|json| (json, 0)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unavailable(e.to_string()))?;
            let rows = items
                .iter()
                .zip(groups)
                .map(|(item, group)| {
                    if let Some(g) = group {
                        tokens[g].1 += 1;
                    }
                    item.to_json(group.is_some())
                        .map(|payload| (payload, item.received_at_ms, group))
                        .map_err(|e| unavailable(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let bytes = items.iter().map(|i| i.byte_len()).sum();
            let claimed = self.lock_handoff().takes(items.len(), bytes);
            let rows = Rows {
                tokens,
                items: rows,
                claimed,
            };
            let mut abandoned = super::Abandoned {
                at: &self.abandoned_at,
                armed: claimed,
            };
            let ids = self.call(|reply| Op::Append(rows, reply)).await;
            abandoned.armed = false;
            let ids = ids.map_err(StoreError::unavailable)?;
            if claimed {
                // Held first: a sweep must not release them as stale.
                self.lock_held().extend(&ids);
                let mut handoff = self.lock_handoff();
                for (id, item) in ids.into_iter().zip(items) {
                    handoff.bytes += item.byte_len();
                    handoff.items.push_back(Claimed {
                        id: EntryId::new(id.to_string()),
                        item,
                        attempts: 0,
                    });
                }
            }
            self.wake_claimer();
            Ok(())
        })
    }

    fn claim(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>> {
        Box::pin(async move {
            self.release_orphans().await;
            let deadline = tokio::time::Instant::now() + wait;
            let mut swept = false;
            loop {
                let appended = self.appended.notified();
                tokio::pin!(appended);
                appended.as_mut().enable();
                self.waking
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                let max = max.max(1);
                let poll = {
                    let mut handoff = self.lock_handoff();
                    handoff.claimers = true;
                    let due = handoff.poll_due();
                    if due {
                        handoff.polled_at = Some(std::time::Instant::now());
                    }
                    due
                };
                let mut claimed = Vec::new();
                if poll {
                    claimed = self
                        .call(|reply| Op::Claim(max, reply))
                        .await
                        .map_err(StoreError::unavailable)?;
                    self.lock_handoff().backlog = claimed.len() >= max;
                }
                if poll && (!claimed.is_empty() || !self.lock_handoff().items.is_empty()) {
                    // Busy: the sweeps that don't wait for a lull.
                    self.sweep(false).await;
                    self.release_abandoned().await;
                }
                // No await from here to the return: should the caller go
                // away before, the claims are not held and a sweep releases
                // them; after, what is taken is the caller's.
                {
                    let mut held = self.lock_held();
                    for c in &claimed {
                        if let Ok(id) = c.id.as_str().parse() {
                            held.insert(id);
                        }
                    }
                }
                let room = max - claimed.len();
                claimed.extend(self.lock_handoff().take(room));
                if claimed.len() >= max {
                    // Perhaps more are waiting: another claimer's turn.
                    self.wake_claimer();
                }
                if !claimed.is_empty() {
                    return Ok(claimed);
                }
                if !swept && self.sweep(true).await {
                    swept = true;
                    continue;
                }
                swept = true;
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Ok(Vec::new());
                }
                // In-process appends wake us at once; other processes' are polled.
                let _ = tokio::time::timeout((deadline - now).min(POLL), appended).await;
            }
        })
    }

    fn complete(&self, id: EntryId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let id = parse_id(&id)?;
            let done = self
                .call(|reply| Op::Complete(vec![id], reply))
                .await
                .map_err(StoreError::unavailable);
            self.lock_held().remove(&id);
            done
        })
    }

    fn complete_many(&self, ids: Vec<EntryId>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let ids = ids.iter().map(parse_id).collect::<Result<Vec<_>, _>>()?;
            let done = self
                .call(|reply| Op::Complete(ids.clone(), reply))
                .await
                .map_err(StoreError::unavailable);
            let mut held = self.lock_held();
            for id in &ids {
                held.remove(id);
            }
            done
        })
    }

    fn retry(&self, claimed: Claimed, delay: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let id = parse_id(&claimed.id)?;
            let not_before_ms = now_ms().saturating_add(ms(delay));
            let done = self
                .call(|reply| Op::Retry {
                    id,
                    attempts: claimed.attempts,
                    not_before_ms,
                    reply,
                })
                .await
                .map_err(StoreError::unavailable);
            self.lock_held().remove(&id);
            done
        })
    }

    fn dead_letter(
        &self,
        claimed: Claimed,
        reason: String,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let id = parse_id(&claimed.id)?;
            let done = self
                .call(|reply| Op::DeadLetter {
                    id,
                    attempts: claimed.attempts,
                    reason,
                    reply,
                })
                .await
                .map_err(StoreError::unavailable);
            self.lock_held().remove(&id);
            done
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, StoreError>> {
        let read = self.read(read_stats);
        Box::pin(async move {
            let (depth, oldest) = read.await?;
            let now = now_ms();
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

impl DeadLetters for SqliteStore {
    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, StoreError>> {
        let read = self.read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, payload, attempts, reason, dead_at_ms, delivery_id FROM dead_letters
                 ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt
                .query_map([limit as i64], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, Vec<u8>>(1)?,
                        row.get::<_, u32>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, i64>(4)?,
                        row.get::<_, Option<i64>>(5)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let tokens = delivery_tokens(conn, rows.iter().filter_map(|row| row.5))?;
            Ok((rows, tokens))
        });
        Box::pin(async move {
            let (rows, tokens) = read.await?;
            Ok(rows
                .into_iter()
                .filter_map(|(id, payload, attempts, reason, dead_at_ms, delivery)| {
                    let tokens = delivery.and_then(|d| tokens.get(&d)).cloned();
                    let item = StoredItem::from_json(&payload, tokens).ok()?;
                    Some(DeadLetter {
                        id: EntryId::new(id.to_string()),
                        item,
                        attempts,
                        reason,
                        dead_at_ms,
                    })
                })
                .collect())
        })
    }

    fn replay(&self, ids: Vec<EntryId>) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let ids = ids.iter().map(parse_id).collect::<Result<Vec<_>, _>>()?;
            let moved = self
                .call(|reply| Op::Replay(ids, reply))
                .await
                .map_err(StoreError::unavailable)?;
            if moved > 0 {
                self.appended.notify_waiters();
            }
            Ok(moved)
        })
    }
}

/// Dedupe keys being handled in this process: holder and lease end.
pub(super) type PendingKeys = HashMap<[u8; 32], (String, std::time::Instant)>;

/// Releases `key` if `owner` still holds it.
pub(super) fn release(pending: &mut PendingKeys, key: &[u8; 32], owner: &str) {
    if pending.get(key).is_some_and(|(holder, _)| holder == owner) {
        pending.remove(key);
    }
}

/// Dedupe on the embedded store: handled keys are rows of `dedupe_done`
/// (durable, shared by every process of the data directory); keys being
/// handled are held in this process's memory. Workers of one process never
/// handle two copies at once; two processes could, in the rare case that
/// Graph's copies are claimed by both at the same moment — an extra handler
/// call, which at-least-once allows — and the pending state costs no disk
/// write per item.
impl Dedupe for SqliteStore {
    fn begin(
        &self,
        key: DedupeKey,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Claim, StoreError>> {
        let many = self.begin_many(vec![key], owner, lease);
        Box::pin(async move {
            many.await?
                .pop()
                .ok_or_else(|| StoreError::unavailable("no answer for the key"))
        })
    }

    fn finish(
        &self,
        key: DedupeKey,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.finish_many(vec![key], owner, ttl)
    }

    fn abandon(&self, key: DedupeKey, owner: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        release(&mut self.lock_pending(), key.as_bytes(), owner);
        Box::pin(std::future::ready(Ok(())))
    }

    fn begin_many(
        &self,
        keys: Vec<DedupeKey>,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<Claim>, StoreError>> {
        // Claim first, then look for a handled row: a holder releases its
        // claim only after its row committed, so one of the two always sees
        // the other.
        let now = std::time::Instant::now();
        let mut claims: Vec<Claim> = {
            let mut pending = self.lock_pending();
            keys.iter()
                .map(|key| match pending.get(key.as_bytes()) {
                    Some((holder, until)) if *until > now && holder != owner => Claim::InProgress,
                    _ => {
                        pending.insert(*key.as_bytes(), (owner.to_owned(), now + lease));
                        Claim::Proceed
                    }
                })
                .collect()
        };
        let owner = owner.to_owned();
        let claimed: Vec<[u8; 32]> = keys
            .iter()
            .zip(&claims)
            .filter(|(_, claim)| **claim == Claim::Proceed)
            .map(|(key, _)| *key.as_bytes())
            .collect();
        Box::pin(async move {
            // Only the keys claimed here need looking up.
            let handled = Self::call_on(&self.dedupe_writer, |reply| {
                Op::Handled(claimed.clone(), reply)
            })
            .await;
            let handled = match handled {
                Ok(found) => found,
                Err(e) => {
                    let mut pending = self.lock_pending();
                    for key in &claimed {
                        release(&mut pending, key, &owner);
                    }
                    return Err(StoreError::unavailable(e.to_string()));
                }
            };
            let mut pending = self.lock_pending();
            let proceeding = claims.iter_mut().filter(|claim| **claim == Claim::Proceed);
            for ((claim, key), handled) in proceeding.zip(&claimed).zip(handled) {
                if handled {
                    *claim = Claim::Duplicate;
                    release(&mut pending, key, &owner);
                }
            }
            Ok(claims)
        })
    }

    fn finish_many(
        &self,
        keys: Vec<DedupeKey>,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let owner = owner.to_owned();
        Box::pin(async move {
            let raw: Vec<[u8; 32]> = keys.iter().map(|k| *k.as_bytes()).collect();
            let recorded = Self::call_on(&self.dedupe_writer, |reply| Op::Finish {
                keys: raw,
                ttl_ms: ms(ttl),
                reply,
            })
            .await
            .map_err(StoreError::unavailable);
            // Released only now that the rows are committed (see begin_many).
            let mut pending = self.lock_pending();
            for key in &keys {
                release(&mut pending, key.as_bytes(), &owner);
            }
            recorded
        })
    }
}

impl RecordStore for SqliteStore {
    fn get_many(
        &self,
        ids: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Option<SubscriptionRecord>>, StoreError>> {
        let read = self.read(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT record FROM subscriptions WHERE id = ?1")?;
            ids.iter()
                .map(|id| {
                    stmt.query_row([id], |row| row.get::<_, String>(0))
                        .optional()
                })
                .collect::<rusqlite::Result<Vec<_>>>()
        });
        Box::pin(async move {
            let rows = read
                .await
                .map_err(|e| StoreError::unavailable(e.to_string()))?;
            Ok(rows
                .into_iter()
                .map(|row| row.and_then(|json| serde_json::from_str(&json).ok()))
                .collect())
        })
    }

    fn put(&self, record: SubscriptionRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let json = serde_json::to_string(&record)
                .map_err(|e| StoreError::unavailable(e.to_string()))?;
            self.call(|reply| Op::PutRecord(record.id.clone(), json, reply))
                .await
                .map_err(StoreError::unavailable)
        })
    }

    fn remove(&self, id: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.call(|reply| Op::RemoveRecord(id, reply))
                .await
                .map_err(StoreError::unavailable)
        })
    }

    fn all(&self) -> BoxFuture<'_, Result<Vec<SubscriptionRecord>, StoreError>> {
        let read = self.read(|conn| {
            let mut stmt = conn.prepare("SELECT record FROM subscriptions ORDER BY id")?;
            stmt.query_map([], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        });
        Box::pin(async move {
            let rows = read
                .await
                .map_err(|e| StoreError::unavailable(e.to_string()))?;
            Ok(rows
                .iter()
                .filter_map(|json| serde_json::from_str(json).ok())
                .collect())
        })
    }
}

/// The columns of a cursor, in the order [`cursor_of`] reads them.
const CURSOR_COLUMNS: &str =
    "resource, query, delta_link, next_link, last_success_ms, due_reason, due_at_ms";

/// A cursor from a row of [`CURSOR_COLUMNS`] starting at column `first`.
fn cursor_of(row: &Row<'_>, first: usize) -> rusqlite::Result<DeltaCursor> {
    Ok(DeltaCursor {
        resource: row.get(first)?,
        query: row.get(first + 1)?,
        delta_link: row.get(first + 2)?,
        next_link: row.get(first + 3)?,
        last_success_ms: row.get(first + 4)?,
        due_reason: row.get(first + 5)?,
        due_at_ms: row.get(first + 6)?,
    })
}

/// Delta cursors are rows of `cursors`; progress and due marks are written
/// by different statements, each in the writer's transaction.
impl Cursors for SqliteStore {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<DeltaCursor>, StoreError>> {
        let key = key.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {CURSOR_COLUMNS} FROM cursors WHERE key = ?1"
            ))?
            .query_row([key], |row| cursor_of(row, 0))
            .optional()
        })
    }

    fn save(&self, key: &str, progress: CursorProgress) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            self.call(|reply| Op::SaveCursor(key, Box::new(progress), reply))
                .await
                .map_err(StoreError::unavailable)
        })
    }

    fn mark_due(
        &self,
        key: &str,
        resource: &str,
        query: &str,
        reason: &str,
        at_ms: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let mark = Box::new(DueMark {
            key: key.to_owned(),
            resource: resource.to_owned(),
            query: query.to_owned(),
            reason: reason.to_owned(),
            at_ms,
        });
        Box::pin(async move {
            self.call(|reply| Op::MarkDue(mark, reply))
                .await
                .map_err(StoreError::unavailable)
        })
    }

    fn clear_due(&self, key: &str, seen_ms: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            self.call(|reply| Op::ClearDue {
                key,
                seen_ms,
                reply,
            })
            .await
            .map_err(StoreError::unavailable)
        })
    }

    fn remove(&self, key: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            self.call(|reply| Op::RemoveCursor(key, reply))
                .await
                .map_err(StoreError::unavailable)
        })
    }

    fn all(&self) -> BoxFuture<'_, Result<Vec<(String, DeltaCursor)>, StoreError>> {
        self.read(|conn| {
            conn.prepare(&format!("SELECT key, {CURSOR_COLUMNS} FROM cursors"))?
                .query_map([], |row| Ok((row.get(0)?, cursor_of(row, 1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
    }
}

impl Lease for SqliteStore {
    fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        Box::pin(async move {
            self.call(|reply| Op::Acquire {
                name,
                holder,
                ttl_ms: ms(ttl),
                reply,
            })
            .await
            .map_err(StoreError::unavailable)
        })
    }

    fn release(&self, name: &str, holder: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        Box::pin(async move {
            self.call(|reply| Op::Release {
                name,
                holder,
                reply,
            })
            .await
            .map_err(StoreError::unavailable)
        })
    }

    fn expires_in(&self, name: &str) -> BoxFuture<'_, Result<Option<Duration>, StoreError>> {
        let name = name.to_owned();
        let read = self.read(move |conn| {
            conn.prepare_cached("SELECT expires_at_ms FROM leases WHERE name = ?1")?
                .query_row([name], |row| row.get::<_, i64>(0))
                .optional()
        });
        Box::pin(async move {
            let expires = read
                .await
                .map_err(|e| StoreError::unavailable(e.to_string()))?;
            let left = expires.map(|at| at - now_ms()).filter(|left| *left > 0);
            Ok(left.map(|ms| Duration::from_millis(ms.unsigned_abs())))
        })
    }

    fn join(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let name = member_lease(group, member);
        let member = member.to_owned();
        Box::pin(async move { self.acquire(&name, &member, ttl).await.map(|_| ()) })
    }

    fn leave(&self, group: &str, member: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let name = member_lease(group, member);
        let member = member.to_owned();
        Box::pin(async move { self.release(&name, &member).await })
    }

    fn members(&self, group: &str) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        let prefix = member_prefix(group);
        let read = self.read(move |conn| {
            let now = now_ms();
            let mut stmt = conn.prepare_cached(
                "SELECT holder FROM leases WHERE substr(name, 1, length(?1)) = ?1 \
                 AND expires_at_ms > ?2 ORDER BY holder",
            )?;
            stmt.query_map(params![prefix, now], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        });
        Box::pin(async move {
            read.await
                .map_err(|e| StoreError::unavailable(e.to_string()))
        })
    }
}

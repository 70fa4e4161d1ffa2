//! Subscription records, delta cursors, and the leases and presence of
//! instances.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::AsyncCommands as _;

use super::{RedisStore, now_ms, unavailable};
use crate::store::{
    CursorProgress, Cursors, DeltaCursor, Lease, RecordStore, StoreError, SubscriptionRecord,
};

impl RecordStore for RedisStore {
    fn get_many(
        &self,
        ids: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Option<SubscriptionRecord>>, StoreError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut conn = self.conn.clone();
            let found: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.key("subscriptions"))
                .arg(&ids)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(found
                .into_iter()
                .map(|json| json.and_then(|j| serde_json::from_str(&j).ok()))
                .collect())
        })
    }

    fn put(&self, record: SubscriptionRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let json = serde_json::to_string(&record).map_err(unavailable)?;
            let mut conn = self.conn.clone();
            conn.hset::<_, _, _, ()>(self.key("subscriptions"), &record.id, json)
                .await
                .map_err(unavailable)
        })
    }

    fn remove(&self, id: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            conn.hdel::<_, _, ()>(self.key("subscriptions"), id)
                .await
                .map_err(unavailable)
        })
    }

    fn all(&self) -> BoxFuture<'_, Result<Vec<SubscriptionRecord>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let all: Vec<String> = conn
                .hvals(self.key("subscriptions"))
                .await
                .map_err(unavailable)?;
            Ok(all
                .iter()
                .filter_map(|j| serde_json::from_str(j).ok())
                .collect())
        })
    }
}

impl RedisStore {
    /// The hash of the cursor under `key`.
    fn cursor_key(&self, key: &str) -> String {
        self.key(&format!("cursor:{key}"))
    }
}

/// A cursor from the fields of its hash (`None`: no hash).
fn cursor_of(mut fields: HashMap<String, String>) -> Result<Option<DeltaCursor>, String> {
    if fields.is_empty() {
        return Ok(None);
    }
    let mut ms = |field: &str| {
        fields
            .remove(field)
            .map(|v| v.parse::<i64>().map_err(|e| format!("{field} {v:?}: {e}")))
            .transpose()
    };
    let last_success_ms = ms("last_success_ms")?;
    let due_at_ms = ms("due_at_ms")?;
    Ok(Some(DeltaCursor {
        resource: fields.remove("resource").unwrap_or_default(),
        query: fields.remove("query").unwrap_or_default(),
        delta_link: fields.remove("delta_link"),
        next_link: fields.remove("next_link"),
        last_success_ms,
        due_reason: fields.remove("due_reason"),
        due_at_ms,
    }))
}

/// Each cursor is a hash (`{prefix}:cursor:<key>`: `resource`, `query`,
/// `delta_link`, `next_link`, `last_success_ms`, `due_reason`, `due_at_ms`,
/// absent when `None`) and a member of the set `{prefix}:cursors`, which
/// [`all`](Cursors::all) reads. Progress and due marks are written by
/// different fields; a mark and its clearing are scripts.
impl Cursors for RedisStore {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<DeltaCursor>, StoreError>> {
        let hash = self.cursor_key(key);
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let fields: HashMap<String, String> = conn.hgetall(&hash).await.map_err(unavailable)?;
            cursor_of(fields).map_err(|e| unavailable(format!("unreadable cursor {hash}: {e}")))
        })
    }

    fn save(&self, key: &str, progress: CursorProgress) -> BoxFuture<'_, Result<(), StoreError>> {
        let (hash, key) = (self.cursor_key(key), key.to_owned());
        Box::pin(async move {
            let mut set = vec![("resource", progress.resource), ("query", progress.query)];
            let mut unset = Vec::new();
            for (field, value) in [
                ("delta_link", progress.delta_link),
                ("next_link", progress.next_link),
                (
                    "last_success_ms",
                    progress.last_success_ms.map(|ms| ms.to_string()),
                ),
            ] {
                match value {
                    Some(value) => set.push((field, value)),
                    None => unset.push(field),
                }
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.cmd("HSET").arg(&hash).arg(&set).ignore();
            if !unset.is_empty() {
                pipe.cmd("HDEL").arg(&hash).arg(&unset).ignore();
            }
            pipe.cmd("SADD").arg(self.key("cursors")).arg(key).ignore();
            let mut conn = self.conn.clone();
            pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
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
        let mut invocation = self.scripts.mark_due.prepare_invoke();
        invocation
            .key(self.cursor_key(key))
            .key(self.key("cursors"))
            .arg(resource)
            .arg(query)
            .arg(reason)
            .arg(at_ms)
            .arg(key);
        Box::pin(async move {
            let mut conn = self.conn.clone();
            invocation
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn clear_due(&self, key: &str, seen_ms: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        let hash = self.cursor_key(key);
        Box::pin(async move {
            let mut conn = self.conn.clone();
            self.scripts
                .clear_due
                .key(hash)
                .arg(seen_ms)
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn remove(&self, key: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let (hash, key) = (self.cursor_key(key), key.to_owned());
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(hash)
                .ignore()
                .cmd("SREM")
                .arg(self.key("cursors"))
                .arg(key)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(unavailable)
        })
    }

    fn all(&self) -> BoxFuture<'_, Result<Vec<(String, DeltaCursor)>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let keys: Vec<String> = conn
                .smembers(self.key("cursors"))
                .await
                .map_err(unavailable)?;
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("HGETALL").arg(self.cursor_key(key));
            }
            let found: Vec<HashMap<String, String>> =
                pipe.query_async(&mut conn).await.map_err(unavailable)?;
            Ok(keys
                .into_iter()
                .zip(found)
                .filter_map(|(key, fields)| match cursor_of(fields) {
                    Ok(cursor) => cursor.map(|c| (key, c)),
                    Err(e) => {
                        // One unreadable cursor does not hide the others.
                        tracing::warn!(key, error = %e, "unreadable cursor skipped");
                        None
                    }
                })
                .collect())
        })
    }
}

impl Lease for RedisStore {
    fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let key = self.key(&format!("lease:{name}"));
        let holder = holder.to_owned();
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let held: i64 = self
                .scripts
                .acquire
                .key(key)
                .arg(holder)
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(held == 1)
        })
    }

    fn release(&self, name: &str, holder: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = self.key(&format!("lease:{name}"));
        let holder = holder.to_owned();
        Box::pin(async move {
            let mut conn = self.conn.clone();
            self.scripts
                .delete_if
                .key(key)
                .arg(holder)
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn expires_in(&self, name: &str) -> BoxFuture<'_, Result<Option<Duration>, StoreError>> {
        let key = self.key(&format!("lease:{name}"));
        Box::pin(async move {
            let mut conn = self.conn.clone();
            // -2: no such key; -1: no expiry (never written so by us).
            let left: i64 = conn.pttl(key).await.map_err(unavailable)?;
            Ok((left > 0).then(|| Duration::from_millis(left.unsigned_abs())))
        })
    }

    fn join(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = self.key(&format!("presence:{group}"));
        let member = member.to_owned();
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            let now = now_ms();
            self.scripts
                .join
                .key(key)
                .arg(member)
                .arg(now.saturating_add(ttl_ms))
                .arg(now)
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn leave(&self, group: &str, member: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = self.key(&format!("presence:{group}"));
        let member = member.to_owned();
        Box::pin(async move {
            let mut conn = self.conn.clone();
            conn.zrem::<_, _, i64>(key, member)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn members(&self, group: &str) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        let key = self.key(&format!("presence:{group}"));
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut live: Vec<String> = conn
                .zrangebyscore(key, format!("({}", now_ms()), "+inf")
                .await
                .map_err(unavailable)?;
            live.sort();
            Ok(live)
        })
    }
}

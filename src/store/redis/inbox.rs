//! The inbox and the dead letters on a Redis stream.

use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::AsyncCommands as _;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};

use super::{GROUP, RedisStore, now_ms, random_id, stream_time_ms, unavailable};
use crate::store::{
    Claimed, DeadLetter, DeadLetters, EntryId, Inbox, InboxStats, StoreError, StoredItem,
};

impl Inbox for RedisStore {
    fn append(&self, items: Vec<StoredItem>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.atomic();
            let inbox = self.key("inbox");
            let (groups, token_sets) = crate::store::token_groups(&items);
            let deliveries: Vec<String> = token_sets.iter().map(|_| random_id()).collect();
            for (g, tokens) in token_sets.iter().enumerate() {
                let refs = groups.iter().filter(|group| **group == Some(g)).count();
                let json = serde_json::to_vec(tokens).map_err(unavailable)?;
                pipe.cmd("HSET")
                    .arg(format!("{}{}", self.delivery_prefix(), deliveries[g]))
                    .arg("t")
                    .arg(json)
                    .arg("n")
                    .arg(refs)
                    .ignore();
            }
            for (item, group) in items.iter().zip(groups) {
                let payload = item.to_json(group.is_some()).map_err(unavailable)?;
                let cmd = pipe
                    .cmd("XADD")
                    .arg(&inbox)
                    .arg("*")
                    .arg("p")
                    .arg(payload)
                    .arg("a")
                    .arg(0);
                if let Some(g) = group {
                    cmd.arg("d").arg(&deliveries[g]);
                }
                cmd.ignore();
            }
            let mut conn = self.conn.clone();
            pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
        })
    }

    fn claim(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>> {
        Box::pin(async move {
            self.ensure_group().await?;
            let taken_over = self.housekeeping().await?;
            if !taken_over.is_empty() {
                return Ok(taken_over);
            }
            let block_ms = u64::try_from(wait.min(Duration::from_secs(1)).as_millis()).unwrap_or(0);
            let mut conn = self.blocking.lock().await;
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(max.max(1));
            if block_ms > 0 {
                cmd.arg("BLOCK").arg(block_ms);
            }
            let reply: Option<StreamReadReply> = cmd
                .arg("STREAMS")
                .arg(self.key("inbox"))
                .arg(">")
                .query_async(&mut *conn)
                .await
                .map_err(unavailable)?;
            drop(conn);
            let entries: Vec<StreamId> = reply
                .into_iter()
                .flat_map(|r| r.keys)
                .flat_map(|k| k.ids)
                .collect();
            self.entries(&entries).await
        })
    }

    fn complete(&self, id: EntryId) -> BoxFuture<'_, Result<(), StoreError>> {
        self.complete_many(vec![id])
    }

    fn complete_many(&self, ids: Vec<EntryId>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(());
            }
            let mut conn = self.conn.clone();
            let mut invocation = self.scripts.complete.key(self.key("inbox"));
            invocation.arg(GROUP).arg(self.delivery_prefix());
            for id in &ids {
                invocation.arg(id.as_str());
            }
            invocation
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn retry(&self, claimed: Claimed, delay: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let due = now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
            let mut conn = self.conn.clone();
            // The entry moves as stored (its delivery named, not copied).
            self.scripts
                .retry
                .key(self.key("inbox"))
                .key(self.key("delayed"))
                .arg(GROUP)
                .arg(claimed.id.as_str())
                .arg(claimed.attempts)
                .arg(due)
                .arg(random_id())
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn dead_letter(
        &self,
        claimed: Claimed,
        reason: String,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            self.scripts
                .dead_letter
                .key(self.key("inbox"))
                .key(self.key("dead"))
                .arg(GROUP)
                .arg(claimed.id.as_str())
                .arg(claimed.attempts)
                .arg(reason)
                .arg(now_ms())
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let (len, delayed, first): (u64, u64, StreamRangeReply) = redis::pipe()
                .cmd("XLEN")
                .arg(self.key("inbox"))
                .cmd("ZCARD")
                .arg(self.key("delayed"))
                .cmd("XRANGE")
                .arg(self.key("inbox"))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let oldest = first.ids.first().and_then(|e| stream_time_ms(&e.id));
            let now = now_ms();
            Ok(InboxStats {
                depth: len + delayed,
                oldest_age: oldest
                    .map(|t| Duration::from_millis(u64::try_from(now - t).unwrap_or(0))),
            })
        })
    }

    fn is_durable(&self) -> bool {
        true
    }
}

impl DeadLetters for RedisStore {
    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let range: StreamRangeReply = conn
                .xrange_count(self.key("dead"), "-", "+", limit)
                .await
                .map_err(unavailable)?;
            let tokens = self.delivery_tokens(&range.ids).await?;
            Ok(range
                .ids
                .iter()
                .filter_map(|e| {
                    let payload: Vec<u8> = e.get("p")?;
                    let tokens = e
                        .get::<String>("d")
                        .map(|d| tokens.get(&d).cloned().unwrap_or_default());
                    Some(DeadLetter {
                        id: EntryId::new(e.id.clone()),
                        item: StoredItem::from_json(&payload, tokens).ok()?,
                        attempts: e.get("a").unwrap_or(0),
                        reason: e.get("r").unwrap_or_default(),
                        dead_at_ms: e.get("t").unwrap_or(0),
                    })
                })
                .collect())
        })
    }

    fn replay(&self, ids: Vec<EntryId>) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let dead = self.key("dead");
            let entries: Vec<StreamId> = if ids.is_empty() {
                let range: StreamRangeReply = conn.xrange_all(&dead).await.map_err(unavailable)?;
                range.ids
            } else {
                let mut found = Vec::new();
                for id in &ids {
                    let range: StreamRangeReply = conn
                        .xrange(&dead, id.as_str(), id.as_str())
                        .await
                        .map_err(unavailable)?;
                    found.extend(range.ids);
                }
                found
            };
            let mut moved = 0;
            for entry in entries {
                let Some(payload) = entry.get::<Vec<u8>>("p") else {
                    continue;
                };
                let mut pipe = redis::pipe();
                let add = pipe
                    .atomic()
                    .cmd("XADD")
                    .arg(self.key("inbox"))
                    .arg("*")
                    .arg("p")
                    .arg(payload)
                    .arg("a")
                    .arg(0);
                // Back with its delivery's tokens, which it still names.
                if let Some(delivery) = entry.get::<String>("d") {
                    add.arg("d").arg(delivery);
                }
                add.ignore();
                pipe.cmd("XDEL")
                    .arg(&dead)
                    .arg(&entry.id)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(unavailable)?;
                moved += 1;
            }
            Ok(moved)
        })
    }
}

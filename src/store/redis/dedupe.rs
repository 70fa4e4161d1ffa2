//! Dedupe on Redis: keys set with `SET NX` and an expiry.

use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::AsyncCommands as _;

use super::RedisStore;
use crate::store::{Claim, Dedupe, DedupeKey, StoreError};

impl Dedupe for RedisStore {
    fn begin(
        &self,
        key: DedupeKey,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Claim, StoreError>> {
        let mine = format!("p:{owner}");
        Box::pin(async move {
            let key = self.dedupe_key(&key);
            let mut conn = self.conn.clone();
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&mine)
                .arg("NX")
                .arg("PX")
                .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1))
                .query_async(&mut conn)
                .await
                .map_err(|e| StoreError::unavailable(e.to_string()))?;
            if set.is_some() {
                return Ok(Claim::Proceed);
            }
            let current: Option<String> = conn
                .get(&key)
                .await
                .map_err(|e| StoreError::unavailable(e.to_string()))?;
            Ok(match current.as_deref() {
                Some("d") => Claim::Duplicate,
                Some(holder) if holder == mine => Claim::Proceed,
                // Held by another worker, or expired just now: try again later.
                _ => Claim::InProgress,
            })
        })
    }

    fn finish(
        &self,
        key: DedupeKey,
        _owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::cmd("SET")
                .arg(self.dedupe_key(&key))
                .arg("d")
                .arg("PX")
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| StoreError::unavailable(e.to_string()))
        })
    }

    fn begin_many(
        &self,
        keys: Vec<DedupeKey>,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<Claim>, StoreError>> {
        let mine = format!("p:{owner}");
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
            let names: Vec<String> = keys.iter().map(|k| self.dedupe_key(k)).collect();
            // One round trip claims every free key and reads the others.
            let mut pipe = redis::pipe();
            for name in &names {
                pipe.cmd("SET")
                    .arg(name)
                    .arg(&mine)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease_ms);
                pipe.cmd("GET").arg(name);
            }
            let mut conn = self.conn.clone();
            let answers: Vec<(Option<String>, Option<String>)> = pipe
                .query_async::<Vec<redis::Value>>(&mut conn)
                .await
                .map_err(|e| StoreError::unavailable(e.to_string()))?
                .chunks(2)
                .map(|pair| {
                    let set = redis::from_redis_value::<Option<String>>(pair[0].clone())
                        .ok()
                        .flatten();
                    let get = pair
                        .get(1)
                        .and_then(|v| redis::from_redis_value::<Option<String>>(v.clone()).ok())
                        .flatten();
                    (set, get)
                })
                .collect();
            Ok(answers
                .into_iter()
                .map(|(set, current)| match (set, current.as_deref()) {
                    (Some(_), _) => Claim::Proceed,
                    (None, Some("d")) => Claim::Duplicate,
                    (None, Some(holder)) if holder == mine => Claim::Proceed,
                    _ => Claim::InProgress,
                })
                .collect())
        })
    }

    fn finish_many(
        &self,
        keys: Vec<DedupeKey>,
        _owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(());
            }
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("SET")
                    .arg(self.dedupe_key(key))
                    .arg("d")
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore();
            }
            let mut conn = self.conn.clone();
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(|e| StoreError::unavailable(e.to_string()))
        })
    }

    fn abandon(&self, key: DedupeKey, owner: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let mine = format!("p:{owner}");
        Box::pin(async move {
            let mut conn = self.conn.clone();
            self.scripts
                .delete_if
                .key(self.dedupe_key(&key))
                .arg(mine)
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(|e| StoreError::unavailable(e.to_string()))
        })
    }
}

//! Subscription records and the leases and presence of instances.

use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::AsyncCommands as _;

use super::{RedisStore, now_ms, unavailable};
use crate::store::{Lease, RecordStore, StoreError, SubscriptionRecord};

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

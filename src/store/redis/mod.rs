//! The Redis store, for several receivers and workers sharing one Redis.
//!
//! - The inbox is a stream (`{prefix}:inbox`) read through the consumer group
//!   `workers`: any instance appends (a `MULTI` of `XADD`s, so a delivery is
//!   stored whole or not at all), any worker claims with `XREADGROUP`, and
//!   completes with `XACK` + `XDEL`. Entries left pending by a consumer that
//!   died are taken over with `XAUTOCLAIM` once idle longer than the claim
//!   timeout.
//! - Retries wait in a sorted set (`{prefix}:delayed`, scored by due time)
//!   and are moved back into the stream by a Lua script when due.
//! - Dead letters go to the stream `{prefix}:dead`.
//! - A delivery's validation tokens are kept once, in a hash
//!   (`{prefix}:delivery:<id>`) its entries and dead letters name; the last
//!   of them completed removes it.
//! - Dedupe keys are `SET NX PX` strings (`{prefix}:dedupe:<hex>`).
//! - Delta cursors are hashes (`{prefix}:cursor:<key>`), their keys listed
//!   in the set `{prefix}:cursors`.
//!
//! What Redis acknowledged is only as durable as its configuration: with no
//! persistence a Redis restart loses the inbox. Run Redis with
//! `appendonly yes` and `appendfsync always` for the same promise the
//! embedded store makes; the store logs a warning at connect when the server
//! says it does not persist.
//!
//! When Redis is unreachable, `append` fails fast and the listener answers
//! `503` (Graph retries); the connection manager reconnects on its own, so
//! service resumes without a restart.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId};

use crate::notification::ValidationTokens;
use crate::store::{Claimed, DedupeKey, EntryId, StoreError, StoredItem, unix_ms};

mod coordination;
mod dedupe;
mod inbox;
mod scripts;

use scripts::Scripts;

const GROUP: &str = "workers";

/// Settings of a [`RedisStore`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Key prefix, so several deployments can share one Redis (default
    /// `msgraph-webhooks`).
    pub prefix: String,
    /// How long an entry may stay claimed by a silent consumer before
    /// another takes it over (default 60 s). Longer than your slowest handler.
    pub claim_idle: Duration,
    /// Time allowed for one Redis command (default 2 s); an append that
    /// takes longer becomes a `503`.
    pub response_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            prefix: "msgraph-webhooks".to_owned(),
            claim_idle: Duration::from_secs(60),
            response_timeout: Duration::from_secs(2),
        }
    }
}

/// The Redis store. Implements every storage contract:
/// [`Inbox`](crate::store::Inbox), [`DeadLetters`](crate::store::DeadLetters),
/// [`Dedupe`](crate::store::Dedupe), [`RecordStore`](crate::store::RecordStore),
/// [`Cursors`](crate::store::Cursors) and [`Lease`](super::Lease).
pub struct RedisStore {
    config: RedisConfig,
    consumer: String,
    conn: ConnectionManager,
    /// A connection of its own for blocking reads, which would stall every
    /// other command on the shared one.
    blocking: tokio::sync::Mutex<ConnectionManager>,
    group_ready: tokio::sync::OnceCell<()>,
    housekeeping: Mutex<Housekeeping>,
    scripts: Scripts,
}

#[derive(Default)]
struct Housekeeping {
    moved_at: Option<std::time::Instant>,
    autoclaimed_at: Option<std::time::Instant>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.config.prefix)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}
fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(format!("redis: {e}"))
}

fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

impl RedisStore {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379`). The connection is
    /// made lazily and remade after failures, so this succeeds while Redis
    /// is down; operations fail (and the listener answers 503) until it is back.
    ///
    /// # Errors
    ///
    /// The URL is not a Redis URL.
    pub async fn connect(url: &str, config: RedisConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())
            .map_err(unavailable)?;
        // Blocking reads wait up to a second; give them room beyond the timeout.
        let blocking_config = manager_config
            .set_response_timeout(Some(config.response_timeout + Duration::from_secs(2)));
        let blocking = ConnectionManager::new_lazy_with_config(client, blocking_config)
            .map_err(unavailable)?;
        let store = Self {
            consumer: random_id(),
            config,
            conn,
            blocking: tokio::sync::Mutex::new(blocking),
            group_ready: tokio::sync::OnceCell::new(),
            housekeeping: Mutex::default(),
            scripts: Scripts::new(),
        };
        store.warn_if_not_persistent().await;
        Ok(store)
    }

    /// This process's consumer name in the group (what
    /// [`Backend::redis`](super::Backend::redis) holds dedupe claims under).
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// How long a silent consumer keeps its claims ([`RedisConfig::claim_idle`]).
    pub fn claim_idle(&self) -> std::time::Duration {
        self.config.claim_idle
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.config.prefix)
    }

    async fn warn_if_not_persistent(&self) {
        let mut conn = self.conn.clone();
        let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query_async(&mut conn)
            .await;
        if let Ok(pair) = reply
            && pair.get(1).map(String::as_str) == Some("no")
        {
            tracing::warn!(
                "Redis runs without AOF persistence (appendonly no): acknowledged notifications \
                 are lost if Redis restarts; use appendonly yes and appendfsync always"
            );
        }
    }

    /// Creates the consumer group (from the start of the stream, so items
    /// appended before any worker existed are delivered) once per process.
    async fn ensure_group(&self) -> Result<(), StoreError> {
        self.group_ready
            .get_or_try_init(|| async {
                let mut conn = self.conn.clone();
                let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.key("inbox"))
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut conn)
                    .await;
                match created {
                    Ok(()) => Ok(()),
                    Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                    Err(e) => Err(unavailable(e)),
                }
            })
            .await
            .map(|_| ())
    }

    fn due(
        &self,
        last: fn(&mut Housekeeping) -> &mut Option<std::time::Instant>,
        every: Duration,
    ) -> bool {
        let mut housekeeping = self.housekeeping.lock().unwrap_or_else(|e| e.into_inner());
        let slot = last(&mut housekeeping);
        if slot.is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        *slot = Some(std::time::Instant::now());
        true
    }

    async fn housekeeping(&self) -> Result<Vec<Claimed>, StoreError> {
        let mut conn = self.conn.clone();
        if self.due(|h| &mut h.moved_at, Duration::from_millis(200)) {
            let _: i64 = self
                .scripts
                .move_due
                .key(self.key("delayed"))
                .key(self.key("inbox"))
                .arg(now_ms())
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        let every = (self.config.claim_idle / 4).max(Duration::from_millis(100));
        if self.due(|h| &mut h.autoclaimed_at, every) {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(self.key("inbox"))
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(u64::try_from(self.config.claim_idle.as_millis()).unwrap_or(u64::MAX))
                .arg("0-0")
                .arg("COUNT")
                .arg(64)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if !reply.claimed.is_empty() {
                tracing::info!(
                    items = reply.claimed.len(),
                    "took over items of a silent consumer"
                );
            }
            return self.entries(&reply.claimed).await;
        }
        Ok(Vec::new())
    }

    fn delivery_prefix(&self) -> String {
        self.key("delivery:")
    }

    /// The tokens of the deliveries `entries` name, read once each.
    async fn delivery_tokens(
        &self,
        entries: &[StreamId],
    ) -> Result<HashMap<String, ValidationTokens>, StoreError> {
        let mut ids: Vec<String> = entries.iter().filter_map(|e| e.get("d")).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGET")
                .arg(format!("{}{id}", self.delivery_prefix()))
                .arg("t");
        }
        let mut conn = self.conn.clone();
        let found: Vec<Option<Vec<u8>>> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(ids
            .into_iter()
            .zip(found)
            .map(|(id, json)| {
                // Gone or unreadable: encrypted items then fail closed (no tokens).
                let tokens = json
                    .and_then(|j| serde_json::from_slice(&j).ok())
                    .unwrap_or_default();
                (id, tokens)
            })
            .collect())
    }

    /// Stream entries as claimed items, with their deliveries' tokens.
    async fn entries(&self, entries: &[StreamId]) -> Result<Vec<Claimed>, StoreError> {
        let tokens = self.delivery_tokens(entries).await?;
        Ok(entries
            .iter()
            .filter_map(|e| self.entry(e, &tokens))
            .collect())
    }

    fn entry(
        &self,
        entry: &StreamId,
        tokens: &HashMap<String, ValidationTokens>,
    ) -> Option<Claimed> {
        let payload: Vec<u8> = entry.get("p")?;
        let attempts: u32 = entry.get("a").unwrap_or(0);
        let tokens = entry
            .get::<String>("d")
            .map(|d| tokens.get(&d).cloned().unwrap_or_default());
        match StoredItem::from_json(&payload, tokens) {
            Ok(item) => Some(Claimed {
                id: EntryId::new(entry.id.clone()),
                item,
                attempts,
            }),
            Err(e) => {
                tracing::error!(id = %entry.id, error = %e, "unreadable stream entry skipped");
                None
            }
        }
    }

    fn dedupe_key(&self, key: &DedupeKey) -> String {
        self.key(&format!("dedupe:{}", key.to_hex()))
    }
}

fn random_id() -> String {
    crate::random::hex_id(12)
}

fn stream_time_ms(id: &str) -> Option<i64> {
    id.split('-').next()?.parse().ok()
}

#[cfg(test)]
pub(super) mod tests;

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

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncCommands as _, Script};

use super::{Lease, StoreError};
use crate::dedupe::{Claim, Dedupe, DedupeError, DedupeKey};
use crate::inbox::{
    Claimed, DeadLetter, DeadLetters, EntryId, Inbox, InboxError, InboxStats, StoredItem, unix_ms,
};
use crate::notification::ValidationTokens;
use crate::registry::{RecordStore, SubscriptionRecord};

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

/// The Redis store. Implements [`Inbox`], [`DeadLetters`] and [`Dedupe`].
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

/// The store's Lua scripts.
struct Scripts {
    move_due: Script,
    delete_if: Script,
    acquire: Script,
    join: Script,
    complete: Script,
    retry: Script,
    dead_letter: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            move_due: Script::new(MOVE_DUE),
            delete_if: Script::new(DELETE_IF),
            acquire: Script::new(ACQUIRE),
            join: Script::new(JOIN),
            complete: Script::new(&entry_script(COMPLETE)),
            retry: Script::new(&entry_script(RETRY)),
            dead_letter: Script::new(&entry_script(DEAD_LETTER)),
        }
    }
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

/// Moves due retries from the delayed set into the stream.
const MOVE_DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 256)
for _, member in ipairs(due) do
  local entry = cjson.decode(member)
  if entry.d then
    redis.call('XADD', KEYS[2], '*', 'p', entry.p, 'a', entry.a, 'd', entry.d)
  else
    redis.call('XADD', KEYS[2], '*', 'p', entry.p, 'a', entry.a)
  end
  redis.call('ZREM', KEYS[1], member)
end
return #due
";

/// A delivery's tokens are kept once, in the hash `{prefix}:delivery:<id>`
/// (`t`: the tokens, `n`: how many entries name it) that its entries name
/// in their field `d`; the scripts below move an entry with its `d`, and
/// the last entry of a delivery completed removes the hash. Shared by the
/// scripts: the fields of stream entry `id` of `stream` as a table.
const ENTRY_FIELDS: &str = r"
local function fields(stream, id)
  local found = redis.call('XRANGE', stream, id, id)
  if not found[1] then return nil end
  local out = {}
  local list = found[1][2]
  for i = 1, #list, 2 do out[list[i]] = list[i + 1] end
  return out
end
";

/// Completes entries: XACK + XDEL, and one reference fewer to each one's
/// delivery. KEYS[1] inbox; ARGV[1] group, ARGV[2] delivery key prefix,
/// then the ids.
const COMPLETE: &str = r"
for i = 3, #ARGV do
  local entry = fields(KEYS[1], ARGV[i])
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 and entry and entry.d then
    local key = ARGV[2] .. entry.d
    if redis.call('HINCRBY', key, 'n', -1) <= 0 then redis.call('DEL', key) end
  end
end
return 0
";

/// Moves an entry to the delayed set (with its delivery). KEYS[1] inbox,
/// KEYS[2] delayed; ARGV group, id, attempts, due, nonce (which keeps two
/// retries of equal items distinct members).
const RETRY: &str = r"
local entry = fields(KEYS[1], ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if not entry then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
local member = {p = entry.p, a = tonumber(ARGV[3]), n = ARGV[5], d = entry.d}
redis.call('ZADD', KEYS[2], ARGV[4], cjson.encode(member))
return 1
";

/// Moves an entry to the dead letters (with its delivery, which the dead
/// letter keeps). KEYS[1] inbox, KEYS[2] dead; ARGV group, id, attempts,
/// reason, time.
const DEAD_LETTER: &str = r"
local entry = fields(KEYS[1], ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if not entry then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
if entry.d then
  redis.call('XADD', KEYS[2], '*', 'p', entry.p, 'a', ARGV[3], 'r', ARGV[4], 't', ARGV[5], 'd', entry.d)
else
  redis.call('XADD', KEYS[2], '*', 'p', entry.p, 'a', ARGV[3], 'r', ARGV[4], 't', ARGV[5])
end
return 1
";

/// A script that reads stream entries: [`ENTRY_FIELDS`] and `body`.
fn entry_script(body: &str) -> String {
    format!("{ENTRY_FIELDS}{body}")
}

/// Takes or extends a lease if it is free or the caller's.
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Marks a member of a presence group alive until ARGV[2] (unix ms), drops
/// the lapsed ones (now: ARGV[3]), and lets the set expire with its
/// longest-lived member (plain `PEXPIRE`: Redis 6.2 has no `GT`).
const JOIN: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIREAT', KEYS[1], last[2])
end
return 1
";

/// Deletes a key only if it still holds the caller's value (a dedupe claim,
/// a lease).
const DELETE_IF: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

fn unavailable(e: impl std::fmt::Display) -> InboxError {
    InboxError::Unavailable(format!("redis: {e}"))
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
    pub async fn connect(url: &str, config: RedisConfig) -> Result<Self, InboxError> {
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

    /// This process's consumer name in the group. Give it to
    /// [`ReceiverBuilder::dedupe_owner`](crate::ReceiverBuilder::dedupe_owner).
    pub fn consumer(&self) -> &str {
        &self.consumer
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
    async fn ensure_group(&self) -> Result<(), InboxError> {
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

    async fn housekeeping(&self) -> Result<Vec<Claimed>, InboxError> {
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
    ) -> Result<HashMap<String, ValidationTokens>, InboxError> {
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
    async fn entries(&self, entries: &[StreamId]) -> Result<Vec<Claimed>, InboxError> {
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
                id: EntryId(entry.id.clone()),
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
    let mut bytes = [0u8; 12];
    // Invariant: the OS random source is available (see ClientState::random).
    openssl::rand::rand_bytes(&mut bytes).expect("the OS random source is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn stream_time_ms(id: &str) -> Option<i64> {
    id.split('-').next()?.parse().ok()
}

impl Inbox for RedisStore {
    fn append(&self, items: Vec<StoredItem>) -> BoxFuture<'_, Result<(), InboxError>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.atomic();
            let inbox = self.key("inbox");
            let (groups, token_sets) = crate::inbox::token_groups(&items);
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

    fn claim(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Claimed>, InboxError>> {
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

    fn complete(&self, id: EntryId) -> BoxFuture<'_, Result<(), InboxError>> {
        self.complete_many(vec![id])
    }

    fn complete_many(&self, ids: Vec<EntryId>) -> BoxFuture<'_, Result<(), InboxError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(());
            }
            let mut conn = self.conn.clone();
            let mut invocation = self.scripts.complete.key(self.key("inbox"));
            invocation.arg(GROUP).arg(self.delivery_prefix());
            for id in &ids {
                invocation.arg(&id.0);
            }
            invocation
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn retry(&self, claimed: Claimed, delay: Duration) -> BoxFuture<'_, Result<(), InboxError>> {
        Box::pin(async move {
            let due = now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
            let mut conn = self.conn.clone();
            // The entry moves as stored (its delivery named, not copied).
            self.scripts
                .retry
                .key(self.key("inbox"))
                .key(self.key("delayed"))
                .arg(GROUP)
                .arg(&claimed.id.0)
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
    ) -> BoxFuture<'_, Result<(), InboxError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            self.scripts
                .dead_letter
                .key(self.key("inbox"))
                .key(self.key("dead"))
                .arg(GROUP)
                .arg(&claimed.id.0)
                .arg(claimed.attempts)
                .arg(reason)
                .arg(now_ms())
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, InboxError>> {
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
}

impl DeadLetters for RedisStore {
    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, InboxError>> {
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
                        id: EntryId(e.id.clone()),
                        item: StoredItem::from_json(&payload, tokens).ok()?,
                        attempts: e.get("a").unwrap_or(0),
                        reason: e.get("r").unwrap_or_default(),
                        dead_at_ms: e.get("t").unwrap_or(0),
                    })
                })
                .collect())
        })
    }

    fn replay(&self, ids: Vec<EntryId>) -> BoxFuture<'_, Result<usize, InboxError>> {
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
                        .xrange(&dead, &id.0, &id.0)
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

impl Dedupe for RedisStore {
    fn begin(
        &self,
        key: DedupeKey,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Claim, DedupeError>> {
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
                .map_err(|e| DedupeError(e.to_string()))?;
            if set.is_some() {
                return Ok(Claim::Proceed);
            }
            let current: Option<String> = conn
                .get(&key)
                .await
                .map_err(|e| DedupeError(e.to_string()))?;
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
    ) -> BoxFuture<'_, Result<(), DedupeError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::cmd("SET")
                .arg(self.dedupe_key(&key))
                .arg("d")
                .arg("PX")
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| DedupeError(e.to_string()))
        })
    }

    fn begin_many(
        &self,
        keys: Vec<DedupeKey>,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<Claim>, DedupeError>> {
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
                .map_err(|e| DedupeError(e.to_string()))?
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
    ) -> BoxFuture<'_, Result<(), DedupeError>> {
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
                .map_err(|e| DedupeError(e.to_string()))
        })
    }

    fn abandon(&self, key: DedupeKey, owner: &str) -> BoxFuture<'_, Result<(), DedupeError>> {
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
                .map_err(|e| DedupeError(e.to_string()))
        })
    }
}

fn store_error(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("redis: {e}"))
}

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
                .map_err(store_error)?;
            Ok(found
                .into_iter()
                .map(|json| json.and_then(|j| serde_json::from_str(&j).ok()))
                .collect())
        })
    }

    fn put(&self, record: SubscriptionRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let json = serde_json::to_string(&record).map_err(store_error)?;
            let mut conn = self.conn.clone();
            conn.hset::<_, _, _, ()>(self.key("subscriptions"), &record.id, json)
                .await
                .map_err(store_error)
        })
    }

    fn remove(&self, id: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            conn.hdel::<_, _, ()>(self.key("subscriptions"), id)
                .await
                .map_err(store_error)
        })
    }

    fn all(&self) -> BoxFuture<'_, Result<Vec<SubscriptionRecord>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let all: Vec<String> = conn
                .hvals(self.key("subscriptions"))
                .await
                .map_err(store_error)?;
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
                .map_err(store_error)?;
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
                .map_err(store_error)
        })
    }

    fn expires_in(&self, name: &str) -> BoxFuture<'_, Result<Option<Duration>, StoreError>> {
        let key = self.key(&format!("lease:{name}"));
        Box::pin(async move {
            let mut conn = self.conn.clone();
            // -2: no such key; -1: no expiry (never written so by us).
            let left: i64 = conn.pttl(key).await.map_err(store_error)?;
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
                .map_err(store_error)
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
                .map_err(store_error)
        })
    }

    fn members(&self, group: &str) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        let key = self.key(&format!("presence:{group}"));
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut live: Vec<String> = conn
                .zrangebyscore(key, format!("({}", now_ms()), "+inf")
                .await
                .map_err(store_error)?;
            live.sort();
            Ok(live)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::ValidationTokens;

    /// The Redis of `MSGRAPH_WEBHOOKS_REDIS_URL`, or `None` (and a note) when unset.
    pub(crate) fn redis_url() -> Option<String> {
        match std::env::var("MSGRAPH_WEBHOOKS_REDIS_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                eprintln!("skipped: MSGRAPH_WEBHOOKS_REDIS_URL is not set (Redis tests need it)");
                None
            }
        }
    }

    async fn store(url: &str) -> RedisStore {
        let config = RedisConfig {
            prefix: format!("msgraph-webhooks-test-{}", random_id()),
            claim_idle: Duration::from_millis(300),
            ..RedisConfig::default()
        };
        RedisStore::connect(url, config).await.unwrap()
    }

    async fn cleanup(store: &RedisStore) {
        let mut conn = store.conn.clone();
        let keys: Vec<String> = conn
            .keys(format!("{}:*", store.config.prefix))
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = conn.del(keys).await.unwrap();
        }
    }

    fn item(n: u32) -> StoredItem {
        let raw = serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap();
        StoredItem::new(raw, ValidationTokens::Absent)
    }

    #[tokio::test]
    async fn inbox_dead_letters_and_takeover() {
        let Some(url) = redis_url() else { return };
        let store = store(&url).await;
        store.append((0..3).map(item).collect()).await.unwrap();
        assert_eq!(store.stats().await.unwrap().depth, 3);
        let claimed = store.claim(10, Duration::from_millis(100)).await.unwrap();
        assert_eq!(claimed.len(), 3);
        store.complete(claimed[0].id.clone()).await.unwrap();
        let mut retried = claimed[1].clone();
        retried.attempts = 1;
        store
            .retry(retried, Duration::from_millis(50))
            .await
            .unwrap();
        let mut dead = claimed[2].clone();
        dead.attempts = 5;
        store.dead_letter(dead, "boom".into()).await.unwrap();

        // The retry comes back when due, with its attempt count.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = store.claim(10, Duration::from_millis(500)).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 1);

        // Left unacknowledged by a "dead" consumer, it is taken over after the idle time.
        let other = RedisStore {
            consumer: random_id(),
            ..store_clone(&store)
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        let taken = other.claim(10, Duration::from_millis(100)).await.unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].id, again[0].id);
        other.complete(taken[0].id.clone()).await.unwrap();

        let letters = store.list(10).await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(
            (letters[0].attempts, letters[0].reason.as_str()),
            (5, "boom")
        );
        assert_eq!(store.replay(Vec::new()).await.unwrap(), 1);
        assert!(store.list(10).await.unwrap().is_empty());
        let replayed = store.claim(10, Duration::from_millis(500)).await.unwrap();
        assert_eq!(replayed.len(), 1);
        assert_eq!(replayed[0].attempts, 0);
        cleanup(&store).await;
    }

    async fn deliveries(store: &RedisStore) -> usize {
        let mut conn = store.conn.clone();
        let keys: Vec<String> = conn
            .keys(format!("{}:delivery:*", store.config.prefix))
            .await
            .unwrap();
        keys.len()
    }

    #[tokio::test]
    async fn a_deliverys_tokens_are_stored_once_and_go_with_its_last_item() {
        let Some(url) = redis_url() else { return };
        let store = store(&url).await;
        let tokens = ValidationTokens::Tokens(vec!["t".repeat(10_000), "u".into()].into());
        let delivery: Vec<StoredItem> = (0..50)
            .map(|n| {
                let raw = serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}"));
                StoredItem::new(raw.unwrap(), tokens.clone())
            })
            .collect();
        store.append(delivery).await.unwrap();
        store.append(vec![item(99)]).await.unwrap();
        let mut conn = store.conn.clone();
        let used: i64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(store.key("inbox"))
            .query_async::<Option<i64>>(&mut conn)
            .await
            .unwrap()
            .unwrap_or(0);
        assert!(used < 50_000, "the stream holds no tokens: {used} bytes");
        assert_eq!(deliveries(&store).await, 1);

        let mut claimed = store.claim(100, Duration::from_millis(100)).await.unwrap();
        assert_eq!(claimed.len(), 51);
        for c in &claimed {
            let v: serde_json::Value = serde_json::from_str(c.item.raw.get()).unwrap();
            let expected = if v["n"] == 99 {
                &ValidationTokens::Absent
            } else {
                &tokens
            };
            assert_eq!(&c.item.validation_tokens, expected);
        }
        // A retried item and a dead letter keep the tokens after the others are gone…
        let mut retried = claimed.remove(0);
        retried.attempts = 1;
        store
            .retry(retried, Duration::from_millis(10))
            .await
            .unwrap();
        let dead = claimed.remove(0);
        store.dead_letter(dead, "boom".into()).await.unwrap();
        let rest = claimed.into_iter().map(|c| c.id).collect();
        store.complete_many(rest).await.unwrap();
        assert_eq!(deliveries(&store).await, 1);
        assert_eq!(
            store.list(10).await.unwrap()[0].item.validation_tokens,
            tokens
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let again = store.claim(10, Duration::from_millis(300)).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(
            (again[0].attempts, &again[0].item.validation_tokens),
            (1, &tokens)
        );
        store.complete(again[0].id.clone()).await.unwrap();
        // …through its replay, until it is completed.
        assert_eq!(deliveries(&store).await, 1);
        assert_eq!(store.replay(Vec::new()).await.unwrap(), 1);
        let replayed = store.claim(10, Duration::from_millis(300)).await.unwrap();
        assert_eq!(replayed[0].item.validation_tokens, tokens);
        store.complete(replayed[0].id.clone()).await.unwrap();
        assert_eq!(deliveries(&store).await, 0);
        assert_eq!(store.stats().await.unwrap().depth, 0);
        cleanup(&store).await;
    }

    fn store_clone(store: &RedisStore) -> RedisStore {
        RedisStore {
            config: store.config.clone(),
            consumer: store.consumer.clone(),
            conn: store.conn.clone(),
            blocking: tokio::sync::Mutex::new(store.conn.clone()),
            group_ready: tokio::sync::OnceCell::new(),
            housekeeping: Mutex::default(),
            scripts: Scripts::new(),
        }
    }

    #[tokio::test]
    async fn dedupe_with_set_nx() {
        let Some(url) = redis_url() else { return };
        let store = store(&url).await;
        let key = DedupeKey([5; 32]);
        let lease = Duration::from_secs(60);
        assert_eq!(store.begin(key, "a", lease).await.unwrap(), Claim::Proceed);
        assert_eq!(
            store.begin(key, "b", lease).await.unwrap(),
            Claim::InProgress
        );
        store.abandon(key, "b").await.unwrap();
        assert_eq!(
            store.begin(key, "b", lease).await.unwrap(),
            Claim::InProgress
        );
        store.abandon(key, "a").await.unwrap();
        assert_eq!(store.begin(key, "b", lease).await.unwrap(), Claim::Proceed);
        store
            .finish(key, "b", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            store.begin(key, "a", lease).await.unwrap(),
            Claim::Duplicate
        );
        cleanup(&store).await;
    }

    #[tokio::test]
    async fn records_and_leases() {
        let Some(url) = redis_url() else { return };
        let a = store(&url).await;
        let b = RedisStore {
            consumer: random_id(),
            ..store_clone(&a)
        };
        a.put(SubscriptionRecord::new(
            "sub-1",
            Some(crate::ClientState::new("s")),
        ))
        .await
        .unwrap();
        let found = b
            .get_many(vec!["sub-1".into(), "nope".into()])
            .await
            .unwrap();
        assert!(
            found[0]
                .as_ref()
                .unwrap()
                .client_state
                .as_ref()
                .unwrap()
                .matches("s")
        );
        assert!(found[1].is_none());
        assert_eq!(b.all().await.unwrap().len(), 1);
        a.remove("sub-1".into()).await.unwrap();
        assert!(b.all().await.unwrap().is_empty());

        let ttl = Duration::from_secs(60);
        assert!(a.acquire("leader", "a", ttl).await.unwrap());
        assert!(!b.acquire("leader", "b", ttl).await.unwrap());
        assert!(
            a.acquire("leader", "a", ttl).await.unwrap(),
            "the holder renews"
        );
        b.release("leader", "b").await.unwrap();
        assert!(
            !b.acquire("leader", "b", ttl).await.unwrap(),
            "only the holder releases"
        );
        a.release("leader", "a").await.unwrap();
        assert!(b.acquire("leader", "b", ttl).await.unwrap());
        let left = a.expires_in("leader").await.unwrap().unwrap();
        assert!(left <= ttl && left > Duration::from_secs(50), "{left:?}");
        assert_eq!(a.expires_in("nobody").await.unwrap(), None);

        a.join("g", "a", ttl).await.unwrap();
        b.join("g", "b", ttl).await.unwrap();
        b.join("g2", "c", ttl).await.unwrap();
        b.join("g", "gone", Duration::ZERO).await.unwrap();
        assert_eq!(b.members("g").await.unwrap(), ["a", "b"]);
        a.leave("g", "a").await.unwrap();
        assert_eq!(a.members("g").await.unwrap(), ["b"]);
        cleanup(&a).await;
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_fast() {
        // Nothing listens on port 1.
        let store = RedisStore::connect("redis://127.0.0.1:1", RedisConfig::default())
            .await
            .unwrap();
        assert!(matches!(
            store.append(vec![item(1)]).await,
            Err(InboxError::Unavailable(_))
        ));
    }
}

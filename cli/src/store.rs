//! The store flags: each command takes those it uses (`listen` all of
//! them, `work` no memory store, `subscribe` its records' store, `dlq` only
//! where the store is).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use msgraph_webhooks::BoxError;
use msgraph_webhooks::store::{
    Backend, MemoryInbox, PostgresConfig, PostgresStore, RedisConfig, RedisStore, SqliteStore,
};

/// Where the store is: shared by every command that opens one.
#[derive(Debug, clap::Args)]
pub(crate) struct StoreLocation {
    /// Directory of the embedded durable store (the default store), shared
    /// by every process on this machine that names it [default: the
    /// platform's data directory, e.g. ~/.local/share/msgraph-webhooks]
    #[arg(
        long,
        global = true,
        env = "MSGRAPH_WEBHOOKS_DATA_DIR",
        conflicts_with_all = ["redis", "postgres"]
    )]
    data_dir: Option<PathBuf>,

    /// Redis URL (e.g. redis://127.0.0.1:6379): inbox, dedupe and dead
    /// letters shared by every instance that names it.
    #[arg(long, global = true, env = "MSGRAPH_WEBHOOKS_REDIS")]
    redis: Option<String>,

    /// Prefix of every Redis key, so deployments can share one Redis.
    #[arg(
        long,
        global = true,
        default_value = "msgraph-webhooks",
        env = "MSGRAPH_WEBHOOKS_REDIS_PREFIX"
    )]
    redis_prefix: String,

    /// PostgreSQL URL (e.g. postgres://user@db.internal/graph, with
    /// ?sslmode=require to insist on verified TLS): inbox, dedupe, dead
    /// letters, records and cursors shared by every instance that names it;
    /// 202 once committed.
    #[arg(
        long,
        global = true,
        env = "MSGRAPH_WEBHOOKS_POSTGRES",
        conflicts_with = "redis"
    )]
    postgres: Option<String>,

    /// The PostgreSQL schema the store's tables live in (created and
    /// migrated by the store), so deployments can share one database.
    #[arg(
        long,
        global = true,
        default_value = "msgraph_webhooks",
        env = "MSGRAPH_WEBHOOKS_POSTGRES_SCHEMA"
    )]
    postgres_schema: String,
}

/// What workers need of the store: `listen` and `work`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConsumerArgs {
    /// Seconds an item may stay claimed by a silent Redis or PostgreSQL
    /// consumer before another takes it over; longer than your slowest handler.
    #[arg(long, default_value_t = CLAIM_IDLE_SECS, env = "MSGRAPH_WEBHOOKS_CLAIM_IDLE_SECS")]
    claim_idle_secs: u64,

    /// Hours a handled notification is remembered, so Graph's copies of it
    /// are dropped; keep it over Graph's 4-hour retry window.
    #[arg(
        long,
        default_value_t = DEDUPE_HOURS,
        value_parser = clap::value_parser!(u64).range(1..=168),
        env = "MSGRAPH_WEBHOOKS_DEDUPE_HOURS"
    )]
    dedupe_hours: u64,
}

const CLAIM_IDLE_SECS: u64 = 60;
const DEDUPE_HOURS: u64 = 6;

impl Default for ConsumerArgs {
    fn default() -> Self {
        Self {
            claim_idle_secs: CLAIM_IDLE_SECS,
            dedupe_hours: DEDUPE_HOURS,
        }
    }
}

/// A store in this process only: `listen` and `subscribe`.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct MemoryArgs {
    /// Keep everything in memory only: fastest, lost with the process, and
    /// shared with no other.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_MEMORY", conflicts_with_all = ["data_dir", "redis", "postgres"])]
    memory: bool,
}

/// The in-memory inbox's bounds: `listen` only.
#[derive(Debug, clap::Args)]
pub(crate) struct CapacityArgs {
    /// What the in-memory inbox holds before answering 503 (with --memory):
    /// a number of items (100000), a size (256MiB; B, KiB, MiB, GiB, KB, MB,
    /// GB), or both (100000,256MiB). Both limits always apply; the one not
    /// given keeps its default.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100000,256MiB",
        value_parser = parse_capacity,
        env = "MSGRAPH_WEBHOOKS_INBOX_CAPACITY"
    )]
    inbox_capacity: Vec<Capacity>,
}

/// Every store flag: what `listen` takes.
#[derive(Debug, clap::Args)]
pub(crate) struct StoreArgs {
    #[command(flatten)]
    location: StoreLocation,
    #[command(flatten)]
    consumer: ConsumerArgs,
    #[command(flatten)]
    memory: MemoryArgs,
    #[command(flatten)]
    capacity: CapacityArgs,
}

/// The store flags of `work`: no memory store (it would share nothing with
/// the receivers), no inbox bounds.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkStoreArgs {
    #[command(flatten)]
    location: StoreLocation,
    #[command(flatten)]
    consumer: ConsumerArgs,
}

/// The store flags of `subscribe`: where its records and lease live.
#[derive(Debug, clap::Args)]
pub(crate) struct RecordStoreArgs {
    #[command(flatten)]
    location: StoreLocation,
    #[command(flatten)]
    memory: MemoryArgs,
}

/// The store flags of `dlq`: only where the store is.
#[derive(Debug, clap::Args)]
pub(crate) struct DlqStoreArgs {
    #[command(flatten)]
    location: StoreLocation,
}

impl WorkStoreArgs {
    pub(crate) async fn open(&self) -> Result<Store, BoxError> {
        open(&self.location, &self.consumer, &MemoryArgs::default(), &[]).await
    }
}

impl RecordStoreArgs {
    pub(crate) async fn open(&self) -> Result<Store, BoxError> {
        open(&self.location, &ConsumerArgs::default(), &self.memory, &[]).await
    }
}

impl DlqStoreArgs {
    pub(crate) async fn open(&self) -> Result<Store, BoxError> {
        open(
            &self.location,
            &ConsumerArgs::default(),
            &MemoryArgs::default(),
            &[],
        )
        .await
    }
}

impl StoreArgs {
    pub(crate) async fn open(&self) -> Result<Store, BoxError> {
        open(
            &self.location,
            &self.consumer,
            &self.memory,
            &self.capacity.inbox_capacity,
        )
        .await
    }
}

/// One limit of the in-memory inbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Capacity {
    Items(usize),
    Bytes(usize),
}

fn parse_capacity(text: &str) -> Result<Capacity, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a number of items or a size like 256MiB"))?;
    let scale: usize = match unit.trim() {
        "" => return Ok(Capacity::Items(number)),
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    number
        .checked_mul(scale)
        .map(Capacity::Bytes)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// The in-memory inbox the capacity flags describe.
fn memory_inbox(capacities: &[Capacity]) -> MemoryInbox {
    {
        let mut items = MemoryInbox::DEFAULT_CAPACITY;
        let mut bytes = MemoryInbox::DEFAULT_MAX_BYTES;
        for capacity in capacities {
            match *capacity {
                Capacity::Items(n) => items = n,
                Capacity::Bytes(n) => bytes = n,
            }
        }
        MemoryInbox::new(items).max_bytes(bytes)
    }
}

/// An opened store.
pub(crate) struct Store {
    pub(crate) backend: Backend,
    /// How long a handled key is remembered.
    pub(crate) dedupe_ttl: Duration,
}

impl Store {
    /// Applies the store to a receiver builder.
    pub(crate) fn configure<H: msgraph_webhooks::Handler>(
        self,
        builder: msgraph_webhooks::ReceiverBuilder<H>,
    ) -> msgraph_webhooks::ReceiverBuilder<H> {
        builder.backend(&self.backend).dedupe_ttl(self.dedupe_ttl)
    }
}

async fn open(
    location: &StoreLocation,
    consumer: &ConsumerArgs,
    memory: &MemoryArgs,
    capacities: &[Capacity],
) -> Result<Store, BoxError> {
    {
        let dedupe_ttl = Duration::from_secs(consumer.dedupe_hours * 3600);
        if consumer.dedupe_hours < 4 {
            tracing::warn!(
                hours = consumer.dedupe_hours,
                "--dedupe-hours is shorter than Graph's 4-hour retry window: late copies are handled again"
            );
        }
        if memory.memory {
            tracing::warn!("--memory: acknowledged notifications are lost if the process stops");
            return Ok(Store {
                backend: Backend::memory(memory_inbox(capacities)),
                dedupe_ttl,
            });
        }
        if let Some(url) = &location.redis {
            let mut config = RedisConfig::default();
            config.prefix = location.redis_prefix.clone();
            config.claim_idle = Duration::from_secs(consumer.claim_idle_secs);
            let store = Arc::new(RedisStore::connect(url, config).await?);
            tracing::info!(prefix = %location.redis_prefix, "store: redis");
            return Ok(Store {
                backend: Backend::redis(store),
                dedupe_ttl,
            });
        }
        if let Some(url) = &location.postgres {
            let mut config = PostgresConfig::default();
            config.schema = location.postgres_schema.clone();
            config.claim_idle = Duration::from_secs(consumer.claim_idle_secs);
            let store = Arc::new(PostgresStore::connect(url, config).await?);
            tracing::info!(schema = %location.postgres_schema, "store: postgres");
            return Ok(Store {
                backend: Backend::postgres(store),
                dedupe_ttl,
            });
        }
        let dir = match &location.data_dir {
            Some(dir) => dir.clone(),
            None => directories::ProjectDirs::from("", "", "msgraph-webhooks")
                .map(|dirs| dirs.data_dir().to_path_buf())
                .ok_or("no home directory to put the data directory in: pass --data-dir")?,
        };
        let store = Arc::new(
            SqliteStore::open(&dir)
                .map_err(|e| format!("opening the store in {}: {e}", dir.display()))?,
        );
        tracing::info!(path = %store.path().display(), "store: embedded");
        Ok(Store {
            backend: Backend::sqlite(store),
            dedupe_ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_are_items_or_sizes() {
        assert_eq!(parse_capacity("100000"), Ok(Capacity::Items(100_000)));
        assert_eq!(parse_capacity("256MiB"), Ok(Capacity::Bytes(256 << 20)));
        assert_eq!(parse_capacity("2 GB"), Ok(Capacity::Bytes(2_000_000_000)));
        assert_eq!(parse_capacity("512B"), Ok(Capacity::Bytes(512)));
        for bad in ["", "MiB", "12 parsecs", "-1", "1.5GiB"] {
            assert!(parse_capacity(bad).is_err(), "{bad:?}");
        }
    }
}

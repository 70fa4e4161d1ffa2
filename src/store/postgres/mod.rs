//! The PostgreSQL store, for several receivers and workers sharing one
//! PostgreSQL: what every managed cloud offers with synchronous commits
//! and point-in-time recovery.
//!
//! Why `tokio-postgres` with `deadpool-postgres`: the first is the
//! asynchronous PostgreSQL client of the Rust ecosystem (the `postgres`
//! crates of rust-postgres, which sqlx's driver also learned from), small,
//! with prepared statements and typed arrays; the second is the pool it is
//! most used with, which makes connections lazily, drops the closed ones
//! and makes new ones when the server is back. sqlx would bring a query
//! macro layer, its own pool and migration runner, and compile-time
//! checking against a live database, none of which a store of a dozen
//! statements needs.
//!
//! TLS, through OpenSSL (the crate's one TLS stack), by the URL's
//! `sslmode`: `disable`; `prefer` (the default) encrypts when the server
//! offers TLS without checking its certificate, as libpq does; `require`
//! insists on TLS and verifies the certificate and host name against the
//! system's trust store — stricter than libpq's `require`, because what
//! travels holds `clientState`s (point `SSL_CERT_FILE` at a provider's CA
//! bundle when it is not in that store).
//!
//! Everything lives in one schema ([`PostgresConfig::schema`]), created and
//! migrated by the store itself (see `schema.rs`):
//!
//! - `items`: the inbox. A claim is one `UPDATE` over a `SELECT … FOR
//!   UPDATE SKIP LOCKED`, which writes the claimer and the time the claim
//!   lapses (`available_at_ms`, the column ready items are found by): an
//!   item whose claimer died is claimable again once it lapses
//!   ([`PostgresConfig::claim_idle`]), and a retry is the same column set
//!   to its due time.
//! - `deliveries`: a delivery's validation tokens, kept once for all its
//!   items and dead letters, with how many name them.
//! - `dead_letters`, with the reason and the attempts; a replay moves one
//!   back into `items` as a fresh item.
//! - `dedupe`: handled keys with their expiry (no owner), and keys being
//!   handled with their owner and the end of their lease.
//! - `subscriptions`, `cursors`, `leases` (presence is leases too).
//!
//! Appends from every request of a process go through one writer task,
//! which takes all the appends waiting and stores them in one multi-row
//! statement: one commit (one WAL flush) is shared by every concurrent
//! delivery (group commit). An append resolves after its commit, with
//! `synchronous_commit` on, so `202` means "committed in PostgreSQL".
//!
//! That statement also sends a `NOTIFY` on the schema's channel, which
//! every process `LISTEN`s to on a connection of its own: a worker waiting
//! for items in another process wakes at once, and idle workers poll only
//! twice a second (for retries coming due and lapsed claims), or every
//! 50 ms while the listening connection is down.
//!
//! Every expiry (claims, dedupe keys, leases, presence) is measured by the
//! PostgreSQL server's clock, so instances whose clocks differ agree.
//!
//! Connect to the server itself or through a pooler in session mode: the
//! store keeps prepared statements per connection and sets
//! `synchronous_commit` as a startup option, which a pooler in transaction
//! mode (PgBouncer's default there) does not carry.
//!
//! When PostgreSQL is unreachable, [`connect`](PostgresStore::connect)
//! still succeeds (the schema is made on first use), and every operation
//! fails within [`PostgresConfig::timeout`] with
//! [`StoreError::Unavailable`]: the listener answers `503` and Graph
//! retries. The pool makes new connections when it is back, so service
//! resumes without a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::sync::OnceCell;

use crate::store::StoreError;

mod coordination;
mod dedupe;
mod inbox;
mod schema;
mod sweep;
mod wakeup;
mod writer;

use schema::Schema;
use wakeup::Wakeup;

/// Settings of a [`PostgresStore`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// The schema every table lives in (default `msgraph_webhooks`), so
    /// several deployments can share one database: letters, digits and
    /// `_`, not starting with a digit, at most 63 bytes.
    pub schema: String,
    /// How long an item may stay claimed by a silent worker before another
    /// takes it over (default 60 s). Longer than your slowest handler.
    pub claim_idle: Duration,
    /// Time allowed for connecting, and for each operation (default 2 s):
    /// an append that takes longer becomes a `503`.
    pub timeout: Duration,
    /// Connections this process keeps in its pool at most (default 16),
    /// besides the one that listens for appends.
    pub max_connections: usize,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            schema: "msgraph_webhooks".to_owned(),
            claim_idle: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
            max_connections: 16,
        }
    }
}

/// The PostgreSQL store. Implements every storage contract:
/// [`Inbox`](crate::store::Inbox), [`DeadLetters`](crate::store::DeadLetters),
/// [`Dedupe`](crate::store::Dedupe), [`RecordStore`](crate::store::RecordStore),
/// [`Cursors`](crate::store::Cursors) and [`Lease`](crate::store::Lease).
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use msgraph_webhooks::store::{Backend, PostgresConfig, PostgresStore};
///
/// let url = "postgres://receiver@db.internal/graph?sslmode=require";
/// let store = PostgresStore::connect(url, PostgresConfig::default()).await?;
/// let backend = Backend::postgres(Arc::new(store));
/// # Ok(()) }
/// ```
pub struct PostgresStore {
    config: PostgresConfig,
    consumer: String,
    pool: Pool,
    schema: Schema,
    migrated: OnceCell<()>,
    appends: writer::Appends,
    wakeup: Wakeup,
    listener: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
    /// Transactions the append writer committed.
    commits: Arc<AtomicU64>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.config.schema)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(format!("postgres: {e}"))
}

/// What a client error says: the server's message, or the error with its
/// cause (tokio-postgres's own text is only "db error", "error connecting").
fn describe(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => db.to_string(),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`, or
    /// libpq's `key=value` form) and creates or migrates the schema. Like
    /// the Redis store, it succeeds while PostgreSQL is unreachable:
    /// connections are made when needed, and the schema on first use.
    ///
    /// # Errors
    ///
    /// The URL or the schema name is not valid, TLS cannot be set up, or
    /// the server refused the migration (no right to create the schema, a
    /// schema migrated by a newer version of this crate).
    pub async fn connect(url: &str, config: PostgresConfig) -> Result<Self, StoreError> {
        let schema = Schema::new(&config.schema)?;
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| unavailable(format!("not a PostgreSQL URL: {e}")))?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(config.timeout);
        }
        // A connection to a server that vanished without closing it (a
        // failover, a partition) is found dead in seconds, not hours.
        pg.keepalives_idle(Duration::from_secs(5));
        pg.tcp_user_timeout(Duration::from_secs(10));
        // `202` follows the commit: make sure a commit means flushed, whatever
        // the role's or the database's default.
        let options = match pg.get_options() {
            Some(given) => format!("{given} -c synchronous_commit=on"),
            None => "-c synchronous_commit=on".to_owned(),
        };
        pg.options(options);
        pg.application_name("msgraph-webhooks");
        let tls = tls(pg.get_ssl_mode() == tokio_postgres::config::SslMode::Require)?;
        let wakeup = Wakeup::default();
        let listener = wakeup::spawn(
            pg.clone(),
            tls.clone(),
            schema.channel().to_owned(),
            wakeup.clone(),
        );
        let manager = Manager::from_config(
            pg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.max_connections.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .build()
            .map_err(unavailable)?;
        let commits = Arc::new(AtomicU64::new(0));
        let appends = writer::spawn(
            pool.clone(),
            schema.clone(),
            config.timeout,
            commits.clone(),
        );
        let sweeper = sweep::spawn(pool.clone(), &schema, config.timeout);
        let store = Self {
            consumer: crate::random::hex_id(12),
            config,
            pool,
            schema,
            migrated: OnceCell::new(),
            appends,
            wakeup,
            listener,
            sweeper,
            commits,
        };
        match store.client().await {
            Ok(_) => {}
            Err(Refused::Server(e)) => return Err(e),
            Err(Refused::Unreachable(e)) => {
                tracing::warn!(error = %e, "PostgreSQL is unreachable; the store retries on every operation");
            }
        }
        Ok(store)
    }

    /// This process's name among the claimers (what
    /// [`Backend::postgres`](super::Backend::postgres) holds dedupe claims under).
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// How long a silent worker keeps its claims ([`PostgresConfig::claim_idle`]).
    pub fn claim_idle(&self) -> Duration {
        self.config.claim_idle
    }

    /// How many transactions the append writer committed since `connect`:
    /// under load far fewer than the appends, each holding every append
    /// that waited for it (group commit).
    pub fn append_commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// A pooled connection, the schema migrated on it first if this process
    /// has not yet.
    async fn client(&self) -> Result<Object, Refused> {
        let client = self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => Refused::of(e, "connecting"),
            e => Refused::Unreachable(unavailable(e)),
        })?;
        if self.migrated.initialized() {
            return Ok(client);
        }
        let migrated = self
            .migrated
            .get_or_try_init(|| async {
                let migration = schema::migrate(&client, &self.schema);
                tokio::time::timeout(self.config.timeout * 5, migration)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Refused::Unreachable(unavailable(
                            "migrating the schema timed out",
                        )))
                    })
            })
            .await;
        match migrated {
            Ok(_) => Ok(client),
            Err(e) => {
                // Perhaps mid-transaction: this connection is not reused.
                drop(Object::take(client));
                Err(e)
            }
        }
    }

    /// Migrates the schema if this process has not yet.
    async fn ensure_migrated(&self) -> Result<(), StoreError> {
        if self.migrated.initialized() {
            return Ok(());
        }
        self.client().await.map(drop).map_err(Refused::into_error)
    }

    /// Runs `op` on a pooled connection within the timeout.
    async fn with<T, F>(&self, op: impl FnOnce(Object) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let work = async {
            let client = self.client().await.map_err(Refused::into_error)?;
            op(client).await.map_err(|e| unavailable(describe(&e)))
        };
        tokio::time::timeout(self.config.timeout, work)
            .await
            .map_err(|_| unavailable("no answer in time"))?
    }

    /// The SQL `template` with `{s}` naming this store's schema.
    fn sql(&self, template: &str) -> String {
        self.schema.sql(template)
    }

    /// Wakes one waiting claimer of this process for appended items, unless
    /// one is already on its way (it claims everything appended meanwhile).
    fn wake_claimer(&self) {
        self.wakeup.wake_one();
    }

    /// Drops the schema and everything in it (tests clean up with it).
    #[cfg(test)]
    pub(crate) async fn drop_schema(&self) {
        let drop = self.sql("DROP SCHEMA IF EXISTS {s} CASCADE");
        self.with(|client| async move { client.batch_execute(&drop).await })
            .await
            .expect("the schema is dropped");
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.sweeper.abort();
        self.listener.abort();
    }
}

/// Why a connection could not be had: the server is out of reach (retry
/// later), or it answered with an error (a configuration to fix).
enum Refused {
    Unreachable(StoreError),
    Server(StoreError),
}

impl Refused {
    /// Tells the server's answers that mean "not now" (starting up, shutting
    /// down, out of connections: SQLSTATE classes 08, 53 and 57) and failures
    /// to reach it apart from those that need a fix (a wrong password, no
    /// such database, no right to create the schema).
    /// `doing` says what failed.
    fn of(e: tokio_postgres::Error, doing: &str) -> Self {
        let fix = e.as_db_error().is_some_and(|db| {
            let class = &db.code().code()[..2];
            !matches!(class, "08" | "53" | "57")
        });
        let error = unavailable(format!("{doing}: {}", describe(&e)));
        if fix {
            Refused::Server(error)
        } else {
            Refused::Unreachable(error)
        }
    }

    fn into_error(self) -> StoreError {
        match self {
            Refused::Unreachable(e) | Refused::Server(e) => e,
        }
    }
}

/// OpenSSL for the `sslmode`s that use TLS; the server is verified when
/// `verify` (`sslmode=require`, see the module docs).
fn tls(verify: bool) -> Result<postgres_openssl::MakeTlsConnector, StoreError> {
    let builder = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
        .map_err(|e| unavailable(format!("setting up TLS: {e}")))?;
    let mut connector = postgres_openssl::MakeTlsConnector::new(builder.build());
    if !verify {
        connector.set_callback(|config, _domain| {
            config.set_verify(openssl::ssl::SslVerifyMode::NONE);
            config.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(connector)
}

#[cfg(test)]
pub(super) mod tests;

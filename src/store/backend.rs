//! One backend's implementations of every contract, wired the way they
//! must be used together.

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "postgres")]
use super::PostgresStore;
#[cfg(feature = "redis")]
use super::RedisStore;
#[cfg(feature = "sqlite")]
use super::SqliteStore;
use super::{
    Cursors, DEDUPE_LEASE, DeadLetters, Dedupe, Inbox, Lease, MemoryCursors, MemoryDedupe,
    MemoryInbox, MemoryLease, MemoryRecords, RecordStore,
};

/// A store's inbox, dead letters, dedupe, subscription records and lease,
/// with what the receiver must know to use them together: the name its
/// dedupe claims are held under and how long such a claim lasts. Give it to
/// [`ReceiverBuilder::backend`](crate::ReceiverBuilder::backend), and its
/// [`records`](Self::records) and [`lease`](Self::lease) to the subscription
/// manager.
///
/// ```no_run
/// # fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use msgraph_webhooks::store::{Backend, SqliteStore};
/// use msgraph_webhooks::{ClientState, Receiver, handler_fn};
///
/// let backend = Backend::sqlite(Arc::new(SqliteStore::open("/var/lib/graph-receiver")?));
/// let receiver = Receiver::builder(handler_fn(|_event| async { Ok(()) }))
///     .client_state(ClientState::new("the clientState of your subscriptions"))
///     .backend(&backend)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Backend {
    inbox: Arc<dyn Inbox>,
    dead_letters: Arc<dyn DeadLetters>,
    dedupe: Arc<dyn Dedupe>,
    records: Arc<dyn RecordStore>,
    cursors: Arc<dyn Cursors>,
    lease: Arc<dyn Lease>,
    owner: Option<String>,
    dedupe_lease: Duration,
    kind: &'static str,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("kind", &self.kind)
            .field("owner", &self.owner)
            .field("dedupe_lease", &self.dedupe_lease)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Everything in this process's memory, lost with it; `inbox` bounds
    /// what waits for the workers.
    pub fn memory(inbox: MemoryInbox) -> Self {
        let inbox = Arc::new(inbox);
        Self {
            inbox: inbox.clone(),
            dead_letters: inbox,
            dedupe: Arc::new(MemoryDedupe::new()),
            records: Arc::new(MemoryRecords::new()),
            cursors: Arc::new(MemoryCursors::new()),
            lease: Arc::new(MemoryLease::new()),
            owner: None,
            dedupe_lease: DEDUPE_LEASE,
            kind: "memory",
        }
    }

    /// The embedded durable store: `202` after the fsync, shared by the
    /// processes of one machine. Dedupe claims are held under the store's
    /// consumer id.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(store: Arc<SqliteStore>) -> Self {
        Self {
            owner: Some(store.consumer().to_owned()),
            inbox: store.clone(),
            dead_letters: store.clone(),
            dedupe: store.clone(),
            records: store.clone(),
            cursors: store.clone(),
            lease: store,
            dedupe_lease: DEDUPE_LEASE,
            kind: "sqlite",
        }
    }

    /// Redis, shared by every instance. A silent worker's items are taken
    /// over after the store's claim timeout, so its dedupe claims last
    /// exactly as long: a copy of an item taken over is not held back by
    /// the silent worker's claim, nor run while a live worker still holds it.
    #[cfg(feature = "redis")]
    pub fn redis(store: Arc<RedisStore>) -> Self {
        Self {
            owner: Some(store.consumer().to_owned()),
            dedupe_lease: store.claim_idle(),
            inbox: store.clone(),
            dead_letters: store.clone(),
            dedupe: store.clone(),
            records: store.clone(),
            cursors: store.clone(),
            lease: store,
            kind: "redis",
        }
    }

    /// PostgreSQL, shared by every instance: `202` after the commit. A
    /// silent worker's claims lapse after the store's claim timeout, so its
    /// dedupe claims last exactly as long, as with [`redis`](Self::redis).
    #[cfg(feature = "postgres")]
    pub fn postgres(store: Arc<PostgresStore>) -> Self {
        Self {
            owner: Some(store.consumer().to_owned()),
            dedupe_lease: store.claim_idle(),
            inbox: store.clone(),
            dead_letters: store.clone(),
            dedupe: store.clone(),
            records: store.clone(),
            cursors: store.clone(),
            lease: store,
            kind: "postgres",
        }
    }

    /// Where accepted items wait for the workers.
    pub fn inbox(&self) -> Arc<dyn Inbox> {
        self.inbox.clone()
    }

    /// Where items that kept failing are kept.
    pub fn dead_letters(&self) -> Arc<dyn DeadLetters> {
        self.dead_letters.clone()
    }

    /// Which notifications were handled.
    pub fn dedupe(&self) -> Arc<dyn Dedupe> {
        self.dedupe.clone()
    }

    /// The subscription manager's records, read by every receiver.
    pub fn records(&self) -> Arc<dyn RecordStore> {
        self.records.clone()
    }

    /// The delta cursors of resyncs, shared like the records.
    pub fn cursors(&self) -> Arc<dyn Cursors> {
        self.cursors.clone()
    }

    /// The leases and presence of the instances sharing the store.
    pub fn lease(&self) -> Arc<dyn Lease> {
        self.lease.clone()
    }

    /// The name this process's dedupe claims are held under (`None`: the
    /// receiver picks one).
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// How long a worker's dedupe claim lasts.
    pub fn dedupe_lease(&self) -> Duration {
        self.dedupe_lease
    }

    /// `memory`, `sqlite`, `redis` or `postgres`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

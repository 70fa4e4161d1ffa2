//! The embedded durable store: inbox, dead letters and dedupe keys in one
//! SQLite database under a data directory.
//!
//! Why SQLite (through `rusqlite`, SQLite bundled): it is the most widely
//! deployed and tested embedded store there is; its WAL mode with
//! `synchronous=FULL` makes a committed transaction durable (fsync) and a
//! crash at any point leaves the database consistent; a full disk fails the
//! transaction (`SQLITE_FULL`) without damage; and — what redb and other
//! single-process stores cannot do — several processes can use one data
//! directory at once, so `listen --workers 0`, `msgraph-webhooks work` and
//! `dlq list` can all run beside each other.
//!
//! Every write goes through one writer thread per process, which takes all
//! the operations waiting for it and commits them in one transaction: one
//! fsync is shared by every concurrent request (group commit). An `append`
//! resolves only after its transaction committed, so `202` follows the fsync.
//!
//! Workers claim items by writing their consumer id on them. Each process
//! holds an exclusive lock on `consumers/<id>.lock` for as long as it lives;
//! when the lock of a claimer can be taken, that process is dead and its
//! claims are released — at once, not after a timeout.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use tokio::sync::{Notify, oneshot};

use super::{Lease, StoreError, files, member_lease, member_prefix};
use crate::dedupe::{Claim, Dedupe, DedupeError, DedupeKey};
use crate::inbox::{
    Claimed, DeadLetter, DeadLetters, EntryId, Inbox, InboxError, InboxStats, StoredItem, unix_ms,
};
use crate::notification::ValidationTokens;
use crate::registry::{RecordStore, SubscriptionRecord};

const DATABASE: &str = "inbox.sqlite3";
const CONSUMERS: &str = "consumers";
/// Urgent operations (appends: someone waits to answer 202) the writer takes
/// into one transaction at most.
const MAX_URGENT: usize = 1024;
/// Background operations (the workers' bookkeeping) per transaction at most,
/// so a backlog of them never holds an append back for long.
const MAX_BACKGROUND: usize = 128;
/// How often an idle claimer looks for items appended by other processes.
const POLL: Duration = Duration::from_millis(50);
/// How often dead consumers' claims and expired dedupe keys are swept.
const SWEEP: Duration = Duration::from_secs(2);
/// A claim of this process that no worker holds any more (its settle
/// failed, say on a full disk) is released after this long.
const STALE_CLAIM: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before_ms INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT,
    claimed_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS items_ready ON items (not_before_ms, id) WHERE claimed_by IS NULL;
-- The validation tokens of a delivery, kept once for all its items (which
-- name it in `delivery_id`), with how many items and dead letters do: the
-- last one completed removes it.
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    tokens BLOB NOT NULL,
    refs INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    dead_at_ms INTEGER NOT NULL
);
-- Handled notifications' keys (random, so each insert lands on a page of
-- its own), kept for the dedupe TTL.
CREATE TABLE IF NOT EXISTS dedupe_done (
    key BLOB PRIMARY KEY,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_done_expiry ON dedupe_done (expires_at_ms);

CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
);

-- How many items there are, for /metrics without counting them: counted
-- once when the counter is made, then kept by the triggers in the
-- transaction of every insert and delete, whichever process writes.
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    n INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, n) SELECT 'depth', COUNT(*) FROM items;
CREATE TRIGGER IF NOT EXISTS items_added AFTER INSERT ON items
BEGIN UPDATE counters SET n = n + 1 WHERE name = 'depth'; END;
CREATE TRIGGER IF NOT EXISTS items_removed AFTER DELETE ON items
BEGIN UPDATE counters SET n = n - 1 WHERE name = 'depth'; END;
";

/// The embedded durable store. Implements [`Inbox`], [`DeadLetters`] and
/// [`Dedupe`].
///
/// ```no_run
/// # fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use msgraph_webhooks::store::SqliteStore;
///
/// let store = Arc::new(SqliteStore::open("/var/lib/graph-receiver")?);
/// # Ok(()) }
/// ```
pub struct SqliteStore {
    path: PathBuf,
    consumer: String,
    writer: Arc<Queue>,
    reader: Arc<Mutex<Connection>>,
    appended: Arc<Notify>,
    /// A claimer was woken for appended items and has not claimed yet.
    waking: std::sync::atomic::AtomicBool,
    /// Items a worker of this process holds right now.
    held: Mutex<HashSet<i64>>,
    /// Dedupe keys a worker of this process is handling, by owner.
    pending: Mutex<PendingKeys>,
    swept_at: Mutex<Option<std::time::Instant>>,
    _lock: File,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

type Reply<T> = oneshot::Sender<Result<T, String>>;

/// An append as rows: the token sets of its deliveries (JSON, and how many
/// items name each), and each item's payload, arrival time and token set.
struct Rows {
    tokens: Vec<(Vec<u8>, i64)>,
    items: Vec<(Vec<u8>, i64, Option<usize>)>,
}

enum Op {
    Append(Rows, Reply<()>),
    Claim(usize, Reply<Vec<Claimed>>),
    Complete(Vec<i64>, Reply<()>),
    Retry {
        id: i64,
        attempts: u32,
        not_before_ms: i64,
        reply: Reply<()>,
    },
    DeadLetter {
        id: i64,
        attempts: u32,
        reason: String,
        reply: Reply<()>,
    },
    Replay(Vec<i64>, Reply<usize>),
    Finish {
        keys: Vec<[u8; 32]>,
        ttl_ms: i64,
        reply: Reply<()>,
    },
    ReleaseClaims(String, Reply<usize>),
    ReleaseStale {
        older_than_ms: i64,
        held: Vec<i64>,
        reply: Reply<usize>,
    },
    PutRecord(String, String, Reply<()>),
    RemoveRecord(String, Reply<()>),
    Acquire {
        name: String,
        holder: String,
        ttl_ms: i64,
        reply: Reply<bool>,
    },
    Release {
        name: String,
        holder: String,
        reply: Reply<()>,
    },
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// # Errors
    ///
    /// The directory or database cannot be created or opened.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, InboxError> {
        let dir = dir.as_ref().to_path_buf();
        let consumers = dir.join(CONSUMERS);
        files::private_dir(&dir, |name| name == CONSUMERS || name.starts_with(DATABASE))
            .map_err(|e| unavailable(format!("{}: {e}", dir.display())))?;
        files::private_dir(&consumers, |name| name.ends_with(".lock"))
            .map_err(|e| unavailable(format!("{}: {e}", consumers.display())))?;
        let path = dir.join(DATABASE);
        // SQLite gives `-wal` and `-shm` the mode of the database file: made
        // 0600 here, before SQLite would create it with the umask's mode.
        files::private_file(&path).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
        for suffix in ["-wal", "-shm"] {
            let side = dir.join(format!("{DATABASE}{suffix}"));
            files::tighten_if_present(&side)
                .map_err(|e| unavailable(format!("{}: {e}", side.display())))?;
        }

        let consumer = random_id();
        let lock_path = consumers.join(format!("{consumer}.lock"));
        let lock = files::private_file(&lock_path)
            .map_err(|e| unavailable(format!("{}: {e}", lock_path.display())))?;
        lock.try_lock()
            .map_err(|e| unavailable(format!("{}: {e}", lock_path.display())))?;

        let writer_conn = connect(&path, true)?;
        // In one transaction: two processes opening one directory at once
        // must not count the items twice or interleave the migration.
        writer_conn
            .execute_batch("BEGIN IMMEDIATE")
            .and_then(|()| writer_conn.execute_batch(SCHEMA))
            .and_then(|()| add_delivery_columns(&writer_conn))
            .and_then(|()| writer_conn.execute_batch("COMMIT"))
            .map_err(|e| {
                let _ = writer_conn.execute_batch("ROLLBACK");
                unavailable(format!("creating the schema: {e}"))
            })?;
        release_claims_without_consumers(&writer_conn, &consumers)
            .map_err(|e| unavailable(format!("releasing orphaned claims: {e}")))?;

        let reader = connect(&path, false)?;

        let writer = Arc::new(Queue::default());
        let appended = Arc::new(Notify::new());
        std::thread::Builder::new()
            .name("inbox-writer".into())
            .spawn({
                let consumer = consumer.clone();
                let queue = writer.clone();
                move || write_loop(writer_conn, &consumer, &queue)
            })
            .map_err(|e| unavailable(format!("starting the writer thread: {e}")))?;

        let store = Self {
            path,
            consumer,
            writer,
            reader: Arc::new(Mutex::new(reader)),
            appended,
            waking: std::sync::atomic::AtomicBool::new(false),
            held: Mutex::default(),
            pending: Mutex::default(),
            swept_at: Mutex::default(),
            _lock: lock,
        };
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This process's consumer id (the claims of a process that died are
    /// released by it). A good
    /// [`ReceiverBuilder::dedupe_owner`](crate::ReceiverBuilder::dedupe_owner).
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Runs SQLite's `PRAGMA integrity_check`.
    ///
    /// # Errors
    ///
    /// [`InboxError::Unavailable`] with SQLite's findings when the database is damaged.
    pub async fn integrity_check(&self) -> Result<(), InboxError> {
        let findings = self
            .read(|conn| {
                let mut stmt = conn.prepare("PRAGMA integrity_check")?;
                stmt.query_map([], |row| row.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        if findings == ["ok"] {
            Ok(())
        } else {
            Err(unavailable(findings.join("; ")))
        }
    }

    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, String> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .push(op(reply))
            .map_err(|_| "the writer thread stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the writer thread stopped".to_owned())?
    }

    /// Releases the claims of consumers whose process is gone. Returns how
    /// many items became ready again.
    async fn sweep_dead_consumers(&self) -> usize {
        let dir = self.path.with_file_name(CONSUMERS);
        let Ok(entries) = fs::read_dir(&dir) else {
            return 0;
        };
        let mut released = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(consumer) = name.strip_suffix(".lock") else {
                continue;
            };
            if consumer == self.consumer {
                continue;
            }
            let Ok(file) = File::options().write(true).open(entry.path()) else {
                continue;
            };
            // Taking the lock means its owner is dead (the OS released it).
            if file.try_lock().is_ok() {
                match self
                    .call(|reply| Op::ReleaseClaims(consumer.to_owned(), reply))
                    .await
                {
                    Ok(n) => {
                        if n > 0 {
                            tracing::info!(
                                consumer,
                                items = n,
                                "released the claims of a dead consumer"
                            );
                        }
                        released += n;
                        let _ = fs::remove_file(entry.path());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not release a dead consumer's claims")
                    }
                }
            }
        }
        released
    }

    /// Releases this process's claims that no worker holds any more.
    async fn release_stale_claims(&self) {
        let held: Vec<i64> = self.lock_held().iter().copied().collect();
        let older_than_ms = now_ms() - ms(STALE_CLAIM);
        match self
            .call(|reply| Op::ReleaseStale {
                older_than_ms,
                held,
                reply,
            })
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(items = n, "re-offered items whose settling failed"),
            Err(e) => tracing::debug!(error = %e, "releasing stale claims failed"),
        }
    }

    /// Runs the sweeps at most every [`SWEEP`]; true if any item became ready.
    async fn sweep(&self) -> bool {
        {
            let mut swept_at = self.swept_at.lock().unwrap_or_else(|e| e.into_inner());
            if swept_at.is_some_and(|t| t.elapsed() < SWEEP) {
                return false;
            }
            *swept_at = Some(std::time::Instant::now());
        }
        self.release_stale_claims().await;
        self.sweep_dead_consumers().await > 0
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, PendingKeys> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes one waiting claimer of this process for appended items, unless
    /// one is already on its way: it claims everything appended meanwhile
    /// in one batch, where waking every claimer on every append sent them
    /// all to the writer, most to claim nothing.
    fn wake_claimer(&self) {
        if !self.waking.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.appended.notify_one();
        }
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, InboxError>> {
        let reader = self.reader.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let conn = reader.lock().unwrap_or_else(|e| e.into_inner());
                f(&conn).map_err(|e| unavailable(e.to_string()))
            })
            .await
            .map_err(|e| unavailable(e.to_string()))?
        })
    }
}

fn unavailable(why: impl Into<String>) -> InboxError {
    InboxError::Unavailable(why.into())
}

fn random_id() -> String {
    let mut bytes = [0u8; 12];
    // Invariant: the OS random source is available (see ClientState::random).
    openssl::rand::rand_bytes(&mut bytes).expect("the OS random source is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn connect(path: &Path, writer: bool) -> Result<Connection, InboxError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
    conn.busy_timeout(Duration::from_secs(10))
        .and_then(|()| conn.pragma_update(None, "journal_mode", "WAL"))
        // FULL: every commit fsyncs the WAL, so a committed append survives a crash.
        .and_then(|()| {
            conn.pragma_update(None, "synchronous", if writer { "FULL" } else { "NORMAL" })
        })
        // Small, frequent checkpoints (SQLite's default size), inside the
        // commit that crosses the size: a commit that does one stalls the
        // appends behind it for a few milliseconds rather than tens, and the
        // WAL is then rewritten in place, whose fsync is cheaper than one
        // that grows the file. (Checkpointing on a thread of its own was
        // slower: passive checkpoints never complete under load, so the WAL
        // only grows.)
        .and_then(|()| conn.pragma_update(None, "wal_autocheckpoint", 1000))
        .map_err(|e| unavailable(format!("configuring {}: {e}", path.display())))?;
    Ok(conn)
}

fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.writer.close();
    }
}

impl Op {
    /// Whether the caller relies on the operation surviving a crash of the
    /// machine once answered. Appends do (`202` follows), as do records and
    /// leases. The workers' bookkeeping does not: losing a completion or a
    /// dedupe mark can only make an item be handled again, which
    /// at-least-once allows, so its transactions skip the fsync.
    fn durable(&self) -> bool {
        matches!(
            self,
            Op::Append(..)
                | Op::Replay(..)
                | Op::PutRecord(..)
                | Op::RemoveRecord(..)
                | Op::Acquire { .. }
                | Op::Release { .. }
        )
    }
}

/// The writer's queue, in two lanes: durable operations (appends, with a
/// request waiting to answer 202) go ahead of the workers' bookkeeping.
#[derive(Default)]
struct Queue {
    lanes: Mutex<Lanes>,
    ready: std::sync::Condvar,
}

#[derive(Default)]
struct Lanes {
    urgent: std::collections::VecDeque<Op>,
    background: std::collections::VecDeque<Op>,
    closed: bool,
    /// The writer waits on `ready` (else waking it is a wasted syscall).
    waiting: bool,
}

impl Queue {
    fn push(&self, op: Op) -> Result<(), Op> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if lanes.closed {
            return Err(op);
        }
        if op.durable() {
            lanes.urgent.push_back(op);
        } else {
            lanes.background.push_back(op);
        }
        let wake = lanes.waiting;
        drop(lanes);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    fn close(&self) {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.ready.notify_all();
    }

    /// The next group: every waiting urgent operation (bounded) and some
    /// background ones. `None` once closed and drained.
    ///
    /// It never waits for more appends to arrive: the appends that come
    /// while a group commits form the next group, so under load groups grow
    /// by themselves, and an idle store commits at once.
    fn take(&self) -> Option<Vec<Op>> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        while lanes.urgent.is_empty() && lanes.background.is_empty() {
            if lanes.closed {
                return None;
            }
            lanes.waiting = true;
            lanes = self.ready.wait(lanes).unwrap_or_else(|e| e.into_inner());
            lanes.waiting = false;
        }
        let urgent = lanes.urgent.len().min(MAX_URGENT);
        let background = lanes.background.len().min(MAX_BACKGROUND);
        let mut group: Vec<Op> = lanes.urgent.drain(..urgent).collect();
        group.extend(lanes.background.drain(..background));
        Some(group)
    }
}

/// The writer thread: group commit of every waiting operation.
fn write_loop(conn: Connection, consumer: &str, queue: &Queue) {
    let mut last_sweep = std::time::Instant::now();
    let mut synchronous_full = true;
    while let Some(batch) = queue.take() {
        let durable = batch.iter().any(Op::durable);
        if durable != synchronous_full {
            let mode = if durable { "FULL" } else { "NORMAL" };
            match conn.pragma_update(None, "synchronous", mode) {
                Ok(()) => synchronous_full = durable,
                Err(e) if durable => {
                    // Never answer a durable operation without the fsync.
                    tracing::warn!(error = %e, "setting synchronous=FULL failed");
                    for op in batch {
                        fail(op, "the store could not commit");
                    }
                    continue;
                }
                Err(e) => tracing::debug!(error = %e, "setting synchronous=NORMAL failed"),
            }
        }
        if last_sweep.elapsed() > SWEEP {
            last_sweep = std::time::Instant::now();
            let now = now_ms();
            let swept = conn.execute("DELETE FROM dedupe_done WHERE expires_at_ms < ?1", [now]);
            if let Err(e) = swept {
                tracing::debug!(error = %e, "sweeping expired dedupe keys failed");
            }
        }
        match run_group(&conn, consumer, batch) {
            Ok(()) => {}
            Err(batch) => {
                // One operation (or the commit) failed: run each on its own so
                // one bad operation doesn't fail the others.
                for op in batch {
                    if let Err(op) = run_group(&conn, consumer, vec![op]) {
                        for op in op {
                            fail(op, "the store could not commit");
                        }
                    }
                }
            }
        }
    }
}

/// What an operation produced inside a transaction, sent once it committed.
enum Done {
    Unit,
    Claimed(Vec<Claimed>),
    Count(usize),
    Flag(bool),
}

/// Runs `batch` in one transaction and answers every operation after the
/// commit; on any failure rolls back and hands the batch back unanswered.
fn run_group(conn: &Connection, consumer: &str, batch: Vec<Op>) -> Result<(), Vec<Op>> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::warn!(error = %e, "beginning a transaction failed");
        return Err(batch);
    }
    let mut results = Vec::with_capacity(batch.len());
    for op in &batch {
        match apply(conn, consumer, op) {
            Ok(done) => results.push(done),
            Err(e) => {
                tracing::warn!(error = %e, ops = batch.len(), "store operation failed; rolling back");
                let _ = conn.execute_batch("ROLLBACK");
                return Err(batch);
            }
        }
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        tracing::warn!(error = %e, ops = batch.len(), "commit failed; rolling back");
        let _ = conn.execute_batch("ROLLBACK");
        return Err(batch);
    }
    for (op, done) in batch.into_iter().zip(results) {
        answer(op, done);
    }
    Ok(())
}

fn answer(op: Op, done: Done) {
    match (op, done) {
        (Op::Claim(_, reply), Done::Claimed(claimed)) => {
            let _ = reply.send(Ok(claimed));
        }
        (
            Op::Replay(_, reply) | Op::ReleaseClaims(_, reply) | Op::ReleaseStale { reply, .. },
            Done::Count(n),
        ) => {
            let _ = reply.send(Ok(n));
        }
        (Op::Acquire { reply, .. }, Done::Flag(held)) => {
            let _ = reply.send(Ok(held));
        }
        (
            Op::Append(_, reply)
            | Op::Complete(_, reply)
            | Op::Retry { reply, .. }
            | Op::DeadLetter { reply, .. }
            | Op::Finish { reply, .. }
            | Op::PutRecord(_, _, reply)
            | Op::RemoveRecord(_, reply)
            | Op::Release { reply, .. },
            Done::Unit,
        ) => {
            let _ = reply.send(Ok(()));
        }
        (op, _) => fail(op, "internal: mismatched store answer"),
    }
}

fn fail(op: Op, why: &str) {
    let why = why.to_owned();
    match op {
        Op::Append(_, reply)
        | Op::Complete(_, reply)
        | Op::Retry { reply, .. }
        | Op::DeadLetter { reply, .. }
        | Op::Finish { reply, .. }
        | Op::PutRecord(_, _, reply)
        | Op::RemoveRecord(_, reply)
        | Op::Release { reply, .. } => {
            let _ = reply.send(Err(why));
        }
        Op::Acquire { reply, .. } => {
            let _ = reply.send(Err(why));
        }
        Op::Claim(_, reply) => {
            let _ = reply.send(Err(why));
        }
        Op::Replay(_, reply) | Op::ReleaseClaims(_, reply) | Op::ReleaseStale { reply, .. } => {
            let _ = reply.send(Err(why));
        }
    }
}

/// Releases the claims of consumers that have no lock file (removed by hand,
/// say): no sweep would ever find them dead, and their items would wait
/// forever. Every process takes its lock file before it claims anything, so
/// a claimer without one is gone.
fn release_claims_without_consumers(conn: &Connection, consumers: &Path) -> rusqlite::Result<()> {
    let claimers: Vec<String> = conn
        .prepare("SELECT DISTINCT claimed_by FROM items WHERE claimed_by IS NOT NULL")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for claimer in claimers {
        if !consumers.join(format!("{claimer}.lock")).exists() {
            let n = release_claims_of(conn, &claimer)?;
            tracing::warn!(consumer = %claimer, items = n, "released the claims of a consumer without a lock file");
        }
    }
    Ok(())
}

/// Adds `delivery_id` to the items and dead letters of a database made
/// before deliveries kept their tokens once (their rows keep the tokens in
/// the payload, and read back as before).
fn add_delivery_columns(conn: &Connection) -> rusqlite::Result<()> {
    for table in ["items", "dead_letters"] {
        let has: bool = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = 'delivery_id'"
            ))?
            .exists([])?;
        if !has {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN delivery_id INTEGER"
            ))?;
        }
    }
    Ok(())
}

/// The tokens of each delivery of `ids` (read once each), shared by its items.
fn delivery_tokens(
    conn: &Connection,
    ids: impl IntoIterator<Item = i64>,
) -> rusqlite::Result<HashMap<i64, ValidationTokens>> {
    let mut find = conn.prepare_cached("SELECT tokens FROM deliveries WHERE id = ?1")?;
    let mut found = HashMap::new();
    for id in ids {
        if found.contains_key(&id) {
            continue;
        }
        let tokens = find
            .query_row([id], |row| row.get::<_, Vec<u8>>(0))
            .optional()?
            .and_then(|json| serde_json::from_slice(&json).ok())
            // Gone or unreadable: encrypted items then fail closed (no tokens).
            .unwrap_or_default();
        found.insert(id, tokens);
    }
    Ok(found)
}

/// One item or dead letter fewer names each of `deliveries`; a delivery
/// no one names any more is removed.
fn release_deliveries(
    conn: &Connection,
    deliveries: impl IntoIterator<Item = i64>,
) -> rusqlite::Result<()> {
    let mut counts: HashMap<i64, i64> = HashMap::new();
    for id in deliveries {
        *counts.entry(id).or_default() += 1;
    }
    let mut release =
        conn.prepare_cached("UPDATE deliveries SET refs = refs - ?2 WHERE id = ?1")?;
    let mut remove = conn.prepare_cached("DELETE FROM deliveries WHERE id = ?1 AND refs <= 0")?;
    for (id, n) in counts {
        release.execute(params![id, n])?;
        remove.execute([id])?;
    }
    Ok(())
}

/// What `/metrics` reads, each query in one step whatever the backlog.
/// The depth is a counter the schema's triggers keep in every transaction
/// that adds or removes items (whichever process writes); the oldest item is
/// the one of lowest id (the primary key), an indexed lookup. (A replayed
/// dead letter gets a new id: the age may overlook one that old.)
const STATS_SQL: [&str; 2] = [
    "SELECT n FROM counters WHERE name = 'depth'",
    "SELECT received_at_ms FROM items ORDER BY id LIMIT 1",
];

/// Depth and the oldest item's arrival, for [`Inbox::stats`].
fn read_stats(conn: &Connection) -> rusqlite::Result<(i64, Option<i64>)> {
    let depth = conn
        .prepare_cached(STATS_SQL[0])?
        .query_row([], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    let oldest = conn
        .prepare_cached(STATS_SQL[1])?
        .query_row([], |row| row.get::<_, i64>(0))
        .optional()?;
    Ok((depth, oldest))
}

/// Hands every item `consumer` claimed out again.
fn release_claims_of(conn: &Connection, consumer: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached("UPDATE items SET claimed_by = NULL WHERE claimed_by = ?1")?
        .execute([consumer])
}

/// Executes one operation inside the open transaction.
fn apply(conn: &Connection, consumer: &str, op: &Op) -> rusqlite::Result<Done> {
    let now = now_ms();
    Ok(match op {
        Op::Append(rows, _) => {
            let mut delivery = conn.prepare_cached(
                "INSERT INTO deliveries (tokens, refs) VALUES (?1, ?2) RETURNING id",
            )?;
            let deliveries = rows
                .tokens
                .iter()
                .map(|(tokens, refs)| {
                    delivery.query_row(params![tokens, refs], |row| row.get::<_, i64>(0))
                })
                .collect::<rusqlite::Result<Vec<i64>>>()?;
            let mut insert = conn.prepare_cached(
                "INSERT INTO items (payload, received_at_ms, delivery_id) VALUES (?1, ?2, ?3)",
            )?;
            for (payload, received_at, group) in &rows.items {
                let delivery_id = group.and_then(|g| deliveries.get(g));
                insert.execute(params![payload, received_at, delivery_id])?;
            }
            Done::Unit
        }
        Op::Claim(max, _) => {
            // The limit is part of the text, not a parameter: SQLite plans
            // with a bound LIMIT's value and so prepares the statement again
            // on every run (a tenth of the writer's time under load).
            let mut claim = conn.prepare_cached(&format!(
                "UPDATE items SET claimed_by = ?1, claimed_at_ms = ?2
                 WHERE id IN (SELECT id FROM items WHERE claimed_by IS NULL AND not_before_ms <= ?2
                              ORDER BY not_before_ms, id LIMIT {max})
                 RETURNING id, payload, attempts, delivery_id"
            ))?;
            let rows: Vec<(i64, Vec<u8>, u32, Option<i64>)> = claim
                .query_map(params![consumer, now], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let tokens = delivery_tokens(conn, rows.iter().filter_map(|row| row.3))?;
            let mut claimed = Vec::with_capacity(rows.len());
            for (id, payload, attempts, delivery) in rows {
                let tokens = delivery.and_then(|d| tokens.get(&d)).cloned();
                match StoredItem::from_json(&payload, tokens) {
                    Ok(item) => claimed.push(Claimed {
                        id: EntryId(id.to_string()),
                        item,
                        attempts,
                    }),
                    Err(e) => {
                        // Nothing can handle it: move it aside rather than loop on it.
                        tracing::error!(id, error = %e, "unreadable item moved to the dead letters");
                        conn.execute(
                            "INSERT INTO dead_letters (payload, received_at_ms, attempts, reason, dead_at_ms, delivery_id)
                             SELECT payload, received_at_ms, attempts, ?2, ?3, delivery_id FROM items WHERE id = ?1",
                            params![id, format!("unreadable item: {e}"), now],
                        )?;
                        conn.execute("DELETE FROM items WHERE id = ?1", [id])?;
                    }
                }
            }
            Done::Claimed(claimed)
        }
        Op::Complete(ids, _) => {
            let mut delete =
                conn.prepare_cached("DELETE FROM items WHERE id = ?1 RETURNING delivery_id")?;
            let mut deliveries = Vec::new();
            for id in ids {
                if let Some(Some(delivery)) = delete
                    .query_row([id], |row| row.get::<_, Option<i64>>(0))
                    .optional()?
                {
                    deliveries.push(delivery);
                }
            }
            release_deliveries(conn, deliveries)?;
            Done::Unit
        }
        Op::Retry {
            id,
            attempts,
            not_before_ms,
            ..
        } => {
            conn.prepare_cached(
                "UPDATE items SET claimed_by = NULL, attempts = ?2, not_before_ms = ?3 WHERE id = ?1",
            )?
            .execute(params![id, attempts, not_before_ms])?;
            Done::Unit
        }
        Op::DeadLetter {
            id,
            attempts,
            reason,
            ..
        } => {
            // The delivery's tokens stay: the dead letter names them now.
            conn.prepare_cached(
                "INSERT INTO dead_letters (payload, received_at_ms, attempts, reason, dead_at_ms, delivery_id)
                 SELECT payload, received_at_ms, ?2, ?3, ?4, delivery_id FROM items WHERE id = ?1",
            )?
            .execute(params![id, attempts, reason, now])?;
            conn.prepare_cached("DELETE FROM items WHERE id = ?1")?
                .execute([id])?;
            Done::Unit
        }
        Op::Replay(ids, _) => {
            let ids: Vec<i64> = if ids.is_empty() {
                let mut stmt = conn.prepare("SELECT id FROM dead_letters ORDER BY id")?;
                stmt.query_map([], |row| row.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            } else {
                ids.clone()
            };
            let mut moved = 0;
            for id in ids {
                moved += conn.execute(
                    "INSERT INTO items (payload, received_at_ms, delivery_id)
                     SELECT payload, received_at_ms, delivery_id FROM dead_letters WHERE id = ?1",
                    [id],
                )?;
                conn.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
            }
            Done::Count(moved)
        }
        Op::ReleaseStale {
            older_than_ms,
            held,
            ..
        } => {
            let mine: Vec<i64> = conn
                .prepare_cached(
                    "SELECT id FROM items WHERE claimed_by = ?1 AND claimed_at_ms < ?2",
                )?
                .query_map(params![consumer, older_than_ms], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut released = 0;
            for id in mine.into_iter().filter(|id| !held.contains(id)) {
                released += conn
                    .prepare_cached("UPDATE items SET claimed_by = NULL WHERE id = ?1")?
                    .execute([id])?;
            }
            Done::Count(released)
        }
        Op::ReleaseClaims(dead, _) => Done::Count(release_claims_of(conn, dead)?),
        Op::Finish { keys, ttl_ms, .. } => {
            let mut done = conn.prepare_cached(
                "INSERT OR REPLACE INTO dedupe_done (key, expires_at_ms) VALUES (?1, ?2)",
            )?;
            for key in keys {
                done.execute(params![&key[..], now + ttl_ms])?;
            }
            Done::Unit
        }
        Op::PutRecord(id, record, _) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO subscriptions (id, record) VALUES (?1, ?2)",
            )?
            .execute(params![id, record])?;
            Done::Unit
        }
        Op::RemoveRecord(id, _) => {
            conn.prepare_cached("DELETE FROM subscriptions WHERE id = ?1")?
                .execute([id])?;
            Done::Unit
        }
        Op::Acquire {
            name,
            holder,
            ttl_ms,
            ..
        } => {
            let current: Option<(String, i64)> = conn
                .prepare_cached("SELECT holder, expires_at_ms FROM leases WHERE name = ?1")?
                .query_row([name], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let free = match current {
                Some((other, expires)) => other == *holder || expires <= now,
                None => true,
            };
            if free {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO leases (name, holder, expires_at_ms) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![name, holder, now + ttl_ms])?;
            }
            Done::Flag(free)
        }
        Op::Release { name, holder, .. } => {
            conn.prepare_cached("DELETE FROM leases WHERE name = ?1 AND holder = ?2")?
                .execute(params![name, holder])?;
            Done::Unit
        }
    })
}

fn parse_id(id: &EntryId) -> Result<i64, InboxError> {
    id.0.parse()
        .map_err(|_| InboxError::Unavailable(format!("not an item id of this store: {id}")))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Inbox for SqliteStore {
    fn append(&self, items: Vec<StoredItem>) -> BoxFuture<'_, Result<(), InboxError>> {
        Box::pin(async move {
            let (groups, token_sets) = crate::inbox::token_groups(&items);
            let mut tokens = token_sets
                .iter()
                .map(|t| serde_json::to_vec(t).map(|json| (json, 0)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unavailable(e.to_string()))?;
            let items = items
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
            let rows = Rows { tokens, items };
            self.call(|reply| Op::Append(rows, reply))
                .await
                .map_err(InboxError::Unavailable)?;
            self.wake_claimer();
            Ok(())
        })
    }

    fn claim(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Claimed>, InboxError>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + wait;
            let mut swept = false;
            loop {
                let appended = self.appended.notified();
                tokio::pin!(appended);
                appended.as_mut().enable();
                self.waking
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                let claimed = self
                    .call(|reply| Op::Claim(max.max(1), reply))
                    .await
                    .map_err(InboxError::Unavailable)?;
                if claimed.len() >= max {
                    // Perhaps more are waiting: another claimer's turn.
                    self.wake_claimer();
                }
                if !claimed.is_empty() {
                    let mut held = self.lock_held();
                    for c in &claimed {
                        if let Ok(id) = c.id.0.parse() {
                            held.insert(id);
                        }
                    }
                    return Ok(claimed);
                }
                if !swept && self.sweep().await {
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

    fn complete(&self, id: EntryId) -> BoxFuture<'_, Result<(), InboxError>> {
        Box::pin(async move {
            let id = parse_id(&id)?;
            let done = self
                .call(|reply| Op::Complete(vec![id], reply))
                .await
                .map_err(InboxError::Unavailable);
            self.lock_held().remove(&id);
            done
        })
    }

    fn complete_many(&self, ids: Vec<EntryId>) -> BoxFuture<'_, Result<(), InboxError>> {
        Box::pin(async move {
            let ids = ids.iter().map(parse_id).collect::<Result<Vec<_>, _>>()?;
            let done = self
                .call(|reply| Op::Complete(ids.clone(), reply))
                .await
                .map_err(InboxError::Unavailable);
            let mut held = self.lock_held();
            for id in &ids {
                held.remove(id);
            }
            done
        })
    }

    fn retry(&self, claimed: Claimed, delay: Duration) -> BoxFuture<'_, Result<(), InboxError>> {
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
                .map_err(InboxError::Unavailable);
            self.lock_held().remove(&id);
            done
        })
    }

    fn dead_letter(
        &self,
        claimed: Claimed,
        reason: String,
    ) -> BoxFuture<'_, Result<(), InboxError>> {
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
                .map_err(InboxError::Unavailable);
            self.lock_held().remove(&id);
            done
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, InboxError>> {
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
}

impl DeadLetters for SqliteStore {
    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, InboxError>> {
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
                        id: EntryId(id.to_string()),
                        item,
                        attempts,
                        reason,
                        dead_at_ms,
                    })
                })
                .collect())
        })
    }

    fn replay(&self, ids: Vec<EntryId>) -> BoxFuture<'_, Result<usize, InboxError>> {
        Box::pin(async move {
            let ids = ids.iter().map(parse_id).collect::<Result<Vec<_>, _>>()?;
            let moved = self
                .call(|reply| Op::Replay(ids, reply))
                .await
                .map_err(InboxError::Unavailable)?;
            if moved > 0 {
                self.appended.notify_waiters();
            }
            Ok(moved)
        })
    }
}

/// Dedupe keys being handled in this process: holder and lease end.
type PendingKeys = HashMap<[u8; 32], (String, std::time::Instant)>;

/// Releases `key` if `owner` still holds it.
fn release(pending: &mut PendingKeys, key: &[u8; 32], owner: &str) {
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
    ) -> BoxFuture<'_, Result<Claim, DedupeError>> {
        let many = self.begin_many(vec![key], owner, lease);
        Box::pin(async move {
            many.await?
                .pop()
                .ok_or_else(|| DedupeError("no answer for the key".into()))
        })
    }

    fn finish(
        &self,
        key: DedupeKey,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), DedupeError>> {
        self.finish_many(vec![key], owner, ttl)
    }

    fn abandon(&self, key: DedupeKey, owner: &str) -> BoxFuture<'_, Result<(), DedupeError>> {
        release(&mut self.lock_pending(), &key.0, owner);
        Box::pin(std::future::ready(Ok(())))
    }

    fn begin_many(
        &self,
        keys: Vec<DedupeKey>,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<Claim>, DedupeError>> {
        // Claim first, then look for a handled row: a holder releases its
        // claim only after its row committed, so one of the two always sees
        // the other.
        let now = std::time::Instant::now();
        let mut claims: Vec<Claim> = {
            let mut pending = self.lock_pending();
            keys.iter()
                .map(|key| match pending.get(&key.0) {
                    Some((holder, until)) if *until > now && holder != owner => Claim::InProgress,
                    _ => {
                        pending.insert(key.0, (owner.to_owned(), now + lease));
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
            .map(|(key, _)| key.0)
            .collect();
        let handled = self.read(move |conn| {
            let mut find =
                conn.prepare_cached("SELECT expires_at_ms FROM dedupe_done WHERE key = ?1")?;
            let now = now_ms();
            keys.iter()
                .map(|key| {
                    find.query_row([&key.0[..]], |row| row.get::<_, i64>(0))
                        .optional()
                        .map(|expires| expires.is_some_and(|e| e > now))
                })
                .collect::<rusqlite::Result<Vec<bool>>>()
                .map(|handled| (keys, handled))
        });
        Box::pin(async move {
            let (keys, handled) = match handled.await {
                Ok(found) => found,
                Err(e) => {
                    let mut pending = self.lock_pending();
                    for key in &claimed {
                        release(&mut pending, key, &owner);
                    }
                    return Err(DedupeError(e.to_string()));
                }
            };
            let mut pending = self.lock_pending();
            for ((claim, key), handled) in claims.iter_mut().zip(&keys).zip(handled) {
                if *claim == Claim::Proceed && handled {
                    *claim = Claim::Duplicate;
                    release(&mut pending, &key.0, &owner);
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
    ) -> BoxFuture<'_, Result<(), DedupeError>> {
        let owner = owner.to_owned();
        Box::pin(async move {
            let raw: Vec<[u8; 32]> = keys.iter().map(|k| k.0).collect();
            let recorded = self
                .call(|reply| Op::Finish {
                    keys: raw,
                    ttl_ms: ms(ttl),
                    reply,
                })
                .await
                .map_err(DedupeError);
            // Released only now that the rows are committed (see begin_many).
            let mut pending = self.lock_pending();
            for key in &keys {
                release(&mut pending, &key.0, &owner);
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
            let rows = read.await.map_err(|e| StoreError(e.to_string()))?;
            Ok(rows
                .into_iter()
                .map(|row| row.and_then(|json| serde_json::from_str(&json).ok()))
                .collect())
        })
    }

    fn put(&self, record: SubscriptionRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let json = serde_json::to_string(&record).map_err(|e| StoreError(e.to_string()))?;
            self.call(|reply| Op::PutRecord(record.id.clone(), json, reply))
                .await
                .map_err(StoreError)
        })
    }

    fn remove(&self, id: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.call(|reply| Op::RemoveRecord(id, reply))
                .await
                .map_err(StoreError)
        })
    }

    fn all(&self) -> BoxFuture<'_, Result<Vec<SubscriptionRecord>, StoreError>> {
        let read = self.read(|conn| {
            let mut stmt = conn.prepare("SELECT record FROM subscriptions ORDER BY id")?;
            stmt.query_map([], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        });
        Box::pin(async move {
            let rows = read.await.map_err(|e| StoreError(e.to_string()))?;
            Ok(rows
                .iter()
                .filter_map(|json| serde_json::from_str(json).ok())
                .collect())
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
            .map_err(StoreError)
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
            .map_err(StoreError)
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
            let expires = read.await.map_err(|e| StoreError(e.to_string()))?;
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
        Box::pin(async move { read.await.map_err(|e| StoreError(e.to_string())) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::ValidationTokens;

    fn item(n: u32) -> StoredItem {
        let raw = serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap();
        StoredItem::new(raw, ValidationTokens::Absent)
    }

    fn n(claimed: &Claimed) -> u64 {
        let v: serde_json::Value = serde_json::from_str(claimed.item.raw.get()).unwrap();
        v["n"].as_u64().unwrap()
    }

    #[tokio::test]
    async fn items_survive_reopening_and_dead_consumers_release_claims() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store.append((0..5).map(item).collect()).await.unwrap();
            let claimed = store.claim(2, Duration::ZERO).await.unwrap();
            assert_eq!(claimed.iter().map(n).collect::<Vec<_>>(), [0, 1]);
            store.complete(claimed[0].id.clone()).await.unwrap();
            // Dropped with item 1 still claimed: like a process that died.
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.stats().await.unwrap().depth, 4);
        let mut seen = Vec::new();
        loop {
            let batch = store.claim(10, Duration::from_millis(200)).await.unwrap();
            if batch.is_empty() {
                break;
            }
            for c in batch {
                seen.push(n(&c));
                store.complete(c.id).await.unwrap();
            }
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            [1, 2, 3, 4],
            "item 1, claimed by the dead consumer, is handed out again"
        );
        assert_eq!(store.stats().await.unwrap().depth, 0);
    }

    #[tokio::test]
    async fn claims_of_a_consumer_without_a_lock_file_are_released_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let gone = {
            let store = SqliteStore::open(dir.path()).unwrap();
            store.append((0..2).map(item).collect()).await.unwrap();
            assert_eq!(store.claim(1, Duration::ZERO).await.unwrap().len(), 1);
            store.consumer().to_owned()
        };
        // The dead consumer's lock file removed by hand: no sweep can tell
        // it is dead any more.
        fs::remove_file(dir.path().join(CONSUMERS).join(format!("{gone}.lock"))).unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let mut seen = Vec::new();
        for claimed in store.claim(10, Duration::ZERO).await.unwrap() {
            seen.push(n(&claimed));
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1], "the orphaned claim was released at once");
    }

    #[tokio::test]
    async fn retry_dead_letter_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store.append(vec![item(7), item(8)]).await.unwrap();
        let mut batch = store.claim(2, Duration::ZERO).await.unwrap();
        let mut later = batch.remove(1);
        later.attempts = 1;
        store.retry(later, Duration::from_secs(3600)).await.unwrap();
        let mut dead = batch.remove(0);
        dead.attempts = 5;
        store
            .dead_letter(dead, "handler error: boom".into())
            .await
            .unwrap();
        assert!(
            store.claim(10, Duration::ZERO).await.unwrap().is_empty(),
            "the retry waits an hour"
        );
        let letters = store.list(10).await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(
            (letters[0].attempts, letters[0].reason.as_str()),
            (5, "handler error: boom")
        );
        assert_eq!(store.replay(vec![letters[0].id.clone()]).await.unwrap(), 1);
        assert!(store.list(10).await.unwrap().is_empty());
        let again = store.claim(10, Duration::ZERO).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((n(&again[0]), again[0].attempts), (7, 0));
        assert_eq!(store.stats().await.unwrap().depth, 2);
    }

    #[tokio::test]
    async fn dedupe_states_persist() {
        let dir = tempfile::tempdir().unwrap();
        let key = DedupeKey([9; 32]);
        let lease = Duration::from_secs(60);
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            assert_eq!(store.begin(key, "a", lease).await.unwrap(), Claim::Proceed);
            assert_eq!(
                store.begin(key, "b", lease).await.unwrap(),
                Claim::InProgress
            );
            store
                .finish(key, "a", Duration::from_secs(60))
                .await
                .unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(
            store.begin(key, "c", lease).await.unwrap(),
            Claim::Duplicate
        );
        let other = DedupeKey([3; 32]);
        assert_eq!(
            store.begin(other, "c", lease).await.unwrap(),
            Claim::Proceed
        );
        store.abandon(other, "c").await.unwrap();
        assert_eq!(
            store.begin(other, "d", lease).await.unwrap(),
            Claim::Proceed
        );
        // Only the holder releases a key.
        store.abandon(other, "e").await.unwrap();
        assert_eq!(
            store.begin(other, "f", lease).await.unwrap(),
            Claim::InProgress
        );
    }

    #[tokio::test]
    async fn records_and_leases() {
        let dir = tempfile::tempdir().unwrap();
        let a = SqliteStore::open(dir.path()).unwrap();
        let b = SqliteStore::open(dir.path()).unwrap();
        let mut record = SubscriptionRecord::new("sub-1", Some(crate::ClientState::new("s")));
        record.other.insert("key".into(), "mail".into());
        a.put(record).await.unwrap();
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
        assert_eq!(found[0].as_ref().unwrap().other["key"], "mail");
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
        assert!(b.acquire("short", "b", Duration::ZERO).await.unwrap());
        assert!(
            a.acquire("short", "a", ttl).await.unwrap(),
            "an expired lease is free"
        );
        let left = a.expires_in("short").await.unwrap().unwrap();
        assert!(left <= ttl && left > Duration::from_secs(50), "{left:?}");
        assert_eq!(a.expires_in("nobody").await.unwrap(), None);

        a.join("g", "a", ttl).await.unwrap();
        b.join("g", "b", ttl).await.unwrap();
        b.join("g2", "c", ttl).await.unwrap();
        b.join("g", "gone", Duration::ZERO).await.unwrap();
        assert_eq!(b.members("g").await.unwrap(), ["a", "b"]);
        a.join("g", "a", ttl).await.unwrap();
        a.leave("g", "a").await.unwrap();
        assert_eq!(a.members("g").await.unwrap(), ["b"]);
    }

    fn deliveries(store: &SqliteStore) -> i64 {
        let conn = Connection::open(store.path()).unwrap();
        conn.query_row("SELECT COUNT(*) FROM deliveries", [], |row| row.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn a_deliverys_tokens_are_stored_once_and_go_with_its_last_item() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let tokens = ValidationTokens::Tokens(vec!["t".repeat(10_000), "u".into()].into());
        let delivery: Vec<StoredItem> = (0..50)
            .map(|n| {
                let raw = serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}"));
                StoredItem::new(raw.unwrap(), tokens.clone())
            })
            .collect();
        store.append(delivery).await.unwrap();
        store.append(vec![item(99)]).await.unwrap();
        let size: i64 = Connection::open(store.path())
            .unwrap()
            .query_row("SELECT SUM(LENGTH(payload)) FROM items", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert!(size < 5_000, "the items hold no tokens: {size} bytes");
        assert_eq!(deliveries(&store), 1);

        let mut claimed = store.claim(100, Duration::ZERO).await.unwrap();
        assert_eq!(claimed.len(), 51);
        for c in &claimed {
            let expected = if n(c) == 99 {
                &ValidationTokens::Absent
            } else {
                &tokens
            };
            assert_eq!(&c.item.validation_tokens, expected);
        }
        // One dead letter keeps the tokens after the other items are gone…
        let dead = claimed.remove(0);
        store.dead_letter(dead, "boom".into()).await.unwrap();
        let rest = claimed.into_iter().map(|c| c.id).collect();
        store.complete_many(rest).await.unwrap();
        assert_eq!(deliveries(&store), 1);
        let letters = store.list(10).await.unwrap();
        assert_eq!(letters[0].item.validation_tokens, tokens);
        // …through its replay, until it is completed.
        assert_eq!(store.replay(Vec::new()).await.unwrap(), 1);
        let again = store.claim(10, Duration::ZERO).await.unwrap();
        assert_eq!(again[0].item.validation_tokens, tokens);
        store.complete(again[0].id.clone()).await.unwrap();
        assert_eq!(deliveries(&store), 0);
        assert_eq!(store.stats().await.unwrap().depth, 0);
    }

    #[tokio::test]
    async fn a_database_of_the_previous_schema_opens_with_its_items_and_depth() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The schema before deliveries and counters, with tokens inline.
            let conn = Connection::open(dir.path().join(DATABASE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL,
                     received_at_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                     not_before_ms INTEGER NOT NULL DEFAULT 0, claimed_by TEXT, claimed_at_ms INTEGER);
                 CREATE TABLE dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL,
                     received_at_ms INTEGER NOT NULL, attempts INTEGER NOT NULL, reason TEXT NOT NULL,
                     dead_at_ms INTEGER NOT NULL);",
            )
            .unwrap();
            let tokens = ValidationTokens::Tokens(vec!["t".to_owned()].into());
            for n in 0..3 {
                let raw = serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}"));
                let payload = serde_json::to_vec(&StoredItem::new(raw.unwrap(), tokens.clone()));
                conn.execute(
                    "INSERT INTO items (payload, received_at_ms) VALUES (?1, 1)",
                    params![payload.unwrap()],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.stats().await.unwrap().depth, 3);
        store.append(vec![item(3)]).await.unwrap();
        assert_eq!(store.stats().await.unwrap().depth, 4);
        let claimed = store.claim(10, Duration::ZERO).await.unwrap();
        assert_eq!(claimed.len(), 4);
        let with_tokens = claimed
            .iter()
            .filter(|c| matches!(c.item.validation_tokens, ValidationTokens::Tokens(_)))
            .count();
        assert_eq!(with_tokens, 3, "the old rows keep their inline tokens");
        store
            .complete_many(claimed.into_iter().map(|c| c.id).collect())
            .await
            .unwrap();
        assert_eq!(store.stats().await.unwrap().depth, 0);
        drop(store);
        // Opened again, the counter is not counted twice.
        let store = SqliteStore::open(dir.path()).unwrap();
        store.append(vec![item(4)]).await.unwrap();
        assert_eq!(store.stats().await.unwrap().depth, 1);
    }

    #[tokio::test]
    async fn stats_cost_the_same_whatever_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        const BACKLOG: u32 = 20_000;
        for chunk in 0..BACKLOG / 1000 {
            let items = (0..1000).map(|n| item(chunk * 1000 + n)).collect();
            store.append(items).await.unwrap();
        }
        let claimed = store.claim(10, Duration::ZERO).await.unwrap();
        store.complete(claimed[0].id.clone()).await.unwrap();
        let stats = store.stats().await.unwrap();
        assert_eq!(stats.depth, u64::from(BACKLOG) - 1);
        assert!(stats.oldest_age.is_some());
        if let Ok(n) = std::env::var("MSGRAPH_WEBHOOKS_STATS_BACKLOG") {
            // Timing at a large backlog, by hand: prints the mean of 100 calls.
            let n: u32 = n.parse().unwrap();
            for chunk in 0..n / 1000 {
                let items = (0..1000).map(|i| item(chunk * 1000 + i)).collect();
                store.append(items).await.unwrap();
            }
            let started = std::time::Instant::now();
            for _ in 0..100 {
                store.stats().await.unwrap();
            }
            eprintln!(
                "stats() at a backlog of {}: {:?}",
                n + BACKLOG - 1,
                started.elapsed() / 100
            );
        }
        // The statements /metrics runs: a few virtual-machine steps each,
        // not one per stored item.
        let conn = Connection::open(store.path()).unwrap();
        for sql in STATS_SQL {
            let mut stmt = conn.prepare(sql).unwrap();
            let mut rows = stmt.query([]).unwrap();
            while rows.next().unwrap().is_some() {}
            drop(rows);
            let steps = stmt.get_status(rusqlite::StatementStatus::VmStep);
            assert!(
                steps < 100,
                "{sql}: {steps} steps over a backlog of {BACKLOG}"
            );
        }
    }

    #[tokio::test]
    async fn concurrent_appends_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let mut tasks = Vec::new();
        for t in 0..32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    store.append(vec![item(t * 100 + i)]).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(store.stats().await.unwrap().depth, 32 * 50);
    }
}

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
//! The handled dedupe keys live in a second database file beside it
//! (`dedupe.sqlite3`), with its own writer: a key's insert lands on a random
//! page, and kept in the inbox's file those pages made every commit an
//! append waits for longer. The two need no transaction together: a key
//! lost in a crash only lets a copy be handled again.
//!
//! Embedding it: SQLite allocates with the C library's `malloc`. Under load,
//! glibc's returns freed memory to the kernel thousands of times a second
//! (`madvise`, each a TLB shootdown on every core running the process);
//! the `msgraph-webhooks` binary uses jemalloc for every allocation (Rust's
//! and C's, `tikv-jemallocator` with `unprefixed_malloc_on_supported_platforms`),
//! which took the durable pipeline from 13 000 to 17 700 requests/s on the
//! benchmark machine (BENCHMARKS.md). An app that embeds the store on glibc
//! gains the same by choosing its allocator likewise.
//!
//! Workers claim items by writing their consumer id on them. Each process
//! holds an exclusive lock on `consumers/<id>.lock` for as long as it lives;
//! when the lock of a claimer can be taken, that process is dead and its
//! claims are released — at once, not after a timeout.
//!
//! A process whose own workers keep up appends its items already claimed by
//! itself, in the append's transaction, and hands them to its workers from
//! memory: no second transaction claims them and nothing reads them back.
//! Should it die, they are released like any other claim of a dead process.
//! Its workers still claim from the database every [`POLL`] (items of other
//! processes, retries, a backlog from before a restart), and while that
//! finds a full batch, new appends wait in the database behind the older
//! ones instead (see [`Handoff`]).

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use rusqlite::Connection;
use tokio::sync::{Notify, oneshot};

use super::files;
use crate::store::{Claimed, StoreError, unix_ms};

mod contracts;
mod ops;
mod schema;
mod writer;

use contracts::PendingKeys;
use ops::ms;
use schema::{
    DEDUPE_PAGE_SIZE, DEDUPE_SCHEMA, SCHEMA, add_delivery_columns, connect, move_dedupe_keys,
};
use writer::{Op, Queue, Reply, write_loop};

const DATABASE: &str = "inbox.sqlite3";
/// The handled dedupe keys, in a database of their own: their inserts land
/// on a random page each and would otherwise lengthen every commit of the
/// inbox, which an append waits for. They need no fsync (a lost key only
/// lets a copy be handled again) and no transaction with the inbox.
const DEDUPE_DATABASE: &str = "dedupe.sqlite3";
const CONSUMERS: &str = "consumers";
/// How often an idle claimer looks for items appended by other processes.
const POLL: Duration = Duration::from_millis(50);
/// How often dead consumers' claims and expired dedupe keys are swept.
const SWEEP: Duration = Duration::from_secs(2);
/// A claim of this process that no worker holds any more (its settle
/// failed, say on a full disk) is released after this long.
const STALE_CLAIM: Duration = if cfg!(test) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(30)
};
/// At most this many appended items wait in memory for this process's
/// workers (and [`HANDOFF_BYTES`]); beyond it appends wait in the database.
const HANDOFF_ITEMS: usize = 1024;
const HANDOFF_BYTES: usize = 16 << 20;

/// Items this process appended claimed by itself, waiting for its workers.
///
/// Used only while the database has no ready backlog: a database claim
/// that finds a full batch turns it off (appends then go behind the older
/// items, oldest first, as without it), one that finds less turns it on.
/// It is off until a worker of this process first claims (`listen
/// --workers 0` never does: its items are for other processes).
#[derive(Default)]
struct Handoff {
    items: std::collections::VecDeque<Claimed>,
    bytes: usize,
    /// A worker of this process claims.
    claimers: bool,
    /// The last database claim found a full batch: more may be waiting.
    backlog: bool,
    /// When a worker last claimed from the database.
    polled_at: Option<std::time::Instant>,
}

impl Handoff {
    /// Whether `n` more items of `bytes` may be appended claimed for this
    /// process's workers.
    fn takes(&self, n: usize, bytes: usize) -> bool {
        self.claimers
            && !self.backlog
            && self.items.len() + n <= HANDOFF_ITEMS
            && self.bytes + bytes <= HANDOFF_BYTES
    }

    fn take(&mut self, max: usize) -> Vec<Claimed> {
        let n = max.min(self.items.len());
        let taken: Vec<Claimed> = self.items.drain(..n).collect();
        self.bytes -= taken.iter().map(|c| c.item.byte_len()).sum::<usize>();
        taken
    }

    /// Whether a worker should claim from the database now: when nothing
    /// waits here, and at least every [`POLL`] whatever waits.
    fn poll_due(&self) -> bool {
        self.items.is_empty() || self.polled_at.is_none_or(|t| t.elapsed() >= POLL)
    }
}

/// The embedded durable store. Implements every storage contract:
/// [`Inbox`](crate::store::Inbox), [`DeadLetters`](crate::store::DeadLetters),
/// [`Dedupe`](crate::store::Dedupe), [`RecordStore`](crate::store::RecordStore),
/// [`Cursors`](crate::store::Cursors) and [`Lease`](super::Lease).
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
    /// The writer of the dedupe database: the handled keys' inserts, a
    /// B-tree page each, kept out of the inbox's commits (and fsyncs), and
    /// their lookups, on the one connection whose page cache no other
    /// connection's write invalidates.
    dedupe_writer: Arc<Queue>,
    reader: Arc<Mutex<Connection>>,
    appended: Arc<Notify>,
    /// A claimer was woken for appended items and has not claimed yet.
    waking: std::sync::atomic::AtomicBool,
    /// Items a worker of this process holds right now, or that wait for
    /// one in `handoff`.
    held: Mutex<HashSet<i64>>,
    handoff: Mutex<Handoff>,
    /// Dedupe keys a worker of this process is handling, by owner.
    pending: Mutex<PendingKeys>,
    swept_at: Mutex<Option<std::time::Instant>>,
    /// The claims of consumers without a lock file were released (before
    /// this process's first claim, not at open: that is a scan of the
    /// items, which `dlq list` and other processes that never claim skip).
    orphans_released: std::sync::atomic::AtomicBool,
    /// When an append born claimed was cancelled before its items reached
    /// the hand-off (its request went away mid-commit): they may be stored,
    /// claimed by this process and held by no worker, so the stale claims
    /// are swept once they are old enough even while busy.
    abandoned_at: Mutex<Option<std::time::Instant>>,
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

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// # Errors
    ///
    /// The directory or database cannot be created or opened.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let consumers = dir.join(CONSUMERS);
        files::private_dir(&dir, |name| {
            name == CONSUMERS || name.starts_with(DATABASE) || name.starts_with(DEDUPE_DATABASE)
        })
        .map_err(|e| unavailable(format!("{}: {e}", dir.display())))?;
        files::private_dir(&consumers, |name| name.ends_with(".lock"))
            .map_err(|e| unavailable(format!("{}: {e}", consumers.display())))?;
        let path = dir.join(DATABASE);
        let dedupe_path = dir.join(DEDUPE_DATABASE);
        for (file, name) in [(&path, DATABASE), (&dedupe_path, DEDUPE_DATABASE)] {
            // SQLite gives `-wal` and `-shm` the mode of the database file:
            // made 0600 here, before SQLite would create it with the umask's.
            files::private_file(file)
                .map_err(|e| unavailable(format!("{}: {e}", file.display())))?;
            for suffix in ["-wal", "-shm"] {
                let side = dir.join(format!("{name}{suffix}"));
                files::tighten_if_present(&side)
                    .map_err(|e| unavailable(format!("{}: {e}", side.display())))?;
            }
        }

        let consumer = random_id();
        let lock_path = consumers.join(format!("{consumer}.lock"));
        let lock = files::private_file(&lock_path)
            .map_err(|e| unavailable(format!("{}: {e}", lock_path.display())))?;
        lock.try_lock()
            .map_err(|e| unavailable(format!("{}: {e}", lock_path.display())))?;

        let dedupe_conn = connect(&dedupe_path, true, Some(DEDUPE_PAGE_SIZE))?;
        in_transaction(&dedupe_conn, || dedupe_conn.execute_batch(DEDUPE_SCHEMA))?;
        let writer_conn = connect(&path, true, None)?;
        // Keys from when they lived in the inbox's file move first (SQLite
        // attaches only outside a transaction).
        let moving = writer_conn
            .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dedupe_done'")
            .and_then(|mut stmt| stmt.exists([]))
            .map_err(|e| unavailable(format!("reading the schema: {e}")))?;
        if moving {
            let name = dedupe_path
                .to_str()
                .ok_or_else(|| unavailable(format!("{}: not UTF-8", dedupe_path.display())))?;
            writer_conn
                .execute("ATTACH DATABASE ?1 AS dedupe", [name])
                .map_err(|e| unavailable(format!("{}: {e}", dedupe_path.display())))?;
        }
        // In one transaction: two processes opening one directory at once
        // must not count the items twice or interleave the migration.
        in_transaction(&writer_conn, || {
            writer_conn.execute_batch(SCHEMA)?;
            add_delivery_columns(&writer_conn)?;
            if moving {
                move_dedupe_keys(&writer_conn)?;
            }
            Ok(())
        })?;
        if moving {
            let _ = writer_conn.execute_batch("DETACH DATABASE dedupe");
        }

        let reader = connect(&path, false, None)?;

        let writer = Arc::new(Queue::default());
        let dedupe_writer = Arc::new(Queue::default());
        let appended = Arc::new(Notify::new());
        for (name, conn, queue, sweeps) in [
            ("inbox-writer", writer_conn, &writer, false),
            ("dedupe-writer", dedupe_conn, &dedupe_writer, true),
        ] {
            let consumer = consumer.clone();
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || write_loop(conn, &consumer, &queue, sweeps))
                .map_err(|e| unavailable(format!("starting the writer thread: {e}")))?;
        }

        let store = Self {
            path,
            consumer,
            writer,
            dedupe_writer,
            reader: Arc::new(Mutex::new(reader)),
            appended,
            waking: std::sync::atomic::AtomicBool::new(false),
            held: Mutex::default(),
            handoff: Mutex::default(),
            pending: Mutex::default(),
            swept_at: Mutex::default(),
            orphans_released: std::sync::atomic::AtomicBool::new(false),
            abandoned_at: Mutex::default(),
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
    /// [`StoreError::Unavailable`] with SQLite's findings when the database is damaged.
    pub async fn integrity_check(&self) -> Result<(), StoreError> {
        let check = |conn: &Connection| {
            let mut stmt = conn.prepare("PRAGMA integrity_check")?;
            stmt.query_map([], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        };
        let dedupe = self.path.with_file_name(DEDUPE_DATABASE);
        let dedupe = tokio::task::spawn_blocking(move || {
            connect(&dedupe, false, None).map(|conn| Arc::new(Mutex::new(conn)))
        })
        .await
        .map_err(|e| unavailable(e.to_string()))??;
        for findings in [self.read(check).await?, Self::read_on(dedupe, check).await?] {
            if findings != ["ok"] {
                return Err(unavailable(findings.join("; ")));
            }
        }
        Ok(())
    }

    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, String> {
        Self::call_on(&self.writer, op).await
    }

    async fn call_on<T>(queue: &Queue, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, String> {
        let (reply, answer) = oneshot::channel();
        queue
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

    /// Once per process, before its first claim: releases the claims of
    /// consumers that have no lock file.
    async fn release_orphans(&self) {
        use std::sync::atomic::Ordering;
        if self.orphans_released.swap(true, Ordering::SeqCst) {
            return;
        }
        let consumers = self.path.with_file_name(CONSUMERS);
        if let Err(e) = self
            .call(|reply| Op::ReleaseOrphans(consumers, reply))
            .await
        {
            tracing::warn!(error = %e, "releasing orphaned claims failed; trying again on the next claim");
            self.orphans_released.store(false, Ordering::SeqCst);
        }
    }

    /// Sweeps this process's stale claims if an append born claimed was
    /// cancelled at least [`STALE_CLAIM`] ago (when its claims are stale).
    async fn release_abandoned(&self) {
        let due = {
            let mut at = self.abandoned_at.lock().unwrap_or_else(|e| e.into_inner());
            let due = at.is_some_and(|t| t.elapsed() > STALE_CLAIM);
            if due {
                *at = None;
            }
            due
        };
        if due {
            self.release_stale_claims().await;
        }
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

    /// Runs the sweeps at most every [`SWEEP`]: dead consumers' claims
    /// always (a reading of the consumers' directory), so a busy process
    /// takes over a dead one's items without waiting to be idle; this
    /// process's stale claims only when `idle` (a scan of the items). True
    /// if any item became ready.
    async fn sweep(&self, idle: bool) -> bool {
        {
            let mut swept_at = self.swept_at.lock().unwrap_or_else(|e| e.into_inner());
            if swept_at.is_some_and(|t| t.elapsed() < SWEEP) {
                return false;
            }
            *swept_at = Some(std::time::Instant::now());
        }
        if idle {
            self.release_stale_claims().await;
        }
        self.sweep_dead_consumers().await > 0
    }

    fn lock_handoff(&self) -> std::sync::MutexGuard<'_, Handoff> {
        self.handoff.lock().unwrap_or_else(|e| e.into_inner())
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
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        Self::read_on(self.reader.clone(), f)
    }

    fn read_on<T: Send + 'static>(
        reader: Arc<Mutex<Connection>>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
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

/// Runs `f` in an immediate transaction, rolled back if it fails.
fn in_transaction(
    conn: &Connection,
    f: impl FnOnce() -> rusqlite::Result<()>,
) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .and_then(|()| f())
        .and_then(|()| conn.execute_batch("COMMIT"))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            unavailable(format!("creating the schema: {e}"))
        })
}

/// Marks the store's `abandoned_at` if dropped armed: an append born
/// claimed that was cancelled while its transaction was in the writer's
/// hands (it may commit all the same).
struct Abandoned<'a> {
    at: &'a Mutex<Option<std::time::Instant>>,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            *self.at.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
        }
    }
}

fn unavailable(why: impl Into<String>) -> StoreError {
    StoreError::unavailable(why.into())
}

fn random_id() -> String {
    crate::random::hex_id(12)
}

fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // What this process still holds goes back to the others now (the
        // writer runs what is queued before it stops); should the process
        // exit first, the sweep of a dead consumer does it.
        let (reply, _) = oneshot::channel();
        let _ = self
            .writer
            .push(Op::ReleaseClaims(self.consumer.clone(), reply));
        self.writer.close();
        self.dedupe_writer.close();
    }
}

#[cfg(test)]
mod tests;

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

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use rusqlite::Connection;
use tokio::sync::{Notify, oneshot};

use super::files;
use crate::store::{StoreError, unix_ms};

mod contracts;
mod ops;
mod schema;
mod writer;

use contracts::PendingKeys;
use ops::ms;
use schema::{SCHEMA, add_delivery_columns, connect, release_claims_without_consumers};
use writer::{Op, Queue, Reply, write_loop};

const DATABASE: &str = "inbox.sqlite3";
const CONSUMERS: &str = "consumers";
/// How often an idle claimer looks for items appended by other processes.
const POLL: Duration = Duration::from_millis(50);
/// How often dead consumers' claims and expired dedupe keys are swept.
const SWEEP: Duration = Duration::from_secs(2);
/// A claim of this process that no worker holds any more (its settle
/// failed, say on a full disk) is released after this long.
const STALE_CLAIM: Duration = Duration::from_secs(30);

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

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// # Errors
    ///
    /// The directory or database cannot be created or opened.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
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
    /// [`StoreError::Unavailable`] with SQLite's findings when the database is damaged.
    pub async fn integrity_check(&self) -> Result<(), StoreError> {
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
    ) -> BoxFuture<'static, Result<T, StoreError>> {
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
        self.writer.close();
    }
}

#[cfg(test)]
mod tests;

//! The schema, its migrations, and how connections are opened.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::ops::release_claims_of;
use super::unavailable;
use crate::store::StoreError;

pub(super) const SCHEMA: &str = "
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
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
-- Delta cursors: a round's progress (resource to last_success_ms) and its
-- due mark (due_reason, due_at_ms), written by different operations.
CREATE TABLE IF NOT EXISTS cursors (
    key TEXT PRIMARY KEY,
    resource TEXT NOT NULL,
    query TEXT NOT NULL,
    delta_link TEXT,
    next_link TEXT,
    last_success_ms INTEGER,
    due_reason TEXT,
    due_at_ms INTEGER
);

-- How many items there are, for /metrics without counting them: counted
-- once when the counter is made, then kept by the triggers in the
-- transaction of every insert and delete, whichever process writes.
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    n INTEGER NOT NULL
);
-- (The count is a scalar subquery of a row that exists only while the
-- counter doesn't: every later open skips it, instead of counting a
-- million-item backlog to ignore the result.)
INSERT INTO counters (name, n) SELECT 'depth', (SELECT COUNT(*) FROM items)
WHERE NOT EXISTS (SELECT 1 FROM counters WHERE name = 'depth');
CREATE TRIGGER IF NOT EXISTS items_added AFTER INSERT ON items
BEGIN UPDATE counters SET n = n + 1 WHERE name = 'depth'; END;
CREATE TRIGGER IF NOT EXISTS items_removed AFTER DELETE ON items
BEGIN UPDATE counters SET n = n - 1 WHERE name = 'depth'; END;
";

/// The dedupe database, a file of its own beside the inbox's (see
/// [`super::DEDUPE_DATABASE`]).
pub(super) const DEDUPE_SCHEMA: &str = "
-- Handled notifications' keys (random, so each insert lands on a page of
-- its own), kept for the dedupe TTL.
CREATE TABLE IF NOT EXISTS dedupe_done (
    key BLOB PRIMARY KEY,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_done_expiry ON dedupe_done (expires_at_ms);
";

/// Moves the handled keys of a database made when they lived in the
/// inbox's file into the dedupe database, attached as `dedupe`, in the
/// transaction of the schema.
pub(super) fn move_dedupe_keys(conn: &Connection) -> rusqlite::Result<()> {
    let old: bool = conn
        .prepare("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = 'dedupe_done'")?
        .exists([])?;
    if old {
        conn.execute_batch(
            "INSERT OR IGNORE INTO dedupe.dedupe_done SELECT key, expires_at_ms FROM main.dedupe_done;
             DROP TABLE main.dedupe_done;",
        )?;
    }
    Ok(())
}

/// The dedupe database's page size: its inserts land on a random page
/// each, and a commit writes every page it touched whole, so a small page
/// (room for ~20 keys) writes a quarter of what SQLite's default 4 KiB does.
pub(super) const DEDUPE_PAGE_SIZE: i64 = 1024;

/// Opens and configures a connection; `page_size` applies to a database
/// not created yet.
pub(super) fn connect(
    path: &Path,
    writer: bool,
    page_size: Option<i64>,
) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
    if let Some(size) = page_size {
        // Before the WAL pragma, which writes the header of a new file.
        conn.pragma_update(None, "page_size", size)
            .map_err(|e| unavailable(format!("configuring {}: {e}", path.display())))?;
    }
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

/// Releases the claims of consumers that have no lock file (removed by hand,
/// say): no sweep would ever find them dead, and their items would wait
/// forever. Every process takes its lock file before it claims anything, so
/// a claimer without one is gone.
pub(super) fn release_claims_without_consumers(
    conn: &Connection,
    consumers: &Path,
) -> rusqlite::Result<usize> {
    let mut released = 0;
    let claimers: Vec<String> = conn
        .prepare("SELECT DISTINCT claimed_by FROM items WHERE claimed_by IS NOT NULL")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for claimer in claimers {
        if !consumers.join(format!("{claimer}.lock")).exists() {
            let n = release_claims_of(conn, &claimer)?;
            tracing::warn!(consumer = %claimer, items = n, "released the claims of a consumer without a lock file");
            released += n;
        }
    }
    Ok(released)
}

/// Adds `delivery_id` to the items and dead letters of a database made
/// before deliveries kept their tokens once (their rows keep the tokens in
/// the payload, and read back as before).
pub(super) fn add_delivery_columns(conn: &Connection) -> rusqlite::Result<()> {
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

//! The writer thread: operations queued by urgency, taken in groups and
//! committed in one transaction each (group commit).

use std::sync::Mutex;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::ops::apply;
use super::{SWEEP, now_ms};
use crate::store::{Claimed, CursorProgress};

/// Urgent operations (appends: someone waits to answer 202) the writer takes
/// into one transaction at most.
pub(super) const MAX_URGENT: usize = 1024;
/// Background operations (the workers' bookkeeping) per transaction at most,
/// so a backlog of them never holds an append back for long.
pub(super) const MAX_BACKGROUND: usize = 128;

pub(super) type Reply<T> = oneshot::Sender<Result<T, String>>;

/// An append as rows: the token sets of its deliveries (JSON, and how many
/// items name each), each item's payload, arrival time and token set, and
/// whether the items are born claimed by this process (for its own workers,
/// who take them from memory: see `SqliteStore::append`).
pub(super) struct Rows {
    pub(super) tokens: Vec<(Vec<u8>, i64)>,
    pub(super) items: Vec<(Vec<u8>, i64, Option<usize>)>,
    pub(super) claimed: bool,
}

/// A [`Cursors::mark_due`](crate::store::Cursors::mark_due), boxed: the
/// queue's operations stay small.
pub(super) struct DueMark {
    pub(super) key: String,
    pub(super) resource: String,
    pub(super) query: String,
    pub(super) reason: String,
    pub(super) at_ms: i64,
}

pub(super) enum Op {
    Append(Rows, Reply<Vec<i64>>),
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
    /// Which of the keys are handled (and not expired).
    Handled(Vec<[u8; 32]>, Reply<Vec<bool>>),
    ReleaseClaims(String, Reply<usize>),
    /// The claims of consumers without a lock file in this directory.
    ReleaseOrphans(std::path::PathBuf, Reply<usize>),
    ReleaseStale {
        older_than_ms: i64,
        held: Vec<i64>,
        reply: Reply<usize>,
    },
    PutRecord(String, String, Reply<()>),
    RemoveRecord(String, Reply<()>),
    SaveCursor(String, Box<CursorProgress>, Reply<()>),
    MarkDue(Box<DueMark>, Reply<()>),
    ClearDue {
        key: String,
        seen_ms: i64,
        reply: Reply<()>,
    },
    RemoveCursor(String, Reply<()>),
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

impl Op {
    /// Whether the caller relies on the operation surviving a crash of the
    /// machine once answered. Appends do (`202` follows), as do records,
    /// cursors and leases. The workers' bookkeeping does not: losing a
    /// completion or a dedupe mark can only make an item be handled again,
    /// which at-least-once allows, so its transactions skip the fsync.
    fn durable(&self) -> bool {
        matches!(
            self,
            Op::Append(..)
                | Op::Replay(..)
                | Op::PutRecord(..)
                | Op::RemoveRecord(..)
                | Op::SaveCursor(..)
                | Op::MarkDue(..)
                | Op::ClearDue { .. }
                | Op::RemoveCursor(..)
                | Op::Acquire { .. }
                | Op::Release { .. }
        )
    }
}

/// The writer's queue, in two lanes: durable operations (appends, with a
/// request waiting to answer 202) go ahead of the workers' bookkeeping.
#[derive(Default)]
pub(super) struct Queue {
    lanes: Mutex<Lanes>,
    ready: std::sync::Condvar,
}

#[derive(Default)]
pub(super) struct Lanes {
    urgent: std::collections::VecDeque<Op>,
    background: std::collections::VecDeque<Op>,
    closed: bool,
    /// The writer waits on `ready` (else waking it is a wasted syscall).
    waiting: bool,
}

impl Queue {
    pub(super) fn push(&self, op: Op) -> Result<(), Op> {
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

    pub(super) fn close(&self) {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.ready.notify_all();
    }

    /// The next group: every waiting urgent operation (bounded) and some
    /// background ones. `None` once closed and drained.
    ///
    /// It never waits for more appends to arrive: the appends that come
    /// while a group commits form the next group, so under load groups grow
    /// by themselves, and an idle store commits at once.
    pub(super) fn take(&self) -> Option<Vec<Op>> {
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

/// The writer thread: group commit of every waiting operation. The one of
/// the dedupe database also sweeps its expired keys.
pub(super) fn write_loop(conn: Connection, consumer: &str, queue: &Queue, sweeps_dedupe: bool) {
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
        if sweeps_dedupe && last_sweep.elapsed() > SWEEP {
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
pub(super) enum Done {
    Unit,
    Claimed(Vec<Claimed>),
    Ids(Vec<i64>),
    Count(usize),
    Flag(bool),
    Flags(Vec<bool>),
}

/// Runs `batch` in one transaction and answers every operation after the
/// commit; on any failure rolls back and hands the batch back unanswered.
pub(super) fn run_group(conn: &Connection, consumer: &str, batch: Vec<Op>) -> Result<(), Vec<Op>> {
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

pub(super) fn answer(op: Op, done: Done) {
    match (op, done) {
        (Op::Claim(_, reply), Done::Claimed(claimed)) => {
            let _ = reply.send(Ok(claimed));
        }
        (
            Op::Replay(_, reply)
            | Op::ReleaseClaims(_, reply)
            | Op::ReleaseOrphans(_, reply)
            | Op::ReleaseStale { reply, .. },
            Done::Count(n),
        ) => {
            let _ = reply.send(Ok(n));
        }
        (Op::Append(_, reply), Done::Ids(ids)) => {
            let _ = reply.send(Ok(ids));
        }
        (Op::Handled(_, reply), Done::Flags(handled)) => {
            let _ = reply.send(Ok(handled));
        }
        (Op::Acquire { reply, .. }, Done::Flag(held)) => {
            let _ = reply.send(Ok(held));
        }
        (
            Op::Complete(_, reply)
            | Op::Retry { reply, .. }
            | Op::DeadLetter { reply, .. }
            | Op::Finish { reply, .. }
            | Op::PutRecord(_, _, reply)
            | Op::RemoveRecord(_, reply)
            | Op::SaveCursor(_, _, reply)
            | Op::MarkDue(_, reply)
            | Op::ClearDue { reply, .. }
            | Op::RemoveCursor(_, reply)
            | Op::Release { reply, .. },
            Done::Unit,
        ) => {
            let _ = reply.send(Ok(()));
        }
        (op, _) => fail(op, "internal: mismatched store answer"),
    }
}

pub(super) fn fail(op: Op, why: &str) {
    let why = why.to_owned();
    match op {
        Op::Append(_, reply) => {
            let _ = reply.send(Err(why));
        }
        Op::Complete(_, reply)
        | Op::Retry { reply, .. }
        | Op::DeadLetter { reply, .. }
        | Op::Finish { reply, .. }
        | Op::PutRecord(_, _, reply)
        | Op::RemoveRecord(_, reply)
        | Op::SaveCursor(_, _, reply)
        | Op::MarkDue(_, reply)
        | Op::ClearDue { reply, .. }
        | Op::RemoveCursor(_, reply)
        | Op::Release { reply, .. } => {
            let _ = reply.send(Err(why));
        }
        Op::Acquire { reply, .. } => {
            let _ = reply.send(Err(why));
        }
        Op::Handled(_, reply) => {
            let _ = reply.send(Err(why));
        }
        Op::Claim(_, reply) => {
            let _ = reply.send(Err(why));
        }
        Op::Replay(_, reply)
        | Op::ReleaseClaims(_, reply)
        | Op::ReleaseOrphans(_, reply)
        | Op::ReleaseStale { reply, .. } => {
            let _ = reply.send(Err(why));
        }
    }
}

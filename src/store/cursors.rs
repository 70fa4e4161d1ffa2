//! Delta cursors: where each delta query stands, kept next to the
//! subscription records so a resync survives restarts and is shared by the
//! instances of one store.
//!
//! A cursor is keyed by the tenant and the delta query it tracks. It holds
//! the `@odata.deltaLink` the next round starts from, the
//! `@odata.nextLink` of a round in progress (a round resumes there), when a
//! round last completed, and whether a round is due and why. Triggers
//! ([`mark_due`](Cursors::mark_due)) and the round's progress
//! ([`save`](Cursors::save)) write different fields, so a trigger that
//! arrives while a round runs is never overwritten by it: the round clears
//! only the triggers it saw ([`clear_due`](Cursors::clear_due)).
//!
//! One instance runs a cursor at a time; it holds the store's
//! [`Lease`](super::Lease) named after the cursor while it does.

use futures_util::future::BoxFuture;

use super::StoreError;

/// Where a delta query stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeltaCursor {
    /// The subscription resource the cursor resyncs (e.g.
    /// `users/ada/mailFolders('Inbox')/messages`).
    pub resource: String,
    /// The delta query's path, relative to the Graph version root (e.g.
    /// `users/ada/mailFolders('Inbox')/messages/delta`): where a full sync
    /// starts.
    pub query: String,
    /// The `@odata.deltaLink` of the last completed round: where the next
    /// round starts. `None` before the first round completes.
    pub delta_link: Option<String>,
    /// The `@odata.nextLink` of a round in progress: the page to fetch next.
    pub next_link: Option<String>,
    /// When a round last completed, in milliseconds since the Unix epoch.
    pub last_success_ms: Option<i64>,
    /// Why a round is due (`missed`, `removed`, `trigger`, …), when one is.
    pub due_reason: Option<String>,
    /// When the latest trigger marked the round due, in milliseconds since
    /// the Unix epoch.
    pub due_at_ms: Option<i64>,
}

/// The progress of a round: what [`Cursors::save`] writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CursorProgress {
    /// The subscription resource.
    pub resource: String,
    /// The delta query's path.
    pub query: String,
    /// The delta link the next round starts from.
    pub delta_link: Option<String>,
    /// The next link of the round in progress.
    pub next_link: Option<String>,
    /// When a round last completed.
    pub last_success_ms: Option<i64>,
}

impl CursorProgress {
    /// The progress of a cursor, as it is stored.
    pub fn of(cursor: &DeltaCursor) -> Self {
        Self {
            resource: cursor.resource.clone(),
            query: cursor.query.clone(),
            delta_link: cursor.delta_link.clone(),
            next_link: cursor.next_link.clone(),
            last_success_ms: cursor.last_success_ms,
        }
    }
}

/// Storage of delta cursors.
///
/// Keys are opaque strings chosen by the caller (the resync engine uses
/// `{tenant}|{query}`); implementations store them as given.
pub trait Cursors: Send + Sync + 'static {
    /// The cursor under `key`, if there is one.
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<DeltaCursor>, StoreError>>;

    /// Writes the progress fields of the cursor under `key` (creating it),
    /// leaving its due fields as they are.
    fn save(&self, key: &str, progress: CursorProgress) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Marks a round of the cursor under `key` due for `reason` at `at_ms`
    /// (creating the cursor with `resource` and `query` and no links when it
    /// does not exist; an existing cursor keeps its links). The latest mark
    /// wins: its reason and time replace an earlier one's.
    fn mark_due(
        &self,
        key: &str,
        resource: &str,
        query: &str,
        reason: &str,
        at_ms: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Clears the due mark of the cursor under `key` if it was made at or
    /// before `seen_ms` (the round started after it); a later mark stays.
    fn clear_due(&self, key: &str, seen_ms: i64) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Removes the cursor under `key`.
    fn remove(&self, key: &str) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Every cursor, with its key, in no particular order.
    fn all(&self) -> BoxFuture<'_, Result<Vec<(String, DeltaCursor)>, StoreError>>;
}

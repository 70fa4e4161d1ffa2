//! The ack boundary: items are appended here, and only once the inbox has
//! them does Graph get its `202`. Workers claim items, process them and
//! complete, retry or dead-letter each.
//!
//! [`MemoryInbox`] is bounded and in-process: what it holds is lost with the
//! process. It suits tests and embedding where the app accepts that.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

use super::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::notification::ValidationTokens;

/// One authenticated item as stored behind the ack: its raw JSON, exactly as
/// received, and the `validationTokens` of the delivery it came in.
///
/// The items of one delivery share its tokens (cloning `ValidationTokens`
/// copies no token), and the durable stores keep them once per delivery,
/// not once per item: a delivery of many items and long tokens would
/// otherwise cost its items times its tokens.
#[derive(Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoredItem {
    /// The item, as received (encrypted content stays encrypted).
    #[serde(rename = "item")]
    pub raw: Box<RawValue>,
    /// The tokens of the delivery, checked behind the ack.
    #[serde(rename = "tokens", default)]
    pub validation_tokens: ValidationTokens,
    /// When the delivery arrived, in milliseconds since the Unix epoch.
    #[serde(rename = "receivedAt")]
    pub received_at_ms: i64,
}

impl StoredItem {
    /// An item received now.
    pub fn new(raw: Box<RawValue>, validation_tokens: ValidationTokens) -> Self {
        Self {
            raw,
            validation_tokens,
            received_at_ms: unix_ms(SystemTime::now()),
        }
    }
}

/// What a durable store writes of an item whose tokens it keeps apart (in
/// a record of the delivery): [`StoredItem`]'s fields but the tokens.
#[cfg(any(feature = "sqlite", feature = "redis", feature = "postgres"))]
#[derive(Serialize)]
struct Untokened<'a> {
    #[serde(rename = "item")]
    raw: &'a RawValue,
    #[serde(rename = "receivedAt")]
    received_at_ms: i64,
}

#[cfg(any(feature = "sqlite", feature = "redis", feature = "postgres"))]
impl StoredItem {
    /// The item as JSON, without its tokens when `tokens_apart` (the store
    /// keeps them with the delivery); read back with [`from_json`](Self::from_json).
    pub(crate) fn to_json(&self, tokens_apart: bool) -> serde_json::Result<Vec<u8>> {
        if tokens_apart {
            serde_json::to_vec(&Untokened {
                raw: &self.raw,
                received_at_ms: self.received_at_ms,
            })
        } else {
            serde_json::to_vec(self)
        }
    }

    /// Reads what [`to_json`](Self::to_json) wrote; `tokens` are the
    /// delivery's, when the store kept them apart.
    pub(crate) fn from_json(
        payload: &[u8],
        tokens: Option<ValidationTokens>,
    ) -> serde_json::Result<Self> {
        let mut item: StoredItem = serde_json::from_slice(payload)?;
        if let Some(tokens) = tokens {
            item.validation_tokens = tokens;
        }
        Ok(item)
    }
}

impl StoredItem {
    /// Bytes the item holds: its raw JSON, and its tokens.
    pub(crate) fn byte_len(&self) -> usize {
        self.raw.get().len() + self.validation_tokens.byte_len()
    }
}

/// The items of an append grouped by the tokens they share (the items of
/// one delivery share one `Arc`): for each item the index of its group in
/// the second list, or `None` when it has no tokens worth keeping apart.
pub(crate) fn token_groups(items: &[StoredItem]) -> (Vec<Option<usize>>, Vec<&ValidationTokens>) {
    let mut groups: Vec<&ValidationTokens> = Vec::new();
    let of_item = items
        .iter()
        .map(|item| {
            let tokens = &item.validation_tokens;
            if !matches!(tokens, ValidationTokens::Tokens(_)) {
                return None;
            }
            Some(
                groups
                    .iter()
                    .position(|g| g.shares(tokens))
                    .unwrap_or_else(|| {
                        groups.push(tokens);
                        groups.len() - 1
                    }),
            )
        })
        .collect();
    (of_item, groups)
}

impl fmt::Debug for StoredItem {
    // The raw item holds the clientState: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredItem")
            .field("raw_len", &self.raw.get().len())
            .field("received_at_ms", &self.received_at_ms)
            .finish_non_exhaustive()
    }
}

/// The inbox's name for a stored item.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EntryId(String);

impl EntryId {
    /// The id a store gave an item (or an id a user typed, to look one up).
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as the store wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An item a worker has claimed and must complete, retry or dead-letter.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Claimed {
    /// The inbox's id of the item.
    pub id: EntryId,
    /// The item.
    pub item: StoredItem,
    /// How many times processing it failed before.
    pub attempts: u32,
}

/// How full the inbox is, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxStats {
    /// Items stored and not yet completed (ready, delayed or claimed).
    pub depth: u64,
    /// Age of the oldest item, if any.
    pub oldest_age: Option<Duration>,
}

/// Where accepted items wait for the workers.
///
/// `append` must not return `Ok` before the items are as durable as the
/// implementation promises: the listener answers `202` right after it.
pub trait Inbox: Send + Sync + 'static {
    /// Stores items; all of them or none.
    fn append(&self, items: Vec<StoredItem>) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Claims up to `max` ready items, waiting up to `wait` for at least one.
    /// Returns an empty batch when none arrived in time.
    fn claim(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>>;

    /// Removes a processed item.
    fn complete(&self, id: EntryId) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Removes several processed items. Stores override it to do it in one
    /// round trip.
    fn complete_many(&self, ids: Vec<EntryId>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            for id in ids {
                self.complete(id).await?;
            }
            Ok(())
        })
    }

    /// Makes a claimed item ready again after `delay`, storing
    /// `claimed.attempts` as its count of failed attempts (the caller
    /// increments it for a failure, and leaves it for a deferral).
    fn retry(&self, claimed: Claimed, delay: Duration) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Moves an item that failed too often out of the way, with the last error.
    fn dead_letter(
        &self,
        claimed: Claimed,
        reason: String,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Depth and age, for `/metrics`.
    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, StoreError>>;

    /// Whether the items outlive this process (a durable store). At
    /// shutdown, workers on a durable inbox finish the batches they hold
    /// and stop, leaving the backlog for the next start or another
    /// process; on one that isn't they drain it, or it would be lost.
    fn is_durable(&self) -> bool {
        false
    }
}

/// An item that failed too often, kept for inspection and replay.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The store's id of the dead letter (pass it to [`DeadLetters::replay`]).
    pub id: EntryId,
    /// The item.
    pub item: StoredItem,
    /// Failed attempts.
    pub attempts: u32,
    /// The last error.
    pub reason: String,
    /// When it was dead-lettered, in milliseconds since the Unix epoch.
    pub dead_at_ms: i64,
}

/// The dead letters of a durable store: list them, and move them back into
/// the inbox once the cause is fixed.
pub trait DeadLetters: Send + Sync + 'static {
    /// Up to `limit` dead letters, oldest first.
    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, StoreError>>;

    /// Moves the given dead letters (all of them when `ids` is empty) back
    /// into the inbox with their attempt count reset; returns how many moved.
    fn replay(&self, ids: Vec<EntryId>) -> BoxFuture<'_, Result<usize, StoreError>>;
}

pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

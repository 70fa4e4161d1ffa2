//! Storage: the contracts every backend implements, the one error they
//! answer with, and the backends.
//!
//! The contracts:
//!
//! - [`Inbox`]: where accepted items wait for the workers (the ack
//!   boundary: `202` follows [`Inbox::append`]), and [`DeadLetters`], where
//!   items that kept failing are kept with their reason;
//! - [`Dedupe`]: which notifications were handled, so Graph's copies are dropped;
//! - [`RecordStore`]: the subscription manager's [`SubscriptionRecord`]s,
//!   read by every instance's receiver;
//! - [`Lease`]: which instance does a job, and which instances are alive.
//!
//! Every one answers a failure with [`StoreError`]. A [`Backend`] holds one
//! backend's implementations of all five, wired as they must be used
//! together: give it to [`ReceiverBuilder::backend`](crate::ReceiverBuilder::backend).
//!
//! The backends:
//!
//! - [`MemoryInbox`], [`MemoryDedupe`], [`MemoryRecords`], [`MemoryLease`]:
//!   in this process's memory, lost with it (the library's defaults);
//! - [`SqliteStore`] (feature `sqlite`): one data directory on local disk;
//!   `202` only after the items are fsynced; several processes may share it;
//! - [`RedisStore`] (feature `redis`): streams and a consumer group, for
//!   several instances behind a load balancer;
//! - [`PostgresStore`] (feature `postgres`): tables in one schema, for
//!   several instances on the PostgreSQL every cloud offers; `202` only
//!   after the items are committed.

mod backend;
mod bounded;
#[cfg(test)]
mod contract;
mod cursors;
mod dedupe;
mod error;
#[cfg(feature = "sqlite")]
mod files;
mod inbox;
mod lease;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod records;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use backend::Backend;
pub use bounded::BoundedInbox;
pub use cursors::{CursorProgress, Cursors, DeltaCursor};
pub use dedupe::{
    Claim, DEFAULT_LEASE as DEDUPE_LEASE, DEFAULT_TTL as DEDUPE_TTL, Dedupe, DedupeKey,
};
pub use error::StoreError;
pub use inbox::{Claimed, DeadLetter, DeadLetters, EntryId, Inbox, InboxStats, StoredItem};
pub(crate) use inbox::{token_groups, unix_ms};
pub use lease::Lease;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use lease::{member_lease, member_prefix};
pub use memory::{
    DEFAULT_MAX_KEYS as DEDUPE_MAX_KEYS, MemoryCursors, MemoryDedupe, MemoryInbox, MemoryLease,
    MemoryRecords,
};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresConfig, PostgresStore};
pub use records::{RecordStore, SubscriptionRecord};
#[cfg(feature = "redis")]
pub use redis::{RedisConfig, RedisStore};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

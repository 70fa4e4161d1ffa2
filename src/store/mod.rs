//! Durable backends: each implements [`Inbox`](crate::inbox::Inbox),
//! [`DeadLetters`](crate::inbox::DeadLetters) and [`Dedupe`](crate::dedupe::Dedupe).
//!
//! - [`SqliteStore`] (feature `sqlite`): one data directory on local disk;
//!   `202` only after the items are fsynced; several processes may share it.
//! - [`RedisStore`] (feature `redis`): streams and a consumer group, for
//!   several instances behind a load balancer.

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "redis")]
pub use redis::{RedisConfig, RedisStore};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

//! The one error every storage contract returns.

use std::fmt;

/// Why a store refused or failed an operation: the inbox, the dead
/// letters, dedupe, subscription records and leases all answer with it.
///
/// The listener answers `503` to [`Full`](Self::Full) (with `Retry-After`)
/// and [`Unavailable`](Self::Unavailable); a worker retries the item later.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// At capacity (the in-memory inbox's limits).
    Full,
    /// The store cannot serve now: disk full, an I/O error, the server
    /// unreachable, an answer it cannot read. The source says which.
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
    /// Shutting down.
    Closed,
}

impl StoreError {
    /// [`Unavailable`](Self::Unavailable) because of `source` (an error, or
    /// a message).
    pub fn unavailable(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError::Unavailable(source.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Full => f.write_str("the store is full"),
            StoreError::Unavailable(why) => write!(f, "the store is unavailable: {why}"),
            StoreError::Closed => f.write_str("the store is closed"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Unavailable(why) => Some(why.as_ref()),
            _ => None,
        }
    }
}

//! The in-process backends: every storage contract in this process's
//! memory. What they hold is lost with the process; for tests, local
//! experiments and embedding where the app accepts that.

mod cursors;
mod dedupe;
mod inbox;
mod lease;
mod records;

pub use cursors::MemoryCursors;
pub use dedupe::{DEFAULT_MAX_KEYS, MemoryDedupe};
pub use inbox::MemoryInbox;
pub use lease::MemoryLease;
pub use records::MemoryRecords;

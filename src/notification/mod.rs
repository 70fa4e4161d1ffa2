//! What Graph sends: the notification collection, its change and lifecycle
//! items, and the kind of resource each item is about.
//!
//! Two levels of parsing, for the two sides of the ack:
//!
//! - [`Envelope`] and [`ItemHead`] read, borrowed from the body, just what is
//!   needed to authenticate an item before answering Graph.
//! - [`Notification`] is the full, typed item, parsed behind the ack. Every
//!   type keeps what it does not know (`other` maps, `Unknown` variants), and
//!   the raw JSON of each item travels with it.

mod cloud_events;
mod envelope;
mod item;
mod kind;
mod lenient;
pub mod resources;

pub use cloud_events::{CLOUD_EVENTS_SPEC_VERSION, CloudEventsMode, parse_cloud_events};
pub use envelope::{
    Envelope, EnvelopeError, ItemClass, ItemHead, MAX_VALIDATION_TOKEN_BYTES,
    MAX_VALIDATION_TOKENS, ValidationTokens,
};
pub use item::{
    ChangeNotification, ChangeType, EncryptedContent, ItemError, LifecycleEventType,
    LifecycleNotification, Notification, ResourceData,
};
pub use kind::ResourceKind;

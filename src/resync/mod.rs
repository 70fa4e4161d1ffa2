//! Resync by delta query: "notification as a trigger, delta query as the
//! truth". When Graph missed notifications (a `missed` lifecycle event, a
//! removed or recreated subscription, a gap while the receiver was down),
//! [`DeltaResync`] runs the resource's delta query from its stored cursor
//! and puts every change through the inbox, where the handler gets it as a
//! [`ResyncEvent`](crate::handler::ResyncEvent) with the same dedupe,
//! retries and dead letters as notifications.
//!
//! - **Cursors** ([`Cursors`](crate::store::Cursors)) live in the store next
//!   to the subscription records: the delta link of the last round, the next
//!   link of a round in progress, the last success, and whether a round is
//!   due and why. A round advances its cursor only after the page's changes
//!   are in the inbox, so a crash repeats a page (dedupe drops the replays)
//!   and never skips one; a restart resumes from the stored next link.
//! - **One instance runs a cursor at a time**: the round holds the store's
//!   [`Lease`](crate::store::Lease) named `delta/{cursor}`.
//! - **Triggers** mark a round due in the store first, then wake the engine:
//!   a trigger is never lost with the process. A trigger during a round
//!   makes another round after it.
//! - **Sync resets** (`410 Gone`, `syncStateNotFound`, `resyncRequired`)
//!   start the round over with a full sync, logged as a warning.
//! - The first round of a cursor that has none is a **baseline**: from now
//!   where Graph offers it (`latest`), else a full round whose items are not
//!   delivered (the state before the subscription is the app's initial
//!   load, not a change). [`DeltaResyncBuilder::initial_sync`] delivers them
//!   instead.
//!
//! What the client relies on of Graph's delta queries is in
//! [`GraphClient::delta_page`](crate::subscriptions::GraphClient::delta_page).

mod engine;
mod item;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use engine::{DeltaResync, DeltaResyncBuilder, Pending, ResyncError, Round, RunningResync};
pub(crate) use item::{Origin, ResyncItem};

/// Why a resync runs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ResyncReason {
    /// Graph removed the subscription (`subscriptionRemoved`); it was recreated.
    #[serde(rename = "removed")]
    SubscriptionRemoved,
    /// Graph could not deliver some notifications (`missed`).
    Missed,
    /// The subscription was found gone (expired, deleted, `404`), or had to
    /// be replaced (a new public URL for its lifecycle notifications, a
    /// live subscription whose `clientState` the records lost), and was
    /// recreated.
    Recreated,
    /// The receiver started with a stored cursor: catching up on what
    /// changed while it was down.
    Startup,
    /// The periodic safety net.
    Periodic,
    /// Notifications for the resource arrived (the trigger mode: they are
    /// debounced into one delta round).
    Trigger,
    /// Asked for directly (`msgraph-webhooks delta`, [`DeltaResync::run`]).
    Requested,
}

impl ResyncReason {
    /// The reason as the JSON lines spell it: `removed`, `missed`, `recreated`,
    /// `startup`, `periodic`, `trigger`, `requested`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ResyncReason::SubscriptionRemoved => "removed",
            ResyncReason::Missed => "missed",
            ResyncReason::Recreated => "recreated",
            ResyncReason::Startup => "startup",
            ResyncReason::Periodic => "periodic",
            ResyncReason::Trigger => "trigger",
            ResyncReason::Requested => "requested",
        }
    }

    /// Reads [`as_str`](Self::as_str)'s spelling.
    pub fn parse(reason: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(reason.to_owned())).ok()
    }
}

impl fmt::Display for ResyncReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_their_spelling() {
        for reason in [
            ResyncReason::SubscriptionRemoved,
            ResyncReason::Missed,
            ResyncReason::Recreated,
            ResyncReason::Startup,
            ResyncReason::Periodic,
            ResyncReason::Trigger,
            ResyncReason::Requested,
        ] {
            assert_eq!(ResyncReason::parse(reason.as_str()), Some(reason.clone()));
            assert_eq!(
                serde_json::to_value(&reason).unwrap(),
                serde_json::Value::String(reason.as_str().to_owned())
            );
        }
        assert_eq!(ResyncReason::parse("subscriptionremoved"), None);
    }
}

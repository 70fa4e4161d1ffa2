//! What the manager reports: the activity stream and the resync hook's
//! arguments.

use std::fmt;

use time::OffsetDateTime;

use super::rfc3339;
pub use crate::resync::ResyncReason;

/// What the resync hook is told: run a delta query (or another full read)
/// of `resource`, since changes may have gone unnotified.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Resync {
    /// The declared subscription's key.
    pub key: String,
    /// Its resource.
    pub resource: String,
    /// The subscription id now in force.
    pub subscription_id: String,
    /// Why.
    pub reason: ResyncReason,
}

/// What the manager did, as it happens (also logged).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activity {
    /// A subscription was created.
    Created {
        /// The declared key.
        key: String,
        /// Graph's id.
        id: String,
    },
    /// An existing subscription of ours (another instance's record) was
    /// taken over after Graph answered `409`.
    Adopted {
        /// The declared key.
        key: String,
        /// Graph's id.
        id: String,
    },
    /// A subscription Graph had for the same resource, unknown to the
    /// records (its `clientState` unknown), was deleted to make room.
    Replaced {
        /// The declared key.
        key: String,
        /// The deleted subscription's id.
        id: String,
    },
    /// A subscription was renewed (and moved or re-keyed if those changed).
    Renewed {
        /// The declared key.
        key: String,
        /// Graph's id.
        id: String,
        /// The new expiration.
        expiration: OffsetDateTime,
        /// The new notification URL, if it moved.
        moved_to: Option<String>,
        /// The new certificate id, if it changed.
        certificate_id: Option<String>,
    },
    /// A subscription was reauthorized.
    Reauthorized {
        /// The declared key.
        key: String,
        /// Graph's id.
        id: String,
    },
    /// A reauthorization was asked for, but the subscription was renewed or
    /// reauthorized less than 10 minutes ago.
    ReauthorizationSkipped {
        /// The declared key.
        key: String,
        /// Graph's id.
        id: String,
    },
    /// A subscription that was gone (or could not be updated in place) was
    /// replaced by a new one.
    Recreated {
        /// The declared key.
        key: String,
        /// The old id.
        old: String,
        /// The new id.
        new: String,
    },
    /// A subscription was deleted (on stop, or a declaration that changed).
    Deleted {
        /// The declared key.
        key: String,
        /// Graph's id.
        id: String,
    },
    /// The resync hook ran.
    Resynced {
        /// The declared key.
        key: String,
        /// Why.
        reason: ResyncReason,
    },
    /// Something failed; it is tried again later.
    Failed {
        /// The declared key.
        key: String,
        /// What failed, and why.
        error: String,
    },
}

impl fmt::Display for Activity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Activity::Created { key, id } => write!(f, "created {id} for {key}"),
            Activity::Adopted { key, id } => write!(f, "adopted {id} for {key}"),
            Activity::Replaced { key, id } => {
                write!(f, "deleted {id} (unknown clientState) to recreate {key}")
            }
            Activity::Renewed {
                key,
                id,
                expiration,
                moved_to,
                certificate_id,
            } => {
                write!(f, "renewed {id} for {key} until {}", rfc3339(*expiration))?;
                if let Some(url) = moved_to {
                    write!(f, ", moved to {url}")?;
                }
                if let Some(cert) = certificate_id {
                    write!(f, ", encrypted to certificate {cert}")?;
                }
                Ok(())
            }
            Activity::Reauthorized { key, id } => write!(f, "reauthorized {id} for {key}"),
            Activity::ReauthorizationSkipped { key, id } => write!(
                f,
                "reauthorization of {id} for {key} skipped: renewed or reauthorized less than 10 minutes ago"
            ),
            Activity::Recreated { key, old, new } => {
                write!(f, "recreated {key}: {old} replaced by {new}")
            }
            Activity::Deleted { key, id } => write!(f, "deleted {id} for {key}"),
            Activity::Resynced { key, reason } => write!(f, "resync of {key} ({reason})"),
            Activity::Failed { key, error } => write!(f, "{key}: {error}"),
        }
    }
}

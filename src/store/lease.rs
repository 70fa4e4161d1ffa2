//! Leases and presence: which instance does a job, and which are alive.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::StoreError;

/// A named lease, so that among several instances only one does a job (the
/// subscription manager's renewals, say).
pub trait Lease: Send + Sync + 'static {
    /// Takes the lease `name` for `holder` for `ttl`, or extends it if
    /// `holder` has it. `true` if `holder` holds it now.
    fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Gives the lease up, if `holder` has it.
    fn release(&self, name: &str, holder: &str) -> BoxFuture<'_, Result<(), StoreError>>;

    /// How long until the lease `name` lapses unless its holder extends it;
    /// `None` when nobody holds it. A waiting instance retries then, not later.
    fn expires_in(&self, name: &str) -> BoxFuture<'_, Result<Option<Duration>, StoreError>>;

    /// Marks `member` of the group `group` alive for `ttl`; call again
    /// before it lapses. A member that stops calling (a crash) counts as
    /// alive until then.
    fn join(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Takes `member` out of `group` at once.
    fn leave(&self, group: &str, member: &str) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The live members of `group`. A member that [leaves](Self::leave)
    /// and then reads this sees every member that left before it as gone:
    /// of several that leave at once, the last to read sees none.
    fn members(&self, group: &str) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;
}

/// The lease name a backend keeps `member` of `group` under, for backends
/// that keep presence as leases: one per member, named by group then member.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn member_lease(group: &str, member: &str) -> String {
    format!("{}{member}", member_prefix(group))
}

/// What the lease names of `group`'s members start with.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn member_prefix(group: &str) -> String {
    // The unit separator: in no group name, so no group's members are
    // taken for another's.
    format!("presence\u{1f}{group}\u{1f}")
}

//! Among instances sharing a store: the lease held by a heartbeat and taken
//! the moment it is free, presence per declaration (so a stopping instance
//! deletes only what no live one keeps), and lifecycle events queued for
//! the lease holder.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::watch;

use super::Shared;
use crate::store::StoreError;

/// How often, at most, an instance looks at the lease and the store between
/// heartbeats: a lease given up is taken this soon, a queued lifecycle
/// event acted on this soon.
const LEASE_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// The lease and presence in the background, in real time: joins the
/// presence groups, extends the lease while it holds it, takes it as soon
/// as it is given up or lapses (and then starts a pass at once), and wakes
/// a pass for lifecycle events other instances queued in the store.
pub(super) async fn keep(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let beat = shared.settings.lease_ttl / 3;
    let tick = beat.min(LEASE_POLL);
    let mut held = false;
    let mut joined_at: Option<tokio::time::Instant> = None;
    let mut extended_at: Option<tokio::time::Instant> = None;
    let mut queued_seen: HashSet<String> = HashSet::new();
    loop {
        if *stopped.borrow() {
            return;
        }
        let now = tokio::time::Instant::now();
        if joined_at.is_none_or(|t| now >= t + beat) {
            match shared.join().await {
                Ok(()) => joined_at = Some(now),
                Err(e) => {
                    tracing::warn!(error = %e, "could not mark this instance alive in the store")
                }
            }
        }
        let mut wait = tick;
        let holds = if held && extended_at.is_some_and(|t| now < t + beat) {
            Ok(true)
        } else if held {
            shared.hold_lease().await
        } else {
            match shared.lease.expires_in(&shared.settings.lease_name).await {
                Ok(None) => shared.hold_lease().await,
                Ok(Some(left)) => {
                    // Retried the moment it lapses.
                    wait = wait.min(left + std::time::Duration::from_millis(20));
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        };
        match holds {
            Ok(true) => {
                if !held || extended_at.is_none_or(|t| now >= t + beat) {
                    extended_at = Some(now);
                }
                if !held {
                    tracing::info!(holder = %shared.holder, "took the subscriptions lease: managing them");
                    shared.wake.notify_one();
                }
                held = true;
                match shared.queued().await {
                    Ok(queued) => {
                        if queued.iter().any(|id| !queued_seen.contains(id)) {
                            shared.wake.notify_one();
                        }
                        queued_seen = queued;
                    }
                    Err(e) => tracing::warn!(error = %e, "could not read the subscription records"),
                }
            }
            Ok(false) => {
                if held {
                    tracing::warn!("lost the subscriptions lease to another instance");
                }
                held = false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not reach the subscriptions lease");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => return,
        }
    }
}

impl Shared {
    /// The presence group of the instances that keep `key`.
    fn group(&self, key: &str) -> String {
        format!("{}/keeps/{key}", self.settings.lease_name)
    }

    /// Whether a live instance (this one or another) declares `key`.
    pub(super) async fn kept_by_anyone(&self, key: &str) -> Result<bool, StoreError> {
        Ok(!self.lease.members(&self.group(key)).await?.is_empty())
    }

    /// Marks this instance alive as keeping each declaration.
    async fn join(&self) -> Result<(), StoreError> {
        for declared in &self.declared {
            self.lease
                .join(
                    &self.group(&declared.stable_key()),
                    &self.holder,
                    self.settings.lease_ttl,
                )
                .await?;
        }
        Ok(())
    }

    /// Leaves every presence group and, with `delete`, deletes the
    /// declarations no other live instance keeps.
    pub(super) async fn leave(&self, delete: bool) -> Result<(), StoreError> {
        let mut last = HashSet::new();
        for declared in &self.declared {
            let key = declared.stable_key();
            let group = self.group(&key);
            self.lease.leave(&group, &self.holder).await?;
            // Left first, read second: of instances stopping together, the
            // last to read sees none of the others and deletes.
            let others = self.lease.members(&group).await?;
            if others.is_empty() {
                last.insert(key);
            } else if delete {
                tracing::info!(
                    %key,
                    instances = others.len(),
                    "other live instances keep this subscription: left in place"
                );
            }
        }
        if delete {
            self.delete_keys(&last).await?;
        }
        Ok(())
    }

    /// Ids of declared subscriptions whose `subscriptionRemoved` waits in
    /// the records for the lease holder.
    async fn queued(&self) -> Result<HashSet<String>, StoreError> {
        Ok(self
            .managed()
            .await?
            .into_iter()
            .filter(|m| m.removed_at.is_some() && self.declared(&m.key).is_some())
            .map(|m| m.id)
            .collect())
    }
}

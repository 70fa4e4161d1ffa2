//! Among instances sharing a store: a lease per declaration, held by a
//! heartbeat and taken the moment it is free (so instances declaring
//! different sets each manage theirs, and instances declaring the same
//! subscription take turns), presence per declaration (so a stopping
//! instance deletes only what no live one keeps), and lifecycle events
//! queued for the lease holder.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Shared;
use crate::store::StoreError;

/// How often, at most, an instance looks at the leases and the store
/// between heartbeats: a lease given up is taken this soon, a queued
/// lifecycle event acted on this soon.
const LEASE_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// The leases and presence in the background, in real time: joins the
/// presence groups, extends the leases it holds, takes each as soon as it
/// is given up or lapses (and then starts a pass at once), says which
/// declarations another instance manages, and wakes a pass for lifecycle
/// events other instances queued in the store.
pub(super) async fn keep(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let beat = shared.settings.lease_ttl / 3;
    let tick = beat.min(LEASE_POLL);
    let keys: Vec<String> = shared
        .declared
        .iter()
        .map(super::Declared::stable_key)
        .collect();
    // Key → when this instance last extended its lease.
    let mut held: HashMap<String, Instant> = HashMap::new();
    let mut waiting: BTreeSet<String> = BTreeSet::new();
    let mut joined_at: Option<Instant> = None;
    let mut queued_seen: HashSet<String> = HashSet::new();
    let mut unreachable = false;
    loop {
        if *stopped.borrow() {
            return;
        }
        let now = Instant::now();
        if joined_at.is_none_or(|t| now >= t + beat) {
            match shared.join().await {
                Ok(()) => joined_at = Some(now),
                Err(e) => {
                    tracing::warn!(error = %e, "could not mark this instance alive in the store")
                }
            }
        }
        let mut wait = tick;
        let mut took = Vec::new();
        let mut lost = Vec::new();
        let mut others = BTreeSet::new();
        let mut failed = None;
        for key in &keys {
            let extended = held.get(key).copied();
            let holds = match extended {
                Some(t) if now < t + beat => continue,
                Some(_) => shared.hold(key).await,
                None => match shared.lease.expires_in(&shared.lease_of(key)).await {
                    Ok(None) => shared.hold(key).await,
                    Ok(Some(left)) => {
                        // Held, by this instance's own first pass (which
                        // takes the lease itself) or by another: acquiring
                        // tells which, and extends it if it is ours.
                        let mine = shared.hold(key).await;
                        if !matches!(mine, Ok(true)) {
                            // Retried the moment it lapses.
                            wait = wait.min(left + std::time::Duration::from_millis(20));
                        }
                        mine
                    }
                    Err(e) => Err(e),
                },
            };
            match holds {
                Ok(true) => {
                    if extended.is_none() {
                        took.push(key.clone());
                    }
                    held.insert(key.clone(), now);
                }
                Ok(false) => {
                    if held.remove(key).is_some() {
                        lost.push(key.clone());
                    }
                    others.insert(key.clone());
                }
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) if !unreachable => {
                tracing::warn!(error = %e, "could not reach the subscription leases");
                unreachable = true;
            }
            Some(_) => {}
            None => {
                if unreachable {
                    tracing::info!("the subscription leases are reachable again");
                }
                unreachable = false;
                if others != waiting {
                    if !others.is_empty() {
                        let keys: Vec<&str> = others.iter().map(String::as_str).collect();
                        tracing::info!(
                            ?keys,
                            "another live instance manages these subscriptions: \
                             this one takes over if it stops"
                        );
                    }
                    waiting = others;
                }
            }
        }
        if !lost.is_empty() {
            tracing::warn!(keys = ?lost, "lost the lease of these subscriptions to another instance");
        }
        if !took.is_empty() {
            tracing::info!(holder = %shared.holder, keys = ?took, "took the subscriptions lease: managing them");
            shared.wake.notify_one();
        }
        if !held.is_empty() {
            match shared.queued(&held).await {
                Ok(queued) => {
                    if queued.iter().any(|id| !queued_seen.contains(id)) {
                        shared.wake.notify_one();
                    }
                    queued_seen = queued;
                }
                Err(e) => tracing::warn!(error = %e, "could not read the subscription records"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => return,
        }
    }
}

impl Shared {
    /// The lease of the declaration `key`: its holder creates, renews and
    /// recreates that subscription.
    pub(super) fn lease_of(&self, key: &str) -> String {
        format!("{}/holds/{key}", self.settings.lease_name)
    }

    /// Takes or extends the lease of `key`; `true` if this instance holds it.
    pub(super) async fn hold(&self, key: &str) -> Result<bool, StoreError> {
        self.lease
            .acquire(&self.lease_of(key), &self.holder, self.settings.lease_ttl)
            .await
    }

    /// Gives the lease of `key` up, if this instance holds it.
    pub(super) async fn release(&self, key: &str) -> Result<(), StoreError> {
        self.lease.release(&self.lease_of(key), &self.holder).await
    }

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

    /// Ids of subscriptions whose lease this instance holds (`held`) and
    /// whose `subscriptionRemoved` waits in the records for it.
    async fn queued<T>(&self, held: &HashMap<String, T>) -> Result<HashSet<String>, StoreError> {
        Ok(self
            .managed()
            .await?
            .into_iter()
            .filter(|m| m.removed_at.is_some() && held.contains_key(&m.key))
            .map(|m| m.id)
            .collect())
    }
}

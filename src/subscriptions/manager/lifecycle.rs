//! Acting on lifecycle notifications: a [`Handler`] wrapper in front of
//! the app's, and what it does: reauthorize, recreate a removed
//! subscription, resync after missed notifications.

use std::future::Future;

use crate::handler::ResyncEvent;
use crate::subscriptions::model::SubscriptionUpdate;
use crate::{BoxError, ChangeEvent, Handler, LifecycleEvent, LifecycleEventType};

use super::{Activity, REAUTHORIZE_GAP, ResyncReason, Shared, SubscriptionManager};

/// The app's handler with lifecycle automation in front; see
/// [`SubscriptionManager::handler`].
///
/// - `reauthorizationRequired` → reauthorize, or a renewing update when the
///   renewal is due anyway; never both within 10 minutes;
/// - `subscriptionRemoved` → recreate, then resync;
/// - `missed` → resync: a delta round of the resource (durably marked due,
///   run by the resync engine) where it has a delta query and
///   [`delta_resync`](super::ManagerBuilder::delta_resync) is set, the
///   resync hook otherwise;
/// - in the [trigger mode](super::ManagerBuilder::trigger_mode), change
///   notifications of delta resources mark a round due instead of reaching
///   the handler.
///
/// Then the event goes on to the app's `on_lifecycle`. If the action fails
/// the event fails, and the pipeline retries it with backoff.
#[derive(Debug)]
pub struct Lifecycle<H> {
    inner: H,
    manager: SubscriptionManager,
}

impl<H> Lifecycle<H> {
    pub(super) fn new(inner: H, manager: SubscriptionManager) -> Self {
        Self { inner, manager }
    }

    /// The app's handler.
    pub fn inner(&self) -> &H {
        &self.inner
    }
}

impl<H: Handler> Handler for Lifecycle<H> {
    async fn on_change(&self, event: ChangeEvent) -> Result<(), BoxError> {
        if self.manager.shared.trigger && self.manager.shared.trigger(&event).await? {
            return Ok(());
        }
        self.inner.on_change(event).await
    }

    async fn on_lifecycle(&self, event: LifecycleEvent) -> Result<(), BoxError> {
        self.manager.on_lifecycle(&event).await?;
        self.inner.on_lifecycle(event).await
    }

    fn on_resync(&self, event: ResyncEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.inner.on_resync(event)
    }
}

impl Shared {
    /// The trigger mode: a change notification of a managed subscription
    /// whose resource has a delta query marks a round due (durably) in
    /// place of reaching the handler. `false` when it is not such a
    /// notification.
    async fn trigger(&self, event: &ChangeEvent) -> Result<bool, BoxError> {
        let Some(engine) = &self.delta else {
            return Ok(false);
        };
        let Some(managed) = self.managed_by_id(event.subscription_id()).await? else {
            return Ok(false);
        };
        let Some(declared) = self.declared(&managed.key) else {
            return Ok(false);
        };
        match engine
            .request(&declared.resource, ResyncReason::Trigger)
            .await
        {
            Ok(()) => Ok(true),
            Err(crate::resync::ResyncError::NoDelta(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn on_lifecycle(&self, event: &LifecycleEvent) -> Result<(), BoxError> {
        let id = event.subscription_id();
        match event.lifecycle_event() {
            LifecycleEventType::ReauthorizationRequired => self.reauthorize(id).await,
            LifecycleEventType::SubscriptionRemoved => self.removed(id).await,
            LifecycleEventType::Missed => {
                let Some(managed) = self.managed_by_id(id).await? else {
                    tracing::info!(subscription_id = id, "missed: not a managed subscription");
                    return Ok(());
                };
                self.resync(&managed.key, id, ResyncReason::Missed).await
            }
            other => {
                tracing::info!(subscription_id = id, lifecycle_event = %other, "lifecycle event not acted on");
                Ok(())
            }
        }
    }

    /// `reauthorizationRequired`: a renewing update when the renewal is due
    /// anyway, else a reauthorize; neither within 10 minutes of the other.
    pub(super) async fn reauthorize(&self, id: &str) -> Result<(), BoxError> {
        let _ops = self.ops.lock().await;
        let Some(current) = self.managed_by_id(id).await? else {
            tracing::info!(
                subscription_id = id,
                "reauthorizationRequired: not a managed subscription"
            );
            return Ok(());
        };
        let Some(declared) = self.declared(&current.key).cloned() else {
            return Ok(());
        };
        let now = self.now();
        let recent = [current.renewed_at, current.reauthorized_at]
            .into_iter()
            .flatten()
            .any(|t| now < t + REAUTHORIZE_GAP && t <= now);
        if recent {
            self.emit(Activity::ReauthorizationSkipped {
                key: current.key.clone(),
                id: id.to_owned(),
            });
            return Ok(());
        }
        if now >= current.renew_at {
            let urls = current.urls.clone();
            self.renew(&declared, current, SubscriptionUpdate::default(), &urls)
                .await?;
            return Ok(());
        }
        match self.client.reauthorize(id).await {
            Ok(()) => {
                let mut current = current;
                current.reauthorized_at = Some(now);
                self.store(&current).await?;
                self.emit(Activity::Reauthorized {
                    key: current.key,
                    id: id.to_owned(),
                });
                Ok(())
            }
            Err(e) if e.is_not_found() => {
                drop(_ops);
                self.removed(id).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `subscriptionRemoved` (or a subscription found gone): recreate, then
    /// resync. Queued in the records for the lease holder when that is
    /// another instance (or a dead one, until its lease lapses).
    pub(super) async fn removed(&self, id: &str) -> Result<(), BoxError> {
        let _ops = self.ops.lock().await;
        let Some(old) = self.managed_by_id(id).await? else {
            tracing::info!(
                subscription_id = id,
                "subscriptionRemoved: not a managed subscription (or already replaced)"
            );
            return Ok(());
        };
        let Some(declared) = self.declared(&old.key).cloned() else {
            self.forget(id).await?;
            return Ok(());
        };
        if !self.hold(&old.key).await? {
            // Queued where the holder (or, if it died, whoever takes the
            // lease when it lapses) finds it within seconds.
            let mut queued = old;
            queued.removed_at.get_or_insert(self.now());
            self.records.put(queued.to_record()).await?;
            tracing::info!(
                subscription_id = id,
                "subscriptionRemoved: queued in the store for the lease holder, which recreates it"
            );
            return Ok(());
        }
        // Marked removed, not forgotten: if the create fails (a handshake
        // failing for a while), the retried event and every pass still
        // find it, and recreate it with the resync.
        let mut marked = old.clone();
        marked.removed_at.get_or_insert(self.now());
        self.records.put(marked.to_record()).await?;
        let public = self.public_url.borrow().clone();
        let urls = declared
            .urls(public.as_deref())
            .unwrap_or_else(|| old.urls.clone());
        let (created, _) = self.create(&declared, &urls, None).await?;
        self.forget(id).await?;
        self.emit(Activity::Recreated {
            key: old.key.clone(),
            old: id.to_owned(),
            new: created.id.clone(),
        });
        self.resync(&old.key, &created.id, ResyncReason::SubscriptionRemoved)
            .await
    }
}

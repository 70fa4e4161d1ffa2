//! The subscription manager: keeps a declared set of subscriptions alive.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use time::{Duration, OffsetDateTime};
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;

use super::client::GraphClient;
use crate::clock::Clock;
use crate::resync::{DeltaResync, RunningResync};
use crate::store::RecordStore;
use crate::store::{Lease, StoreError};
use crate::{BoxError, Handler, LifecycleEvent, SubscriptionRegistry};

mod activity;
mod builder;
mod declared;
mod keeper;
mod lifecycle;
mod reconcile;
mod record;

pub use super::model::EncryptionCertificate;
pub use activity::{Activity, Resync, ResyncReason};
use builder::{Certificates, Settings};
pub use builder::{ManagerBuildError, ManagerBuilder};
pub use declared::Declared;
use declared::Urls;
use keeper::keep;
pub use lifecycle::Lifecycle;
pub use record::ManagedSubscription;
use record::{Managed, rfc3339};

/// Graph asks for 10 minutes between a reauthorize and a renewing update of
/// one subscription (Microsoft Learn, "Reduce missing subscriptions and change notifications", <https://learn.microsoft.com/graph/change-notifications-lifecycle-events>).
const REAUTHORIZE_GAP: Duration = Duration::minutes(10);

/// Kept under the kind's maximum lifetime, for clock skew with Graph.
const LIFETIME_MARGIN: Duration = Duration::minutes(5);

type ResyncHook = Arc<dyn Fn(Resync) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

struct Shared {
    client: GraphClient,
    clock: Arc<dyn Clock>,
    records: Arc<dyn RecordStore>,
    lease: Arc<dyn Lease>,
    registry: Option<Arc<SubscriptionRegistry>>,
    declared: Vec<Declared>,
    public_url: watch::Receiver<Option<String>>,
    /// Keeps a fixed public URL's channel open.
    _public_url: Option<watch::Sender<Option<String>>>,
    certificates: Mutex<Certificates>,
    resync: Option<ResyncHook>,
    /// Resync by delta query, where the resource has one.
    delta: Option<DeltaResync>,
    /// Change notifications of delta resources trigger rounds instead.
    trigger: bool,
    activity: broadcast::Sender<Activity>,
    wake: Notify,
    /// One mutation at a time in this process (passes, lifecycle actions, stop).
    ops: tokio::sync::Mutex<()>,
    holder: String,
    settings: Settings,
}

/// Keeps a declared set of subscriptions alive; see the [module docs](super).
///
/// Cloning is cheap and shares the manager.
#[derive(Clone)]
pub struct SubscriptionManager {
    shared: Arc<Shared>,
}

impl fmt::Debug for SubscriptionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionManager")
            .field("declared", &self.shared.declared.len())
            .field("holder", &self.shared.holder)
            .finish_non_exhaustive()
    }
}

impl SubscriptionManager {
    /// Wraps the app's handler so lifecycle notifications are acted on
    /// before the handler sees them.
    pub fn handler<H: Handler>(&self, handler: H) -> Lifecycle<H> {
        Lifecycle::new(handler, self.clone())
    }

    /// What the manager does, from now on.
    pub fn activity(&self) -> broadcast::Receiver<Activity> {
        self.shared.activity.subscribe()
    }

    /// The declarations.
    pub fn declared(&self) -> &[Declared] {
        &self.shared.declared
    }

    /// Runs the manager in the background until [`Running::stop`].
    pub fn start(&self) -> Running {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(self.shared.clone(), stopped.clone()));
        let keeper = tokio::spawn(keep(self.shared.clone(), stopped));
        let delta = self.shared.delta.as_ref().map(|engine| {
            for declared in &self.shared.declared {
                // Resources without a delta query keep the resync hook.
                let _ = engine.track(&declared.resource);
            }
            engine.start()
        });
        Running {
            manager: self.clone(),
            stop,
            task: Some(task),
            keeper: Some(keeper),
            delta,
        }
    }

    /// Makes the background task look again now (e.g. after a change the
    /// manager cannot see).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Encrypts rich subscriptions to `certificate` from now on: each is
    /// updated to it (keep the old key in the receiver's key ring until no
    /// notification uses it).
    pub fn rotate_certificate(&self, certificate: EncryptionCertificate) {
        {
            let mut certificates = self
                .shared
                .certificates
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            certificates
                .known
                .insert(certificate.id().to_owned(), certificate.clone());
            certificates.active = Some(certificate);
        }
        self.wake();
    }

    /// The subscriptions the records hold for the declarations.
    ///
    /// # Errors
    ///
    /// The record store could not be read.
    pub async fn subscriptions(&self) -> Result<Vec<ManagedSubscription>, StoreError> {
        let keys: HashSet<String> = self
            .shared
            .declared
            .iter()
            .map(Declared::stable_key)
            .collect();
        Ok(self
            .shared
            .managed()
            .await?
            .into_iter()
            .filter(|m| keys.contains(&m.key))
            .map(|m| ManagedSubscription {
                key: m.key,
                id: m.id,
                resource: m.resource,
                expiration: m.expires_at,
                renew_at: m.renew_at,
                notification_url: m.urls.notification,
                lifecycle_notification_url: m.urls.lifecycle,
                certificate_id: m.certificate_id,
            })
            .collect())
    }

    /// One pass now: creates what is missing, renews what is due, follows
    /// the public URL and the active certificate, for each declaration
    /// whose lease this instance holds (or takes now). `Ok(false)` when
    /// other instances hold them all.
    ///
    /// # Errors
    ///
    /// The record store or the lease failed. A declaration that fails is
    /// reported as [`Activity::Failed`] and tried again later.
    pub async fn reconcile(&self) -> Result<bool, StoreError> {
        Ok(self.shared.pass().await?.is_some())
    }

    /// Acts on a lifecycle notification: what [`handler`](Self::handler)'s
    /// wrapper calls before the app's handler.
    ///
    /// # Errors
    ///
    /// Graph or the record store failed (the notification is then retried
    /// by the pipeline); the resync hook failed.
    pub async fn on_lifecycle(&self, event: &LifecycleEvent) -> Result<(), BoxError> {
        self.shared.on_lifecycle(event).await
    }

    /// Deletes every declared subscription from Graph and the records.
    ///
    /// # Errors
    ///
    /// The record store failed; Graph errors other than `404` are reported
    /// as [`Activity::Failed`].
    pub async fn delete_all(&self) -> Result<(), StoreError> {
        self.shared.delete_all().await
    }
}

/// The manager running in the background; see [`SubscriptionManager::start`].
#[derive(Debug)]
pub struct Running {
    manager: SubscriptionManager,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    keeper: Option<JoinHandle<()>>,
    delta: Option<RunningResync>,
}

impl Running {
    /// The manager.
    pub fn manager(&self) -> &SubscriptionManager {
        &self.manager
    }

    /// Stops the background task (a pass in progress is abandoned), gives
    /// the leases up so other instances take over at once, and with
    /// `delete` deletes the declared subscriptions that no other live
    /// instance keeps: the last instance out deletes, the others leave them
    /// to the survivors. Without `delete` they all stay, and a manager
    /// started later with the same records takes them over.
    ///
    /// # Errors
    ///
    /// The record store failed while deleting.
    pub async fn stop(self, delete: bool) -> Result<(), StoreError> {
        self.stop_within(delete, std::time::Duration::MAX).await
    }

    /// [`stop`](Self::stop), giving Graph and the store at most `limit`:
    /// what is not deleted by then stays until it expires (a hanging Graph
    /// cannot hold the process).
    ///
    /// # Errors
    ///
    /// The record store failed while deleting.
    pub async fn stop_within(
        mut self,
        delete: bool,
        limit: std::time::Duration,
    ) -> Result<(), StoreError> {
        let _ = self.stop.send(true);
        for task in [self.task.take(), self.keeper.take()].into_iter().flatten() {
            let _ = task.await;
        }
        if let Some(delta) = self.delta.take() {
            delta.stop().await;
        }
        let shared = &self.manager.shared;
        let deadline = tokio::time::Instant::now()
            .checked_add(limit)
            .unwrap_or_else(|| {
                tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365)
            });
        let result = match tokio::time::timeout_at(deadline, shared.leave(delete)).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    ?limit,
                    "stopping took too long (Graph or the store not answering): \
                     subscriptions not deleted stay until they expire"
                );
                Ok(())
            }
        };
        // Given up even after a timeout (briefly), so a survivor need not
        // wait for them to lapse.
        let release = async {
            for declared in &shared.declared {
                shared.release(&declared.stable_key()).await?;
            }
            Ok::<(), StoreError>(())
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left.max(std::time::Duration::from_secs(1)), release).await {
            Ok(released) => released?,
            Err(_) => tracing::warn!("the store did not answer: the leases lapse by themselves"),
        }
        result
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn run(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut urls = shared.public_url.clone();
    let mut urls_open = true;
    loop {
        if *stopped.borrow() {
            return;
        }
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // Seen now: a URL that changes during the pass wakes the next one.
        urls.borrow_and_update();
        let now = shared.clock.now();
        let passed = tokio::select! {
            passed = shared.pass() => passed,
            // A pass may wait on Graph (handshake retries, a hanging
            // request): stopping does not.
            _ = stopped.changed() => return,
        };
        let next = match passed {
            Ok(Some(next)) => next,
            Ok(None) => now + shared.settings.check_interval,
            Err(e) => {
                tracing::warn!(error = %e, "subscription pass failed; trying again");
                now + shared
                    .settings
                    .retry_after_failure
                    .min(shared.settings.check_interval)
            }
        };
        tokio::select! {
            () = shared.clock.sleep_until(next) => {}
            () = &mut woken => {}
            changed = urls.changed(), if urls_open => {
                if changed.is_err() {
                    urls_open = false;
                }
            }
            _ = stopped.changed() => return,
        }
    }
}

impl Shared {
    fn emit(&self, activity: Activity) {
        match &activity {
            Activity::Failed { .. } => tracing::warn!(%activity, "subscriptions"),
            _ => tracing::info!(%activity, "subscriptions"),
        }
        let _ = self.activity.send(activity);
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    fn certificate_for(&self, declared: &Declared) -> Option<EncryptionCertificate> {
        let certificates = self
            .certificates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &declared.certificate_id {
            Some(id) => certificates.known.get(id).cloned(),
            None => certificates.active.clone(),
        }
    }

    fn renew_at(&self, now: OffsetDateTime, expires_at: OffsetDateTime) -> OffsetDateTime {
        let lifetime = (expires_at - now).max(Duration::ZERO);
        let share =
            self.settings.renew_fraction * (1.0 - self.settings.jitter * crate::random::unit());
        now + lifetime * share
    }

    fn declared(&self, key: &str) -> Option<&Declared> {
        self.declared.iter().find(|d| d.stable_key() == key)
    }
}

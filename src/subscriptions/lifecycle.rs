//! Lifecycle automation: a [`Handler`] wrapper that acts on lifecycle
//! notifications before the app's handler sees them.

use std::future::Future;

use super::manager::SubscriptionManager;
use crate::{BoxError, ChangeEvent, Handler, LifecycleEvent};

/// The app's handler with lifecycle automation in front; see
/// [`SubscriptionManager::handler`].
///
/// - `reauthorizationRequired` → reauthorize, or a renewing update when the
///   renewal is due anyway; never both within 10 minutes;
/// - `subscriptionRemoved` → recreate, then the resync hook;
/// - `missed` → the resync hook.
///
/// Then the event goes on to the app's `on_lifecycle`. If the action fails
/// the event fails, and the pipeline retries it with backoff.
#[derive(Debug)]
pub struct Lifecycle<H> {
    inner: H,
    manager: SubscriptionManager,
}

impl<H> Lifecycle<H> {
    pub(crate) fn new(inner: H, manager: SubscriptionManager) -> Self {
        Self { inner, manager }
    }

    /// The app's handler.
    pub fn inner(&self) -> &H {
        &self.inner
    }
}

impl<H: Handler> Handler for Lifecycle<H> {
    fn on_change(&self, event: ChangeEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.inner.on_change(event)
    }

    async fn on_lifecycle(&self, event: LifecycleEvent) -> Result<(), BoxError> {
        self.manager.on_lifecycle(&event).await?;
        self.inner.on_lifecycle(event).await
    }
}

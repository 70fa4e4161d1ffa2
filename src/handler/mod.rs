//! The user's side: the [`Handler`] trait, [`handler_fn`] for closures, a
//! `tower::Service` adapter, and the events handlers receive.
//!
//! Events are built only by the pipeline, after the item passed every check
//! that applies to it (clientState before the ack; validation tokens and
//! decryption after it), so holding one is proof it was verified.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt as _;

mod event;
mod json_lines;

pub use event::{ChangeEvent, HandlerEvent, LifecycleEvent, ResyncEvent};
pub use json_lines::JsonLines;

/// A boxed error a handler may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the app does with verified notifications.
///
/// A handler error makes the pipeline retry the event with backoff, a
/// bounded number of times, then dead-letter it; a panic counts as an error
/// and never stops the server or the worker. Delivery is at least once, so
/// handlers should be idempotent.
///
/// ```
/// use msgraph_webhooks::{BoxError, ChangeEvent, Handler};
///
/// struct Mailroom;
///
/// impl Handler for Mailroom {
///     async fn on_change(&self, event: ChangeEvent) -> Result<(), BoxError> {
///         println!("{} {} {}", event.change_type(), event.resource_kind(), event.resource());
///         Ok(())
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Called for each change notification.
    fn on_change(&self, event: ChangeEvent) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Called for each lifecycle notification. By default it logs the event.
    fn on_lifecycle(
        &self,
        event: LifecycleEvent,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        async move {
            tracing::info!(
                subscription_id = event.subscription_id(),
                lifecycle_event = %event.lifecycle_event(),
                "lifecycle notification"
            );
            Ok(())
        }
    }

    /// Called for each change a delta query returned when resyncing (see
    /// [`resync`](crate::resync)). By default it fails, so that resynced
    /// changes an app does not handle end in the dead letters, with this
    /// reason, rather than vanish: implement it where resync is on.
    fn on_resync(&self, event: ResyncEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        async move {
            let _ = event;
            Err(BoxError::from(
                "this handler does not take resync events: implement Handler::on_resync",
            ))
        }
    }

    /// Called with the events of one claimed batch; answers one result per
    /// event, in order. The default calls [`on_change`](Self::on_change) and
    /// [`on_lifecycle`](Self::on_lifecycle) one by one, a panic in one of
    /// them failing only that event ([`HandlerPanicked`]). Override it to
    /// handle many at once — one database round trip, one write — keeping
    /// the contract: an event counts as handled only once its result is `Ok`.
    fn on_batch(
        &self,
        events: Vec<HandlerEvent>,
    ) -> impl Future<Output = Vec<Result<(), BoxError>>> + Send {
        async move {
            let mut results = Vec::with_capacity(events.len());
            for event in events {
                let call = async {
                    match event {
                        HandlerEvent::Change(e) => self.on_change(e).await,
                        HandlerEvent::Lifecycle(e) => self.on_lifecycle(e).await,
                        HandlerEvent::Resync(e) => self.on_resync(e).await,
                    }
                };
                let result = match AssertUnwindSafe(call).catch_unwind().await {
                    Ok(result) => result,
                    Err(panic) => Err(Box::new(HandlerPanicked::from_payload(&*panic)) as BoxError),
                };
                results.push(result);
            }
            results
        }
    }
}

/// The error a panic in a handler becomes.
#[derive(Debug)]
pub struct HandlerPanicked(pub String);

impl HandlerPanicked {
    /// From what `catch_unwind` caught.
    pub fn from_payload(payload: &(dyn std::any::Any + Send)) -> Self {
        Self(
            payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned()),
        )
    }
}

impl fmt::Display for HandlerPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handler panicked: {}", self.0)
    }
}

impl std::error::Error for HandlerPanicked {}

/// A handler error that retrying won't fix: the item goes to the dead
/// letters at once, with this reason, instead of after the retry policy's
/// attempts. Return it (boxed) from a handler when the failure is certain
/// to repeat — a target that refuses the event, data that can never be
/// processed.
///
/// ```
/// use msgraph_webhooks::handler::{BoxError, GiveUp};
///
/// fn refuse() -> Result<(), BoxError> {
///     Err(GiveUp::new("the target refused the event: 400 Bad Request").into())
/// }
/// # assert!(refuse().is_err());
/// ```
#[derive(Debug)]
pub struct GiveUp(String);

impl GiveUp {
    /// Gives up on the item for `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GiveUp {}

impl<H: Handler> Handler for Arc<H> {
    fn on_change(&self, event: ChangeEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).on_change(event)
    }

    fn on_lifecycle(
        &self,
        event: LifecycleEvent,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).on_lifecycle(event)
    }

    fn on_resync(&self, event: ResyncEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).on_resync(event)
    }

    fn on_batch(
        &self,
        events: Vec<HandlerEvent>,
    ) -> impl Future<Output = Vec<Result<(), BoxError>>> + Send {
        (**self).on_batch(events)
    }
}

/// A handler made of closures; see [`handler_fn`].
#[derive(Clone, Debug)]
pub struct HandlerFn<C, L = LogLifecycle> {
    change: C,
    lifecycle: L,
}

/// Builds a [`Handler`] from an async closure for change notifications.
/// Lifecycle notifications are logged unless [`HandlerFn::on_lifecycle`] adds
/// a closure for them too.
///
/// ```
/// use msgraph_webhooks::handler_fn;
///
/// let handler = handler_fn(|event| async move {
///     println!("{} on {}", event.change_type(), event.resource());
///     Ok(())
/// })
/// .on_lifecycle(|event| async move {
///     println!("{} for {}", event.lifecycle_event(), event.subscription_id());
///     Ok(())
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<C, Fut>(change: C) -> HandlerFn<C>
where
    C: Fn(ChangeEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send,
{
    HandlerFn {
        change,
        lifecycle: LogLifecycle,
    }
}

impl<C> HandlerFn<C, LogLifecycle> {
    /// Handles lifecycle notifications with `lifecycle` instead of logging them.
    pub fn on_lifecycle<L, Fut>(self, lifecycle: L) -> HandlerFn<C, LifecycleFn<L>>
    where
        L: Fn(LifecycleEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send,
    {
        HandlerFn {
            change: self.change,
            lifecycle: LifecycleFn(lifecycle),
        }
    }
}

/// The lifecycle half of a [`HandlerFn`].
pub trait OnLifecycle: Send + Sync + 'static {
    /// Handles one lifecycle event.
    fn call(&self, event: LifecycleEvent) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Logs lifecycle events (the default of [`handler_fn`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogLifecycle;

impl OnLifecycle for LogLifecycle {
    fn call(&self, event: LifecycleEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        struct Log;
        impl Handler for Log {
            async fn on_change(&self, _: ChangeEvent) -> Result<(), BoxError> {
                Ok(())
            }
        }
        Log.on_lifecycle(event)
    }
}

/// A lifecycle closure, from [`HandlerFn::on_lifecycle`].
#[derive(Clone, Debug)]
pub struct LifecycleFn<L>(L);

impl<L, Fut> OnLifecycle for LifecycleFn<L>
where
    L: Fn(LifecycleEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send,
{
    fn call(&self, event: LifecycleEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        (self.0)(event)
    }
}

impl<C, Fut, L> Handler for HandlerFn<C, L>
where
    C: Fn(ChangeEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send,
    L: OnLifecycle,
{
    fn on_change(&self, event: ChangeEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        (self.change)(event)
    }

    fn on_lifecycle(
        &self,
        event: LifecycleEvent,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.lifecycle.call(event)
    }
}

/// Adapts a `tower::Service<HandlerEvent>` into a [`Handler`], so timeouts,
/// concurrency limits and tracing layers can wrap the app's code.
///
/// ```
/// use std::convert::Infallible;
/// use msgraph_webhooks::handler::{HandlerEvent, ServiceHandler};
///
/// let service = tower::service_fn(|event: HandlerEvent| async move {
///     println!("{}", event.to_json());
///     Ok::<_, Infallible>(())
/// });
/// let handler = ServiceHandler::new(service);
/// # let _ = handler;
/// ```
#[derive(Clone, Debug)]
pub struct ServiceHandler<S>(S);

impl<S> ServiceHandler<S> {
    /// Wraps a service.
    pub fn new(service: S) -> Self {
        Self(service)
    }
}

impl<S> ServiceHandler<S>
where
    S: tower_service::Service<HandlerEvent, Response = ()> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    async fn call(&self, event: HandlerEvent) -> Result<(), BoxError> {
        let mut service = self.0.clone();
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .map_err(Into::into)?;
        service.call(event).await.map_err(Into::into)
    }
}

impl<S> Handler for ServiceHandler<S>
where
    S: tower_service::Service<HandlerEvent, Response = ()> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    fn on_change(&self, event: ChangeEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.call(HandlerEvent::Change(event))
    }

    fn on_lifecycle(
        &self,
        event: LifecycleEvent,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.call(HandlerEvent::Lifecycle(event))
    }

    fn on_resync(&self, event: ResyncEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.call(HandlerEvent::Resync(event))
    }
}

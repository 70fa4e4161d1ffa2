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

use serde_json::Value;
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::notification::resources::Resource;
use crate::notification::{
    ChangeNotification, ChangeType, LifecycleEventType, LifecycleNotification, ResourceData,
    ResourceKind,
};

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
}

/// A verified change notification.
///
/// Cheap to clone. `Debug` leaves out the decrypted data and the clientState.
#[derive(Clone)]
pub struct ChangeEvent {
    inner: Arc<ChangeInner>,
}

struct ChangeInner {
    notification: ChangeNotification,
    kind: ResourceKind,
    raw: Box<RawValue>,
    data: Option<Value>,
    received_at: OffsetDateTime,
    attempt: u32,
}

impl ChangeEvent {
    pub(crate) fn new(
        notification: ChangeNotification,
        raw: Box<RawValue>,
        data: Option<Value>,
        received_at: OffsetDateTime,
        attempt: u32,
    ) -> Self {
        let data_type = data
            .as_ref()
            .and_then(|d| d.get("@odata.type"))
            .and_then(Value::as_str);
        let mut kind = notification.resource_kind();
        if let (ResourceKind::Unknown(_), Some(t)) = (&kind, data_type) {
            kind = ResourceKind::from_odata_type(t);
        }
        Self {
            inner: Arc::new(ChangeInner {
                notification,
                kind,
                raw,
                data,
                received_at,
                attempt,
            }),
        }
    }

    /// The typed notification item.
    pub fn notification(&self) -> &ChangeNotification {
        &self.inner.notification
    }

    /// The notification's own id, when Graph sent one.
    pub fn id(&self) -> Option<&str> {
        self.inner.notification.id.as_deref()
    }

    /// The subscription it belongs to.
    pub fn subscription_id(&self) -> &str {
        &self.inner.notification.subscription_id
    }

    /// When the subscription expires, as the notification says.
    pub fn subscription_expiration(&self) -> Option<OffsetDateTime> {
        self.inner.notification.subscription_expiration
    }

    /// What happened.
    pub fn change_type(&self) -> &ChangeType {
        &self.inner.notification.change_type
    }

    /// Path of the changed resource.
    pub fn resource(&self) -> &str {
        &self.inner.notification.resource
    }

    /// The kind of the changed resource.
    pub fn resource_kind(&self) -> &ResourceKind {
        &self.inner.kind
    }

    /// The tenant.
    pub fn tenant_id(&self) -> Option<&str> {
        self.inner.notification.tenant_id.as_deref()
    }

    /// `resourceData`, if Graph sent it.
    pub fn resource_data(&self) -> Option<&ResourceData> {
        self.inner.notification.resource_data.as_ref()
    }

    /// The decrypted resource of a rich notification; `None` for basic ones.
    pub fn data(&self) -> Option<&Value> {
        self.inner.data.as_ref()
    }

    /// The decrypted resource, typed by its kind (`None` for basic
    /// notifications); [`Resource::Unknown`] for kinds without a type.
    pub fn resource_typed(&self) -> Option<Resource> {
        self.data()
            .map(|data| Resource::from_json(self.resource_kind(), data))
    }

    /// The item exactly as Graph sent it (encrypted content still encrypted).
    pub fn raw_json(&self) -> &str {
        self.inner.raw.get()
    }

    /// When the delivery carrying it arrived.
    pub fn received_at(&self) -> OffsetDateTime {
        self.inner.received_at
    }

    /// How many earlier attempts to handle it failed.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }
}

impl fmt::Debug for ChangeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeEvent")
            .field("subscription_id", &self.subscription_id())
            .field("change_type", self.change_type())
            .field("resource", &self.resource())
            .field("resource_kind", self.resource_kind())
            .field("tenant_id", &self.tenant_id())
            .field("data", &self.data().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A verified lifecycle notification.
#[derive(Clone)]
pub struct LifecycleEvent {
    inner: Arc<LifecycleInner>,
}

struct LifecycleInner {
    notification: LifecycleNotification,
    raw: Box<RawValue>,
    received_at: OffsetDateTime,
    attempt: u32,
}

impl LifecycleEvent {
    pub(crate) fn new(
        notification: LifecycleNotification,
        raw: Box<RawValue>,
        received_at: OffsetDateTime,
        attempt: u32,
    ) -> Self {
        Self {
            inner: Arc::new(LifecycleInner {
                notification,
                raw,
                received_at,
                attempt,
            }),
        }
    }

    /// The typed notification item.
    pub fn notification(&self) -> &LifecycleNotification {
        &self.inner.notification
    }

    /// The subscription concerned.
    pub fn subscription_id(&self) -> &str {
        &self.inner.notification.subscription_id
    }

    /// Which lifecycle event this is.
    pub fn lifecycle_event(&self) -> &LifecycleEventType {
        &self.inner.notification.lifecycle_event
    }

    /// The tenant.
    pub fn tenant_id(&self) -> Option<&str> {
        self.inner.notification.tenant_id.as_deref()
    }

    /// When the subscription expires, as the notification says.
    pub fn subscription_expiration(&self) -> Option<OffsetDateTime> {
        self.inner.notification.subscription_expiration
    }

    /// The item exactly as Graph sent it.
    pub fn raw_json(&self) -> &str {
        self.inner.raw.get()
    }

    /// When the delivery carrying it arrived.
    pub fn received_at(&self) -> OffsetDateTime {
        self.inner.received_at
    }

    /// How many earlier attempts to handle it failed.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }
}

impl fmt::Debug for LifecycleEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LifecycleEvent")
            .field("subscription_id", &self.subscription_id())
            .field("lifecycle_event", self.lifecycle_event())
            .field("tenant_id", &self.tenant_id())
            .finish_non_exhaustive()
    }
}

/// Either kind of event a [`Handler`] is given, for handlers that take both
/// alike (e.g. a `tower::Service<HandlerEvent>` behind [`ServiceHandler`]).
///
/// Named for the handler, so it is not mistaken for a calendar event
/// ([`resources::Event`](crate::notification::resources::Event),
/// [`ResourceKind::Event`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum HandlerEvent {
    /// A change notification.
    Change(ChangeEvent),
    /// A lifecycle notification.
    Lifecycle(LifecycleEvent),
}

impl HandlerEvent {
    /// The event as the one JSON line `msgraph-webhooks listen` prints:
    ///
    /// `{"kind":"change","id":…,"subscriptionId":…,"subscriptionExpirationDateTime":…,"changeType":…,"resource":…,"resourceKind":…,"tenantId":…,"resourceData":{…},"data":{…}|null}`
    /// or `{"kind":"lifecycle","subscriptionId":…,"subscriptionExpirationDateTime":…,"lifecycleEvent":…,"tenantId":…}`.
    ///
    /// `id` is the notification's own id (`null` when Graph sent none): the
    /// key a downstream consumer deduplicates by.
    ///
    /// The line carries decrypted data: print it only where that is wanted.
    pub fn to_json(&self) -> Value {
        // Invariant: the line holds only strings, options and JSON values,
        // which always serialize.
        serde_json::to_value(self.line()).unwrap_or(Value::Null)
    }

    /// Appends [`to_json`](Self::to_json)'s line to `out`, serialized
    /// straight from the event (nothing copied on the way).
    ///
    /// # Errors
    ///
    /// Only if writing to `out` fails, which a `Vec` does not.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        serde_json::to_writer(out, &self.line())
    }

    fn line(&self) -> Line<'_> {
        match self {
            HandlerEvent::Change(e) => Line::Change {
                id: e.id(),
                subscription_id: e.subscription_id(),
                subscription_expiration_date_time: e.subscription_expiration().map(Rfc3339At),
                change_type: e.change_type(),
                resource: e.resource(),
                resource_kind: e.resource_kind(),
                tenant_id: e.tenant_id(),
                resource_data: e.resource_data(),
                data: e.data(),
            },
            HandlerEvent::Lifecycle(e) => Line::Lifecycle {
                subscription_id: e.subscription_id(),
                subscription_expiration_date_time: e.subscription_expiration().map(Rfc3339At),
                lifecycle_event: e.lifecycle_event(),
                tenant_id: e.tenant_id(),
            },
        }
    }
}

/// The JSON line of an event, borrowing from it.
#[derive(serde::Serialize)]
#[serde(
    tag = "kind",
    rename_all = "lowercase",
    rename_all_fields = "camelCase"
)]
enum Line<'a> {
    Change {
        id: Option<&'a str>,
        subscription_id: &'a str,
        subscription_expiration_date_time: Option<Rfc3339At>,
        change_type: &'a ChangeType,
        resource: &'a str,
        resource_kind: &'a ResourceKind,
        tenant_id: Option<&'a str>,
        resource_data: Option<&'a ResourceData>,
        data: Option<&'a Value>,
    },
    Lifecycle {
        subscription_id: &'a str,
        subscription_expiration_date_time: Option<Rfc3339At>,
        lifecycle_event: &'a LifecycleEventType,
        tenant_id: Option<&'a str>,
    },
}

/// A time as RFC 3339 in a JSON line.
struct Rfc3339At(OffsetDateTime);

impl serde::Serialize for Rfc3339At {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        time::serde::rfc3339::serialize(&self.0, s)
    }
}

/// Writes every event as one JSON line ([`HandlerEvent::to_json`]): the handler
/// behind `msgraph-webhooks listen`.
///
/// A writer thread of its own does the blocking I/O. It writes whatever
/// lines are waiting in one go and flushes before it waits again, so no
/// line ever sits in a buffer; each handler call returns only once its line
/// is flushed, so an event counts as handled only when it was written.
#[derive(Debug, Clone)]
pub struct JsonLines {
    lines: tokio::sync::mpsc::Sender<(Vec<u8>, tokio::sync::oneshot::Sender<std::io::Result<()>>)>,
}

/// Lines waiting for the writer thread at most.
const JSON_LINES_QUEUE: usize = 4096;

impl JsonLines {
    /// Lines to standard output.
    pub fn stdout() -> Self {
        Self::new(std::io::stdout())
    }

    /// Lines to `out`, written on a thread of their own.
    ///
    /// # Panics
    ///
    /// If the OS cannot start a thread.
    pub fn new<W: std::io::Write + Send + 'static>(mut out: W) -> Self {
        let (lines, mut waiting) = tokio::sync::mpsc::channel::<(
            Vec<u8>,
            tokio::sync::oneshot::Sender<std::io::Result<()>>,
        )>(JSON_LINES_QUEUE);
        std::thread::Builder::new()
            .name("json-lines".into())
            .spawn(move || {
                let mut batch = Vec::new();
                let mut acks = Vec::new();
                while let Some((line, ack)) = waiting.blocking_recv() {
                    batch.extend_from_slice(&line);
                    acks.push(ack);
                    while let Ok((line, ack)) = waiting.try_recv() {
                        batch.extend_from_slice(&line);
                        acks.push(ack);
                    }
                    let written = out.write_all(&batch).and_then(|()| out.flush());
                    for ack in acks.drain(..) {
                        let _ = ack.send(match &written {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                        });
                    }
                    batch.clear();
                }
            })
            .expect("the OS starts the json-lines writer thread");
        Self { lines }
    }

    async fn write(&self, event: HandlerEvent) -> Result<(), BoxError> {
        let mut lines = Vec::with_capacity(512);
        event.write_json(&mut lines)?;
        lines.push(b'\n');
        self.send(lines).await
    }

    /// Hands `lines` to the writer thread and waits until they are flushed.
    async fn send(&self, lines: Vec<u8>) -> Result<(), BoxError> {
        let (ack, written) = tokio::sync::oneshot::channel();
        self.lines
            .send((lines, ack))
            .await
            .map_err(|_| "the json-lines writer thread is gone")?;
        written
            .await
            .map_err(|_| "the json-lines writer thread is gone")??;
        Ok(())
    }
}

impl Handler for JsonLines {
    fn on_change(&self, event: ChangeEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.write(HandlerEvent::Change(event))
    }

    fn on_lifecycle(
        &self,
        event: LifecycleEvent,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.write(HandlerEvent::Lifecycle(event))
    }

    /// All the batch's lines in one write and one flush.
    async fn on_batch(&self, events: Vec<HandlerEvent>) -> Vec<Result<(), BoxError>> {
        let mut lines = Vec::with_capacity(512 * events.len());
        let mut results: Vec<Result<(), BoxError>> = Vec::with_capacity(events.len());
        for event in &events {
            let start = lines.len();
            match event.write_json(&mut lines) {
                Ok(()) => {
                    lines.push(b'\n');
                    results.push(Ok(()));
                }
                Err(e) => {
                    lines.truncate(start);
                    results.push(Err(e.into()));
                }
            }
        }
        if let Err(e) = self.send(lines).await {
            let why = e.to_string();
            for result in results.iter_mut().filter(|r| r.is_ok()) {
                *result = Err(why.clone().into());
            }
        }
        results
    }
}

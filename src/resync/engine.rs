//! The engine: cursors, rounds, triggers and the loop that runs what is due.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

mod round;

use round::log_round;

use super::ResyncReason;
use crate::catalog::{self, Delta, DeltaQuery, ResourcePath};
use crate::clock::{Clock, SystemClock};
use crate::handler::{BoxError, Handler, HandlerEvent, ResyncEvent};
use crate::store::{Backend, Cursors, DeltaCursor, Inbox, Lease, StoreError};
use crate::subscriptions::{DeltaError, DeltaOptions, GraphClient};

/// How long a round's lease lasts unless extended; the round extends it
/// every third of that, so another instance takes a dead one's cursor over
/// within this long.
const LEASE_TTL: Duration = Duration::from_secs(30);

/// Sync resets one round accepts before it gives up (Graph resetting a
/// fresh full sync again is a fault, not a state).
const MAX_RESETS: u32 = 3;

/// How long an append waits for room in a full inbox.
const FULL_INBOX_WAIT: Duration = Duration::from_secs(120);

/// What [`DeltaResync::run_due`] left due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pending {
    /// Nothing.
    Done,
    /// Rounds another instance is running; its lease lapses in this long
    /// at the latest.
    Busy(Duration),
    /// A round failed (Graph or the store); it stays due.
    Failed,
}

/// The lease a cursor's round holds.
fn lease_name(key: &str) -> String {
    format!("delta/{key}")
}

/// Hands resync events to a handler; all must be handled.
type HandOver =
    Arc<dyn Fn(Vec<ResyncEvent>) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// Where a round's changes go.
#[derive(Clone)]
enum Sink {
    /// Through the inbox, behind the ack boundary: the worker hands them to
    /// the handler with dedupe, retries and dead letters.
    Inbox(Arc<dyn Inbox>),
    /// Straight to a handler, which must take them all before the cursor
    /// moves (the `delta` command).
    Handler(HandOver),
}

/// Why a resync round failed. The cursor keeps its place and the round's
/// trigger stays due: the engine tries again.
#[derive(Debug)]
#[non_exhaustive]
pub enum ResyncError {
    /// The resource has no delta query (the resync hook is for it), or is
    /// not a resource path.
    NoDelta(String),
    /// The store failed.
    Store(StoreError),
    /// Graph failed, or reset the sync more often than a round accepts.
    Graph(Box<DeltaError>),
    /// The changes could not be handed over.
    Deliver(String),
}

impl fmt::Display for ResyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResyncError::NoDelta(why) => write!(f, "no delta query: {why}"),
            ResyncError::Store(e) => write!(f, "the cursor store failed: {e}"),
            ResyncError::Graph(e) => e.fmt(f),
            ResyncError::Deliver(why) => write!(f, "the changes could not be handed over: {why}"),
        }
    }
}

impl std::error::Error for ResyncError {}

impl From<StoreError> for ResyncError {
    fn from(e: StoreError) -> Self {
        ResyncError::Store(e)
    }
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Round {
    /// The cursor's key.
    pub cursor: String,
    /// The subscription resource.
    pub resource: String,
    /// Why it ran.
    pub reason: Option<ResyncReason>,
    /// Pages fetched.
    pub pages: u64,
    /// Changes handed over (a baseline hands over none).
    pub delivered: u64,
    /// Changes Graph returned.
    pub seen: u64,
    /// Sync resets Graph asked for (each started a full sync).
    pub resets: u32,
    /// A first round that only set the cursor (nothing handed over).
    pub baseline: bool,
    /// Another instance holds the cursor's lease: nothing was done here.
    pub busy: bool,
}

struct Inner {
    client: GraphClient,
    sink: Sink,
    cursors: Arc<dyn Cursors>,
    lease: Arc<dyn Lease>,
    holder: String,
    tenant: String,
    options: DeltaOptions,
    calendar_window: (time::Duration, time::Duration),
    debounce: Duration,
    every: Option<Duration>,
    initial_sync: bool,
    clock: Arc<dyn Clock>,
    /// Resources this engine runs in its loop: key → (resource, query).
    tracked: Mutex<HashMap<String, (String, DeltaQuery)>>,
    wake: Notify,
}

/// Resyncs subscriptions' resources by delta query; see the
/// [module docs](super). Cloning is cheap and shares the engine.
#[derive(Clone)]
pub struct DeltaResync {
    inner: Arc<Inner>,
}

impl fmt::Debug for DeltaResync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltaResync")
            .field("tenant", &self.inner.tenant)
            .field("every", &self.inner.every)
            .field("debounce", &self.inner.debounce)
            .finish_non_exhaustive()
    }
}

/// Builds a [`DeltaResync`].
#[must_use]
pub struct DeltaResyncBuilder {
    client: GraphClient,
    sink: Sink,
    cursors: Arc<dyn Cursors>,
    lease: Arc<dyn Lease>,
    holder: String,
    tenant: String,
    options: DeltaOptions,
    calendar_window: (time::Duration, time::Duration),
    debounce: Duration,
    every: Option<Duration>,
    initial_sync: bool,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for DeltaResyncBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltaResyncBuilder")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl DeltaResyncBuilder {
    /// The tenant the client's tokens are for: part of each cursor's key,
    /// so tenants sharing a store keep cursors apart (default `default`).
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = tenant.into();
        self
    }

    /// `Prefer: odata.maxpagesize` of the rounds (Graph's own page size
    /// when unset).
    pub fn max_page_size(mut self, size: u32) -> Self {
        self.options.max_page_size = Some(size.max(1));
        self
    }

    /// The properties to track (`$select`), for rounds that start now;
    /// cursors keep the selection they started with.
    pub fn select<S: Into<String>>(mut self, properties: impl IntoIterator<Item = S>) -> Self {
        self.options.select = properties.into_iter().map(Into::into).collect();
        self
    }

    /// The calendarView window of event resources: from `back` before to
    /// `ahead` after the round's first request (default 90 and 365 days).
    pub fn calendar_window(mut self, back: Duration, ahead: Duration) -> Self {
        let to = |d: Duration| time::Duration::try_from(d).unwrap_or(time::Duration::MAX);
        self.calendar_window = (to(back), to(ahead));
        self
    }

    /// How long the loop waits after a trigger for more before it runs
    /// (default 2 s): a burst of notifications becomes one round.
    pub fn debounce(mut self, wait: Duration) -> Self {
        self.debounce = wait;
        self
    }

    /// A round of every tracked resource this often, as a safety net (off
    /// by default).
    pub fn every(mut self, period: Duration) -> Self {
        self.every = Some(period).filter(|p| !p.is_zero());
        self
    }

    /// Hands over the items of a cursor's first round too (the resource's
    /// whole state, as changes), instead of only setting the cursor.
    pub fn initial_sync(mut self, deliver: bool) -> Self {
        self.initial_sync = deliver;
        self
    }

    /// Hands changes straight to `handler` instead of the inbox: each
    /// page's changes must all be handled before the cursor moves (what
    /// `msgraph-webhooks delta` does). Without an inbox there are no
    /// retries and dead letters: a page that fails is fetched again.
    pub fn deliver_to<H: Handler>(mut self, handler: H) -> Self {
        let handler = Arc::new(handler);
        self.sink = Sink::Handler(Arc::new(move |events: Vec<ResyncEvent>| {
            let handler = handler.clone();
            Box::pin(async move {
                let events = events.into_iter().map(HandlerEvent::Resync).collect();
                for result in handler.on_batch(events).await {
                    result?;
                }
                Ok(())
            })
        }));
        self
    }

    /// The clock of cursor times (tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The engine.
    pub fn build(self) -> DeltaResync {
        DeltaResync {
            inner: Arc::new(Inner {
                client: self.client,
                sink: self.sink,
                cursors: self.cursors,
                lease: self.lease,
                holder: self.holder,
                tenant: self.tenant,
                options: self.options,
                calendar_window: self.calendar_window,
                debounce: self.debounce,
                every: self.every,
                initial_sync: self.initial_sync,
                clock: self.clock,
                tracked: Mutex::new(HashMap::new()),
                wake: Notify::new(),
            }),
        }
    }
}

fn unix_ms(at: time::OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Whether Graph starts this delta query "from now" (`latest`): directory
/// objects and drives ("Use delta query…", "sync from now").
fn has_latest(query: &DeltaQuery) -> bool {
    let path = query.path.split('?').next().unwrap_or_default();
    path == "users/delta" || path == "groups/delta" || path.ends_with("/root/delta")
}

impl DeltaResync {
    /// An engine that reads Graph with `client` and keeps cursors, leases
    /// and the changes' inbox in `backend`.
    pub fn builder(client: GraphClient, backend: &Backend) -> DeltaResyncBuilder {
        DeltaResyncBuilder {
            client,
            sink: Sink::Inbox(backend.inbox()),
            cursors: backend.cursors(),
            lease: backend.lease(),
            holder: backend.owner().map_or_else(
                || format!("resync-{}", crate::random::hex_id(8)),
                str::to_owned,
            ),
            tenant: "default".to_owned(),
            options: DeltaOptions::default(),
            calendar_window: (time::Duration::days(90), time::Duration::days(365)),
            debounce: Duration::from_secs(2),
            every: None,
            initial_sync: false,
            clock: Arc::new(SystemClock),
        }
    }

    /// The delta query of a subscription resource.
    ///
    /// # Errors
    ///
    /// [`ResyncError::NoDelta`] with why, when there is none.
    pub fn query(resource: &str) -> Result<DeltaQuery, ResyncError> {
        let path =
            ResourcePath::parse(resource).map_err(|e| ResyncError::NoDelta(e.to_string()))?;
        match catalog::delta(&path) {
            Delta::Query(query) => Ok(query),
            Delta::None(why) => Err(ResyncError::NoDelta(why.to_owned())),
        }
    }

    /// The key of the cursor of `query`: the tenant and the query's path.
    pub fn cursor_key(&self, query: &DeltaQuery) -> String {
        format!("{}|{}", self.inner.tenant, query.path)
    }

    /// Runs `resource` in the loop: rounds when it is due, a catch-up on
    /// start, and the periodic safety net.
    ///
    /// # Errors
    ///
    /// [`ResyncError::NoDelta`] when the resource has no delta query.
    pub fn track(&self, resource: &str) -> Result<String, ResyncError> {
        let query = Self::query(resource)?;
        let key = self.cursor_key(&query);
        self.inner
            .tracked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone(), (resource.to_owned(), query));
        Ok(key)
    }

    /// Marks a round of `resource` due for `reason` — in the store first,
    /// so the trigger outlives the process — and wakes the loop.
    ///
    /// # Errors
    ///
    /// [`ResyncError::NoDelta`] when the resource has no delta query (call
    /// the resync hook instead); the store's error.
    pub async fn request(&self, resource: &str, reason: ResyncReason) -> Result<(), ResyncError> {
        let key = self.track(resource)?;
        let query = Self::query(resource)?;
        self.inner
            .cursors
            .mark_due(
                &key,
                resource,
                &query.path,
                reason.as_str(),
                unix_ms(self.inner.clock.now()),
            )
            .await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// The stored cursor of `resource`, if any.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    pub async fn cursor(&self, resource: &str) -> Result<Option<DeltaCursor>, ResyncError> {
        let query = Self::query(resource)?;
        Ok(self.inner.cursors.get(&self.cursor_key(&query)).await?)
    }

    /// Runs one round of `resource` now, from its cursor; without one, a
    /// baseline or, with [`initial_sync`](DeltaResyncBuilder::initial_sync),
    /// a full sync handed over.
    ///
    /// # Errors
    ///
    /// [`ResyncError`]: the cursor keeps its place.
    pub async fn run(&self, resource: &str, reason: ResyncReason) -> Result<Round, ResyncError> {
        let query = Self::query(resource)?;
        let key = self.cursor_key(&query);
        self.round(&key, resource, &query, reason).await
    }

    /// Runs every tracked resource that is due, one after the other.
    /// What is still due afterwards: `Failed` (a round failed; the loop
    /// backs off), `Busy` with when another instance's lease on a cursor
    /// lapses (the loop looks again then), or `Done`.
    pub async fn run_due(&self) -> Pending {
        let cursors = match self.inner.cursors.all().await {
            Ok(cursors) => cursors,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the delta cursors");
                return Pending::Failed;
            }
        };
        let tracked = self.tracked();
        let mut pending = Pending::Done;
        for (key, cursor) in cursors {
            let Some((resource, query)) = tracked.get(&key) else {
                continue;
            };
            let Some(reason) = cursor.due_reason.as_deref() else {
                continue;
            };
            let reason = ResyncReason::parse(reason).unwrap_or(ResyncReason::Requested);
            match self.round(&key, resource, query, reason).await {
                Ok(round) if round.busy => {
                    let lapses = self
                        .inner
                        .lease
                        .expires_in(&lease_name(&key))
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or(Duration::ZERO);
                    // Just after it lapses; not in a tight loop.
                    let at = (lapses + Duration::from_millis(100)).max(Duration::from_millis(500));
                    pending = match pending {
                        Pending::Busy(earlier) => Pending::Busy(earlier.min(at)),
                        Pending::Done => Pending::Busy(at),
                        Pending::Failed => Pending::Failed,
                    };
                }
                Ok(round) => log_round(&round),
                Err(e) => {
                    pending = Pending::Failed;
                    tracing::warn!(%resource, error = %e, "resync failed; it stays due");
                }
            }
        }
        pending
    }

    fn tracked(&self) -> HashMap<String, (String, DeltaQuery)> {
        self.inner
            .tracked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Starts the loop: each tracked resource without a cursor gets its
    /// baseline, each with one a catch-up (`startup`); then rounds run when
    /// due, after the debounce, and periodically when asked.
    pub fn start(&self) -> RunningResync {
        let (stop, mut stopped) = watch::channel(false);
        let engine = self.clone();
        let task = tokio::spawn(async move {
            engine.on_start().await;
            let mut failures = 0u32;
            let mut next_periodic = engine
                .inner
                .every
                .map(|every| tokio::time::Instant::now() + every);
            loop {
                let retry = match engine.run_due().await {
                    Pending::Done => {
                        failures = 0;
                        None
                    }
                    Pending::Busy(lapses) => {
                        failures = 0;
                        Some(lapses)
                    }
                    Pending::Failed => {
                        failures = failures.saturating_add(1);
                        Some(Duration::from_secs(5).saturating_mul(failures.min(60)))
                    }
                };
                let periodic = next_periodic
                    .map(|at| at.saturating_duration_since(tokio::time::Instant::now()));
                let wait = match (retry, periodic) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) | (None, Some(a)) => a,
                    (None, None) => Duration::from_secs(24 * 3600),
                };
                tokio::select! {
                    () = engine.inner.wake.notified() => {
                        // More triggers of a burst join this round.
                        tokio::select! {
                            () = tokio::time::sleep(engine.inner.debounce) => {}
                            _ = stopped.changed() => return,
                        }
                    }
                    () = tokio::time::sleep(wait) => {}
                    _ = stopped.changed() => return,
                }
                if let (Some(at), Some(every)) = (next_periodic, engine.inner.every)
                    && tokio::time::Instant::now() >= at
                {
                    next_periodic = Some(tokio::time::Instant::now() + every);
                    engine.mark_all(ResyncReason::Periodic).await;
                }
            }
        });
        RunningResync { stop, task }
    }

    async fn on_start(&self) {
        for (key, (resource, query)) in self.tracked() {
            let cursor = match self.inner.cursors.get(&key).await {
                Ok(cursor) => cursor,
                Err(e) => {
                    tracing::warn!(%resource, error = %e, "could not read the delta cursor");
                    continue;
                }
            };
            match cursor {
                Some(c)
                    if c.delta_link.is_some()
                        || c.next_link.is_some()
                        || c.due_reason.is_some() =>
                {
                    if c.due_reason.is_none()
                        && let Err(e) = self
                            .inner
                            .cursors
                            .mark_due(
                                &key,
                                &resource,
                                &query.path,
                                ResyncReason::Startup.as_str(),
                                unix_ms(self.inner.clock.now()),
                            )
                            .await
                    {
                        tracing::warn!(%resource, error = %e, "could not mark the catch-up due");
                    }
                }
                _ => match self
                    .round(&key, &resource, &query, ResyncReason::Startup)
                    .await
                {
                    Ok(round) => log_round(&round),
                    Err(e) => {
                        tracing::warn!(%resource, error = %e, "could not set the delta cursor; trying again");
                        // Due, so the loop tries again with its backoff.
                        let now = unix_ms(self.inner.clock.now());
                        let marked = self
                            .inner
                            .cursors
                            .mark_due(
                                &key,
                                &resource,
                                &query.path,
                                ResyncReason::Startup.as_str(),
                                now,
                            )
                            .await;
                        if let Err(e) = marked {
                            tracing::warn!(%resource, error = %e, "could not mark the cursor's baseline due");
                        }
                    }
                },
            }
        }
    }

    async fn mark_all(&self, reason: ResyncReason) {
        let now = unix_ms(self.inner.clock.now());
        for (key, (resource, query)) in self.tracked() {
            if let Err(e) = self
                .inner
                .cursors
                .mark_due(&key, &resource, &query.path, reason.as_str(), now)
                .await
            {
                tracing::warn!(%resource, error = %e, "could not mark a resync due");
            }
        }
    }
}

/// The running loop of a [`DeltaResync`].
#[derive(Debug)]
pub struct RunningResync {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningResync {
    /// Stops the loop (a round in progress stops at its next await; its
    /// cursor resumes where the last stored page left it).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.abort();
        let _ = self.task.await;
    }
}

//! [`Receiver`]: the endpoint, the inbox and the workers, put together.

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::ClientState;
use crate::admin::AdminService;
use crate::crypto::KeyRing;
use crate::handler::Handler;
use crate::inspector::{Inspector, InspectorApi};
use crate::listener::{Limits, ServerConfig, Shared, WebhookService};
use crate::metrics::Metrics;
use crate::registry::SubscriptionRegistry;
use crate::retry::RetryPolicy;
use crate::store::{
    Backend, BoundedInbox, DeadLetters, Dedupe, Inbox, MemoryDedupe, MemoryInbox, RecordStore,
};
use crate::tokens::{Jwks, TokenValidator};
use crate::worker::{Pipeline, Verifier, Workers};

/// A Graph notification receiver: the endpoint, its inbox and the workers
/// that call the handler.
///
/// ```no_run
/// use msgraph_webhooks::{ClientState, Receiver, handler_fn};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let receiver = Receiver::builder(handler_fn(|event| async move {
///     println!("{} {}", event.change_type(), event.resource());
///     Ok(())
/// }))
/// .client_state(ClientState::new("a secret of my own"))
/// .build()?;
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// receiver
///     .serve(listener, &Default::default(), async {
///         let _ = tokio::signal::ctrl_c().await;
///     })
///     .await?;
/// # Ok(()) }
/// ```
pub struct Receiver<H> {
    shared: Arc<Shared>,
    pipeline: Arc<Pipeline<H>>,
    workers: usize,
    worker_drain: Duration,
    inspector: Option<InspectorApi>,
    admin_token: Option<zeroize::Zeroizing<String>>,
}

impl<H> fmt::Debug for Receiver<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("workers", &self.workers)
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Receiver`]; see [`Receiver::builder`].
#[must_use]
pub struct ReceiverBuilder<H> {
    handler: H,
    registry: Option<Arc<SubscriptionRegistry>>,
    inbox: Option<Arc<dyn Inbox>>,
    max_backlog: Option<u64>,
    dedupe: Option<Arc<dyn Dedupe>>,
    dedupe_ttl: Duration,
    dedupe_lease: Duration,
    dedupe_owner: Option<String>,
    metrics: Option<Arc<Metrics>>,
    limits: Limits,
    retry: RetryPolicy,
    workers: usize,
    worker_drain: Duration,
    rich: RichSettings,
    inspector: Option<Arc<Inspector>>,
    /// What the inspector lists beside deliveries, from the backend.
    stores: Option<(Arc<dyn DeadLetters>, Arc<dyn RecordStore>)>,
    admin_token: Option<zeroize::Zeroizing<String>>,
}

/// What rich notifications need: keys to decrypt, and how to check tokens.
#[derive(Default)]
struct RichSettings {
    keys: Option<KeyRing>,
    app_ids: Vec<String>,
    tenant_ids: Vec<String>,
    jwks: Option<Jwks>,
    validator: Option<TokenValidator>,
}

impl RichSettings {
    fn verifier(self) -> Result<Option<Verifier>, ReceiverBuildError> {
        let Some(keys) = self.keys else {
            return Ok(None);
        };
        let validator = match self.validator {
            Some(validator) => validator,
            None if self.app_ids.is_empty() => return Err(ReceiverBuildError::NoAppIds),
            None => TokenValidator::new(self.jwks.unwrap_or_else(Jwks::microsoft), self.app_ids)
                .tenant_ids(self.tenant_ids),
        };
        Ok(Some(Verifier::new(Arc::new(keys), validator)))
    }
}

impl<H> fmt::Debug for ReceiverBuilder<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiverBuilder")
            .field("workers", &self.workers)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Why a [`Receiver`] could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReceiverBuildError {
    /// Neither a `clientState` nor a registry was given, so nothing would tell
    /// Graph's notifications from anybody's POST. Set
    /// [`ReceiverBuilder::client_state`] or [`ReceiverBuilder::registry`]
    /// (possibly [`SubscriptionRegistry::allow_any`], for experiments).
    NoAuthentication,
    /// A key ring was given but no app id: the validation tokens of rich
    /// notifications could not be checked. Set [`ReceiverBuilder::app_ids`].
    NoAppIds,
}

impl fmt::Display for ReceiverBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReceiverBuildError::NoAuthentication => f.write_str(
                "no clientState or subscription registry configured: notifications could not be authenticated",
            ),
            ReceiverBuildError::NoAppIds => f.write_str(
                "decryption keys but no app id configured: validation tokens could not be checked",
            ),
        }
    }
}

impl std::error::Error for ReceiverBuildError {}

/// Default number of workers: enough to keep every core busy with RSA while
/// others wait on I/O in handlers.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(4, |n| (n.get() * 2).max(4))
}

impl Receiver<()> {
    /// Starts building a receiver that hands events to `handler`.
    pub fn builder<H: Handler>(handler: H) -> ReceiverBuilder<H> {
        ReceiverBuilder {
            handler,
            registry: None,
            inbox: None,
            max_backlog: None,
            dedupe: None,
            dedupe_ttl: crate::store::DEDUPE_TTL,
            dedupe_lease: crate::store::DEDUPE_LEASE,
            dedupe_owner: None,
            metrics: None,
            limits: Limits::default(),
            retry: RetryPolicy::default(),
            workers: default_workers(),
            worker_drain: Duration::from_secs(10),
            rich: RichSettings::default(),
            inspector: None,
            stores: None,
            admin_token: None,
        }
    }
}

impl<H: Handler> ReceiverBuilder<H> {
    /// Accepts items of any subscription that carry this `clientState`.
    pub fn client_state(mut self, client_state: ClientState) -> Self {
        self.registry = Some(Arc::new(SubscriptionRegistry::with_client_state(
            client_state,
        )));
        self
    }

    /// Authenticates items against this registry.
    pub fn registry(mut self, registry: Arc<SubscriptionRegistry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Uses `backend` for the inbox and dedupe, with its dedupe claim owner
    /// and lease: what [`inbox`](Self::inbox), [`dedupe`](Self::dedupe),
    /// [`dedupe_owner`](Self::dedupe_owner) and
    /// [`dedupe_lease`](Self::dedupe_lease) set one by one, without the
    /// invariants to remember. The default is in memory, and what it holds is
    /// lost with the process: give a durable backend (e.g.
    /// [`Backend::sqlite`]) to keep every acknowledged notification.
    pub fn backend(mut self, backend: &Backend) -> Self {
        self = self
            .inbox(backend.inbox())
            .dedupe(backend.dedupe())
            .dedupe_lease(backend.dedupe_lease());
        self.stores = Some((backend.dead_letters(), backend.records()));
        match backend.owner() {
            Some(owner) => self.dedupe_owner(owner),
            None => self,
        }
    }

    /// Stores accepted items here (default: a [`MemoryInbox`] of 100 000 items
    /// and 256 MiB, lost with the process).
    pub fn inbox(mut self, inbox: Arc<dyn Inbox>) -> Self {
        self.inbox = Some(inbox);
        self
    }

    /// Answers `503` with `Retry-After` once `max` items wait in the inbox
    /// (default: no bound but the inbox's own), so under sustained overload
    /// Graph holds the notifications and retries them later instead of the
    /// backlog filling the disk; see [`BoundedInbox`].
    pub fn max_backlog(mut self, max: u64) -> Self {
        self.max_backlog = Some(max);
        self
    }

    /// Remembers handled notifications here, so duplicates are dropped
    /// (default: a [`MemoryDedupe`] of this process). Give the durable store
    /// here too, so dedupe survives restarts and spans processes.
    pub fn dedupe(mut self, dedupe: Arc<dyn Dedupe>) -> Self {
        self.dedupe = Some(dedupe);
        self
    }

    /// How long handled notifications are remembered (default 6 h; keep it
    /// over Graph's 4-hour retry window).
    pub fn dedupe_ttl(mut self, ttl: Duration) -> Self {
        self.dedupe_ttl = ttl;
        self
    }

    /// How long a notification being handled blocks its copies (default
    /// 5 min). With Redis, set it to the store's claim timeout, after which
    /// a silent worker's items are taken over anyway.
    pub fn dedupe_lease(mut self, lease: Duration) -> Self {
        self.dedupe_lease = lease;
        self
    }

    /// The name this receiver's workers claim dedupe keys under, each as
    /// `{owner}/{n}` (default: a random one). Naming it after the store's
    /// consumer ([`SqliteStore::consumer`](crate::store::SqliteStore::consumer))
    /// ties a claim in the dedupe store to the process that holds it.
    pub fn dedupe_owner(mut self, owner: impl Into<String>) -> Self {
        self.dedupe_owner = Some(owner.into());
        self
    }

    /// Records metrics here (default: a new set).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Body size and time limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The largest body accepted, in bytes.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.limits.max_body = bytes;
        self
    }

    /// How handler failures are retried.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How many workers call the handler concurrently (default: twice the
    /// cores, at least 4). Zero makes a receiver that only ingests.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// How long shutdown lets workers drain the inbox (default 10 s).
    pub fn worker_drain(mut self, deadline: Duration) -> Self {
        self.worker_drain = deadline;
        self
    }

    /// Decrypts rich notifications with these keys (chosen by each item's
    /// `encryptionCertificateId`). Without a key ring, encrypted items are
    /// rejected (`no_decryption_keys`). Needs [`app_ids`](Self::app_ids).
    pub fn key_ring(mut self, keys: KeyRing) -> Self {
        self.rich.keys = Some(keys);
        self
    }

    /// The app ids (client ids) validation tokens must be issued to (`aud`).
    pub fn app_ids<I, S>(mut self, app_ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rich.app_ids = app_ids.into_iter().map(Into::into).collect();
        self
    }

    /// Accept validation tokens of these tenants only (default: any tenant).
    pub fn tenant_ids<I, S>(mut self, tenant_ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rich.tenant_ids = tenant_ids.into_iter().map(Into::into).collect();
        self
    }

    /// Where the tokens' signing keys come from (default: [`Jwks::microsoft`]).
    pub fn jwks(mut self, jwks: Jwks) -> Self {
        self.rich.jwks = Some(jwks);
        self
    }

    /// A token validator set up by hand (clock, skew, …); replaces
    /// [`app_ids`](Self::app_ids), [`tenant_ids`](Self::tenant_ids) and
    /// [`jwks`](Self::jwks).
    pub fn token_validator(mut self, validator: TokenValidator) -> Self {
        self.rich.validator = Some(validator);
        self
    }

    /// Records every delivery and each item's fate in `inspector`, for the
    /// admin address's inspector page and API (see [`inspector`](crate::inspector)).
    pub fn inspector(mut self, inspector: Arc<Inspector>) -> Self {
        self.inspector = Some(inspector);
        self
    }

    /// Requires this bearer token on the admin address (see
    /// [`AdminService::bearer_token`]): set it whenever the admin address is
    /// reachable from other machines.
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(zeroize::Zeroizing::new(token.into()));
        self
    }

    /// Builds the receiver.
    ///
    /// # Errors
    ///
    /// [`ReceiverBuildError::NoAuthentication`] when no client state or registry was
    /// set; [`ReceiverBuildError::NoAppIds`] for a key ring without app ids.
    pub fn build(self) -> Result<Receiver<H>, ReceiverBuildError> {
        let registry = self.registry.ok_or(ReceiverBuildError::NoAuthentication)?;
        let verifier = self.rich.verifier()?.map(Arc::new);
        let metrics = self.metrics.unwrap_or_default();
        let mut inbox = self
            .inbox
            .unwrap_or_else(|| Arc::new(MemoryInbox::new(MemoryInbox::DEFAULT_CAPACITY)));
        if let Some(max) = self.max_backlog {
            inbox = Arc::new(BoundedInbox::new(inbox, max));
        }
        Ok(Receiver {
            shared: Arc::new(Shared {
                registry,
                inbox,
                metrics: metrics.clone(),
                limits: self.limits,
                inspector: self.inspector.clone(),
            }),
            pipeline: Arc::new(Pipeline {
                handler: self.handler,
                metrics,
                retry: self.retry,
                dedupe: Some(self.dedupe.unwrap_or_else(|| Arc::new(MemoryDedupe::new()))),
                owner: self
                    .dedupe_owner
                    .unwrap_or_else(|| crate::random::hex_id(16)),
                dedupe_ttl: self.dedupe_ttl,
                dedupe_lease: self.dedupe_lease,
                verifier,
                inspector: self.inspector.clone(),
            }),
            workers: self.workers,
            worker_drain: self.worker_drain,
            inspector: self.inspector.clone().map(|inspector| {
                let api = InspectorApi::new(inspector);
                match self.stores {
                    Some((dead_letters, records)) => {
                        api.dead_letters(dead_letters).records(records)
                    }
                    None => api,
                }
            }),
            admin_token: self.admin_token,
        })
    }
}

impl<H: Handler> Receiver<H> {
    /// The endpoint, to mount as a route in an app of your own (axum, tower).
    /// Run [`spawn_workers`](Self::spawn_workers) too, or nothing reaches the handler.
    pub fn service(&self) -> WebhookService {
        WebhookService::new(self.shared.clone())
    }

    /// The endpoint as an axum `Router`, to **nest** at the path of your
    /// notification URL: it answers that path, `…/lifecycle` (where the
    /// subscription manager points Graph's lifecycle notifications) and
    /// `…/healthz`. `route_service(path, receiver.service())` answers the
    /// exact path only, so Graph's validation of `…/lifecycle` would get
    /// `404`.
    ///
    /// ```no_run
    /// # use msgraph_webhooks::{ClientState, Receiver, handler_fn};
    /// # fn app() -> Result<(), Box<dyn std::error::Error>> {
    /// # let receiver = Receiver::builder(handler_fn(|_e| async { Ok(()) }))
    /// #     .client_state(ClientState::new("s")).build()?;
    /// let app: axum::Router = axum::Router::new()
    ///     .route("/hello", axum::routing::get(|| async { "hi" }))
    ///     .nest("/graph/notifications", receiver.router());
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "axum")]
    pub fn router<S>(&self) -> axum::Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let service = self.service();
        axum::Router::new()
            .route_service("/", service.clone())
            .route_service("/lifecycle", service)
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
    }

    /// Starts the workers. Stop them with [`Workers::shutdown`].
    pub fn spawn_workers(&self) -> Workers {
        Workers::spawn(
            self.shared.inbox.clone(),
            self.pipeline.clone(),
            self.workers,
        )
    }

    /// The registry that authenticates items.
    pub fn registry(&self) -> &Arc<SubscriptionRegistry> {
        &self.shared.registry
    }

    /// The inbox.
    pub fn inbox(&self) -> &Arc<dyn Inbox> {
        &self.shared.inbox
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The admin endpoints (`/metrics`, `/healthz`) of this receiver, to
    /// serve on an address only operators reach: never mount them beside
    /// the notification endpoint (see [`admin`](crate::admin)).
    pub fn admin_service(&self) -> AdminService {
        let mut admin =
            AdminService::new(self.shared.metrics.clone(), Some(self.shared.inbox.clone()));
        if let Some(api) = &self.inspector {
            admin = admin.inspector(api.clone());
        }
        match &self.admin_token {
            Some(token) => admin.bearer_token(token.as_str()),
            None => admin,
        }
    }

    /// Serves on `listener` with the workers running, until `shutdown`
    /// completes; then stops accepting, finishes in-flight requests and lets
    /// the workers drain, each within its bounded time. No metrics are
    /// served: see [`serve_with_admin`](Self::serve_with_admin).
    ///
    /// # Errors
    ///
    /// I/O errors of the listener itself.
    pub async fn serve(
        self,
        listener: TcpListener,
        config: &ServerConfig,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        self.serve_with_admin(listener, None, config, shutdown)
            .await
    }

    /// [`serve`](Self::serve), and the admin endpoints on `admin` (when
    /// given) until the same `shutdown`.
    ///
    /// # Errors
    ///
    /// I/O errors of either listener itself.
    pub async fn serve_with_admin(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        config: &ServerConfig,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let signal = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let admin_served = async {
            match admin {
                Some(admin) => {
                    crate::admin::serve(admin, self.admin_service(), until_stopped(stopped.clone()))
                        .await
                }
                None => Ok(()),
            }
        };
        let workers = self.spawn_workers();
        let endpoint = crate::listener::serve(
            listener,
            self.service(),
            config,
            until_stopped(stopped.clone()),
        );
        let ((), served, admin_served) = tokio::join!(signal, endpoint, admin_served);
        workers.shutdown(self.worker_drain).await;
        served.and(admin_served)
    }
}

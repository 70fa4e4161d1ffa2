//! A local Microsoft Graph for tests and local work: Graph's side of change
//! notifications, following every documented rule.
//!
//! An [`Emulator`] serves, on one address:
//!
//! - the **subscriptions API** at `/v1.0/subscriptions` and `/beta/subscriptions`
//!   (create, list, get, update, delete, reauthorize) enforcing the
//!   [catalog](crate::catalog): resource paths, change types, the bearer
//!   token's permissions per permission type, certificates for resource
//!   data, the 45-minute floor and per-kind maximum lifetime, the Teams
//!   lifecycle-URL rule, payment models, duplicates (`409`), Graph's
//!   throttling limits ([`ApiLimits`], `429` with `Retry-After`) — with
//!   Graph's status codes and error envelope;
//! - the **validation handshake** inside the create call, as Graph does it,
//!   for `notificationUrl` and `lifecycleNotificationUrl`, and again when an
//!   update changes the URL;
//! - **identity endpoints**: `POST /{tenant}/oauth2/v2.0/token` (client
//!   credentials for apps; the password grant for delegated tokens, with
//!   `consumers` as the tenant for personal accounts), the v1 `POST
//!   /{tenant}/oauth2/token` (client credentials with `resource`), v2 and v1
//!   OpenID configuration with Microsoft's fields, instance discovery
//!   (`/{tenant}/discovery/instance`) and JWKS (`kid` = `x5t`, `x5c`), so
//!   MSAL accepts the emulator as an authority and a receiver checks its
//!   validation tokens by pointing its JWKS URL at
//!   `/common/discovery/v2.0/keys` and nothing else;
//! - the **delivery engine**: batching per URL, 3 s first timeout, retries
//!   with exponential backoff for 4 hours at 10 s each, the slow and drop
//!   throttling states, `missed` after drops, `reauthorizationRequired`
//!   ahead of the access token's and the subscription's expiry, delivery
//!   paused from the token's expiry until the app reauthorizes, expired
//!   subscriptions stopping; rich notifications
//!   really encrypted to the subscription's certificate and really signed;
//! - **delta queries** on the emulator's data (Microsoft Learn, "Use delta
//!   query to track changes in Microsoft Graph data",
//!   <https://learn.microsoft.com/graph/delta-query-overview>), under
//!   `/v1.0` and `/beta`, for every query [`catalog::delta`](crate::catalog::delta)
//!   maps a subscription to: `users/{id}/mailFolders/{id}/messages/delta`,
//!   `users/{id}/calendarView/delta` (with `startDateTime`, `endDateTime`),
//!   `drives/{id}/root/delta`, `users/{id}/drive/root/delta`,
//!   `teams/{id}/channels/{id}/messages/delta`, `users/delta`,
//!   `groups/delta` (`$filter=id eq '…'`), `me/…` for delegated tokens, also
//!   spelled `microsoft.graph.delta()`: `@odata.nextLink` (`$skiptoken`) to
//!   `@odata.deltaLink` (`$deltatoken`, `token` for drives), `$select`,
//!   `Prefer: odata.maxpagesize`, `latest`, token expiry and sync resets;
//!   changes ([`Emulator::fire`]) create, update and delete the items;
//! - a **control API** under `/emulator/`: `POST /emulator/changes` (one
//!   change or an array; `"notify": false` records without notifying) and
//!   `POST /emulator/lifecycle` to make things happen, `GET
//!   /emulator/deliveries`, `/emulator/endpoints`, `/emulator/subscriptions`
//!   to see what happened, `POST /emulator/clock` to move time forward,
//!   `POST /emulator/delta/reset` (`{"resource": "users/delta"}`, or no body
//!   for all) to make existing delta tokens answer a sync reset, `POST
//!   /emulator/throttle` (`{"requests": N, "retryAfter": S}`) to make the
//!   next N delta queries answer `429`.
//!
//! Every URL it hands out uses the scheme it serves and the `Host` it was
//! reached on (its own address when the `Host` is unusable). With
//! [`EmulatorBuilder::https`] it serves TLS only (1.2 and later, ALPN `h2`
//! and `http/1.1`) with a certificate for `127.0.0.1`, `localhost` and `::1`
//! signed by a local CA kept in a directory and reused across runs
//! ([`Emulator::ca_pem`]); its deliveries trust that CA too, so a receiver
//! with a certificate it issued ([`Emulator::issue_server_certificate`])
//! gets them over HTTPS.
//!
//! Time runs on a [`Clock`] with a scale, so Graph's hours pass in seconds
//! in tests; the timeouts have a scale of their own.
//!
//! ```no_run
//! use msgraph_webhooks::ChangeType;
//! use msgraph_webhooks::emulator::{Change, Emulator};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let emulator = Emulator::builder().time_scale(60.0).start().await?;
//! let token = emulator.app_token("my-app");
//! // Create subscriptions at emulator.graph_url() with `token`, as with Graph;
//! // then make something happen:
//! let fired = emulator.fire(&Change::new("users/ada/messages", ChangeType::Created))?;
//! println!("notified {} subscriptions", fired.subscription_ids.len());
//! emulator.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The control API has no authentication: keep the emulator on loopback.

mod api;
mod builder;
mod ca;
mod clock;
mod delivery;
pub mod demo;
mod encrypt;
mod handshake;
mod identity;
mod lifecycle;
mod notify;
mod quota;
mod rate;
mod resources;
mod store;
mod sync;
mod tls;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

pub use builder::EmulatorBuilder;
pub use ca::ServerCertificate;
pub use clock::Clock;
pub use delivery::{
    DeliveryKind, DeliveryPolicy, DeliveryRecord, EndpointState, EndpointStatus, Outcome,
    StateChange, Throttling,
};
pub use encrypt::{encrypt_resource, thumbprint};
pub use identity::{
    CONSUMER_TENANT_ID, GRAPH_APP_ID, GRAPH_AUDIENCE, service_principal_id, user_object_id,
};
pub use lifecycle::{ControlError, Fired, Reauthorization};
pub use notify::Change;
pub use rate::ApiLimits;
pub use resources::Applied;

use crate::notification::LifecycleEventType;
use crate::tokens::TokenVersion;
use delivery::{DeliveryLog, Engine};
use identity::Identity;
use resources::Resources;
use store::Store;
use sync::DeltaState;

/// The tenant the emulator plays unless told otherwise.
pub const DEFAULT_TENANT_ID: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";

/// How the emulator behaves. Graph's numbers are the defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// The tenant of tokens for `common`, `organizations` or a domain name.
    pub tenant_id: String,
    /// The application permissions (`roles`) clients get from the token
    /// endpoint; `None` grants every application permission of the catalog.
    pub app_permissions: Option<Vec<String>>,
    /// Emulated seconds per real second for everything scheduled: retries,
    /// the delivery throttling's windows and delays, expirations,
    /// reauthorization notices (not [`api_limits`](Self::api_limits), which
    /// count real time).
    pub time_scale: f64,
    /// How much faster than Graph's the timeouts (3 s, 10 s, 10 s) run: with
    /// 10, a first attempt has 300 ms.
    pub timeout_scale: f64,
    /// The claim set of validation tokens.
    pub token_version: TokenVersion,
    /// Tenants whose rich notifications carry `validationTokens: null`, as
    /// Graph sends when the tenant's set-up is incomplete (Microsoft Learn, "Set up change notifications that include resource data", <https://learn.microsoft.com/graph/change-notifications-with-resource-data>).
    /// Their items travel in POSTs of their own, so other tenants' items
    /// keep their tokens.
    pub misconfigured_tenants: Vec<String>,
    /// Timeouts, retries, batching.
    pub delivery: DeliveryPolicy,
    /// The slow and drop states.
    pub throttling: Throttling,
    /// Time an endpoint has to answer a validation request (Graph: 10 s).
    pub handshake_timeout: Duration,
    /// How long before a subscription expires `reauthorizationRequired` is
    /// sent to its lifecycle URL (15 minutes), unless it was renewed or
    /// reauthorized for that expiration.
    pub reauthorization_notice: Duration,
    /// The access tokens of subscriptions: their lifetime, the challenges
    /// before they expire, delivery paused after.
    pub reauthorization: Reauthorization,
    /// Whether the tenant holds Copilot licences (needed for
    /// `copilot/interactionHistory/…`).
    pub copilot_tenant_licensed: bool,
    /// Users (ids or principal names) without a Copilot licence.
    pub copilot_unlicensed_users: Vec<String>,
    /// Drive item ids that are files, not folders (subscriptions on them are refused).
    pub drive_files: Vec<String>,
    /// Accept `http://` notification URLs on any host, not only loopback
    /// (e.g. a receiver in another container).
    pub allow_http: bool,
    /// Where `EventGrid:` subscriptions' notifications go, as an Event
    /// Grid event subscription's webhook would get them (the CloudEvents
    /// handshake, then batched CloudEvents); `None`: they are not delivered.
    pub event_grid_endpoint: Option<url::Url>,
    /// Subscriptions per page of `GET /subscriptions`.
    pub page_size: usize,
    /// How long delta tokens of Outlook (messages, events), Teams and drive
    /// items stay usable, in emulated time (Graph: no fixed lifetime, cache
    /// based; default 30 days). Directory objects' live 7 days, as Graph's.
    pub delta_token_lifetime: Duration,
    /// The catalog's subscription quotas, with these limits instead per
    /// scope (tests reach a quota of 1 000 with 2).
    pub quota_limits: Vec<(crate::catalog::QuotaScope, u32)>,
    /// Serve HTTPS, with the local CA kept in this directory (`ca.pem`,
    /// `ca-key.pem`); `None`: plain HTTP.
    pub https: Option<PathBuf>,
    /// The throttling limits of `/subscriptions` (Graph's by default).
    pub api_limits: ApiLimits,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tenant_id: DEFAULT_TENANT_ID.to_owned(),
            app_permissions: None,
            time_scale: 1.0,
            timeout_scale: 1.0,
            token_version: TokenVersion::V1,
            misconfigured_tenants: Vec::new(),
            delivery: DeliveryPolicy::default(),
            throttling: Throttling::default(),
            handshake_timeout: Duration::from_secs(10),
            reauthorization_notice: Duration::from_secs(15 * 60),
            reauthorization: Reauthorization::default(),
            copilot_tenant_licensed: true,
            copilot_unlicensed_users: Vec::new(),
            drive_files: Vec::new(),
            allow_http: false,
            event_grid_endpoint: None,
            page_size: 100,
            delta_token_lifetime: Duration::from_secs(30 * 86_400),
            quota_limits: Vec::new(),
            https: None,
            api_limits: ApiLimits::default(),
        }
    }
}

impl Config {
    /// The real time a Graph timeout takes under [`timeout_scale`](Self::timeout_scale)
    /// (kept within 0.001 to 1 000 000).
    pub fn real_timeout(&self, graph: Duration) -> Duration {
        Duration::try_from_secs_f64(graph.as_secs_f64() / self.timeout_factor())
            .unwrap_or(Duration::MAX)
    }

    /// The timeout scale made usable.
    pub(crate) fn timeout_factor(&self) -> f64 {
        clock::clamp_scale(self.timeout_scale)
    }
}

/// Everything the emulator's handlers and tasks share.
pub(crate) struct Core {
    pub(crate) config: Config,
    pub(crate) clock: Clock,
    pub(crate) identity: Identity,
    pub(crate) store: Store,
    pub(crate) engine: Engine,
    pub(crate) log: DeliveryLog,
    /// The tenant's data, for delta queries.
    pub(crate) resources: Resources,
    /// Delta tokens, resets, throttling.
    pub(crate) delta: DeltaState,
    /// The windows of the subscriptions API's throttling limits.
    pub(crate) rate: rate::Limiter,
    pub(crate) client: reqwest::Client,
    /// `http://ADDR` or `https://ADDR`: where a request without a usable
    /// `Host` is taken to have come.
    pub(crate) base_url: String,
    /// `http` or `https`.
    pub(crate) scheme: &'static str,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Wakes the housekeeping task when subscriptions change.
    pub(crate) changed: tokio::sync::Notify,
    tasks: Mutex<JoinSet<()>>,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("base_url", &self.base_url)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Runs a background task until the emulator stops.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .spawn(task);
    }

    /// The application permissions the token endpoint grants.
    pub(crate) fn granted_roles(&self) -> Vec<String> {
        self.config
            .app_permissions
            .clone()
            .unwrap_or_else(identity::all_application_permissions)
    }
}

/// A running emulator. Dropping it stops it; [`shutdown`](Self::shutdown)
/// also waits until it has stopped.
pub struct Emulator {
    core: Arc<Core>,
    addr: SocketAddr,
    server: Option<JoinHandle<io::Result<()>>>,
    /// With HTTPS: the local CA.
    ca: Option<ca::LocalCa>,
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Starts configuring an emulator.
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder::default()
    }

    /// Starts an emulator with Graph's defaults on 127.0.0.1.
    ///
    /// # Errors
    ///
    /// As [`EmulatorBuilder::start`].
    pub async fn start() -> io::Result<Self> {
        Self::builder().start().await
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://…` with HTTPS): the root of every endpoint.
    pub fn url(&self) -> &str {
        &self.core.base_url
    }

    /// With HTTPS, the local CA's certificate (PEM), for a client to trust.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca.as_ref().map(ca::LocalCa::pem)
    }

    /// With HTTPS, the file of the local CA's certificate (`DIR/ca.pem`).
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca.as_ref().map(ca::LocalCa::path)
    }

    /// With HTTPS, a [`ServerCertificate`] signed by the local CA for
    /// `names`, IP addresses or DNS names (none: `127.0.0.1`, `localhost`
    /// and `::1`): a receiver with it gets the deliveries over HTTPS.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::Unsupported`] when the emulator serves plain HTTP
    /// (it has no CA); [`io::ErrorKind::InvalidInput`] for a name that is
    /// neither; OpenSSL failing.
    pub fn issue_server_certificate(&self, names: &[&str]) -> io::Result<ServerCertificate> {
        self.local_ca()?.issue(names)
    }

    /// With HTTPS, `receiver.pem` and `receiver-key.pem` (mode 0600) in the
    /// TLS directory: a loopback [server certificate](Self::issue_server_certificate),
    /// made on first use and kept while it is this CA's and valid — what
    /// `emulate --https` hands to `listen --tls-cert/--tls-key`.
    ///
    /// # Errors
    ///
    /// As [`issue_server_certificate`](Self::issue_server_certificate), or
    /// a file that cannot be written.
    pub fn receiver_certificate_files(&self) -> io::Result<(PathBuf, PathBuf)> {
        self.local_ca()?.receiver_files()
    }

    fn local_ca(&self) -> io::Result<&ca::LocalCa> {
        self.ca.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "the emulator serves plain HTTP and has no CA: start it with https(dir)",
            )
        })
    }

    /// The Graph base URL, `…/v1.0`.
    pub fn graph_url(&self) -> String {
        format!("{}/v1.0", self.core.base_url)
    }

    /// The token endpoint of `tenant` (`common`, a tenant id, `consumers`).
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.core.base_url)
    }

    /// The JWKS with the key that signs every token.
    pub fn jwks_url(&self) -> String {
        format!("{}/common/discovery/v2.0/keys", self.core.base_url)
    }

    /// The OpenID configuration of `tenant`.
    pub fn openid_configuration_url(&self, tenant: &str) -> String {
        format!(
            "{}/{tenant}/v2.0/.well-known/openid-configuration",
            self.core.base_url
        )
    }

    /// The default tenant.
    pub fn tenant_id(&self) -> &str {
        &self.core.config.tenant_id
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// Its clock: read emulated time, or [`Clock::advance`] it.
    pub fn clock(&self) -> &Clock {
        &self.core.clock
    }

    /// An app-only access token for `app_id` in the default tenant, with the
    /// configured application permissions (what the token endpoint gives).
    pub fn app_token(&self, app_id: &str) -> String {
        self.core.identity.app_token(
            &self.core.config.tenant_id,
            app_id,
            &self.core.granted_roles(),
        )
    }

    /// An app-only access token with exactly these application permissions.
    pub fn app_token_with(&self, tenant_id: &str, app_id: &str, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
        self.core.identity.app_token(tenant_id, app_id, &roles)
    }

    /// A delegated access token for `username` with exactly these scopes.
    /// Use [`CONSUMER_TENANT_ID`] as the tenant for a personal account.
    pub fn user_token(
        &self,
        tenant_id: &str,
        app_id: &str,
        username: &str,
        scopes: &[&str],
    ) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        self.core
            .identity
            .user_token(tenant_id, app_id, username, &scopes)
    }

    /// Applies the change to the emulator's data (when its resource, or the
    /// collection it is an item of, has a delta query) and notifies every
    /// subscription it concerns (unless [`Change::notify`] is off).
    ///
    /// # Errors
    ///
    /// [`ControlError`] for a malformed resource or an unknown change type.
    pub fn fire(&self, change: &Change) -> Result<Fired, ControlError> {
        self.core.fire(change)
    }

    /// Applies changes in order (see [`fire`](Self::fire)), after checking
    /// them all; one answer for all of them.
    ///
    /// # Errors
    ///
    /// [`ControlError`] for the first malformed change (nothing is applied
    /// then), or a failure while applying.
    pub fn fire_all(&self, changes: &[Change]) -> Result<Fired, ControlError> {
        self.core.fire_all(changes)
    }

    /// Makes the next `requests` delta queries answer `429 TooManyRequests`
    /// with `Retry-After: retry_after` (whole seconds).
    pub fn throttle_delta(&self, requests: u32, retry_after: Duration) {
        self.core.delta.throttle(requests, retry_after.as_secs());
    }

    /// Makes every delta token issued so far for `delta_path` (e.g.
    /// `users/delta`; `None`: every delta query) answer a sync reset,
    /// `410 Gone` with the initial query in `Location`.
    ///
    /// # Errors
    ///
    /// [`ControlError::InvalidResource`] when `delta_path` is not a delta
    /// query the emulator serves.
    pub fn reset_delta(&self, delta_path: Option<&str>) -> Result<(), ControlError> {
        self.core.reset_delta(delta_path).map(|_| ())
    }

    /// Sends a lifecycle notification for a subscription
    /// (`subscriptionRemoved` also removes it).
    ///
    /// # Errors
    ///
    /// [`ControlError`] for an unknown subscription, or an event Graph does
    /// not send for its kind.
    pub fn lifecycle(
        &self,
        subscription_id: &str,
        event: &LifecycleEventType,
    ) -> Result<Fired, ControlError> {
        self.core.lifecycle(subscription_id, event)
    }

    /// Every delivery attempt so far (the last 10 000).
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.core.log.all()
    }

    /// The body a delivery POSTed, exactly as sent, by its
    /// [`DeliveryRecord::sequence`]: kept for the newest 200 POSTs of
    /// notifications ([`DeliveryRecord::body_kept`]). Feed it to
    /// `msgraph-webhooks inspect`.
    pub fn delivery_body(&self, sequence: u64) -> Option<bytes::Bytes> {
        self.core.log.body(sequence)
    }

    /// Waits until `done` holds for the deliveries log, or `wait` passes;
    /// returns the log either way.
    pub async fn wait_for_deliveries(
        &self,
        wait: Duration,
        mut done: impl FnMut(&[DeliveryRecord]) -> bool,
    ) -> Vec<DeliveryRecord> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let appended = self.core.log.appended().notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let records = self.core.log.all();
            if done(&records) {
                return records;
            }
            if tokio::time::timeout_at(deadline, appended).await.is_err() {
                return self.core.log.all();
            }
        }
    }

    /// How many requests to `/subscriptions` were answered `429` for
    /// reaching an [`ApiLimits`] limit.
    pub fn throttled_requests(&self) -> u64 {
        self.core.rate.throttled()
    }

    /// The throttling state of every URL delivered to.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.core.engine.statuses()
    }

    /// The ids of the live subscriptions.
    pub fn subscription_ids(&self) -> Vec<String> {
        self.core.store.all().into_iter().map(|s| s.id).collect()
    }

    /// Stops serving and every background task, and waits for them.
    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        let mut tasks = std::mem::take(
            &mut *self
                .core
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        tasks.shutdown().await;
    }

    fn stop(&self) {
        let _ = self.core.shutdown.send(true);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

//! Configuring a manager: its builder, its settings and why a build fails.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use time::Duration;
use tokio::sync::{Notify, broadcast, watch};

use crate::catalog::{self};
use crate::clock::Clock;
use crate::retry::RetryPolicy;
use crate::store::{Lease, MemoryLease};
use crate::store::{MemoryRecords, RecordStore};
use crate::subscriptions::client::GraphClient;
use crate::subscriptions::preflight::PreflightError;
use crate::{BoxError, ClientState, SubscriptionRegistry};

use super::{
    Declared, DeltaResync, EncryptionCertificate, Resync, ResyncHook, Shared, SubscriptionManager,
    Urls,
};

#[derive(Debug, Default)]
pub(super) struct Certificates {
    pub(super) active: Option<EncryptionCertificate>,
    pub(super) known: HashMap<String, EncryptionCertificate>,
}

pub(super) struct Settings {
    pub(super) renew_fraction: f64,
    pub(super) jitter: f64,
    pub(super) check_interval: Duration,
    pub(super) retry_after_failure: Duration,
    pub(super) handshake_retry: RetryPolicy,
    pub(super) lease_name: String,
    pub(super) lease_ttl: std::time::Duration,
    pub(super) adopt_grace: std::time::Duration,
}

/// Why a manager could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum ManagerBuildError {
    /// A declared subscription breaks catalog rules.
    Preflight(PreflightError),
    /// Two declarations share a key, or a resource and change types (Graph
    /// keeps one subscription per resource and change types).
    Duplicate(String),
    /// A declaration names a certificate the manager does not know, or a
    /// rich one has no certificate.
    Certificate(String),
}

impl fmt::Display for ManagerBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManagerBuildError::Preflight(e) => e.fmt(f),
            ManagerBuildError::Duplicate(what) => write!(f, "declared twice: {what}"),
            ManagerBuildError::Certificate(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ManagerBuildError {}

/// Configures a [`SubscriptionManager`]; see [`SubscriptionManager::builder`].
#[must_use]
pub struct ManagerBuilder {
    client: GraphClient,
    clock: Option<Arc<dyn Clock>>,
    records: Option<Arc<dyn RecordStore>>,
    lease: Option<Arc<dyn Lease>>,
    registry: Option<Arc<SubscriptionRegistry>>,
    declared: Vec<Declared>,
    public_url: Option<watch::Receiver<Option<String>>>,
    fixed_url: Option<watch::Sender<Option<String>>>,
    certificates: Certificates,
    resync: Option<ResyncHook>,
    delta: Option<DeltaResync>,
    trigger: bool,
    settings: Settings,
}

impl fmt::Debug for ManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerBuilder")
            .field("client", &self.client)
            .field("declared", &self.declared)
            .finish_non_exhaustive()
    }
}

impl ManagerBuilder {
    /// Keeps the records and takes the leases in `backend`'s store: what
    /// [`records`](Self::records) and [`lease`](Self::lease) set one by one.
    pub fn backend(self, backend: &crate::store::Backend) -> Self {
        self.records(backend.records()).lease(backend.lease())
    }

    /// Where the records go: the store every instance's registry reads
    /// (default: process memory).
    pub fn records(mut self, records: Arc<dyn RecordStore>) -> Self {
        self.records = Some(records);
        self
    }

    /// The leases and presence of the instances that share the records
    /// (default: process memory, for a single instance).
    pub fn lease(mut self, lease: Arc<dyn Lease>) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The receiver's registry, so new subscriptions are accepted at once
    /// (it should also read the records: [`SubscriptionRegistry::source`]).
    pub fn registry(mut self, registry: Arc<SubscriptionRegistry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The public URL Graph reaches the receiver at.
    pub fn public_url(mut self, url: impl Into<String>) -> Self {
        let (sender, receiver) = watch::channel(Some(url.into()));
        self.fixed_url = Some(sender);
        self.public_url = Some(receiver);
        self
    }

    /// A public URL that may change (`None` while there is none), e.g.
    /// [`NgrokAgent::watch`](crate::tunnel::NgrokAgent::watch): subscriptions
    /// follow it.
    pub fn public_urls(mut self, urls: watch::Receiver<Option<String>>) -> Self {
        self.fixed_url = None;
        self.public_url = Some(urls);
        self
    }

    /// The certificate rich subscriptions are encrypted to.
    pub fn certificate(mut self, certificate: EncryptionCertificate) -> Self {
        self.certificates
            .known
            .insert(certificate.id().to_owned(), certificate.clone());
        self.certificates.active = Some(certificate);
        self
    }

    /// A certificate declarations may name with [`Declared::certificate_id`].
    pub fn known_certificate(mut self, certificate: EncryptionCertificate) -> Self {
        self.certificates
            .known
            .insert(certificate.id().to_owned(), certificate);
        self
    }

    /// Declares a subscription.
    pub fn declare(mut self, declared: Declared) -> Self {
        self.declared.push(declared);
        self
    }

    /// Called when changes may have gone unnotified (after `missed`, or a
    /// subscription recreated): run a delta query there.
    pub fn on_resync<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Resync) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.resync = Some(Arc::new(move |resync| Box::pin(hook(resync))));
        self
    }

    /// Resyncs by delta query where the resource has one (see
    /// [`resync`](crate::resync)): `missed`, a removed or recreated
    /// subscription and a restart run a round of the resource's cursor, and
    /// its changes reach the handler as
    /// [`ResyncEvent`](crate::handler::ResyncEvent)s. Resources without a
    /// delta query still get the [`on_resync`](Self::on_resync) hook.
    /// [`SubscriptionManager::start`] starts the engine's loop too.
    pub fn delta_resync(mut self, engine: DeltaResync) -> Self {
        self.delta = Some(engine);
        self
    }

    /// The trigger mode (with [`delta_resync`](Self::delta_resync)): change
    /// notifications of resources with a delta query don't reach the
    /// handler; each marks a round due, and notifications close together
    /// are debounced into one round, so the handler gets the delta's
    /// changes — the truth — instead of the bare notifications.
    pub fn trigger_mode(mut self, on: bool) -> Self {
        self.trigger = on;
        self
    }

    /// The clock to plan by (default: the client's, the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Renews when this fraction of the lifetime has passed (0.6), less up
    /// to [`jitter`](Self::jitter) of it, so instances and subscriptions
    /// don't renew in step.
    pub fn renew_at(mut self, fraction: f64) -> Self {
        self.settings.renew_fraction = if fraction.is_finite() {
            fraction.clamp(0.05, 0.95)
        } else {
            0.6
        };
        self
    }

    /// The share of the renewal point taken off at random (0.1).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.settings.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 0.5)
        } else {
            0.1
        };
        self
    }

    /// How often (on the manager's clock) Graph's list is compared with the
    /// records, so a deleted subscription is recreated (10 minutes).
    pub fn check_interval(mut self, interval: Duration) -> Self {
        self.settings.check_interval = interval.max(Duration::seconds(1));
        self
    }

    /// Retries of a create whose validation handshake failed (5 attempts,
    /// from 2 s, doubling).
    pub fn handshake_retry(mut self, retry: RetryPolicy) -> Self {
        self.settings.handshake_retry = retry;
        self
    }

    /// What the names of the manager's leases and presence groups start
    /// with (`msgraph-webhooks/subscriptions`). Each declaration has its
    /// own lease under it: managers with different declared sets on one
    /// store each manage theirs, and managers declaring the same
    /// subscription take turns. Only managers that must not see each other
    /// at all (two apps with their own Graph credentials on one store)
    /// need different prefixes.
    pub fn lease_name(mut self, name: impl Into<String>) -> Self {
        self.settings.lease_name = name.into();
        self
    }

    /// How long a lease lasts without being extended (30 s, real time).
    /// The holder extends it every third of that; when the holder dies,
    /// another instance takes over once it lapses. Also how long a
    /// crashed instance still counts as keeping its subscriptions.
    pub fn lease_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.settings.lease_ttl = ttl.max(std::time::Duration::from_millis(300));
        self
    }

    /// Checks every declaration against the catalog and builds the manager.
    ///
    /// # Errors
    ///
    /// [`ManagerBuildError`]: a declaration Graph would refuse (nothing is sent),
    /// declared twice, or without its certificate.
    pub fn build(self) -> Result<SubscriptionManager, ManagerBuildError> {
        let clock = self.clock.unwrap_or_else(|| self.client.clock_handle());
        let client = self.client.clock(clock.clone());
        let now = clock.now();
        let mut keys = HashSet::new();
        let mut combos = HashSet::new();
        let mut declared = Vec::with_capacity(self.declared.len());
        for mut d in self.declared {
            if let Ok(resolved) = catalog::resolve(&d.resource) {
                d.rules = Some(resolved.rules());
            }
            if !keys.insert(d.stable_key()) {
                return Err(ManagerBuildError::Duplicate(format!(
                    "key '{}'",
                    d.stable_key()
                )));
            }
            if !combos.insert((d.resource.to_ascii_lowercase(), d.change_type.clone())) {
                return Err(ManagerBuildError::Duplicate(format!(
                    "'{}' with change types '{}'",
                    d.resource, d.change_type
                )));
            }
            let certificate = match &d.certificate_id {
                Some(id) => Some(self.certificates.known.get(id).cloned().ok_or_else(|| {
                    ManagerBuildError::Certificate(format!(
                        "{}: certificate '{id}' is not one the manager knows (add it with known_certificate)",
                        d.stable_key()
                    ))
                })?),
                None => self.certificates.active.clone(),
            };
            // The URLs are not known yet (a tunnel may come later): a
            // stand-in checks everything else now.
            let urls = d.urls(Some("https://example.invalid/")).unwrap_or(Urls {
                notification: "https://example.invalid/".to_owned(),
                lifecycle: None,
            });
            d.request(
                &urls,
                certificate.as_ref(),
                ClientState::new("preflight"),
                now,
            )
            .map_err(ManagerBuildError::Preflight)?;
            declared.push(d);
        }
        let (public_url, fixed) = match (self.public_url, self.fixed_url) {
            (Some(urls), fixed) => (urls, fixed),
            (None, _) => {
                let (sender, receiver) = watch::channel(None);
                (receiver, Some(sender))
            }
        };
        let (activity, _) = broadcast::channel(1024);
        Ok(SubscriptionManager {
            shared: Arc::new(Shared {
                client,
                clock,
                records: self
                    .records
                    .unwrap_or_else(|| Arc::new(MemoryRecords::new())),
                lease: self.lease.unwrap_or_else(|| Arc::new(MemoryLease::new())),
                registry: self.registry,
                declared,
                public_url,
                _public_url: fixed,
                certificates: Mutex::new(self.certificates),
                resync: self.resync,
                delta: self.delta,
                trigger: self.trigger,
                activity,
                wake: Notify::new(),
                ops: tokio::sync::Mutex::new(()),
                holder: format!("manager-{}", crate::random::hex_id(16)),
                settings: self.settings,
            }),
        })
    }
}

impl SubscriptionManager {
    /// Starts configuring a manager that talks to Graph through `client`.
    pub fn builder(client: GraphClient) -> ManagerBuilder {
        ManagerBuilder {
            client,
            clock: None,
            records: None,
            lease: None,
            registry: None,
            declared: Vec::new(),
            public_url: None,
            fixed_url: None,
            certificates: Certificates::default(),
            resync: None,
            delta: None,
            trigger: false,
            settings: Settings {
                renew_fraction: 0.6,
                jitter: 0.1,
                check_interval: Duration::minutes(10),
                retry_after_failure: Duration::minutes(1),
                handshake_retry: RetryPolicy::new(5, std::time::Duration::from_secs(2)),
                lease_name: "msgraph-webhooks/subscriptions".to_owned(),
                lease_ttl: std::time::Duration::from_secs(30),
                adopt_grace: std::time::Duration::from_secs(2),
            },
        }
    }
}

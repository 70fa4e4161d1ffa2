//! The subscription manager: keeps a declared set of subscriptions alive.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;

use super::client::{ClientError, GraphClient, NewSubscription, RetryPolicy, SubscriptionUpdate};
use super::clock::Clock;
use super::lifecycle::Lifecycle;
use super::preflight::{self, LifetimePolicy, PreflightError};
use crate::catalog::{self, KindRules, ResourceDataRule};
use crate::crypto::DecryptionKey;
use crate::registry::Registration;
use crate::store::{Lease, MemoryLease, StoreError};
use crate::store::{MemoryRecords, RecordStore, SubscriptionRecord};
use crate::{
    BoxError, ChangeType, ClientState, Handler, LifecycleEvent, LifecycleEventType,
    SubscriptionRegistry,
};

mod keeper;

use keeper::keep;

/// The marker in a record's `managedBy`: written by this manager.
const MANAGED_BY: &str = "msgraph-webhooks";

/// Graph asks for 10 minutes between a reauthorize and a renewing update of
/// one subscription (Microsoft Learn, "Reduce missing subscriptions and change notifications", <https://learn.microsoft.com/graph/change-notifications-lifecycle-events>).
const REAUTHORIZE_GAP: Duration = Duration::minutes(10);

/// How long a subscription being created is announced for: its create
/// (handshake included) answers well within this, and its first items are
/// recognised by their `clientState` meanwhile.
const PENDING_FOR: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// Kept under the kind's maximum lifetime, for clock skew with Graph.
const LIFETIME_MARGIN: Duration = Duration::minutes(5);

/// Kept under the maximum Graph states when it refuses an expiration as too
/// far: measured by Graph's clock (the time of its answer) only the
/// request's time in flight is unknown; by ours, any skew is.
const CLAMP_MARGIN_GRAPH_TIME: Duration = Duration::minutes(1);
const CLAMP_MARGIN_LOCAL_TIME: Duration = Duration::minutes(30);

/// The latest expiration to ask for after Graph answered `error` (its
/// "expiration can only be N minutes in the future") to a request sent at
/// `now` on the manager's clock.
fn expiration_cap(error: &super::client::GraphError, now: OffsetDateTime) -> OffsetDateTime {
    let minutes = Duration::minutes(error.max_expiration_minutes().unwrap_or(0));
    match error.graph_time() {
        // Graph checks by its own clock: right whatever the skew.
        Some(graph_now) => graph_now + minutes - CLAMP_MARGIN_GRAPH_TIME,
        None => now + minutes - CLAMP_MARGIN_LOCAL_TIME,
    }
}

/// A random number in `[0, 1)`.
pub(crate) fn unit_random() -> f64 {
    let mut bytes = [0u8; 8];
    // Invariant: OpenSSL's CSPRNG fails only without an OS entropy source.
    openssl::rand::rand_bytes(&mut bytes).expect("the OS random source is available");
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// The certificate rich subscriptions are encrypted to: an id of the app's
/// choosing and the certificate as base64 DER (public; the private key
/// stays in the receiver's [`KeyRing`](crate::crypto::KeyRing)).
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionCertificate {
    id: String,
    certificate: String,
}

impl fmt::Debug for EncryptionCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionCertificate")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl EncryptionCertificate {
    /// A certificate given as base64 DER (what `cert new` prints).
    pub fn new(id: impl Into<String>, base64_der: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            certificate: base64_der.into(),
        }
    }

    /// The certificate of a decryption key, under the id the key ring knows it by.
    ///
    /// # Errors
    ///
    /// OpenSSL failing to encode the certificate.
    pub fn from_key(
        id: impl Into<String>,
        key: &DecryptionKey,
    ) -> Result<Self, openssl::error::ErrorStack> {
        let der = key.certificate().to_der()?;
        Ok(Self::new(
            id,
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der),
        ))
    }

    /// The `encryptionCertificateId`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `encryptionCertificate`: base64 DER.
    pub fn certificate(&self) -> &str {
        &self.certificate
    }
}

/// Where lifecycle notifications of a declared subscription go.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LifecycleUrl {
    /// The public URL with `/lifecycle` appended to its path.
    Derived,
    /// This URL.
    Fixed(String),
    /// None: no lifecycle notifications.
    Off,
}

/// A subscription the app wants to exist.
///
/// By default notifications go to the manager's public URL and lifecycle
/// notifications to the public URL with `/lifecycle` appended (the
/// receiver serves both on any path); the lifetime is the longest the kind
/// allows; the key, which ties the declaration to its Graph subscription
/// across restarts and instances, is the resource and change types.
///
/// ```
/// use msgraph_webhooks::ChangeType;
/// use msgraph_webhooks::subscriptions::Declared;
///
/// let mail = Declared::new("users/ada@contoso.com/messages", [ChangeType::Created, ChangeType::Updated]);
/// assert_eq!(mail.stable_key(), "users/ada@contoso.com/messages|created,updated");
/// let chats = Declared::new("chats/getAllMessages", [ChangeType::Created]).rich(true).key("chats");
/// assert_eq!(chats.stable_key(), "chats");
/// ```
#[derive(Clone, Debug)]
pub struct Declared {
    key: Option<String>,
    resource: String,
    change_type: String,
    rich: bool,
    certificate_id: Option<String>,
    notification_url: Option<String>,
    lifecycle_url: LifecycleUrl,
    lifetime: Option<Duration>,
    lifetime_policy: LifetimePolicy,
    rules: Option<KindRules>,
}

impl Declared {
    /// `resource` (a path as in Graph's `resource`) with `change_types`,
    /// as [`NewSubscription::new`] takes them (each once, in the order
    /// given). [`catalog::parse_change_types`] reads them from text such as
    /// `created,updated`.
    pub fn new(
        resource: impl Into<String>,
        change_types: impl IntoIterator<Item = ChangeType>,
    ) -> Self {
        let change_types: Vec<ChangeType> = change_types.into_iter().collect();
        Self {
            key: None,
            resource: resource.into().trim().to_owned(),
            change_type: catalog::join_change_types(&change_types),
            rich: false,
            certificate_id: None,
            notification_url: None,
            lifecycle_url: LifecycleUrl::Derived,
            lifetime: None,
            lifetime_policy: LifetimePolicy::Reject,
            rules: None,
        }
    }

    /// The stable key (default: `resource|changeTypes`).
    pub fn stable_key(&self) -> String {
        self.key
            .clone()
            .unwrap_or_else(|| format!("{}|{}", self.resource, self.change_type))
    }

    /// The resource path.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The change types, comma-separated.
    pub fn change_types(&self) -> &str {
        &self.change_type
    }

    /// Sets the stable key.
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Asks for resource data, encrypted to the manager's active certificate.
    #[must_use]
    pub fn rich(mut self, rich: bool) -> Self {
        self.rich = rich;
        self
    }

    /// Encrypts to this certificate (one the manager knows) instead of the
    /// active one; certificate rotation then leaves the subscription alone.
    #[must_use]
    pub fn certificate_id(mut self, id: impl Into<String>) -> Self {
        self.certificate_id = Some(id.into());
        self
    }

    /// Sends notifications to this URL instead of the public URL.
    #[must_use]
    pub fn notification_url(mut self, url: impl Into<String>) -> Self {
        self.notification_url = Some(url.into());
        self
    }

    /// Sends lifecycle notifications to this URL.
    #[must_use]
    pub fn lifecycle_url(mut self, url: impl Into<String>) -> Self {
        self.lifecycle_url = LifecycleUrl::Fixed(url.into());
        self
    }

    /// Asks for no lifecycle notifications (Teams subscriptions then live
    /// at most an hour). A moved public URL is then followed by an update
    /// instead of a new subscription, since Graph can't update a lifecycle URL.
    #[must_use]
    pub fn without_lifecycle_url(mut self) -> Self {
        self.lifecycle_url = LifecycleUrl::Off;
        self
    }

    /// How long each creation or renewal asks for (default: the longest the
    /// kind allows, less five minutes for a local clock ahead of Graph's).
    #[must_use]
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// What to do when [`lifetime`](Self::lifetime) is over the kind's
    /// maximum: refuse (the default) or clamp.
    #[must_use]
    pub fn lifetime_policy(mut self, policy: LifetimePolicy) -> Self {
        self.lifetime_policy = policy;
        self
    }

    fn rules(&self) -> Option<KindRules> {
        self.rules
    }

    fn needs_certificate(&self) -> bool {
        self.rich
            || self
                .rules()
                .is_some_and(|r| r.resource_data == ResourceDataRule::AlwaysEncrypted)
    }

    fn lifetime_now(&self) -> Duration {
        self.lifetime.unwrap_or_else(|| {
            self.rules()
                .map_or(Duration::minutes(4230), |r| r.max_lifetime(self.rich))
                - LIFETIME_MARGIN
        })
    }

    /// The notification and lifecycle URLs under `public`.
    fn urls(&self, public: Option<&str>) -> Option<Urls> {
        let notification = match &self.notification_url {
            Some(url) => normalize(url),
            None => normalize(public?),
        };
        let lifecycle = match &self.lifecycle_url {
            LifecycleUrl::Off => None,
            LifecycleUrl::Fixed(url) => Some(normalize(url)),
            LifecycleUrl::Derived => Some(match public {
                Some(public) => lifecycle_of(public),
                None => lifecycle_of(&notification),
            }),
        };
        Some(Urls {
            notification,
            lifecycle,
        })
    }

    /// The creation request at `now`.
    fn request(
        &self,
        urls: &Urls,
        certificate: Option<&EncryptionCertificate>,
        client_state: ClientState,
        now: OffsetDateTime,
    ) -> Result<NewSubscription, PreflightError> {
        // An invalid name stays itself (`Unknown`), for pre-flight to refuse
        // by name.
        let change_types = self
            .change_type
            .split(',')
            .map(|t| ChangeType::parse(t.trim()));
        let mut new = NewSubscription::new(
            &self.resource,
            change_types,
            &urls.notification,
            now + self.lifetime_now(),
        )
        .client_state(client_state)
        .include_resource_data(self.rich);
        if let Some(url) = &urls.lifecycle {
            new = new.lifecycle_notification_url(url);
        }
        if self.needs_certificate()
            && let Some(certificate) = certificate
        {
            new = new.encryption_certificate(certificate.id(), certificate.certificate());
        }
        preflight::check(&new, now, self.lifetime_policy)
    }
}

/// A URL as the manager writes it (parsed and printed back).
fn normalize(url: &str) -> String {
    url::Url::parse(url.trim()).map_or_else(|_| url.trim().to_owned(), |u| u.to_string())
}

/// `url` with `/lifecycle` appended to its path.
fn lifecycle_of(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(mut parsed) => {
            let path = format!("{}/lifecycle", parsed.path().trim_end_matches('/'));
            parsed.set_path(&path);
            parsed.set_query(None);
            parsed.to_string()
        }
        Err(_) => format!("{}/lifecycle", url.trim().trim_end_matches('/')),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Urls {
    notification: String,
    lifecycle: Option<String>,
}

/// Why the resync hook is called: notifications may have been lost.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResyncReason {
    /// Graph removed the subscription (`subscriptionRemoved`); it was recreated.
    SubscriptionRemoved,
    /// Graph could not deliver some notifications (`missed`).
    Missed,
    /// The subscription was found gone (expired, deleted, `404`), or had to
    /// be replaced (a new public URL for its lifecycle notifications, a
    /// live subscription whose `clientState` the records lost), and was
    /// recreated.
    Recreated,
}

/// What the resync hook is told: run a delta query (or another full read)
/// of `resource`, since changes may have gone unnotified.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Resync {
    /// The declared subscription's key.
    pub key: String,
    /// Its resource.
    pub resource: String,
    /// The subscription id now in force.
    pub subscription_id: String,
    /// Why.
    pub reason: ResyncReason,
}

/// What the manager did, as it happens (also logged).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activity {
    /// A subscription was created.
    Created {
        /// The declared key.
        key: String,
        /// Graph's id.
        id: String,
    },
    /// An existing subscription of ours (another instance's record) was
    /// taken over after Graph answered `409`.
    Adopted {
        /// The declared key.
        key: String,
        /// Graph's id.
        id: String,
    },
    /// A subscription Graph had for the same resource, unknown to the
    /// records (its `clientState` unknown), was deleted to make room.
    Replaced {
        /// The declared key.
        key: String,
        /// The deleted subscription's id.
        id: String,
    },
    /// A subscription was renewed (and moved or re-keyed if those changed).
    Renewed {
        /// The declared key.
        key: String,
        /// Graph's id.
        id: String,
        /// The new expiration.
        expiration: OffsetDateTime,
        /// The new notification URL, if it moved.
        moved_to: Option<String>,
        /// The new certificate id, if it changed.
        certificate_id: Option<String>,
    },
    /// A subscription was reauthorized.
    Reauthorized {
        /// The declared key.
        key: String,
        /// Graph's id.
        id: String,
    },
    /// A reauthorization was asked for, but the subscription was renewed or
    /// reauthorized less than 10 minutes ago.
    ReauthorizationSkipped {
        /// The declared key.
        key: String,
        /// Graph's id.
        id: String,
    },
    /// A subscription that was gone (or could not be updated in place) was
    /// replaced by a new one.
    Recreated {
        /// The declared key.
        key: String,
        /// The old id.
        old: String,
        /// The new id.
        new: String,
    },
    /// A subscription was deleted (on stop, or a declaration that changed).
    Deleted {
        /// The declared key.
        key: String,
        /// Graph's id.
        id: String,
    },
    /// The resync hook ran.
    Resynced {
        /// The declared key.
        key: String,
        /// Why.
        reason: ResyncReason,
    },
    /// Something failed; it is tried again later.
    Failed {
        /// The declared key.
        key: String,
        /// What failed, and why.
        error: String,
    },
}

impl fmt::Display for Activity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Activity::Created { key, id } => write!(f, "created {id} for {key}"),
            Activity::Adopted { key, id } => write!(f, "adopted {id} for {key}"),
            Activity::Replaced { key, id } => {
                write!(f, "deleted {id} (unknown clientState) to recreate {key}")
            }
            Activity::Renewed {
                key,
                id,
                expiration,
                moved_to,
                certificate_id,
            } => {
                write!(f, "renewed {id} for {key} until {}", rfc3339(*expiration))?;
                if let Some(url) = moved_to {
                    write!(f, ", moved to {url}")?;
                }
                if let Some(cert) = certificate_id {
                    write!(f, ", encrypted to certificate {cert}")?;
                }
                Ok(())
            }
            Activity::Reauthorized { key, id } => write!(f, "reauthorized {id} for {key}"),
            Activity::ReauthorizationSkipped { key, id } => write!(
                f,
                "reauthorization of {id} for {key} skipped: renewed or reauthorized less than 10 minutes ago"
            ),
            Activity::Recreated { key, old, new } => {
                write!(f, "recreated {key}: {old} replaced by {new}")
            }
            Activity::Deleted { key, id } => write!(f, "deleted {id} for {key}"),
            Activity::Resynced { key, reason } => write!(f, "resync of {key} ({reason:?})"),
            Activity::Failed { key, error } => write!(f, "{key}: {error}"),
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn parse_time(value: Option<&Value>) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(value?.as_str()?, &Rfc3339).ok()
}

/// A subscription this manager keeps, as its record says.
#[derive(Clone, Debug)]
struct Managed {
    id: String,
    client_state: Option<ClientState>,
    certificate_id: Option<String>,
    expires_at: OffsetDateTime,
    key: String,
    resource: String,
    change_type: String,
    rich: bool,
    urls: Urls,
    renew_at: OffsetDateTime,
    renewed_at: Option<OffsetDateTime>,
    reauthorized_at: Option<OffsetDateTime>,
    /// Graph said it removed the subscription (`subscriptionRemoved`) to an
    /// instance without the lease: queued here for the lease holder.
    removed_at: Option<OffsetDateTime>,
}

impl Managed {
    fn from_record(record: &SubscriptionRecord) -> Option<Self> {
        let other = &record.other;
        if other.get("managedBy").and_then(Value::as_str) != Some(MANAGED_BY) {
            return None;
        }
        let text = |name: &str| other.get(name).and_then(Value::as_str).map(str::to_owned);
        let expires_at = record.expires_at?;
        Some(Self {
            id: record.id.clone(),
            client_state: record.client_state.clone(),
            certificate_id: record.certificate_id.clone(),
            expires_at,
            key: text("key")?,
            resource: text("resource")?,
            change_type: text("changeType")?,
            rich: other.get("rich").and_then(Value::as_bool).unwrap_or(false),
            urls: Urls {
                notification: text("notificationUrl")?,
                lifecycle: text("lifecycleNotificationUrl"),
            },
            renew_at: parse_time(other.get("renewAt")).unwrap_or(expires_at),
            renewed_at: parse_time(other.get("renewedAt")),
            reauthorized_at: parse_time(other.get("reauthorizedAt")),
            removed_at: parse_time(other.get("removedAt")),
        })
    }

    fn to_record(&self) -> SubscriptionRecord {
        let mut record = SubscriptionRecord::new(self.id.clone(), self.client_state.clone());
        record.certificate_id = self.certificate_id.clone();
        record.expires_at = Some(self.expires_at);
        let other = &mut record.other;
        other.insert("managedBy".into(), json!(MANAGED_BY));
        other.insert("key".into(), json!(self.key));
        other.insert("resource".into(), json!(self.resource));
        other.insert("changeType".into(), json!(self.change_type));
        other.insert("rich".into(), json!(self.rich));
        other.insert("notificationUrl".into(), json!(self.urls.notification));
        if let Some(url) = &self.urls.lifecycle {
            other.insert("lifecycleNotificationUrl".into(), json!(url));
        }
        other.insert("renewAt".into(), json!(rfc3339(self.renew_at)));
        if let Some(t) = self.renewed_at {
            other.insert("renewedAt".into(), json!(rfc3339(t)));
        }
        if let Some(t) = self.reauthorized_at {
            other.insert("reauthorizedAt".into(), json!(rfc3339(t)));
        }
        if let Some(t) = self.removed_at {
            other.insert("removedAt".into(), json!(rfc3339(t)));
        }
        record
    }

    /// When Graph lets it be updated again: 10 minutes after a reauthorize.
    fn update_allowed_at(&self) -> Option<OffsetDateTime> {
        self.reauthorized_at.map(|t| t + REAUTHORIZE_GAP)
    }
}

/// A subscription the manager keeps, as the app may inspect it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ManagedSubscription {
    /// The declared key.
    pub key: String,
    /// Graph's id.
    pub id: String,
    /// The resource.
    pub resource: String,
    /// When it expires.
    pub expiration: OffsetDateTime,
    /// When the manager plans to renew it.
    pub renew_at: OffsetDateTime,
    /// Where notifications go.
    pub notification_url: String,
    /// Where lifecycle notifications go.
    pub lifecycle_notification_url: Option<String>,
    /// The certificate a rich subscription is encrypted to.
    pub certificate_id: Option<String>,
}

type ResyncHook = Arc<dyn Fn(Resync) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

#[derive(Debug, Default)]
struct Certificates {
    active: Option<EncryptionCertificate>,
    known: HashMap<String, EncryptionCertificate>,
}

struct Settings {
    renew_fraction: f64,
    jitter: f64,
    check_interval: Duration,
    retry_after_failure: Duration,
    handshake_retry: RetryPolicy,
    lease_name: String,
    lease_ttl: std::time::Duration,
    adopt_grace: std::time::Duration,
}

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
    activity: broadcast::Sender<Activity>,
    wake: Notify,
    /// One mutation at a time in this process (passes, lifecycle actions, stop).
    ops: tokio::sync::Mutex<()>,
    holder: String,
    settings: Settings,
}

/// Why a manager could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// A declared subscription breaks catalog rules.
    Preflight(PreflightError),
    /// Two declarations share a key, or a resource and change types (Graph
    /// keeps one subscription per resource and change types).
    Duplicate(String),
    /// A declaration names a certificate the manager does not know, or a
    /// rich one has no certificate.
    Certificate(String),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Preflight(e) => e.fmt(f),
            BuildError::Duplicate(what) => write!(f, "declared twice: {what}"),
            BuildError::Certificate(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for BuildError {}

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
    /// Where the records go: the store every instance's registry reads
    /// (default: process memory).
    pub fn records(mut self, records: Arc<dyn RecordStore>) -> Self {
        self.records = Some(records);
        self
    }

    /// The lease that makes one instance the one that creates and renews
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
            .insert(certificate.id.clone(), certificate.clone());
        self.certificates.active = Some(certificate);
        self
    }

    /// A certificate declarations may name with [`Declared::certificate_id`].
    pub fn known_certificate(mut self, certificate: EncryptionCertificate) -> Self {
        self.certificates
            .known
            .insert(certificate.id.clone(), certificate);
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
    /// [`BuildError`]: a declaration Graph would refuse (nothing is sent),
    /// declared twice, or without its certificate.
    pub fn build(self) -> Result<SubscriptionManager, BuildError> {
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
                return Err(BuildError::Duplicate(format!("key '{}'", d.stable_key())));
            }
            if !combos.insert((d.resource.to_ascii_lowercase(), d.change_type.clone())) {
                return Err(BuildError::Duplicate(format!(
                    "'{}' with change types '{}'",
                    d.resource, d.change_type
                )));
            }
            let certificate = match &d.certificate_id {
                Some(id) => Some(self.certificates.known.get(id).cloned().ok_or_else(|| {
                    BuildError::Certificate(format!(
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
            .map_err(BuildError::Preflight)?;
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
                activity,
                wake: Notify::new(),
                ops: tokio::sync::Mutex::new(()),
                holder: format!("manager-{}", ClientState::random().expose()),
                settings: self.settings,
            }),
        })
    }
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

/// Outcome of handling one declaration in a pass.
enum Step {
    /// Kept: due again at this time.
    Due(OffsetDateTime),
    /// Nothing to do until something changes (no public URL yet).
    Idle,
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
        Running {
            manager: self.clone(),
            stop,
            task: Some(task),
            keeper: Some(keeper),
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
                .insert(certificate.id.clone(), certificate.clone());
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

    async fn managed(&self) -> Result<Vec<Managed>, StoreError> {
        Ok(self
            .records
            .all()
            .await?
            .iter()
            .filter_map(Managed::from_record)
            .collect())
    }

    async fn managed_by_id(&self, id: &str) -> Result<Option<Managed>, StoreError> {
        Ok(self
            .records
            .get_many(vec![id.to_owned()])
            .await?
            .into_iter()
            .flatten()
            .find_map(|r| Managed::from_record(&r)))
    }

    /// The record of `id`, waiting a little for it: after a `409` the
    /// instance that created it may be storing it right now.
    async fn recorded(&self, id: &str) -> Result<Option<Managed>, StoreError> {
        let deadline = tokio::time::Instant::now() + self.settings.adopt_grace;
        loop {
            if let Some(found) = self.managed_by_id(id).await? {
                return Ok(Some(found));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    async fn store(&self, managed: &Managed) -> Result<(), StoreError> {
        self.records.put(managed.to_record()).await?;
        if let Some(registry) = &self.registry {
            registry.register(
                managed.id.clone(),
                Registration {
                    client_state: managed.client_state.clone(),
                    ..Registration::default()
                },
            );
        }
        Ok(())
    }

    async fn forget(&self, id: &str) -> Result<(), StoreError> {
        self.records.remove(id.to_owned()).await?;
        if let Some(registry) = &self.registry {
            registry.unregister(id);
        }
        Ok(())
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
        let share = self.settings.renew_fraction * (1.0 - self.settings.jitter * unit_random());
        now + lifetime * share
    }

    fn declared(&self, key: &str) -> Option<&Declared> {
        self.declared.iter().find(|d| d.stable_key() == key)
    }

    /// One pass over the declarations whose lease this instance holds;
    /// `None` when other instances hold them all.
    async fn pass(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        let _ops = self.ops.lock().await;
        let mut mine = Vec::new();
        for declared in &self.declared {
            if self.hold(&declared.stable_key()).await? {
                mine.push(declared);
            }
        }
        let now = self.now();
        let public = self.public_url.borrow().clone();
        let records = self.managed().await?;
        let live: Option<HashSet<String>> = if mine.is_empty() {
            None
        } else {
            match self.client.list().await {
                Ok(list) => Some(list.into_iter().map(|s| s.id).collect()),
                Err(e) => {
                    tracing::warn!(error = %e, "listing subscriptions failed; checking by record only");
                    None
                }
            }
        };
        let mut next = now + self.settings.check_interval;
        for declared in mine.iter().copied() {
            let key = declared.stable_key();
            if !self.hold(&key).await? {
                // Lost while the pass ran (a store outage longer than the lease).
                continue;
            }
            let mine: Vec<Managed> = records.iter().filter(|m| m.key == key).cloned().collect();
            match self
                .reconcile_one(declared, mine, live.as_ref(), public.as_deref())
                .await
            {
                Ok(Step::Due(due)) => next = next.min(due),
                Ok(Step::Idle) => {}
                Err(e) => {
                    self.emit(Activity::Failed {
                        key,
                        error: e.to_string(),
                    });
                    next = next.min(now + self.settings.retry_after_failure);
                }
            }
        }
        // Records of declarations nobody makes any more (`:created` became
        // `:created,updated` between `--keep` runs): left alone, Graph would
        // deliver every change twice until the old one expired.
        if let Err(e) = self.sweep_pending().await {
            tracing::warn!(error = %e, "could not sweep expired pending subscription records");
        }
        if self.delete_undeclared(&records).await? {
            next = next.min(now + self.settings.retry_after_failure);
        }
        if mine.is_empty() {
            return Ok(None);
        }
        Ok(Some(next))
    }

    /// Deletes the records whose key no live instance declares: not this
    /// one, and no other that shares the store (each marks the keys it
    /// keeps). Each under that key's lease, so of several instances one
    /// deletes, and none while an instance that declares it is starting.
    /// `true` if a delete failed (tried again on a later pass).
    async fn delete_undeclared(&self, records: &[Managed]) -> Result<bool, StoreError> {
        let mut failed = false;
        let stale: BTreeSet<&str> = records
            .iter()
            .map(|m| m.key.as_str())
            .filter(|key| self.declared(key).is_none())
            .collect();
        for key in stale {
            if self.kept_by_anyone(key).await? || !self.hold(key).await? {
                continue;
            }
            // Read again under the lease: an instance that declares it may
            // have joined since.
            if !self.kept_by_anyone(key).await? {
                for managed in records.iter().filter(|m| m.key == key) {
                    tracing::info!(%key, id = %managed.id, "no live instance declares this subscription any more: deleting it");
                    if let Err(e) = self.delete_one(key, &managed.id).await {
                        self.emit(Activity::Failed {
                            key: key.to_owned(),
                            error: e.to_string(),
                        });
                        failed = true;
                    }
                }
            }
            self.release(key).await?;
        }
        Ok(failed)
    }

    async fn reconcile_one(
        &self,
        declared: &Declared,
        mut mine: Vec<Managed>,
        live: Option<&HashSet<String>>,
        public: Option<&str>,
    ) -> Result<Step, BoxError> {
        let key = declared.stable_key();
        let now = self.now();
        // Two records for one key (instances that once raced): keep the
        // newest live one, delete the others.
        mine.sort_by_key(|m| std::cmp::Reverse(m.expires_at));
        let alive = |m: &Managed| {
            m.removed_at.is_none() && m.expires_at > now && live.is_none_or(|l| l.contains(&m.id))
        };
        let keep = mine.iter().position(alive);
        for (i, extra) in mine.iter().enumerate() {
            if Some(i) != keep && mine.len() > 1 {
                self.delete_one(&key, &extra.id).await?;
            }
        }
        let current = match keep {
            Some(i) => mine.swap_remove(i),
            None => {
                let Some(urls) = declared.urls(public) else {
                    tracing::info!(%key, "no public URL yet: waiting for one to subscribe");
                    return Ok(Step::Idle);
                };
                let gone = mine.first().map(|m| (m.id.clone(), m.removed_at.is_some()));
                // The old record stays until its replacement exists: a
                // create that fails leaves the gap (and its resync) for
                // the next pass.
                let (created, replaced) = self.create(declared, &urls, None).await?;
                if let Some((old, _)) = &gone {
                    self.forget(old).await?;
                }
                if let Some((old, removed)) = gone {
                    self.emit(Activity::Recreated {
                        key: key.clone(),
                        old,
                        new: created.id.clone(),
                    });
                    let reason = if removed {
                        ResyncReason::SubscriptionRemoved
                    } else {
                        ResyncReason::Recreated
                    };
                    self.resync(&key, &created.id, reason).await?;
                } else if replaced {
                    self.resync(&key, &created.id, ResyncReason::Recreated)
                        .await?;
                }
                return Ok(Step::Due(created.renew_at));
            }
        };
        let urls = declared
            .urls(public)
            .unwrap_or_else(|| current.urls.clone());
        let same_kind = current.resource == declared.resource
            && current.change_type == declared.change_type
            && current.rich == declared.rich;
        if !same_kind || current.urls.lifecycle != urls.lifecycle {
            // Graph can't update these in place: a new subscription, then
            // the old one deleted (first, if Graph refuses two); its record
            // stays until the new one exists, so a failed create is a gap
            // the next pass fills, with a resync.
            let (created, _) = self.create(declared, &urls, Some(&current.id)).await?;
            self.delete_one(&key, &current.id).await?;
            self.emit(Activity::Recreated {
                key: key.clone(),
                old: current.id.clone(),
                new: created.id.clone(),
            });
            self.resync(&key, &created.id, ResyncReason::Recreated)
                .await?;
            return Ok(Step::Due(created.renew_at));
        }
        let mut update = SubscriptionUpdate::default();
        if current.urls.notification != urls.notification {
            update.notification_url = Some(urls.notification.clone());
        }
        if declared.needs_certificate()
            && let Some(certificate) = self.certificate_for(declared)
            && current.certificate_id.as_deref() != Some(certificate.id())
        {
            update = update.certificate(certificate.id(), certificate.certificate());
        }
        let changed = update.notification_url.is_some() || update.encryption_certificate.is_some();
        if !changed && now < current.renew_at {
            return Ok(Step::Due(current.renew_at));
        }
        if let Some(allowed) = current.update_allowed_at()
            && now < allowed
            && current.expires_at > allowed + Duration::minutes(5)
        {
            // Reauthorized less than 10 minutes ago: Graph asks us to wait.
            return Ok(Step::Due(allowed));
        }
        let renewed = self.renew(declared, current, update, &urls).await?;
        Ok(Step::Due(renewed.renew_at))
    }

    /// Creates the subscription of `declared`, retrying a failed handshake,
    /// adopting or replacing a duplicate, clamping an expiration Graph
    /// finds too far; stores its record. `replacing` is the subscription
    /// this one replaces: when Graph refuses two, it is deleted then (its
    /// record stays until the caller forgets it). The flag says a live
    /// subscription unknown to the records was deleted to make room:
    /// notifications Graph queued for it are lost, so a resync is due.
    async fn create(
        &self,
        declared: &Declared,
        urls: &Urls,
        replacing: Option<&str>,
    ) -> Result<(Managed, bool), BoxError> {
        let key = declared.stable_key();
        let certificate = self.certificate_for(declared);
        let mut handshakes = 0;
        let mut conflicts = 0;
        let mut replaced = false;
        let mut cap: Option<OffsetDateTime> = None;
        loop {
            let now = self.now();
            let client_state = ClientState::random();
            let mut request =
                declared.request(urls, certificate.as_ref(), client_state.clone(), now)?;
            if let Some(cap) = cap {
                request.expiration = request.expiration.min(cap);
            }
            self.announce(&client_state).await?;
            let answer = self.client.create(&request).await;
            let error = match answer {
                Ok(created) => {
                    let managed = Managed {
                        id: created.id.clone(),
                        client_state: Some(client_state.clone()),
                        certificate_id: request.encryption_certificate_id.clone(),
                        expires_at: created.expiration,
                        key: key.clone(),
                        resource: declared.resource.clone(),
                        change_type: declared.change_type.clone(),
                        rich: declared.rich,
                        urls: urls.clone(),
                        renew_at: self.renew_at(now, created.expiration),
                        renewed_at: None,
                        reauthorized_at: None,
                        removed_at: None,
                    };
                    let stored = self.store(&managed).await;
                    self.withdraw(&client_state).await;
                    if let Err(e) = stored {
                        // A subscription nobody can authenticate is worse than none.
                        let _ = self.client.delete(&created.id).await;
                        return Err(e.into());
                    }
                    self.emit(Activity::Created {
                        key,
                        id: created.id,
                    });
                    return Ok((managed, replaced));
                }
                Err(error) => error,
            };
            self.withdraw(&client_state).await;
            match error {
                ClientError::Graph(e) if cap.is_none() && e.max_expiration_minutes().is_some() => {
                    cap = Some(expiration_cap(&e, now));
                    tracing::warn!(%key, error = %e, "graph finds the expiration too far (is the local clock ahead of Graph's?): asking for less");
                }
                ClientError::Graph(e) if e.is_conflict() && conflicts < 2 => {
                    conflicts += 1;
                    let Some(existing) = e.conflicting_id().map(str::to_owned) else {
                        return Err(ClientError::Graph(e).into());
                    };
                    if let Some(ours) = self.recorded(&existing).await?
                        && ours.key == key
                    {
                        if replacing == Some(existing.as_str()) {
                            // The one being replaced: Graph keeps one per
                            // resource, so it goes first — but only once
                            // the new URLs pass the handshake Graph will
                            // run, or a mistyped URL would leave nothing.
                            self.probe(urls).await?;
                            match self.client.delete(&existing).await {
                                Ok(()) => continue,
                                Err(e) if e.is_not_found() => continue,
                                Err(e) => return Err(e.into()),
                            }
                        }
                        // Another instance created it and recorded its clientState.
                        self.store(&ours).await?;
                        self.emit(Activity::Adopted { key, id: existing });
                        return Ok((ours, replaced));
                    }
                    // Its clientState is unknown (Graph shows null): replace it.
                    match self.client.delete(&existing).await {
                        Ok(()) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e.into()),
                    }
                    replaced = true;
                    self.emit(Activity::Replaced {
                        key: key.clone(),
                        id: existing,
                    });
                }
                ClientError::Graph(e)
                    if e.is_handshake_failure()
                        && handshakes + 1 < self.settings.handshake_retry.max_attempts =>
                {
                    handshakes += 1;
                    let wait = self.settings.handshake_retry.backoff(handshakes);
                    tracing::warn!(
                        %key,
                        attempt = handshakes,
                        ?wait,
                        error = %e,
                        "the validation handshake failed; trying again (msgraph-webhooks doctor URL explains why)"
                    );
                    tokio::time::sleep(wait).await;
                }
                ClientError::Graph(e) if e.is_handshake_failure() => {
                    return Err(format!(
                        "{e}; run `msgraph-webhooks doctor {}` to see why",
                        urls.notification
                    )
                    .into());
                }
                e => return Err(e.into()),
            }
        }
    }

    /// Runs the validation handshake against `urls` as Graph would, before
    /// a working subscription is deleted to make room for one there.
    async fn probe(&self, urls: &Urls) -> Result<(), BoxError> {
        let options = crate::doctor::Options::default();
        for url in std::iter::once(&urls.notification).chain(&urls.lifecycle) {
            let finding = crate::doctor::handshake(url, &options).await?;
            if finding.verdict == crate::doctor::Verdict::Fail {
                return Err(format!(
                    "{url} fails the validation handshake ({}): the working subscription \
                     stays until it passes; run `msgraph-webhooks doctor {url}` to see why",
                    finding.detail
                )
                .into());
            }
        }
        Ok(())
    }

    /// Announces a subscription about to be created with `client_state`,
    /// to this process's registry and, as a pending record, to every
    /// instance reading the store: Graph may deliver its first
    /// notifications before it answers with the id.
    async fn announce(&self, client_state: &ClientState) -> Result<(), StoreError> {
        if let Some(registry) = &self.registry {
            registry.expect(client_state.clone(), PENDING_FOR);
        }
        // Real time, as the receivers reading it count (not Graph's clock).
        let until = OffsetDateTime::now_utc() + PENDING_FOR;
        self.records
            .put(SubscriptionRecord::pending(client_state.clone(), until))
            .await
    }

    /// Ends an [announcement](Self::announce): the subscription's own record
    /// is stored, or the create failed. A pending record left behind (a
    /// crash, the store failing now) expires by itself and is swept.
    async fn withdraw(&self, client_state: &ClientState) {
        if let Some(registry) = &self.registry {
            registry.registered(client_state);
        }
        let id = SubscriptionRecord::pending_id(client_state.expose());
        if let Err(e) = self.records.remove(id).await {
            tracing::warn!(error = %e, "could not remove a pending subscription record: it expires by itself");
        }
    }

    /// Deletes the pending records whose time is over (left by a crash).
    async fn sweep_pending(&self) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc();
        for record in self.records.all().await? {
            if record.id.starts_with("pending:") && !record.is_pending_at(now) {
                self.records.remove(record.id).await?;
            }
        }
        Ok(())
    }

    /// Renews `current` (moving or re-keying it with `update`); recreates it
    /// when Graph no longer has it.
    async fn renew(
        &self,
        declared: &Declared,
        mut current: Managed,
        mut update: SubscriptionUpdate,
        urls: &Urls,
    ) -> Result<Managed, BoxError> {
        let key = declared.stable_key();
        let mut handshakes = 0;
        let mut cap: Option<OffsetDateTime> = None;
        loop {
            let now = self.now();
            let max = declared.rules().map_or(declared.lifetime_now(), |r| {
                r.max_lifetime(declared.rich) - LIFETIME_MARGIN
            });
            let expiration = now + declared.lifetime_now().min(max);
            update.expiration = Some(cap.map_or(expiration, |cap| expiration.min(cap)));
            match self.client.update(&current.id, &update).await {
                Ok(updated) => {
                    let moved_to = update.notification_url.clone();
                    let certificate_id = update.encryption_certificate_id.clone();
                    current.expires_at = updated.expiration;
                    current.urls.notification = urls.notification.clone();
                    if certificate_id.is_some() {
                        current.certificate_id = certificate_id.clone();
                    }
                    current.renew_at = self.renew_at(now, updated.expiration);
                    current.renewed_at = Some(now);
                    self.store(&current).await?;
                    self.emit(Activity::Renewed {
                        key,
                        id: current.id.clone(),
                        expiration: updated.expiration,
                        moved_to,
                        certificate_id,
                    });
                    return Ok(current);
                }
                Err(e) if e.is_not_found() => {
                    let (created, _) = self.create(declared, urls, None).await?;
                    self.forget(&current.id).await?;
                    self.emit(Activity::Recreated {
                        key: key.clone(),
                        old: current.id,
                        new: created.id.clone(),
                    });
                    self.resync(&key, &created.id, ResyncReason::Recreated)
                        .await?;
                    return Ok(created);
                }
                Err(ClientError::Graph(e))
                    if cap.is_none() && e.max_expiration_minutes().is_some() =>
                {
                    cap = Some(expiration_cap(&e, now));
                    tracing::warn!(%key, error = %e, "graph finds the expiration too far (is the local clock ahead of Graph's?): asking for less");
                }
                Err(ClientError::Graph(e))
                    if e.is_handshake_failure()
                        && handshakes + 1 < self.settings.handshake_retry.max_attempts =>
                {
                    handshakes += 1;
                    tokio::time::sleep(self.settings.handshake_retry.backoff(handshakes)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn delete_one(&self, key: &str, id: &str) -> Result<(), BoxError> {
        match self.client.delete(id).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        self.forget(id).await?;
        self.emit(Activity::Deleted {
            key: key.to_owned(),
            id: id.to_owned(),
        });
        Ok(())
    }

    async fn delete_all(&self) -> Result<(), StoreError> {
        let keys: HashSet<String> = self.declared.iter().map(Declared::stable_key).collect();
        self.delete_keys(&keys).await
    }

    async fn delete_keys(&self, keys: &HashSet<String>) -> Result<(), StoreError> {
        let _ops = self.ops.lock().await;
        for managed in self.managed().await? {
            if !keys.contains(&managed.key) {
                continue;
            }
            if let Err(e) = self.delete_one(&managed.key, &managed.id).await {
                self.emit(Activity::Failed {
                    key: managed.key.clone(),
                    error: format!("deleting {}: {e}", managed.id),
                });
            }
        }
        Ok(())
    }

    async fn resync(&self, key: &str, id: &str, reason: ResyncReason) -> Result<(), BoxError> {
        let Some(hook) = &self.resync else {
            return Ok(());
        };
        let resource = self
            .declared(key)
            .map(|d| d.resource.clone())
            .unwrap_or_default();
        hook(Resync {
            key: key.to_owned(),
            resource,
            subscription_id: id.to_owned(),
            reason: reason.clone(),
        })
        .await
        .map_err(|e| format!("the resync hook of {key} failed: {e}"))?;
        self.emit(Activity::Resynced {
            key: key.to_owned(),
            reason,
        });
        Ok(())
    }

    async fn on_lifecycle(&self, event: &LifecycleEvent) -> Result<(), BoxError> {
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
    async fn reauthorize(&self, id: &str) -> Result<(), BoxError> {
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
    async fn removed(&self, id: &str) -> Result<(), BoxError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_urls() {
        let d = Declared::new("users", [ChangeType::Updated]);
        let urls = d.urls(Some("https://abc.ngrok-free.app")).unwrap();
        assert_eq!(urls.notification, "https://abc.ngrok-free.app/");
        assert_eq!(
            urls.lifecycle.as_deref(),
            Some("https://abc.ngrok-free.app/lifecycle")
        );
        let urls = d.urls(Some("https://example.com/hooks/graph?x=1")).unwrap();
        assert_eq!(urls.notification, "https://example.com/hooks/graph?x=1");
        assert_eq!(
            urls.lifecycle.as_deref(),
            Some("https://example.com/hooks/graph/lifecycle")
        );
        assert!(d.urls(None).is_none());
        let fixed = Declared::new("users", [ChangeType::Updated])
            .notification_url("https://a.example/n")
            .without_lifecycle_url();
        assert_eq!(
            fixed.urls(None),
            Some(Urls {
                notification: "https://a.example/n".to_owned(),
                lifecycle: None
            })
        );
    }

    #[test]
    fn records_round_trip_and_foreign_records_are_ignored() {
        let now = OffsetDateTime::now_utc();
        let managed = Managed {
            id: "s-1".into(),
            client_state: Some(ClientState::new("state")),
            certificate_id: Some("cert".into()),
            expires_at: now + Duration::hours(1),
            key: "k".into(),
            resource: "users".into(),
            change_type: "updated".into(),
            rich: false,
            urls: Urls {
                notification: "https://a/".into(),
                lifecycle: Some("https://a/lifecycle".into()),
            },
            renew_at: now + Duration::minutes(30),
            renewed_at: Some(now),
            reauthorized_at: None,
            removed_at: None,
        };
        let record = managed.to_record();
        let json = serde_json::to_string(&record).unwrap();
        let back: SubscriptionRecord = serde_json::from_str(&json).unwrap();
        let again = Managed::from_record(&back).unwrap();
        assert_eq!(again.key, "k");
        assert_eq!(again.urls, managed.urls);
        assert!(again.client_state.unwrap().matches("state"));
        assert!((again.renew_at - managed.renew_at).abs() < Duration::seconds(1));
        assert!(Managed::from_record(&SubscriptionRecord::new("x", None)).is_none());
    }

    #[test]
    fn change_types_are_normalized_into_the_key() {
        let types = catalog::parse_change_types("Updated, deleted").unwrap();
        let d = Declared::new(" users ", types);
        assert_eq!(d.stable_key(), "users|updated,deleted");
        let twice = Declared::new("users", [ChangeType::Updated, ChangeType::Updated]);
        assert_eq!(twice.stable_key(), "users|updated");
    }

    #[test]
    fn unit_random_is_in_range() {
        for _ in 0..1000 {
            let r = unit_random();
            assert!((0.0..1.0).contains(&r));
        }
    }
}

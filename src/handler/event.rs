//! The events handlers receive: built only by the pipeline, after the item
//! passed every check that applies to it.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::notification::resources::Resource;
use crate::notification::{
    ChangeNotification, ChangeType, LifecycleEventType, LifecycleNotification, ResourceData,
    ResourceKind,
};
use crate::resync::{ResyncItem, ResyncReason};
use crate::subscriptions::Removed;

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

/// A change a delta query returned when resyncing a resource: the item as
/// Graph returned it, whether it was removed, why the resync ran and the
/// cursor it came from.
///
/// Cheap to clone. `Debug` leaves out the data.
#[derive(Clone)]
pub struct ResyncEvent {
    inner: Arc<ResyncInner>,
}

struct ResyncInner {
    item: ResyncItem,
    removed: Option<Removed>,
    data: Value,
    received_at: OffsetDateTime,
    attempt: u32,
}

impl ResyncEvent {
    pub(crate) fn new(
        item: ResyncItem,
        data: Value,
        received_at: OffsetDateTime,
        attempt: u32,
    ) -> Self {
        let removed = item.removed.as_deref().map(|reason| match reason {
            "deleted" => Removed::Deleted,
            "changed" => Removed::Changed,
            other => Removed::Other(other.to_owned()),
        });
        Self {
            inner: Arc::new(ResyncInner {
                item,
                removed,
                data,
                received_at,
                attempt,
            }),
        }
    }

    /// Why the resync ran.
    pub fn reason(&self) -> &ResyncReason {
        &self.inner.item.resync.reason
    }

    /// The subscription resource resynced (e.g.
    /// `users/ada/mailFolders('Inbox')/messages`).
    pub fn resource(&self) -> &str {
        &self.inner.item.resync.resource
    }

    /// The key of the delta cursor the item came from.
    pub fn cursor(&self) -> &str {
        &self.inner.item.resync.cursor
    }

    /// The item's id.
    pub fn id(&self) -> &str {
        &self.inner.item.id
    }

    /// Whether, and why, the item was removed; `None` for a created or
    /// updated item.
    pub fn removed(&self) -> Option<&Removed> {
        self.inner.removed.as_ref()
    }

    /// The item as the delta query returned it (for an update, at least the
    /// changed properties; for a removal, its id and `@removed`).
    pub fn data(&self) -> &Value {
        &self.inner.data
    }

    /// When the page carrying it was stored.
    pub fn received_at(&self) -> OffsetDateTime {
        self.inner.received_at
    }

    /// How many earlier attempts to handle it failed.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }
}

impl fmt::Debug for ResyncEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResyncEvent")
            .field("reason", self.reason())
            .field("resource", &self.resource())
            .field("id", &self.id())
            .field("removed", &self.removed())
            .field("data", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Either kind of event a [`Handler`](super::Handler) is given, for handlers that take both
/// alike (e.g. a `tower::Service<HandlerEvent>` behind [`ServiceHandler`](super::ServiceHandler)).
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
    /// A change a delta query returned when resyncing.
    Resync(ResyncEvent),
}

impl HandlerEvent {
    /// The event as the one JSON line `msgraph-webhooks listen` prints:
    ///
    /// `{"kind":"change","id":…,"subscriptionId":…,"subscriptionExpirationDateTime":…,"changeType":…,"resource":…,"resourceKind":…,"tenantId":…,"resourceData":{…},"data":{…}|null}`
    /// or `{"kind":"lifecycle","subscriptionId":…,"subscriptionExpirationDateTime":…,"lifecycleEvent":…,"tenantId":…}`
    /// or `{"kind":"resync","reason":"missed|removed|recreated|startup|periodic|trigger|requested","resource":…,"id":…,"removed":null|"deleted"|"changed","data":{…},"cursor":…}`.
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
            HandlerEvent::Resync(e) => Line::Resync {
                reason: e.reason().as_str(),
                resource: e.resource(),
                id: e.id(),
                removed: e.removed().map(Removed::as_str),
                data: e.data(),
                cursor: e.cursor(),
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
    Resync {
        reason: &'a str,
        resource: &'a str,
        id: &'a str,
        removed: Option<&'a str>,
        data: &'a Value,
        cursor: &'a str,
    },
}

/// A time as RFC 3339 in a JSON line.
struct Rfc3339At(OffsetDateTime);

impl serde::Serialize for Rfc3339At {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        time::serde::rfc3339::serialize(&self.0, s)
    }
}

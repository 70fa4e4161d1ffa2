//! Typed change and lifecycle items, tolerant of what Graph may add later.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::{ResourceKind, lenient};
use crate::ClientState;

macro_rules! open_enum {
    (
        $(#[$meta:meta])* $name:ident {
            $( $(#[$vdoc:meta])* $variant:ident => $wire:literal $(| $alias:literal)* ,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vdoc])* $variant, )+
            /// A value this version does not know, kept as received.
            Unknown(String),
        }

        impl $name {
            /// The value as Graph spells it.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $wire, )+
                    $name::Unknown(value) => value,
                }
            }

            /// Parses a value, ignoring ASCII case; unknown values become `Unknown`.
            pub fn parse(value: &str) -> Self {
                $(
                    if value.eq_ignore_ascii_case($wire) $(|| value.eq_ignore_ascii_case($alias))* {
                        return $name::$variant;
                    }
                )+
                $name::Unknown(value.to_owned())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = std::borrow::Cow::<str>::deserialize(deserializer)?;
                Ok($name::parse(&value))
            }
        }
    };
}

open_enum! {
    /// What happened to the resource (`changeType`), parsed case-insensitively.
    ChangeType {
        /// The resource was created.
        Created => "created",
        /// The resource was updated (for users and groups also soft-deleted).
        Updated => "updated",
        /// The resource was deleted.
        Deleted => "deleted",
    }
}

open_enum! {
    /// Which lifecycle notification this is (`lifecycleEvent`), parsed case-insensitively.
    LifecycleEventType {
        /// Graph needs the subscription reauthorized (or renewed) to keep delivering.
        ReauthorizationRequired => "reauthorizationRequired",
        /// Graph removed the subscription; recreate it and resync. An early beta
        /// spelled it `removed`.
        SubscriptionRemoved => "subscriptionRemoved" | "removed",
        /// Some notifications were not delivered; resync.
        Missed => "missed",
    }
}

/// `resourceData`: what Graph says about the changed resource (an open type).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ResourceData {
    /// `@odata.type`, e.g. `#Microsoft.Graph.Message` (casing varies).
    #[serde(
        rename = "@odata.type",
        default,
        deserialize_with = "lenient::string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub odata_type: Option<String>,
    /// `@odata.id`, the resource path.
    #[serde(
        rename = "@odata.id",
        default,
        deserialize_with = "lenient::string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub odata_id: Option<String>,
    /// `@odata.etag`.
    #[serde(
        rename = "@odata.etag",
        default,
        deserialize_with = "lenient::string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub odata_etag: Option<String>,
    /// The resource id at the time the notification was generated (a
    /// number is read as its digits).
    #[serde(
        default,
        deserialize_with = "lenient::string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    /// Every other property, as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// `encryptedContent` of a rich notification: the resource, encrypted to the
/// subscription's certificate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EncryptedContent {
    /// Base64 AES-256-CBC ciphertext of the resource JSON.
    #[serde(default)]
    pub data: String,
    /// Base64 RSA-OAEP-SHA1 encryption of the 32-byte symmetric key.
    #[serde(default)]
    pub data_key: String,
    /// Base64 HMAC-SHA256 of the raw ciphertext under the symmetric key.
    #[serde(default)]
    pub data_signature: String,
    /// The id the app gave the certificate when subscribing.
    #[serde(default)]
    pub encryption_certificate_id: String,
    /// Hex SHA-1 thumbprint of the certificate (upper case as Graph sends it).
    #[serde(default)]
    pub encryption_certificate_thumbprint: String,
    /// Every other property, as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A change notification item: something happened to a subscribed resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ChangeNotification {
    /// Optional unique notification id (Outlook sends one); a number is
    /// read as its digits.
    #[serde(
        default,
        deserialize_with = "lenient::string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    /// The subscription this notification belongs to.
    pub subscription_id: String,
    /// When the subscription expires (any offset, 0–7 fraction digits);
    /// `None` when absent or not a date-time.
    #[serde(
        rename = "subscriptionExpirationDateTime",
        default,
        with = "lenient_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub subscription_expiration: Option<OffsetDateTime>,
    /// `created`, `updated`, `deleted`, or a future value.
    pub change_type: ChangeType,
    /// Path of the changed resource, relative to the Graph root (empty
    /// when absent, `null` or not a string).
    #[serde(default, deserialize_with = "lenient::string_or_empty")]
    pub resource: String,
    /// What Graph says of the resource; OneDrive sends `null`. `None` too
    /// when it is not an object (the raw JSON keeps it).
    #[serde(default, deserialize_with = "lenient::object_or_none")]
    pub resource_data: Option<ResourceData>,
    /// The tenant the resource lives in (a number is read as its digits).
    #[serde(
        default,
        deserialize_with = "lenient::string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub tenant_id: Option<String>,
    /// The subscription's `clientState`, echoed by Graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_state: Option<ClientState>,
    /// The encrypted resource, for subscriptions with `includeResourceData`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_content: Option<EncryptedContent>,
    /// Every other property, as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl ChangeNotification {
    /// The resource kind, from `@odata.type` or the resource path.
    pub fn resource_kind(&self) -> ResourceKind {
        let odata_type = self
            .resource_data
            .as_ref()
            .and_then(|d| d.odata_type.as_deref());
        ResourceKind::detect(odata_type, Some(&self.resource))
    }
}

/// A lifecycle notification item: something happened to the subscription itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct LifecycleNotification {
    /// The subscription concerned.
    pub subscription_id: String,
    /// When the subscription expires; `None` when absent or not a date-time.
    #[serde(
        rename = "subscriptionExpirationDateTime",
        default,
        with = "lenient_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub subscription_expiration: Option<OffsetDateTime>,
    /// Which lifecycle event this is.
    pub lifecycle_event: LifecycleEventType,
    /// The tenant of the subscription (a number is read as its digits).
    #[serde(
        default,
        deserialize_with = "lenient::string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub tenant_id: Option<String>,
    /// The subscription's `clientState`, echoed by Graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_state: Option<ClientState>,
    /// Present in an early draft of the docs; usually absent.
    #[serde(
        default,
        deserialize_with = "lenient::string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub resource: Option<String>,
    /// Every other property, as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// One item of a notification collection.
#[derive(Clone, Debug, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "short-lived; boxing would only cost an allocation"
)]
#[non_exhaustive]
pub enum Notification {
    /// A change notification (the item has `changeType`).
    Change(ChangeNotification),
    /// A lifecycle notification (the item has `lifecycleEvent`).
    Lifecycle(LifecycleNotification),
}

/// Why an item could not be read as a notification.
#[derive(Debug)]
#[non_exhaustive]
pub enum ItemError {
    /// The item has neither `changeType` nor `lifecycleEvent`, or both.
    NotANotification,
    /// A property has the wrong JSON type, or a required one is missing.
    Malformed(serde_json::Error),
}

impl fmt::Display for ItemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ItemError::NotANotification => {
                f.write_str("item has neither or both of changeType and lifecycleEvent")
            }
            // A type error of serde's names the value it found: say where
            // instead, as the value may be content or a secret.
            ItemError::Malformed(e) if e.is_data() => write!(
                f,
                "a property has the wrong type or a required one is missing (line {} column {})",
                e.line(),
                e.column()
            ),
            ItemError::Malformed(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ItemError {}

impl Notification {
    /// Reads one item of `value`, deciding by `changeType` / `lifecycleEvent`.
    ///
    /// Leniently: unpaired surrogate escapes become U+FFFD, numeric ids
    /// their digits, a `resource` that is not a string or `resourceData`
    /// that is not an object absent (the raw JSON keeps them as sent).
    ///
    /// # Errors
    ///
    /// [`ItemError`] when the item is neither kind or does not fit its kind
    /// (a number beyond `f64`, nesting deeper than 128, a required property
    /// missing or of the wrong type). Behind the ack such an item is
    /// dead-lettered with this reason.
    pub fn from_json(item: &str) -> Result<Self, ItemError> {
        match Self::from_json_strict(item) {
            Err(ItemError::Malformed(e)) => match lenient::replace_lone_surrogates(item) {
                Some(fixed) => Self::from_json_strict(&fixed),
                None => Err(ItemError::Malformed(e)),
            },
            parsed => parsed,
        }
    }

    fn from_json_strict(item: &str) -> Result<Self, ItemError> {
        /// A first pass that only looks for the two discriminators,
        /// skipping every value without building it.
        #[derive(Deserialize)]
        struct Probe<'a> {
            #[serde(rename = "changeType", borrow, default)]
            change_type: Option<&'a serde_json::value::RawValue>,
            #[serde(rename = "lifecycleEvent", borrow, default)]
            lifecycle_event: Option<&'a serde_json::value::RawValue>,
        }
        let probe: Probe<'_> = serde_json::from_str(item).map_err(ItemError::Malformed)?;
        match (probe.change_type.is_some(), probe.lifecycle_event.is_some()) {
            (true, false) => serde_json::from_str(item)
                .map(Notification::Change)
                .map_err(ItemError::Malformed),
            (false, true) => serde_json::from_str(item)
                .map(Notification::Lifecycle)
                .map_err(ItemError::Malformed),
            _ => Err(ItemError::NotANotification),
        }
    }

    /// The subscription the item belongs to.
    pub fn subscription_id(&self) -> &str {
        match self {
            Notification::Change(c) => &c.subscription_id,
            Notification::Lifecycle(l) => &l.subscription_id,
        }
    }

    /// The tenant, when the item names one.
    pub fn tenant_id(&self) -> Option<&str> {
        match self {
            Notification::Change(c) => c.tenant_id.as_deref(),
            Notification::Lifecycle(l) => l.tenant_id.as_deref(),
        }
    }
}

/// `subscriptionExpirationDateTime`: RFC 3339 with any offset and 0–9 fraction
/// digits. A value that is not a date-time becomes `None` rather than losing the
/// whole notification; the raw JSON still has it.
pub(crate) mod lenient_rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        let value = Option::<serde_json::Value>::deserialize(deserializer)?;
        Ok(match value {
            Some(serde_json::Value::String(s)) => parse(&s),
            _ => None,
        })
    }

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<OffsetDateTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value.map(|v| v.format(&Rfc3339)) {
            Some(Ok(s)) => serializer.serialize_str(&s),
            _ => serializer.serialize_none(),
        }
    }

    /// Parses an RFC 3339 date-time; `None` if it is not one.
    pub(crate) fn parse(s: &str) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(s, &Rfc3339).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_parse_case_insensitively_and_keep_unknown_values() {
        assert_eq!(ChangeType::parse("Created"), ChangeType::Created);
        assert_eq!(ChangeType::parse("UPDATED"), ChangeType::Updated);
        assert_eq!(
            ChangeType::parse("unknownFutureValue"),
            ChangeType::Unknown("unknownFutureValue".into())
        );
        assert_eq!(
            LifecycleEventType::parse("ReauthorizationRequired"),
            LifecycleEventType::ReauthorizationRequired
        );
        assert_eq!(
            LifecycleEventType::parse("removed"),
            LifecycleEventType::SubscriptionRemoved
        );
        assert_eq!(
            LifecycleEventType::parse("somethingElse").as_str(),
            "somethingElse"
        );
        for t in [
            ChangeType::Created,
            ChangeType::Updated,
            ChangeType::Deleted,
        ] {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<ChangeType>(&json).unwrap(), t);
        }
    }

    #[test]
    fn expiration_accepts_every_fraction_length_and_offset() {
        let cases = [
            ("2026-03-19T22:11:09Z", 1_773_958_269, 0),
            ("2026-03-19T22:11:09.9Z", 1_773_958_269, 900_000_000),
            ("2026-03-19T22:11:09.952Z", 1_773_958_269, 952_000_000),
            (
                "2026-01-02T03:12:18.2257768+00:00",
                1_767_323_538,
                225_776_800,
            ),
            ("2026-03-19T14:11:09.95-08:00", 1_773_958_269, 950_000_000),
            (
                "2026-03-20T03:41:09.123456+05:30",
                1_773_958_269,
                123_456_000,
            ),
        ];
        for (text, secs, nanos) in cases {
            let t = lenient_rfc3339::parse(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(t.unix_timestamp(), secs, "{text}");
            assert_eq!(t.nanosecond(), nanos, "{text}");
        }
        assert!(lenient_rfc3339::parse("yesterday").is_none());
        assert!(lenient_rfc3339::parse("2026-03-19").is_none());
    }
}

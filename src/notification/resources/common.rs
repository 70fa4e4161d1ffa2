//! Complex types several resources share (Graph's `itemBody`, `identitySet`,
//! `emailAddress`, `recipient`, `dateTimeTimeZone`, `location`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `itemBody`: the body of a message, chat message or event.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ItemBody {
    /// `text` or `html`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Every other property, as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}
super::redacted_debug!(ItemBody { content_type });

/// `identity`: a user, application or device, by id and display name.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Identity {
    /// Unique id of the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Display name (not always present, and may change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Every other property (Teams adds `userIdentityType`, `tenantId`).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}
super::redacted_debug!(Identity { id });

/// `identitySet` (and Teams' `chatMessageFromIdentitySet`): who did something.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct IdentitySet {
    /// The application, for messages sent by a bot or app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<Identity>,
    /// The device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Identity>,
    /// The user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Identity>,
    /// Every other property, as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}
super::redacted_debug!(IdentitySet { user });

/// `emailAddress`: a name and an SMTP address.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EmailAddress {
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Every other property, as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}
super::redacted_debug!(EmailAddress {});

/// `recipient`: a sender or addressee of a message or event.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Recipient {
    /// The recipient's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_address: Option<EmailAddress>,
    /// Every other property, as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}
super::redacted_debug!(Recipient {});

/// `dateTimeTimeZone`: a local date-time (e.g. `2026-04-15T12:00:00.0000000`)
/// and its time zone name (e.g. `Pacific Standard Time` or `UTC`). Kept as
/// text: the zone names are Windows', not IANA's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct DateTimeTimeZone {
    /// Local date and time, without offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_time: Option<String>,
    /// Time zone name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Every other property, as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// `location` of an event.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Location {
    /// Name of the place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// `default`, `conferenceRoom`, `homeAddress`, … .
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_type: Option<String>,
    /// Every other property (`address`, `coordinates`, `uniqueId`, …).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}
super::redacted_debug!(Location { location_type });

//! `channel`: a channel of a team.
//! <https://learn.microsoft.com/graph/api/resources/channel>

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::notification::item::lenient_rfc3339;

/// A Teams channel (`#microsoft.graph.channel`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Channel {
    /// The channel's id, e.g. `19:…@thread.tacv2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Name shown in Teams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Optional description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Email address for sending messages to the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// `standard`, `private` or `shared`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_type: Option<String>,
    /// When the channel was created.
    #[serde(
        default,
        with = "lenient_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_date_time: Option<OffsetDateTime>,
    /// Whether members see it in their list by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_favorite_by_default: Option<bool>,
    /// Whether the channel is archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_archived: Option<bool>,
    /// The tenant of the team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Link to the channel in Teams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_url: Option<String>,
    /// Every other property, as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}
super::redacted_debug!(Channel {
    id,
    membership_type
});

//! `chat`: a Teams chat between users.
//! <https://learn.microsoft.com/graph/api/resources/chat>

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::notification::item::lenient_rfc3339;

/// A one-on-one, group or meeting chat (`#microsoft.graph.chat`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Chat {
    /// The chat's id, e.g. `19:…@thread.v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Title; only group chats can have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// `oneOnOne`, `group`, `meeting`, … .
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_type: Option<String>,
    /// When the chat was created.
    #[serde(
        default,
        with = "lenient_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_date_time: Option<OffsetDateTime>,
    /// When the chat was renamed or its member list changed.
    #[serde(
        default,
        with = "lenient_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_updated_date_time: Option<OffsetDateTime>,
    /// The tenant the chat was created in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Link to the chat in Teams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_url: Option<String>,
    /// Whether the chat is hidden for all its members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_hidden_for_all_members: Option<bool>,
    /// Every other property (`onlineMeetingInfo`, `viewpoint`, …), as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}
super::redacted_debug!(Chat { id, chat_type });

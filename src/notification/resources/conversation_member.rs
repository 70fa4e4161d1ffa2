//! `conversationMember`: a member of a chat, team or channel.
//! <https://learn.microsoft.com/graph/api/resources/conversationmember>

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::notification::item::lenient_rfc3339;

/// A member of a chat, team or channel (`#microsoft.graph.conversationMember`
/// and its derived `aadUserConversationMember`, whose fields are here too).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ConversationMember {
    /// The membership's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The member's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Roles, e.g. `owner` or `guest`; empty for ordinary members.
    #[serde(default)]
    pub roles: Vec<String>,
    /// From when the member can see the conversation's history.
    #[serde(
        default,
        with = "lenient_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub visible_history_start_date_time: Option<OffsetDateTime>,
    /// The Entra ID user id (`aadUserConversationMember`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The user's email address (`aadUserConversationMember`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The user's home tenant (`aadUserConversationMember`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Every other property (`@odata.type` tells the member type), as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}
super::redacted_debug!(ConversationMember { id, roles });

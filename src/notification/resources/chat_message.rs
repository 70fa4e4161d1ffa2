//! `chatMessage`: a message in a Teams chat or channel.
//! <https://learn.microsoft.com/graph/api/resources/chatmessage>

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::common::{IdentitySet, ItemBody};
use crate::notification::item::lenient_rfc3339;

/// A Teams chat or channel message (`#microsoft.graph.chatMessage`).
///
/// Graph sends every property in rich notifications (no `$select` for Teams).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ChatMessage {
    /// Unique id of the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Id of the parent message, for a reply in a channel thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to_id: Option<String>,
    /// Version number of the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// `message`, `chatEvent`, `typing`, `systemEventMessage`, … .
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    /// When the message was created.
    #[serde(
        default,
        with = "lenient_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_date_time: Option<OffsetDateTime>,
    /// When the message was created or last changed (reactions included).
    #[serde(
        default,
        with = "lenient_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_modified_date_time: Option<OffsetDateTime>,
    /// When the message was last edited.
    #[serde(
        default,
        with = "lenient_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_edited_date_time: Option<OffsetDateTime>,
    /// When the message was deleted, if it was.
    #[serde(
        default,
        with = "lenient_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub deleted_date_time: Option<OffsetDateTime>,
    /// Subject, plain text (channel posts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The content: text or HTML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<ItemBody>,
    /// Summary text, for push notifications and fallback views.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Who sent it (user, application or device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<IdentitySet>,
    /// `normal`, `high` or `urgent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<String>,
    /// Locale set by the client, e.g. `en-us`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// The chat it belongs to, for chat messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_id: Option<String>,
    /// The team and channel it belongs to, for channel messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_identity: Option<ChannelIdentity>,
    /// Link to the message in Teams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_url: Option<String>,
    /// Attached files, cards, … (`chatMessageAttachment`), as received.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Value>,
    /// @-mentions (`chatMessageMention`), as received.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<Value>,
    /// Reactions (`chatMessageReaction`), as received.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Value>,
    /// Every other property (`policyViolation`, `eventDetail`,
    /// `messageHistory`, `@odata.type`, …), as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}
super::redacted_debug!(ChatMessage { id, message_type });

/// `channelIdentity`: the team and channel of a channel message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ChannelIdentity {
    /// The team's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// The channel's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    /// Every other property, as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

//! `message`: an Outlook mail message.
//! <https://learn.microsoft.com/graph/api/resources/message>

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::common::{ItemBody, Recipient};
use crate::notification::item::lenient_rfc3339;

/// An Outlook message (`#microsoft.graph.message`).
///
/// Rich Outlook subscriptions must `$select` properties, so only those
/// arrive (with `…@odata.type` annotations, kept in `other`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Message {
    /// The message's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Subject line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The first 255 characters of the body, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_preview: Option<String>,
    /// The body, text or HTML (not selectable in rich subscriptions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<ItemBody>,
    /// The mailbox owner the message is from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Recipient>,
    /// The account that actually sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<Recipient>,
    /// To: recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_recipients: Vec<Recipient>,
    /// Cc: recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc_recipients: Vec<Recipient>,
    /// Bcc: recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc_recipients: Vec<Recipient>,
    /// Addresses to reply to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reply_to: Vec<Recipient>,
    /// When it was received.
    #[serde(
        default,
        with = "lenient_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub received_date_time: Option<OffsetDateTime>,
    /// When it was sent.
    #[serde(
        default,
        with = "lenient_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub sent_date_time: Option<OffsetDateTime>,
    /// When it was created.
    #[serde(
        default,
        with = "lenient_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_date_time: Option<OffsetDateTime>,
    /// When it last changed.
    #[serde(
        default,
        with = "lenient_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_modified_date_time: Option<OffsetDateTime>,
    /// Whether it has attachments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_attachments: Option<bool>,
    /// `low`, `normal` or `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<String>,
    /// Whether it has been read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read: Option<bool>,
    /// Whether it is a draft.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_draft: Option<bool>,
    /// Id of the conversation (thread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// The `Message-ID` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internet_message_id: Option<String>,
    /// Id of the folder holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_folder_id: Option<String>,
    /// Categories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// Link to open it in Outlook on the web.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_link: Option<String>,
    /// Every other property, as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}
super::redacted_debug!(Message { id });

//! Typed resources: what a rich notification's decrypted `data` is, for the
//! kinds whose data Graph sends.
//!
//! Each kind lives in its own file, with the fields Graph documents for it
//! (all optional: Outlook sends only `$select`ed ones) and every other
//! property kept in `other`. Kinds without a type here, and data that does
//! not fit its type, become [`Resource::Unknown`] with the JSON as received;
//! the event's [`data`](crate::ChangeEvent::data) always has the raw JSON.
//!
//! `Debug` of these types shows ids and kinds only: the rest is the user's
//! data.
//!
//! ```
//! use msgraph_webhooks::ResourceKind;
//! use msgraph_webhooks::notification::resources::Resource;
//!
//! let data = serde_json::json!({"id": "1", "body": {"contentType": "text", "content": "Hello"}});
//! match Resource::from_json(&ResourceKind::ChatMessage, &data) {
//!     Resource::ChatMessage(message) => {
//!         assert_eq!(message.body.unwrap().content.as_deref(), Some("Hello"));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

mod channel;
mod chat;
mod chat_message;
mod common;
mod contact;
mod conversation_member;
mod event;
mod message;
mod presence;
mod team;

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use channel::Channel;
pub use chat::Chat;
pub use chat_message::{ChannelIdentity, ChatMessage};
pub use common::{
    DateTimeTimeZone, EmailAddress, Identity, IdentitySet, ItemBody, Location, Recipient,
};
pub use contact::Contact;
pub use conversation_member::ConversationMember;
pub use event::Event;
pub use message::Message;
pub use presence::Presence;
pub use team::Team;

use super::ResourceKind;

/// `Debug` that names the type and the listed fields only.
macro_rules! redacted_debug {
    ($type:ident { $($field:ident),* }) => {
        impl std::fmt::Debug for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($type))
                    $(.field(stringify!($field), &self.$field))*
                    .finish_non_exhaustive()
            }
        }
    };
}
pub(crate) use redacted_debug;

/// A decrypted resource, typed by its kind.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "built once per event; boxing would only cost an allocation"
)]
pub enum Resource {
    /// A Teams chat or channel message.
    ChatMessage(ChatMessage),
    /// A Teams chat.
    Chat(Chat),
    /// A Teams channel.
    Channel(Channel),
    /// A team.
    Team(Team),
    /// A member of a chat, team or channel.
    ConversationMember(ConversationMember),
    /// A user's presence.
    Presence(Presence),
    /// An Outlook message.
    Message(Message),
    /// An Outlook calendar event.
    Event(Event),
    /// An Outlook contact.
    Contact(Contact),
    /// Another kind, or data that does not fit its kind's type: the JSON as
    /// received.
    Unknown(Value),
}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::ChatMessage(r) => r.fmt(f),
            Resource::Chat(r) => r.fmt(f),
            Resource::Channel(r) => r.fmt(f),
            Resource::Team(r) => r.fmt(f),
            Resource::ConversationMember(r) => r.fmt(f),
            Resource::Presence(r) => r.fmt(f),
            Resource::Message(r) => r.fmt(f),
            Resource::Event(r) => r.fmt(f),
            Resource::Contact(r) => r.fmt(f),
            Resource::Unknown(_) => f.write_str("Unknown(<redacted>)"),
        }
    }
}

impl Resource {
    /// Types `data` as a resource of `kind`. Never fails: a kind without a
    /// type, or data that does not fit (a property of the wrong JSON type),
    /// gives [`Resource::Unknown`].
    pub fn from_json(kind: &ResourceKind, data: &Value) -> Self {
        fn typed<T: DeserializeOwned>(data: &Value, wrap: fn(T) -> Resource) -> Resource {
            T::deserialize(data).map_or_else(|_| Resource::Unknown(data.clone()), wrap)
        }
        match kind {
            ResourceKind::ChatMessage => typed(data, Resource::ChatMessage),
            ResourceKind::Chat => typed(data, Resource::Chat),
            ResourceKind::Channel => typed(data, Resource::Channel),
            ResourceKind::Team => typed(data, Resource::Team),
            ResourceKind::ConversationMember => typed(data, Resource::ConversationMember),
            ResourceKind::Presence => typed(data, Resource::Presence),
            ResourceKind::Message => typed(data, Resource::Message),
            ResourceKind::Event => typed(data, Resource::Event),
            ResourceKind::Contact => typed(data, Resource::Contact),
            _ => Resource::Unknown(data.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// One document per kind, shaped like Graph's documentation examples;
    /// each must type, keep what it does not model, and survive a round trip.
    #[test]
    fn fixtures_of_every_kind_round_trip() {
        let fixtures = [
            (
                ResourceKind::ChatMessage,
                json!({
                    "@odata.type": "#Microsoft.Graph.chatMessage", "id": "1625126194597",
                    "replyToId": null, "etag": "1625126194597", "messageType": "message",
                    "createdDateTime": "2021-07-01T07:56:34.597Z", "lastModifiedDateTime": "2021-07-01T07:56:34.597Z",
                    "lastEditedDateTime": null, "deletedDateTime": null, "subject": null, "summary": null,
                    "chatId": "19:a@unq.gbl.spaces", "importance": "normal", "locale": "en-us", "webUrl": null,
                    "channelIdentity": null, "policyViolation": null, "eventDetail": null,
                    "from": {"application": null, "device": null, "user": {"id": "u1", "displayName": "Ada", "userIdentityType": "aadUser"}},
                    "body": {"contentType": "text", "content": "Hello World"},
                    "attachments": [], "mentions": [], "reactions": []
                }),
            ),
            (
                ResourceKind::Chat,
                json!({
                    "id": "19:b@thread.v2", "topic": "Plans", "chatType": "group",
                    "createdDateTime": "2026-01-01T10:00:00Z", "lastUpdatedDateTime": "2026-01-02T10:00:00.123Z",
                    "tenantId": "t", "webUrl": "https://teams.microsoft.com/l/chat/19%3Ab", "isHiddenForAllMembers": false,
                    "onlineMeetingInfo": null
                }),
            ),
            (
                ResourceKind::Channel,
                json!({
                    "id": "19:c@thread.tacv2", "displayName": "General", "description": "d", "email": "",
                    "membershipType": "standard", "createdDateTime": "2026-01-01T10:00:00Z",
                    "isFavoriteByDefault": true, "isArchived": false, "tenantId": "t", "webUrl": "https://teams.microsoft.com/l/channel/x"
                }),
            ),
            (
                ResourceKind::Team,
                json!({
                    "id": "g1", "displayName": "Contoso", "description": "", "internalId": "19:i@thread.skype",
                    "classification": null, "specialization": "none", "visibility": "private", "isArchived": false,
                    "tenantId": "t", "createdDateTime": "2026-01-01T10:00:00Z", "webUrl": "https://teams.microsoft.com/l/team/x",
                    "memberSettings": {"allowCreateUpdateChannels": true}
                }),
            ),
            (
                ResourceKind::ConversationMember,
                json!({
                    "@odata.type": "#microsoft.graph.aadUserConversationMember", "id": "m1", "roles": ["owner"],
                    "displayName": "Ada", "visibleHistoryStartDateTime": "0001-01-01T00:00:00Z",
                    "userId": "u1", "email": "ada@contoso.com", "tenantId": "t"
                }),
            ),
            (
                ResourceKind::Presence,
                json!({
                    "id": "u1", "availability": "Busy", "activity": "InAMeeting",
                    "statusMessage": null, "outOfOfficeSettings": {"message": null, "isOutOfOffice": false}
                }),
            ),
            (
                ResourceKind::Message,
                json!({
                    "@odata.etag": "W/\"CQAAABYAAAD\"", "id": "AAMk=", "subject": "Lunch?",
                    "receivedDateTime@odata.type": "#DateTimeOffset", "receivedDateTime": "2026-03-19T22:11:09Z",
                    "bodyPreview": "Are you free", "isRead": false, "hasAttachments": false, "importance": "normal",
                    "from": {"emailAddress": {"name": "Ada", "address": "ada@contoso.com"}},
                    "toRecipients": [{"emailAddress": {"name": "Bob", "address": "bob@contoso.com"}}],
                    "categories": ["Red"]
                }),
            ),
            (
                ResourceKind::Event,
                json!({
                    "id": "AAMkE=", "subject": "Review", "type": "singleInstance", "iCalUId": "0400",
                    "start": {"dateTime": "2026-04-15T12:00:00.0000000", "timeZone": "Pacific Standard Time"},
                    "end": {"dateTime": "2026-04-15T13:00:00.0000000", "timeZone": "Pacific Standard Time"},
                    "location": {"displayName": "Room 1", "locationType": "conferenceRoom"},
                    "organizer": {"emailAddress": {"name": "Ada", "address": "ada@contoso.com"}},
                    "attendees": [{"type": "required", "status": {"response": "none"}, "emailAddress": {"address": "bob@contoso.com"}}],
                    "isAllDay": false, "isCancelled": false, "isOnlineMeeting": true, "showAs": "busy",
                    "recurrence": null
                }),
            ),
            (
                ResourceKind::Contact,
                json!({
                    "id": "AAMkC=", "displayName": "Ada Lovelace", "givenName": "Ada", "surname": "Lovelace",
                    "emailAddresses": [{"name": "Ada", "address": "ada@contoso.com"}],
                    "businessPhones": ["+1 555 0100"], "mobilePhone": null, "companyName": "Contoso",
                    "birthday": "1815-12-10T00:00:00Z"
                }),
            ),
        ];
        for (kind, data) in fixtures {
            let resource = Resource::from_json(&kind, &data);
            let back = match &resource {
                Resource::ChatMessage(r) => {
                    assert_eq!(
                        r.body.as_ref().unwrap().content.as_deref(),
                        Some("Hello World")
                    );
                    assert_eq!(r.created_date_time.unwrap().unix_timestamp(), 1_625_126_194);
                    assert_eq!(
                        r.from
                            .as_ref()
                            .unwrap()
                            .user
                            .as_ref()
                            .unwrap()
                            .id
                            .as_deref(),
                        Some("u1")
                    );
                    assert!(r.other.contains_key("@odata.type"));
                    serde_json::to_value(r)
                }
                Resource::Chat(r) => {
                    assert_eq!(r.chat_type.as_deref(), Some("group"));
                    serde_json::to_value(r)
                }
                Resource::Channel(r) => {
                    assert_eq!(r.membership_type.as_deref(), Some("standard"));
                    serde_json::to_value(r)
                }
                Resource::Team(r) => {
                    assert_eq!(r.visibility.as_deref(), Some("private"));
                    assert!(r.other.contains_key("memberSettings"));
                    serde_json::to_value(r)
                }
                Resource::ConversationMember(r) => {
                    assert_eq!(r.roles, ["owner"]);
                    assert_eq!(r.user_id.as_deref(), Some("u1"));
                    serde_json::to_value(r)
                }
                Resource::Presence(r) => {
                    assert_eq!(r.availability.as_deref(), Some("Busy"));
                    serde_json::to_value(r)
                }
                Resource::Message(r) => {
                    assert_eq!(
                        r.to_recipients[0]
                            .email_address
                            .as_ref()
                            .unwrap()
                            .address
                            .as_deref(),
                        Some("bob@contoso.com")
                    );
                    assert!(r.other.contains_key("receivedDateTime@odata.type"));
                    serde_json::to_value(r)
                }
                Resource::Event(r) => {
                    assert_eq!(r.event_type.as_deref(), Some("singleInstance"));
                    assert_eq!(
                        r.start.as_ref().unwrap().time_zone.as_deref(),
                        Some("Pacific Standard Time")
                    );
                    serde_json::to_value(r)
                }
                Resource::Contact(r) => {
                    assert_eq!(r.email_addresses.len(), 1);
                    serde_json::to_value(r)
                }
                Resource::Unknown(_) => panic!("{kind:?} did not type"),
            }
            .unwrap();
            // Nothing Graph sent is lost (nulls aside).
            for (key, value) in data.as_object().unwrap() {
                if !value.is_null() && value != &json!([]) {
                    assert!(back.get(key).is_some(), "{kind:?} lost {key}");
                }
            }
            let debug = format!("{resource:?}");
            for secret in ["Hello World", "ada@contoso.com", "Lunch?", "Busy", "Plans"] {
                assert!(
                    !debug.contains(secret),
                    "{kind:?} Debug shows {secret}: {debug}"
                );
            }
        }
    }

    #[test]
    fn unknown_kinds_and_misfits_keep_the_json() {
        let data = json!({"id": "x", "subject": 5});
        assert_eq!(
            Resource::from_json(&ResourceKind::Message, &data),
            Resource::Unknown(data.clone())
        );
        assert_eq!(
            Resource::from_json(&ResourceKind::DriveItem, &data),
            Resource::Unknown(data.clone())
        );
        assert_eq!(
            Resource::from_json(&ResourceKind::Chat, &json!("not an object")),
            Resource::Unknown(json!("not an object"))
        );
    }
}

//! The strings of a change notification as Graph writes them, per kind:
//! `resource`, `@odata.type` and `@odata.id` of `resourceData`, and the
//! form of `subscriptionExpirationDateTime` — the same whatever the case or
//! key syntax a change was fired with.
//!
//! From Microsoft Learn: "Change notifications for Outlook resources",
//! <https://learn.microsoft.com/graph/outlook-change-notifications-overview>
//! (basic `Users/{id}/Messages/{id}` with `#Microsoft.Graph.Message`, rich
//! `Users('{id}')/messages('{id}')` with `#microsoft.graph.message`); "Set
//! up change notifications that include resource data",
//! <https://learn.microsoft.com/graph/change-notifications-with-resource-data>
//! (`teams('…')/channels('…')/messages('…')/replies('…')`); "Get change
//! notifications for chat and channel messages",
//! <https://learn.microsoft.com/graph/teams-changenotifications-chatmessage>
//! (`chats('…')/messages('…')`, `#Microsoft.Graph.chatMessage`, expirations
//! like `2021-02-02T10:30:34.9097561-08:00`); "Get change notifications for presence
//! updates", <https://learn.microsoft.com/graph/changenotifications-for-presence>
//! (`communications/presences/{id}`, `@odata.id` `users/{id}/presence`,
//! `#microsoft.graph.presence`); "Get change notifications for call
//! records", <https://learn.microsoft.com/graph/changenotifications-for-callrecords>
//! (`#Microsoft.Graph.callrecord`).

use serde_json::Value;

use super::{Change, Target};
use crate::catalog::ResourcePath;
use crate::emulator::store::{Subscription, TimeForm};
use crate::notification::ResourceKind;

/// Teams kinds whose paths Graph writes with keys in `('…')`.
fn paren_kind(kind: &ResourceKind) -> bool {
    matches!(
        kind,
        ResourceKind::ChatMessage
            | ResourceKind::Chat
            | ResourceKind::Channel
            | ResourceKind::Team
            | ResourceKind::ConversationMember
    )
}

/// `teams('t1')/channels('c1')/messages('m1')` from `teams`, `t1`,
/// `channels`, `c1`, …: literals lower-case, keys as given.
fn paren_form(segments: &[&str]) -> String {
    let mut out = String::new();
    for (i, segment) in segments.iter().enumerate() {
        if i % 2 == 0 {
            if i > 0 {
                out.push('/');
            }
            out.push_str(&segment.to_ascii_lowercase());
        } else {
            out.push_str("('");
            out.push_str(segment);
            out.push_str("')");
        }
    }
    out
}

/// The subscription's path segments with `me` as its user.
fn subscribed_segments(subscription: &Subscription) -> Vec<String> {
    let me = subscription.me();
    subscription
        .path
        .segments()
        .iter()
        .enumerate()
        .map(|(i, s)| match me {
            Some(user) if i == 1 && *s == "me" => user.to_owned(),
            _ => (*s).to_owned(),
        })
        .collect()
}

/// The subscription's resource as Graph names it: `me` expanded, query
/// options dropped.
fn base(subscription: &Subscription) -> String {
    let resource = subscription.resource.trim().trim_start_matches('/');
    let resource = resource.split('?').next().unwrap_or_default();
    match (subscription.me(), resource.get(..3)) {
        (Some(user), Some(prefix)) if prefix.eq_ignore_ascii_case("me/") => {
            format!("users/{user}/{}", &resource[3..])
        }
        _ => resource.to_owned(),
    }
}

/// The notification's `resource` for an item with id `id`.
pub(super) fn item_resource(
    subscription: &Subscription,
    change: &Change,
    target: Target,
    id: &str,
) -> String {
    let kind = subscription.kind();
    let changed = ResourcePath::parse(&change.resource).ok();
    let changed_segments: Vec<&str> = changed
        .as_ref()
        .map(ResourcePath::segments)
        .unwrap_or_default();
    if subscription.entry.rules().outlook {
        return outlook_resource(subscription, id);
    }
    if paren_kind(kind) {
        if target == Target::Beneath {
            return paren_form(&changed_segments);
        }
        if let Some(resource) = chat_message_from_data(kind, change, id) {
            return resource;
        }
        let mut segments = subscribed_segments(subscription);
        if !subscription.entry.single_resource {
            segments.push(id.to_owned());
        }
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        return paren_form(&segments);
    }
    if *kind == ResourceKind::Presence {
        let subscribed = subscribed_segments(subscription);
        let user = match target {
            Target::Beneath => changed_segments.last().copied(),
            Target::Subscribed if subscription.entry.single_resource => {
                subscribed.last().map(String::as_str)
            }
            Target::Subscribed => None,
        };
        return format!("communications/presences/{}", user.unwrap_or(id));
    }
    let base = base(subscription);
    if subscription.entry.single_resource {
        return base;
    }
    let key = match target {
        Target::Beneath => {
            let subscribed = subscription.path.segments().len();
            // One key below the subscribed collection: named from the
            // subscription, whatever case the change was fired in; deeper
            // (a getAll… function's items), as fired.
            if changed_segments.len() != subscribed + 1 {
                return change.resource.trim().trim_start_matches('/').to_owned();
            }
            changed_segments.last().copied().unwrap_or(id)
        }
        Target::Subscribed => id,
    };
    if subscription.path.uses_paren_keys() {
        format!("{base}('{key}')")
    } else {
        format!("{base}/{key}")
    }
}

/// A chat or channel message named by the chat or channel in its data.
fn chat_message_from_data(kind: &ResourceKind, change: &Change, id: &str) -> Option<String> {
    if *kind != ResourceKind::ChatMessage {
        return None;
    }
    let data = change.data.as_ref();
    let field = |name: &str| data.and_then(|d| d.get(name)).and_then(Value::as_str);
    if let Some(chat) = field("chatId") {
        return Some(format!("chats('{chat}')/messages('{id}')"));
    }
    let channel = data.and_then(|d| d.get("channelIdentity"));
    let part = |name: &str| channel.and_then(|c| c.get(name)).and_then(Value::as_str);
    let (team, channel) = (part("teamId")?, part("channelId")?);
    Some(format!(
        "teams('{team}')/channels('{channel}')/messages('{id}')"
    ))
}

/// Outlook's two spellings: `Users/{u}/Messages/{id}` for basic
/// notifications, `Users('{u}')/messages('{id}')` for rich ones.
fn outlook_resource(subscription: &Subscription, id: &str) -> String {
    let collection = match subscription.kind() {
        ResourceKind::Event => "events",
        ResourceKind::Contact => "contacts",
        _ => "messages",
    };
    let user = subscription
        .me()
        .or_else(|| subscription.path.user())
        .unwrap_or("me");
    if subscription.rich() {
        format!("Users('{user}')/{collection}('{id}')")
    } else {
        let mut chars = collection.chars();
        let first = chars
            .next()
            .map(|c| c.to_ascii_uppercase())
            .unwrap_or_default();
        format!("Users/{user}/{first}{}/{id}", chars.as_str())
    }
}

/// The key of the item a path ends in: `AAMk1` of `users/ada/messages/AAMk1`
/// or of `messages('AAMk1')`.
pub(super) fn last_key(path: &str) -> Option<String> {
    let last = path.trim_end_matches('/').rsplit('/').next()?;
    let key = match last.split_once('(') {
        Some((_, inner)) => inner.trim_end_matches(')').trim_matches('\''),
        None => last,
    };
    (!key.is_empty()).then(|| key.to_owned())
}

/// `resourceData`'s `@odata.type`: `#Microsoft.Graph.Message`, … and the
/// documented exceptions — rich Outlook's `#microsoft.graph.message`,
/// `#Microsoft.Graph.chatMessage`, `#microsoft.graph.chat`,
/// `#microsoft.graph.presence`, `#Microsoft.Graph.callrecord`.
pub(super) fn odata_type(subscription: &Subscription) -> String {
    let kind = subscription.kind();
    let name = kind.as_str();
    match kind {
        ResourceKind::Presence => return "#microsoft.graph.presence".to_owned(),
        ResourceKind::CallRecord => return "#Microsoft.Graph.callrecord".to_owned(),
        // Microsoft Learn, "Get change notifications for chats",
        // <https://learn.microsoft.com/graph/teams-changenotifications-chat>.
        ResourceKind::Chat => return "#microsoft.graph.chat".to_owned(),
        // Microsoft Learn, "Get change notifications for chat and channel
        // messages", <https://learn.microsoft.com/graph/teams-changenotifications-chatmessage>.
        ResourceKind::ChatMessage => return "#Microsoft.Graph.chatMessage".to_owned(),
        _ if subscription.entry.rules().outlook && subscription.rich() => {
            return format!("#microsoft.graph.{name}");
        }
        _ => {}
    }
    let mut chars = name.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase());
    format!(
        "#Microsoft.Graph.{}{}",
        first.map(String::from).unwrap_or_default(),
        chars.as_str()
    )
}

/// `resourceData`'s `@odata.id`: the resource, but `users/{id}/presence`
/// for presence.
pub(super) fn odata_id(subscription: &Subscription, resource: &str, id: &str) -> String {
    if *subscription.kind() == ResourceKind::Presence {
        let user = resource
            .rsplit('/')
            .next()
            .filter(|u| !u.is_empty())
            .unwrap_or(id);
        return format!("users/{user}/presence");
    }
    resource.to_owned()
}

/// The form of `subscriptionExpirationDateTime` in a kind's notifications.
pub(super) fn expiration_form(kind: &ResourceKind) -> TimeForm {
    match kind {
        ResourceKind::Message | ResourceKind::Event | ResourceKind::Contact => TimeForm::Outlook,
        ResourceKind::Presence => TimeForm::Resource,
        ResourceKind::CallRecord => TimeForm::CallRecord,
        ResourceKind::ChatMessage
        | ResourceKind::Chat
        | ResourceKind::Channel
        | ResourceKind::Team
        | ResourceKind::ConversationMember => TimeForm::Teams,
        _ => TimeForm::Notification,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_a_path_ends_in() {
        assert_eq!(
            last_key("users/ada/messages/AAMk1").as_deref(),
            Some("AAMk1")
        );
        assert_eq!(
            last_key("chats('19:x')/messages('16169')").as_deref(),
            Some("16169")
        );
        assert_eq!(last_key("users/ada/messages/").as_deref(), Some("messages"));
        assert_eq!(last_key("").as_deref(), None);
    }

    #[test]
    fn teams_paths_take_keys_in_parentheses() {
        assert_eq!(
            paren_form(&[
                "Teams",
                "T1",
                "Channels",
                "19:a@thread.tacv2",
                "messages",
                "M1"
            ]),
            "teams('T1')/channels('19:a@thread.tacv2')/messages('M1')"
        );
        assert_eq!(paren_form(&["chats", "c1"]), "chats('c1')");
    }
}

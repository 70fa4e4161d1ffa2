//! What a change in the emulated tenant becomes: the subscriptions it
//! concerns, and the notification items Graph would send them (basic, or
//! with the resource encrypted to the subscription's certificate).

use openssl::error::ErrorStack;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::encrypt::encrypt_resource;
use super::store::{Subscription, graph_time, graph_time_as};
use crate::notification::{ChangeType, LifecycleEventType, ResourceKind};
use strings::{expiration_form, item_resource, last_key, odata_id, odata_type};

mod matching;
mod strings;

pub(crate) use matching::{Changed, Target, target};

/// A change to notify subscribers of: the body of `POST /emulator/changes`.
///
/// ```
/// use msgraph_webhooks::ChangeType;
/// use msgraph_webhooks::emulator::Change;
///
/// let change = Change::new("me/mailFolders('Inbox')/messages", ChangeType::Created)
///     .data(serde_json::json!({"id": "AAMkAGI1", "subject": "Hello"}));
/// # let _ = change;
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Change {
    /// A subscribed resource (`me/messages`, `chats/{id}/messages`), or an
    /// item beneath one (`users/{id}/messages/{id}`), which then is the
    /// notification's `resource`.
    pub resource: String,
    /// What happened.
    pub change_type: ChangeType,
    /// The resource's JSON, as a GET would return it: its `id` goes into
    /// `resourceData`, and rich subscriptions get all of it, encrypted.
    #[serde(default)]
    pub data: Option<Value>,
    /// A change of permissions on a drive item: only subscriptions created
    /// with `Prefer: includesecuritywebhooks` hear of it.
    #[serde(default)]
    pub permissions_changed: bool,
    /// Whether subscribers hear of it (default `true`). `false` records the
    /// change in the emulator's data without notifying anyone: a dropped
    /// notification, for a delta query to catch up on.
    #[serde(default = "yes")]
    pub notify: bool,
}

fn yes() -> bool {
    true
}

impl Change {
    /// A change without resource data.
    pub fn new(resource: impl Into<String>, change_type: ChangeType) -> Self {
        Self {
            resource: resource.into(),
            change_type,
            data: None,
            permissions_changed: false,
            notify: true,
        }
    }

    /// Sets the resource's JSON.
    pub fn data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// Whether subscribers are notified (`false`: the change is only recorded).
    pub fn notify(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// Marks the change as a permission change of a drive item.
    pub fn permissions_changed(mut self) -> Self {
        self.permissions_changed = true;
        self
    }
}

/// The resource data a rich subscription gets: the change's JSON, with
/// `id` and `@odata.type`, cut to `$select` for Outlook, with
/// `systemEventMessage` hidden unless the subscription asked for unknown
/// enum members.
fn rich_data(subscription: &Subscription, change: &Change, id: &str) -> Map<String, Value> {
    let mut data = match &change.data {
        Some(Value::Object(map)) => map.clone(),
        _ => Map::new(),
    };
    data.entry("id").or_insert_with(|| json!(id));
    data.entry("@odata.type")
        .or_insert_with(|| json!(format!("#microsoft.graph.{}", subscription.kind().as_str())));
    if *subscription.kind() == ResourceKind::Presence {
        data.entry("@odata.id")
            .or_insert_with(|| json!(format!("users/{id}/presence")));
    }
    if subscription.entry.rules().outlook
        && let Some(select) = subscription.path.query("$select")
    {
        let selected: Vec<&str> = select.split(',').map(str::trim).collect();
        data.retain(|key, _| {
            key == "id"
                || key.starts_with("@odata.")
                || selected.iter().any(|s| {
                    key.eq_ignore_ascii_case(s)
                        || key
                            .split_once('@')
                            .is_some_and(|(k, _)| k.eq_ignore_ascii_case(s))
                })
        });
    }
    if *subscription.kind() == ResourceKind::ChatMessage
        && !subscription.unknown_enum_members
        && data.get("messageType").and_then(Value::as_str) == Some("systemEventMessage")
    {
        data.insert("messageType".to_owned(), json!("unknownFutureValue"));
    }
    data
}

/// The notification items `change` makes for `subscription`: one, or two
/// for `notifyOnUserSpecificProperties=true` (with and without the
/// user-specific `viewpoint`).
///
/// # Errors
///
/// OpenSSL errors encrypting rich data.
pub(crate) fn change_items(
    subscription: &Subscription,
    change: &Change,
    target: Target,
) -> Result<Vec<Value>, ErrorStack> {
    let data_id = change
        .data
        .as_ref()
        .and_then(|d| d.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    // A change fired on an item beneath the subscription names its key.
    let path_id = (target == Target::Beneath)
        .then(|| last_key(&change.resource))
        .flatten();
    let id = data_id.or(path_id).unwrap_or_else(crate::random::uuid);
    let resource = item_resource(subscription, change, target, &id);
    let outlook = subscription.entry.rules().outlook;
    let resource_data = if *subscription.kind() == ResourceKind::DriveItem {
        Value::Null
    } else {
        let mut data = Map::new();
        data.insert("@odata.type".to_owned(), json!(odata_type(subscription)));
        data.insert(
            "@odata.id".to_owned(),
            json!(odata_id(subscription, &resource, &id)),
        );
        let etag = change
            .data
            .as_ref()
            .and_then(|d| d.get("@odata.etag"))
            .cloned();
        if let Some(etag) =
            etag.or_else(|| outlook.then(|| json!(format!("W/\"{}\"", crate::random::uuid()))))
        {
            data.insert("@odata.etag".to_owned(), etag);
        }
        data.insert("id".to_owned(), json!(id));
        Value::Object(data)
    };

    let user_specific = subscription.entry.user_specific_properties
        && subscription
            .path
            .query("notifyOnUserSpecificProperties")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut payloads = vec![rich_data(subscription, change, &id)];
    if user_specific {
        let mut without = payloads[0].clone();
        without.remove("viewpoint");
        payloads.push(without);
    }

    let mut items = Vec::with_capacity(payloads.len());
    for payload in payloads {
        let mut item = Map::new();
        if outlook {
            item.insert("id".to_owned(), json!(crate::random::uuid()));
        }
        item.insert("subscriptionId".to_owned(), json!(subscription.id));
        item.insert(
            "subscriptionExpirationDateTime".to_owned(),
            json!(graph_time_as(
                subscription.expiration,
                expiration_form(subscription.kind())
            )),
        );
        item.insert("changeType".to_owned(), json!(change.change_type));
        item.insert("resource".to_owned(), json!(resource));
        if let Some(state) = &subscription.client_state {
            item.insert("clientState".to_owned(), json!(state.expose()));
        }
        item.insert("tenantId".to_owned(), json!(subscription.tenant_id));
        item.insert("resourceData".to_owned(), resource_data.clone());
        if *subscription.kind() == ResourceKind::Presence {
            // Microsoft Learn, "Get change notifications for presence updates
            // in Microsoft Teams", <https://learn.microsoft.com/graph/changenotifications-for-presence>.
            item.insert("organizationId".to_owned(), json!(subscription.tenant_id));
        }
        if subscription.rich()
            && let Some(certificate) = &subscription.certificate
        {
            let json = serde_json::to_vec(&payload).unwrap_or_default();
            let encrypted = encrypt_resource(&certificate.x509, &certificate.id, &json)?;
            item.insert("encryptedContent".to_owned(), json!(encrypted));
        }
        items.push(Value::Object(item));
    }
    Ok(items)
}

/// A lifecycle notification item (Microsoft Learn, "Reduce missing subscriptions and change notifications", <https://learn.microsoft.com/graph/change-notifications-lifecycle-events>).
pub(crate) fn lifecycle_item(subscription: &Subscription, event: &LifecycleEventType) -> Value {
    let mut item = Map::new();
    item.insert("lifecycleEvent".to_owned(), json!(event));
    item.insert("subscriptionId".to_owned(), json!(subscription.id));
    item.insert(
        "subscriptionExpirationDateTime".to_owned(),
        json!(graph_time(subscription.expiration)),
    );
    if let Some(state) = &subscription.client_state {
        item.insert("clientState".to_owned(), json!(state.expose()));
    }
    item.insert("tenantId".to_owned(), json!(subscription.tenant_id));
    Value::Object(item)
}

//! What the inspector keeps of a delivery and of each of its items: the
//! fields that say what it is, never its `clientState`, and its fate.

use serde::Serialize;
use serde::ser::Serializer;
use serde_json::value::RawValue;
use time::OffsetDateTime;

/// The longest string kept of a field the sender wrote.
const MAX_FIELD: usize = 200;

/// What a POST (or GET) to the notification endpoint was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum DeliveryPath {
    /// Change notifications.
    Notification,
    /// Lifecycle notifications.
    Lifecycle,
    /// The validation handshake.
    Handshake,
    /// Anything else that reached the endpoint (a wrong method, a body
    /// that isn't a notification collection).
    Other,
    /// Items a worker took from the store that this process's endpoint did
    /// not receive (another instance did, or they left the ring): one
    /// record per item, without a status.
    Stored,
}

/// One request to the notification endpoint.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Delivery {
    /// Its number, from 1, in arrival order.
    pub seq: u64,
    /// The inspector's version when this record last changed.
    pub version: u64,
    /// When it arrived.
    #[serde(serialize_with = "rfc3339")]
    pub at: OffsetDateTime,
    /// What it was.
    pub path: DeliveryPath,
    /// The status it was answered with (`None` for [`DeliveryPath::Stored`]).
    pub status: Option<u16>,
    /// How long the answer took, in milliseconds.
    pub ack_ms: Option<f64>,
    /// Its items (at most [`MAX_ITEMS`](super::MAX_ITEMS)).
    pub items: Vec<Item>,
    /// Items beyond those kept.
    pub more_items: usize,
}

/// A delivery as the ring keeps it: its items as [`Kept`], read into a
/// [`Delivery`] only when someone asks.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub(crate) seq: u64,
    pub(crate) version: u64,
    pub(crate) at: OffsetDateTime,
    pub(crate) path: DeliveryPath,
    pub(crate) status: Option<u16>,
    pub(crate) ack_ms: Option<f64>,
    pub(crate) items: Vec<Kept>,
    pub(crate) more_items: usize,
    /// The keys of `items`, to forget them when the record leaves the ring.
    pub(crate) keys: Vec<u64>,
}

impl Record {
    /// The record as the API shows it.
    pub(crate) fn view(&self) -> Delivery {
        Delivery {
            seq: self.seq,
            version: self.version,
            at: self.at,
            path: self.path,
            status: self.status,
            ack_ms: self.ack_ms,
            items: self.items.iter().map(Kept::item).collect(),
            more_items: self.more_items,
        }
    }
}

/// The longest raw item kept as it came; longer ones (rich items, mostly)
/// are read into their fields at once, so the ring stays small.
const MAX_RAW: usize = 2048;

/// An item as the ring keeps it. On the ack path it costs a copy of the
/// item's text (the fields are read when the API is asked); the text holds
/// the `clientState`, which [`item_of`] never reads.
#[derive(Clone, Debug)]
pub(crate) struct Kept {
    source: Source,
    pub(crate) fate: Fate,
    pub(crate) resource_data: Option<serde_json::Value>,
}

#[derive(Clone, Debug)]
enum Source {
    Raw(Box<RawValue>),
    Read(Box<Item>),
}

impl Kept {
    pub(crate) fn new(raw: &RawValue, fate: Fate) -> Self {
        let source = if raw.get().len() <= MAX_RAW {
            Source::Raw(raw.to_owned())
        } else {
            Source::Read(Box::new(item_of(raw, Fate::Accepted)))
        };
        Self {
            source,
            fate,
            resource_data: None,
        }
    }

    /// The item's fields, with its fate.
    pub(crate) fn item(&self) -> Item {
        let mut item = match &self.source {
            Source::Raw(raw) => item_of(raw, Fate::Accepted),
            Source::Read(item) => (**item).clone(),
        };
        item.fate = self.fate.clone();
        item.resource_data.clone_from(&self.resource_data);
        item
    }
}

/// One item of a delivery.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Item {
    /// `subscriptionId`.
    pub subscription_id: Option<String>,
    /// `changeType`.
    pub change_type: Option<String>,
    /// `lifecycleEvent`.
    pub lifecycle_event: Option<String>,
    /// `resource`.
    pub resource: Option<String>,
    /// `resourceData.@odata.type`.
    pub odata_type: Option<String>,
    /// `resourceData.id`.
    pub resource_id: Option<String>,
    /// `tenantId`.
    pub tenant_id: Option<String>,
    /// Whether it carries `encryptedContent`.
    pub encrypted: bool,
    /// The decrypted resource, kept only by an inspector that shows secrets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_data: Option<serde_json::Value>,
    /// What became of it.
    pub fate: Fate,
}

/// What became of an item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
#[non_exhaustive]
pub enum Fate {
    /// Stored and acknowledged; not handled yet.
    Accepted,
    /// Passed its checks but the delivery was not acknowledged (the store
    /// refused it): Graph sends it again.
    NotStored,
    /// The handler succeeded.
    Handled,
    /// The handler (or a check that could not finish) failed; it is tried again.
    #[serde(rename_all = "camelCase")]
    Retrying {
        /// Failures so far.
        attempt: u32,
        /// Why.
        error: String,
    },
    /// Waiting without counting an attempt (a copy is being handled elsewhere).
    #[serde(rename_all = "camelCase")]
    Deferred {
        /// Why.
        why: String,
    },
    /// Given up on, kept in the dead letters.
    #[serde(rename_all = "camelCase")]
    DeadLettered {
        /// Why.
        reason: String,
    },
    /// Refused by a check; never handled.
    #[serde(rename_all = "camelCase")]
    Rejected {
        /// The reason's metric label, e.g. `client_state_mismatch`.
        reason: &'static str,
        /// What to do about it.
        hint: &'static str,
    },
}

impl Fate {
    /// A refusal, with the hint for its reason.
    pub(crate) fn rejected(reason: &'static str) -> Self {
        Fate::Rejected {
            reason,
            hint: hint(reason),
        }
    }

    /// `accepted`, `handled`, `retrying`, … as the filter names it.
    pub fn state(&self) -> &'static str {
        match self {
            Fate::Accepted => "accepted",
            Fate::NotStored => "notStored",
            Fate::Handled => "handled",
            Fate::Retrying { .. } => "retrying",
            Fate::Deferred { .. } => "deferred",
            Fate::DeadLettered { .. } => "deadLettered",
            Fate::Rejected { .. } => "rejected",
        }
    }
}

/// What to do about a rejection, by its reason.
pub fn hint(reason: &str) -> &'static str {
    match reason {
        "client_state_mismatch" => {
            "the item's clientState is not the one registered for its subscription: the \
             subscription was made with another --client-state, or by another app; recreate it \
             or register its state"
        }
        "unknown_subscription" => {
            "no record of this subscriptionId: it was made by another app or before this store \
             existed; with the manager, it deletes such subscriptions (run `subscribe`), or \
             share the store the manager writes"
        }
        "malformed_item" => {
            "not a notification Graph sends (no subscriptionId, or neither changeType nor \
             lifecycleEvent): look at the sender"
        }
        "validation_tokens_over_limit" => {
            "more or longer validationTokens than Graph sends: a forged delivery"
        }
        "duplicate" => "already handled: Graph sent it again (its retry), dedupe dropped it",
        "tokens_missing" | "tokens_null" | "tokens_malformed" => {
            "an encrypted item whose delivery has no usable validationTokens: a forged \
             delivery, or a proxy that strips them"
        }
        "token_audience" => {
            "the validation token is for another app: set --app-id to the subscribing app's \
             client id"
        }
        "token_tenant_not_allowed" => {
            "the validation token is for another tenant: check --tenant-id"
        }
        "token_malformed" | "token_algorithm" | "token_unknown_key" | "token_signature"
        | "token_issuer" | "token_publisher" => {
            "the validation token does not verify against the signing keys: a forged delivery, \
             or the keys/issuer settings point elsewhere (the emulator's --jwks?)"
        }
        "token_expired" | "token_not_yet_valid" => {
            "the validation token is outside its lifetime: the machine's clock is off, or the \
             item waited in the store longer than the token lives"
        }
        "token_not_covering_item" => {
            "no validation token of the delivery vouches for this item's app and tenant: a \
             forged or mixed delivery"
        }
        "no_decryption_keys" | "unknown_certificate_id" | "thumbprint_mismatch" => {
            "the encrypted content names a certificate this receiver has no key for: add the \
             key the subscription was created with (--key) or recreate the subscription"
        }
        "invalid_base64"
        | "truncated_ciphertext"
        | "key_unwrap_failed"
        | "signature_mismatch"
        | "bad_padding"
        | "invalid_plaintext" => {
            "the encrypted content does not open or verify with the key: tampered in transit, \
             or encrypted to another key with the same id"
        }
        _ => "see the reasons listed in the README's troubleshooting section",
    }
}

fn rfc3339<S: Serializer>(at: &OffsetDateTime, serializer: S) -> Result<S::Ok, S::Error> {
    let text = at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    serializer.serialize_str(&text)
}

/// Reads the fields of a raw item that the inspector shows; anything
/// missing or not a string is `None`, and every string is cut to 200
/// characters. The `clientState` is never read.
pub(crate) fn item_of(raw: &RawValue, fate: Fate) -> Item {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct ResourceData<'a> {
        #[serde(rename = "@odata.type", borrow)]
        odata_type: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        id: Option<std::borrow::Cow<'a, str>>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Fields<'a> {
        #[serde(borrow)]
        subscription_id: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        change_type: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        lifecycle_event: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        resource: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        tenant_id: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        resource_data: Option<ResourceData<'a>>,
        encrypted_content: Option<serde::de::IgnoredAny>,
    }
    let cut = |s: Option<&str>| s.map(|s| s.chars().take(MAX_FIELD).collect::<String>());
    if let Ok(fields) = serde_json::from_str::<Fields<'_>>(raw.get()) {
        let data = fields.resource_data.unwrap_or_default();
        return Item {
            subscription_id: cut(fields.subscription_id.as_deref()),
            change_type: cut(fields.change_type.as_deref()),
            lifecycle_event: cut(fields.lifecycle_event.as_deref()),
            resource: cut(fields.resource.as_deref()),
            odata_type: cut(data.odata_type.as_deref()),
            resource_id: cut(data.id.as_deref()),
            tenant_id: cut(fields.tenant_id.as_deref()),
            encrypted: fields.encrypted_content.is_some(),
            resource_data: None,
            fate,
        };
    }
    // A field of an unexpected type: read what is readable, one by one.
    let value: serde_json::Value = serde_json::from_str(raw.get()).unwrap_or_default();
    let field = |name: &str| cut(value.get(name).and_then(serde_json::Value::as_str));
    let data = |name: &str| {
        cut(value
            .get("resourceData")
            .and_then(|d| d.get(name))
            .and_then(serde_json::Value::as_str))
    };
    Item {
        subscription_id: field("subscriptionId"),
        change_type: field("changeType"),
        lifecycle_event: field("lifecycleEvent"),
        resource: field("resource"),
        odata_type: data("@odata.type"),
        resource_id: data("id"),
        tenant_id: field("tenantId"),
        encrypted: value.get("encryptedContent").is_some(),
        resource_data: None,
        fate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn items_show_their_fields_and_never_the_client_state() {
        let item = item_of(
            &raw(
                r##"{"subscriptionId":"s1","clientState":"hunter2","changeType":"created",
                "resource":"users/a/messages/1","tenantId":"t",
                "resourceData":{"@odata.type":"#Microsoft.Graph.Message","id":"1"},
                "encryptedContent":{"data":"x"}}"##,
            ),
            Fate::Accepted,
        );
        assert_eq!(item.subscription_id.as_deref(), Some("s1"));
        assert_eq!(item.change_type.as_deref(), Some("created"));
        assert_eq!(item.resource_id.as_deref(), Some("1"));
        assert_eq!(item.odata_type.as_deref(), Some("#Microsoft.Graph.Message"));
        assert!(item.encrypted);
        let json = serde_json::to_string(&item).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert!(json.contains(r#""fate":{"state":"accepted"}"#), "{json}");
    }

    #[test]
    fn hostile_items_are_cut_and_never_fail() {
        let long = "x".repeat(10_000);
        let item = item_of(
            &raw(&format!(r#"{{"subscriptionId":"{long}","changeType":5}}"#)),
            Fate::rejected("malformed_item"),
        );
        // A field of the wrong type leaves the others readable.
        assert_eq!(
            item.subscription_id.as_deref().map(str::len),
            Some(MAX_FIELD)
        );
        assert_eq!(item.change_type, None);
        let item = item_of(
            &raw(&format!(r#"{{"subscriptionId":"{long}"}}"#)),
            Fate::Accepted,
        );
        assert_eq!(item.subscription_id.unwrap().len(), MAX_FIELD);
        for text in ["[]", "1", "\"s\"", "null", r#"{"resourceData":7}"#] {
            let item = item_of(&raw(text), Fate::rejected("malformed_item"));
            assert_eq!(item.subscription_id, None);
        }
        let json = serde_json::to_string(&Fate::rejected("client_state_mismatch")).unwrap();
        assert!(
            json.contains(r#""reason":"client_state_mismatch""#),
            "{json}"
        );
        assert!(json.contains("hint"), "{json}");
    }
}

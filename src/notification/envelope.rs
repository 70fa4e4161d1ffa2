//! The notification collection as it arrives: parsed just enough to
//! authenticate each item before the ack, with every item kept as raw JSON.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// A `changeNotificationCollection` body, items not yet authenticated.
///
/// Borrowed from the request body; only the fields needed before the ack are
/// read. The full, typed parse of each item happens behind the ack.
#[derive(Debug)]
pub struct Envelope<'a> {
    /// The items of `value`, each exactly as received.
    pub items: Vec<&'a RawValue>,
    /// `validationTokens` of the collection.
    pub validation_tokens: ValidationTokens,
}

/// `validationTokens` of a collection: one JWT per (app, tenant) pair, sent
/// with rich notifications.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "tokens", rename_all = "camelCase")]
pub enum ValidationTokens {
    /// The property is absent (normal for basic and lifecycle notifications).
    #[default]
    Absent,
    /// The property is `null`: Graph could not mint tokens (the tenant's set-up for rich notifications is incomplete).
    Null,
    /// The property is neither `null` nor an array of strings.
    Malformed,
    /// The tokens, as received.
    Tokens(Arc<[String]>),
}

/// Most validation tokens a delivery may carry for its encrypted items to be
/// accepted. Graph sends one token per distinct (app, tenant) pair among the
/// delivery's items (learn.microsoft.com/graph/api/resources/changenotificationcollection):
/// a receiver serving a few apps for a few tenants sees a handful.
pub const MAX_VALIDATION_TOKENS: usize = 32;

/// Largest validation token accepted, in bytes. Graph's are JWTs of 1–2 KB.
pub const MAX_VALIDATION_TOKEN_BYTES: usize = 16 * 1024;

impl ValidationTokens {
    /// Whether there are at most [`MAX_VALIDATION_TOKENS`] tokens of at most
    /// [`MAX_VALIDATION_TOKEN_BYTES`] each. Beyond, the listener drops the
    /// delivery's encrypted items before the ack (counted as
    /// `validation_tokens_over_limit`): nothing they could vouch for is
    /// worth storing a megabyte of tokens.
    pub fn within_limits(&self) -> bool {
        match self {
            ValidationTokens::Tokens(tokens) => {
                tokens.len() <= MAX_VALIDATION_TOKENS
                    && tokens.iter().all(|t| t.len() <= MAX_VALIDATION_TOKEN_BYTES)
            }
            _ => true,
        }
    }

    /// Bytes of the tokens.
    pub fn byte_len(&self) -> usize {
        match self {
            ValidationTokens::Tokens(tokens) => tokens.iter().map(String::len).sum(),
            _ => 0,
        }
    }

    /// Whether `other` is the same tokens (the same delivery's, shared, or
    /// equal ones).
    pub(crate) fn shares(&self, other: &ValidationTokens) -> bool {
        match (self, other) {
            (ValidationTokens::Tokens(a), ValidationTokens::Tokens(b)) => {
                Arc::ptr_eq(a, b) || a == b
            }
            (a, b) => a == b,
        }
    }
}

impl<'de> Deserialize<'de> for WireTokens {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Ok(WireTokens(match value {
            serde_json::Value::Null => ValidationTokens::Null,
            serde_json::Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    serde_json::Value::String(s) => Some(s),
                    _ => None,
                })
                .collect::<Option<Vec<String>>>()
                .map_or(ValidationTokens::Malformed, |tokens| {
                    ValidationTokens::Tokens(tokens.into())
                }),
            _ => ValidationTokens::Malformed,
        }))
    }
}

/// `validationTokens` as it appears on the wire; `None` in the struct below
/// means the property was absent.
struct WireTokens(ValidationTokens);

#[derive(Deserialize)]
struct WireEnvelope<'a> {
    #[serde(borrow)]
    value: Vec<&'a RawValue>,
    #[serde(rename = "validationTokens", default, deserialize_with = "present")]
    validation_tokens: Option<WireTokens>,
}

/// `Some` whenever the property is there, `null` included (serde's `Option`
/// would turn `null` into `None`, the same as absent).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<WireTokens>, D::Error> {
    WireTokens::deserialize(deserializer).map(Some)
}

/// Why a body is not a notification collection. Either way the answer is `400`.
#[derive(Debug)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The body is not JSON.
    NotJson,
    /// The body is JSON but not an object with a `value` array.
    NotAnEnvelope,
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EnvelopeError::NotJson => "body is not JSON",
            EnvelopeError::NotAnEnvelope => "body is not a notification collection",
        })
    }
}

impl std::error::Error for EnvelopeError {}

impl<'a> Envelope<'a> {
    /// Parses a request body.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError`] when the body is not JSON or has no `value` array.
    ///
    /// ```
    /// use msgraph_webhooks::notification::{Envelope, ValidationTokens};
    ///
    /// let body = br#"{"value":[{"subscriptionId":"s","changeType":"created"}]}"#;
    /// let envelope = Envelope::parse(body).unwrap();
    /// assert_eq!(envelope.items.len(), 1);
    /// assert_eq!(envelope.validation_tokens, ValidationTokens::Absent);
    /// ```
    pub fn parse(body: &'a [u8]) -> Result<Self, EnvelopeError> {
        match serde_json::from_slice::<WireEnvelope<'a>>(body) {
            Ok(wire) => Ok(Envelope {
                items: wire.value,
                validation_tokens: wire
                    .validation_tokens
                    .map_or(ValidationTokens::Absent, |t| t.0),
            }),
            Err(e) if e.is_data() => Err(EnvelopeError::NotAnEnvelope),
            Err(_) => Err(EnvelopeError::NotJson),
        }
    }
}

/// What the ack path reads of an item: who it claims to be from.
#[derive(Debug, Default, Deserialize)]
pub struct ItemHead<'a> {
    /// `subscriptionId`.
    #[serde(rename = "subscriptionId", borrow, default)]
    pub subscription_id: Option<Cow<'a, str>>,
    /// `clientState`.
    #[serde(rename = "clientState", borrow, default)]
    pub client_state: Option<Cow<'a, str>>,
    #[serde(rename = "changeType", borrow, default)]
    change_type: Option<&'a RawValue>,
    #[serde(rename = "lifecycleEvent", borrow, default)]
    lifecycle_event: Option<&'a RawValue>,
    #[serde(rename = "encryptedContent", borrow, default)]
    encrypted_content: Option<&'a RawValue>,
}

/// Whether an item is a change or a lifecycle notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemClass {
    /// Has `changeType`.
    Change,
    /// Has `lifecycleEvent`.
    Lifecycle,
}

impl<'a> ItemHead<'a> {
    /// Reads the head of one raw item; `None` if the item is not an object
    /// with string `subscriptionId`/`clientState`.
    pub fn parse(item: &'a RawValue) -> Option<Self> {
        serde_json::from_str(item.get()).ok()
    }

    /// Whether the item has `encryptedContent` (a rich notification, which
    /// the delivery's validation tokens must vouch for).
    pub fn is_encrypted(&self) -> bool {
        self.encrypted_content.is_some()
    }

    /// The item's class; `None` if it has neither or both discriminators.
    pub fn class(&self) -> Option<ItemClass> {
        match (self.change_type.is_some(), self.lifecycle_event.is_some()) {
            (true, false) => Some(ItemClass::Change),
            (false, true) => Some(ItemClass::Lifecycle),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_tokens_absent_null_malformed_and_present() {
        let parse = |body: &str| Envelope::parse(body.as_bytes()).unwrap().validation_tokens;
        assert_eq!(parse(r#"{"value":[]}"#), ValidationTokens::Absent);
        assert_eq!(
            parse(r#"{"value":[],"validationTokens":null}"#),
            ValidationTokens::Null
        );
        assert_eq!(
            parse(r#"{"value":[],"validationTokens":"x"}"#),
            ValidationTokens::Malformed
        );
        assert_eq!(
            parse(r#"{"value":[],"validationTokens":[1]}"#),
            ValidationTokens::Malformed
        );
        assert_eq!(
            parse(r#"{"value":[],"validationTokens":["a","b"]}"#),
            ValidationTokens::Tokens(vec!["a".to_owned(), "b".to_owned()].into())
        );
    }

    #[test]
    fn bodies_that_are_not_envelopes() {
        for body in ["", "{", "nope", "\u{0}", "{\"value\":[1,"] {
            assert!(
                matches!(
                    Envelope::parse(body.as_bytes()),
                    Err(EnvelopeError::NotJson)
                ),
                "{body:?}"
            );
        }
        for body in [
            "{}",
            "[]",
            "1",
            "null",
            r#"{"value":{}}"#,
            r#"{"value":null}"#,
            r#"{"value":[],"value":[]}"#,
        ] {
            assert!(
                matches!(
                    Envelope::parse(body.as_bytes()),
                    Err(EnvelopeError::NotAnEnvelope)
                ),
                "{body:?}"
            );
        }
    }

    #[test]
    fn item_heads() {
        let body = br#"{"value":[
            {"subscriptionId":"a","clientState":"s","changeType":"created"},
            {"subscriptionId":"b","lifecycleEvent":"missed"},
            {"subscriptionId":"c"},
            {"subscriptionId":"d","changeType":"x","lifecycleEvent":"y"},
            {"subscriptionId":"e\u0041","changeType":null,"lifecycleEvent":"missed"},
            {"subscriptionId":5},
            7
        ]}"#;
        let envelope = Envelope::parse(body).unwrap();
        let heads: Vec<_> = envelope.items.iter().map(|i| ItemHead::parse(i)).collect();
        let head = |i: usize| heads[i].as_ref().unwrap();
        assert_eq!(head(0).class(), Some(ItemClass::Change));
        assert_eq!(head(0).client_state.as_deref(), Some("s"));
        assert_eq!(head(1).class(), Some(ItemClass::Lifecycle));
        assert_eq!(head(1).client_state, None);
        assert_eq!(head(2).class(), None);
        assert_eq!(head(3).class(), None);
        assert_eq!(head(4).subscription_id.as_deref(), Some("eA"));
        assert_eq!(head(4).class(), Some(ItemClass::Lifecycle));
        assert!(heads[5].is_none());
        assert!(heads[6].is_none());
    }
}

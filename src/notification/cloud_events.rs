//! Graph notifications as Azure Event Grid delivers them: CloudEvents 1.0
//! in JSON structured mode, one event per request or a batch of them.
//!
//! A subscription whose `notificationUrl` is
//! `EventGrid:?azuresubscriptionid=…&resourcegroup=…&partnertopic=…&location=…`
//! has Graph publish to an Event Grid partner topic; an event subscription
//! on that topic whose handler is a webhook delivers here. Each event's
//! `data` is **one** Graph notification item, the same object a direct
//! delivery carries in its `value` array (`subscriptionId`, `clientState`,
//! `changeType`, `resource`, `resourceData`, …): see the event examples in
//! <https://learn.microsoft.com/azure/event-grid/microsoft-entra-events> and
//! <https://learn.microsoft.com/graph/change-notifications-delivery-event-grid>;
//! Event Grid's side of it (the partner topic Graph creates, the event
//! subscription you add to it, `Microsoft.Graph.*` event types) is
//! "Receive Microsoft Graph API change events through Azure Event Grid",
//! <https://learn.microsoft.com/azure/event-grid/subscribe-to-graph-api-events>.
//! The envelope around it is CloudEvents 1.0's, as those examples show:
//! `specversion` `1.0`, `id`, `source`, `type`, then `data`.
//!
//! Events carry no collection around them, so no `validationTokens`: the
//! items are authenticated by their `clientState`, exactly as a direct
//! delivery's, and an encrypted item arrives without the tokens that would
//! vouch for it (the worker treats it as a direct delivery without tokens).
//!
//! ```
//! use msgraph_webhooks::notification::{CloudEventsMode, ValidationTokens, parse_cloud_events};
//!
//! let body = br#"{"specversion":"1.0","id":"e1","source":"/tenants/t/applications/a",
//!     "type":"Microsoft.Graph.UserUpdated",
//!     "data":{"subscriptionId":"s","clientState":"c","changeType":"updated"}}"#;
//! let envelope = parse_cloud_events(body, CloudEventsMode::Structured).unwrap();
//! assert_eq!(envelope.items.len(), 1);
//! assert_eq!(envelope.validation_tokens, ValidationTokens::Absent);
//! ```

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Envelope, EnvelopeError, ValidationTokens};

/// The only CloudEvents version Event Grid sends.
pub const CLOUD_EVENTS_SPEC_VERSION: &str = "1.0";

/// How the events are laid out in the body, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloudEventsMode {
    /// `application/cloudevents+json`: the body is one event.
    Structured,
    /// `application/cloudevents-batch+json`: the body is a JSON array of events.
    Batch,
}

impl CloudEventsMode {
    /// The mode a `Content-Type` value announces (parameters such as
    /// `; charset=utf-8` ignored, case-insensitive), or `None` for any other
    /// media type: an ordinary Graph delivery.
    pub fn from_content_type(value: &str) -> Option<Self> {
        let media = value.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/cloudevents+json") {
            Some(CloudEventsMode::Structured)
        } else if media.eq_ignore_ascii_case("application/cloudevents-batch+json") {
            Some(CloudEventsMode::Batch)
        } else {
            None
        }
    }
}

/// One CloudEvent as read before the ack: the required attributes checked,
/// `data` kept raw.
#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow)]
    specversion: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    source: std::borrow::Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

impl<'a> WireEvent<'a> {
    /// The Graph item of a well-formed event: version `1.0`, non-empty
    /// `id`, `source` and `type`, and `data` a JSON object.
    fn into_item(self) -> Option<&'a RawValue> {
        let data = self.data?;
        let well_formed = self.specversion == CLOUD_EVENTS_SPEC_VERSION
            && !self.id.is_empty()
            && !self.source.is_empty()
            && !self.kind.is_empty()
            && data.get().starts_with('{');
        well_formed.then_some(data)
    }
}

/// Parses a CloudEvents body into the same [`Envelope`] a direct delivery
/// gives, one item per event, without validation tokens.
///
/// The whole body is refused when any event is malformed (wrong
/// `specversion`, a required attribute missing, no `data` or a `data` that
/// is not an object), as a direct delivery with a broken envelope is; the
/// items themselves are then checked one by one by the listener.
///
/// # Errors
///
/// [`EnvelopeError::NotJson`] when the body is not JSON,
/// [`EnvelopeError::NotAnEnvelope`] when it is not the event (or array of
/// events) the mode announces, or an event is malformed.
pub fn parse_cloud_events(
    body: &[u8],
    mode: CloudEventsMode,
) -> Result<Envelope<'_>, EnvelopeError> {
    let events = match mode {
        CloudEventsMode::Structured => from_json::<WireEvent<'_>>(body).map(|e| vec![e]),
        CloudEventsMode::Batch => from_json::<Vec<WireEvent<'_>>>(body),
    }?;
    let items = events
        .into_iter()
        .map(WireEvent::into_item)
        .collect::<Option<Vec<_>>>()
        .ok_or(EnvelopeError::NotAnEnvelope)?;
    Ok(Envelope {
        items,
        validation_tokens: ValidationTokens::Absent,
    })
}

fn from_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, EnvelopeError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            EnvelopeError::NotAnEnvelope
        } else {
            EnvelopeError::NotJson
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEM: &str = r#"{"subscriptionId":"s","clientState":"c","changeType":"updated"}"#;

    fn event(specversion: &str, data: &str) -> String {
        format!(
            r#"{{"specversion":"{specversion}","id":"e","source":"/tenants/t","type":"Microsoft.Graph.UserUpdated","data":{data}}}"#
        )
    }

    #[test]
    fn modes_from_content_type() {
        use CloudEventsMode::*;
        for (value, mode) in [
            ("application/cloudevents+json", Some(Structured)),
            (
                "application/cloudevents+json; charset=utf-8",
                Some(Structured),
            ),
            ("Application/CloudEvents-Batch+JSON", Some(Batch)),
            ("application/json", None),
            ("", None),
        ] {
            assert_eq!(CloudEventsMode::from_content_type(value), mode, "{value}");
        }
    }

    #[test]
    fn batch_keeps_each_data_as_received() {
        let body = format!("[{},{}]", event("1.0", ITEM), event("1.0", ITEM));
        let envelope = parse_cloud_events(body.as_bytes(), CloudEventsMode::Batch).unwrap();
        assert_eq!(envelope.items.len(), 2);
        assert!(envelope.items.iter().all(|i| i.get() == ITEM));
    }

    #[test]
    fn malformed_events_refuse_the_body() {
        let no_data = r#"{"specversion":"1.0","id":"e","source":"s","type":"t"}"#.to_owned();
        let no_id = r#"{"specversion":"1.0","source":"s","type":"t","data":{}}"#.to_owned();
        for (body, mode) in [
            (event("0.3", ITEM), CloudEventsMode::Structured),
            (event("1.0", "[1]"), CloudEventsMode::Structured),
            (event("1.0", "\"x\""), CloudEventsMode::Structured),
            (no_data, CloudEventsMode::Structured),
            (no_id, CloudEventsMode::Structured),
            (event("1.0", ITEM), CloudEventsMode::Batch),
            (
                format!("[{}]", event("1.0", ITEM)),
                CloudEventsMode::Structured,
            ),
            (
                format!("[{},1]", event("1.0", ITEM)),
                CloudEventsMode::Batch,
            ),
        ] {
            assert!(
                matches!(
                    parse_cloud_events(body.as_bytes(), mode),
                    Err(EnvelopeError::NotAnEnvelope)
                ),
                "{body}"
            );
        }
        assert!(matches!(
            parse_cloud_events(b"[{\"id\" 1", CloudEventsMode::Batch),
            Err(EnvelopeError::NotJson)
        ));
    }
}

//! Delivery through Azure Event Grid, as an event subscription on the
//! partner topic with a webhook handler would get it: the CloudEvents
//! abuse-protection handshake, then batched CloudEvents whose `data` is one
//! Graph notification item each.
//!
//! Sources: "Receive change notifications through Azure Event Grid"
//! (<https://learn.microsoft.com/graph/change-notifications-delivery-event-grid>)
//! for the partner topic, the event examples of
//! <https://learn.microsoft.com/azure/event-grid/microsoft-entra-events>
//! (`type` `Microsoft.Graph.UserUpdated`, `source`
//! `/tenants/<tenant-id>/applications/<application-id>`, `subject` the
//! resource, `data` the item), and
//! <https://learn.microsoft.com/azure/event-grid/webhook-event-delivery> for
//! the handshake (`OPTIONS`, `WebHook-Request-Origin: eventgrid.azure.net`,
//! agreement by `WebHook-Allowed-Origin`). That spec lets the handshake run
//! as a preflight immediately before a delivery: the emulator does so
//! before every POST, which keeps it stateless.
//!
//! Validation tokens have no place in a CloudEvent: rich items travel
//! without them.

use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use super::{MAX_ANSWER, Pending};
use crate::emulator::Core;

/// Who Event Grid says it is in the handshake.
const ORIGIN: &str = "eventgrid.azure.net";

/// The status recorded when the endpoint answers the handshake without
/// agreeing (no matching `WebHook-Allowed-Origin`): nothing was POSTed.
const NOT_AGREED: u16 = 403;

/// The batch as `application/cloudevents-batch+json`.
pub(super) fn body(core: &Core, batch: &[Pending]) -> Vec<u8> {
    let now = core.clock.now().format(&Rfc3339).unwrap_or_default();
    let events: Vec<Value> = batch
        .iter()
        .map(|p| {
            let item = &p.out.item;
            let application = core
                .store
                .get(&p.out.subscription_id)
                .map(|s| s.application_id.clone())
                .unwrap_or_default();
            let tenant = item["tenantId"].as_str().unwrap_or_default();
            let subject = item["resource"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("subscriptions/{}", p.out.subscription_id));
            json!({
                "id": crate::random::uuid(),
                "type": event_type(item),
                "source": format!("/tenants/{tenant}/applications/{application}"),
                "subject": subject,
                "time": now,
                "datacontenttype": "application/json",
                "specversion": "1.0",
                "data": item,
            })
        })
        .collect();
    serde_json::to_vec(&events).unwrap_or_default()
}

/// `Microsoft.Graph.<Resource><Change>` (`MessageCreated`), or
/// `Microsoft.Graph.Subscription<Event>` for lifecycle items.
fn event_type(item: &Value) -> String {
    fn title(word: &str) -> String {
        let mut chars = word.chars();
        chars.next().map_or_else(String::new, |first| {
            first.to_uppercase().chain(chars).collect()
        })
    }
    if let Some(event) = item["lifecycleEvent"].as_str() {
        return format!("Microsoft.Graph.Subscription{}", title(event));
    }
    let resource = item["resourceData"]["@odata.type"]
        .as_str()
        .and_then(|t| t.rsplit('.').next())
        .map_or_else(|| "Resource".to_owned(), title);
    let change = title(item["changeType"].as_str().unwrap_or("changed"));
    format!("Microsoft.Graph.{resource}{change}")
}

/// The handshake, then the POST: the POST's status, or [`NOT_AGREED`] (or
/// the handshake's own non-2xx status) when the endpoint did not agree.
pub(super) async fn post(
    client: &reqwest::Client,
    url: &url::Url,
    body: bytes::Bytes,
) -> Result<u16, reqwest::Error> {
    let answer = client
        .request(reqwest::Method::OPTIONS, url.clone())
        .header("webhook-request-origin", ORIGIN)
        .send()
        .await?;
    let status = answer.status().as_u16();
    if !(200..300).contains(&status) {
        return Ok(status);
    }
    let agreed = answer
        .headers()
        .get("webhook-allowed-origin")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == ORIGIN || v == "*");
    if !agreed {
        return Ok(NOT_AGREED);
    }
    let mut response = client
        .post(url.clone())
        .header(
            "content-type",
            "application/cloudevents-batch+json; charset=utf-8",
        )
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let mut read = 0;
    while let Some(chunk) = response.chunk().await? {
        read += chunk.len();
        if read > MAX_ANSWER {
            break;
        }
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_name_the_resource_and_the_change() {
        let change = json!({
            "changeType": "created",
            "resourceData": { "@odata.type": "#Microsoft.Graph.Message" }
        });
        assert_eq!(event_type(&change), "Microsoft.Graph.MessageCreated");
        let lifecycle = json!({ "lifecycleEvent": "reauthorizationRequired" });
        assert_eq!(
            event_type(&lifecycle),
            "Microsoft.Graph.SubscriptionReauthorizationRequired"
        );
        assert_eq!(
            event_type(&json!({ "changeType": "deleted" })),
            "Microsoft.Graph.ResourceDeleted"
        );
    }
}

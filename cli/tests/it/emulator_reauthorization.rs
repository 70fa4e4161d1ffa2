//! The access-token lifecycle (Microsoft Learn, "Reduce missing
//! subscriptions and change notifications"): challenges while the token is
//! about to expire, delivery paused after it until the app reauthorizes or
//! renews, held items delivered then — or given up on, with `missed`.

use std::time::Duration;

use msgraph_webhooks::emulator::{Change, DeliveryKind, Emulator, Outcome};
use msgraph_webhooks::{ChangeType, LifecycleEventType};
use serde_json::{Value, json};

use crate::support::graph::{Answering, Graph, Hook};

/// A mailbox subscription for three days, its notifications and lifecycle
/// notifications to one URL.
async fn subscribe(graph: &Graph, hook: &Hook) -> String {
    let mut body = graph.subscription("users/u1/messages", "created", &hook.url("/n"));
    body["lifecycleNotificationUrl"] = json!(hook.url("/n"));
    body["expirationDateTime"] = json!(graph.expires_in(3 * 24 * 60));
    let answer = graph.create(&graph.app_token(), &body).await;
    assert_eq!(answer.status, 201, "{:#}", answer.json);
    answer.json["id"].as_str().unwrap().to_owned()
}

fn lifecycle_events(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| i["lifecycleEvent"].as_str().map(str::to_owned))
        .collect()
}

fn changes(items: &[Value]) -> Vec<Value> {
    items
        .iter()
        .filter(|i| i.get("changeType").is_some())
        .cloned()
        .collect()
}

fn advance(graph: &Graph, minutes: i64) {
    graph
        .emulator
        .clock()
        .advance(time::Duration::minutes(minutes));
}

fn fire(graph: &Graph, id: &str) {
    let fired = graph
        .emulator
        .fire(&Change::new("users/u1/messages", ChangeType::Created).data(json!({"id": id})))
        .unwrap();
    assert_eq!(fired.items, 1);
}

#[tokio::test]
async fn an_app_that_reauthorizes_keeps_getting_notifications() {
    let graph = Graph::start(Emulator::builder()).await;
    let hook = Hook::start(Answering::After(Duration::ZERO)).await;
    let id = subscribe(&graph, &hook).await;

    // The token lasts an hour; challenges come every 15 minutes within it,
    // the first 45 minutes before it expires.
    advance(&graph, 16);
    let items = hook.wait_items(1).await;
    assert_eq!(lifecycle_events(&items), ["reauthorizationRequired"]);
    assert_eq!(items[0]["subscriptionId"], json!(id));
    let answer = graph
        .call(
            "POST",
            &format!("/v1.0/subscriptions/{id}/reauthorize"),
            Some(&graph.app_token()),
            None,
            &[],
        )
        .await;
    assert_eq!(answer.status, 204);

    // Past the first token's hour, the new one holds (and is challenged in
    // its turn): notifications flow.
    advance(&graph, 50);
    fire(&graph, "m1");
    let items = hook.wait_items(3).await;
    assert_eq!(changes(&items).len(), 1);
    assert_eq!(changes(&items)[0]["resourceData"]["id"], "m1");
    assert_eq!(
        lifecycle_events(&items),
        ["reauthorizationRequired", "reauthorizationRequired"]
    );
}

#[tokio::test]
async fn an_app_that_only_renews_is_challenged_and_its_notifications_pause_and_resume() {
    let graph = Graph::start(Emulator::builder()).await;
    let hook = Hook::start(Answering::After(Duration::ZERO)).await;
    let id = subscribe(&graph, &hook).await;

    // Ignored challenges at 45, 30 and 15 minutes before the token expires,
    // and at expiry; then delivery pauses.
    for (minutes, seen) in [(16, 1), (15, 2), (15, 3), (15, 4)] {
        advance(&graph, minutes);
        let items = hook.wait_items(seen).await;
        assert_eq!(lifecycle_events(&items).len(), seen);
    }
    fire(&graph, "held");
    // A lifecycle notification queued after the change goes out; the change,
    // ahead of it in the same queue, is held.
    graph
        .emulator
        .lifecycle(&id, &LifecycleEventType::ReauthorizationRequired)
        .unwrap();
    let items = hook.wait_items(5).await;
    assert!(changes(&items).is_empty(), "paused: {items:#?}");
    assert_eq!(lifecycle_events(&items).len(), 5);
    assert_eq!(graph.emulator.endpoints()[0].queued, 1);

    // The renewal reauthorizes: the held notification arrives.
    let renewed = graph
        .call(
            "PATCH",
            &format!("/v1.0/subscriptions/{id}"),
            Some(&graph.app_token()),
            Some(&json!({"expirationDateTime": graph.expires_in(2 * 24 * 60)})),
            &[],
        )
        .await;
    assert_eq!(renewed.status, 200, "{:#}", renewed.json);
    let items = hook.wait_items(6).await;
    assert_eq!(changes(&items).len(), 1);
    assert_eq!(changes(&items)[0]["resourceData"]["id"], "held");

    // Not reauthorized again: a change after the new token's hour is held
    // for the 4-hour retry period, then dropped, and the mailbox hears `missed`.
    advance(&graph, 61);
    fire(&graph, "lost");
    advance(&graph, 4 * 60 + 1);
    let log = graph
        .emulator
        .wait_for_deliveries(Duration::from_secs(20), |d| {
            d.iter().any(|r| r.outcome == Outcome::Expired)
        })
        .await;
    let expired: Vec<_> = log
        .iter()
        .filter(|r| r.outcome == Outcome::Expired)
        .collect();
    assert_eq!(expired.len(), 1, "{log:#?}");
    assert_eq!(expired[0].kind, DeliveryKind::Notification);
    assert_eq!(expired[0].subscription_ids, std::slice::from_ref(&id));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !lifecycle_events(&hook.items()).contains(&"missed".to_owned()) {
        assert!(tokio::time::Instant::now() < deadline, "no missed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids: Vec<Value> = changes(&hook.items())
        .iter()
        .map(|c| c["resourceData"]["id"].clone())
        .collect();
    assert_eq!(ids, [json!("held")], "the lost change never arrives");
}

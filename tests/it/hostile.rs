//! Hostile deliveries with the right `clientState`: whatever they send,
//! every item that got its `202` reaches the handler or the dead letters,
//! and what they cost the store is bounded by what they sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use msgraph_webhooks::inbox::DeadLetters as _;
use msgraph_webhooks::store::SqliteStore;
use msgraph_webhooks::{ClientState, Receiver};

use crate::support::http::post_json;
use crate::support::{Recorder, TestServer, message_item};

const STATE: &str = "hostile-secret";

/// A message item (`notification-{n}`) with `key` set to `value`, JSON text
/// written as is (so it may hold what serde_json would never write).
fn item_with(n: usize, key: &str, value: &str) -> String {
    let mut item = message_item("sub", STATE, n);
    item[key] = serde_json::Value::String("__value__".into());
    item.to_string().replace("\"__value__\"", value)
}

/// The shapes a typed parse could trip on, each in one item, by name.
fn hostile_items() -> Vec<(&'static str, String)> {
    let deep = format!("{{\"deep\":{}1{}}}", "[".repeat(130), "]".repeat(130));
    vec![
        ("plain-0", message_item("sub", STATE, 0).to_string()),
        ("plain-1", message_item("sub", STATE, 1).to_string()),
        (
            "surrogate in resourceData",
            item_with(
                2,
                "resourceData",
                r#"{"id":"AAMk2","subject":"cut \ud83d"}"#,
            ),
        ),
        (
            "surrogate in resource",
            item_with(3, "resource", r#""Users/u/Messages/\ude00x""#),
        ),
        (
            "1e999",
            item_with(4, "resourceData", r#"{"id":"AAMk4","size":1e999}"#),
        ),
        ("numeric id", item_with(5, "id", "12345")),
        ("numeric tenantId", item_with(6, "tenantId", "42")),
        (
            "resourceData string",
            item_with(7, "resourceData", r#""AAMk7""#),
        ),
        ("resource null", item_with(8, "resource", "null")),
        ("nesting 130", item_with(9, "resourceData", &deep)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_item_reaches_the_handler_or_the_dead_letters() {
    let data = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(data.path()).unwrap());
    let recorder = Recorder::default();
    let receiver = Receiver::builder(recorder.clone())
        .client_state(ClientState::new(STATE))
        .inbox(store.clone())
        .dedupe(store.clone())
        .dedupe_owner(store.consumer());
    let server = TestServer::start(receiver).await;
    let items = hostile_items();
    let body = format!(
        "{{\"value\":[{}]}}",
        items
            .iter()
            .map(|(_, item)| item.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(post_json(&server.url("/"), body).await.status, 202);
    assert_eq!(server.metrics.rejected_count("malformed_item"), 0);

    // Accounted for: handled, or dead-lettered with the reason.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (events, letters) = loop {
        let events = recorder.changes();
        let letters = store.list(100).await.unwrap();
        if events.len() + letters.len() >= items.len() {
            break (events, letters);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} handled and {} dead-lettered of {} acknowledged: the others vanished",
            events.len(),
            letters.len(),
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut fate = BTreeMap::new();
    for (name, raw) in &items {
        let handled = events.iter().filter(|e| e.raw_json() == raw).count();
        let dead = letters.iter().filter(|l| l.item.raw.get() == raw).count();
        fate.insert(*name, (handled, dead));
    }
    let expected: BTreeMap<&str, (usize, usize)> = [
        ("plain-0", (1, 0)),
        ("plain-1", (1, 0)),
        ("surrogate in resourceData", (1, 0)),
        ("surrogate in resource", (1, 0)),
        ("1e999", (0, 1)),
        ("numeric id", (1, 0)),
        ("numeric tenantId", (1, 0)),
        ("resourceData string", (1, 0)),
        ("resource null", (1, 0)),
        ("nesting 130", (0, 1)),
    ]
    .into_iter()
    .collect();
    assert_eq!(fate, expected, "(handled, dead-lettered) per item");
    for letter in &letters {
        assert!(
            letter.reason.starts_with("malformed_item: "),
            "{}",
            letter.reason
        );
    }

    // The lenient readings.
    let by_raw = |name: &str| {
        let raw = &items.iter().find(|(n, _)| *n == name).unwrap().1;
        events.iter().find(|e| e.raw_json() == raw).unwrap().clone()
    };
    let subject = by_raw("surrogate in resourceData")
        .resource_data()
        .unwrap()
        .other["subject"]
        .clone();
    assert_eq!(subject, "cut \u{fffd}");
    assert_eq!(
        by_raw("surrogate in resource").resource(),
        "Users/u/Messages/\u{fffd}x"
    );
    assert_eq!(by_raw("numeric id").id(), Some("12345"));
    assert_eq!(by_raw("numeric tenantId").tenant_id(), Some("42"));
    assert!(by_raw("resourceData string").resource_data().is_none());
    assert_eq!(by_raw("resource null").resource(), "");
    server.stop().await;
}

//! Hostile deliveries with the right `clientState`: whatever they send,
//! every item that got its `202` reaches the handler or the dead letters,
//! and what they cost the store is bounded by what they sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use msgraph_webhooks::store::DeadLetters as _;
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

/// Bytes of every file under `dir`.
fn disk_usage(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                disk_usage(&entry.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// `items` small change items and `tokens` validation tokens of
/// `token_bytes` each, as one body.
fn body_with_tokens(items: usize, tokens: usize, token_bytes: usize) -> String {
    let tokens: Vec<String> = (0..tokens)
        .map(|n| format!("{n:03}{}", "t".repeat(token_bytes - 3)))
        .collect();
    let item = |n: usize| {
        serde_json::json!({
            "subscriptionId": "sub",
            "clientState": STATE,
            "changeType": "updated",
            "resource": format!("users/u/messages/{n}"),
        })
    };
    serde_json::json!({
        "value": (0..items).map(item).collect::<Vec<_>>(),
        "validationTokens": tokens,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliverys_tokens_are_stored_once_not_once_per_item() {
    let data = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(data.path()).unwrap());
    // No workers: what the delivery stored stays there to be measured.
    let receiver = Receiver::builder(Recorder::default())
        .client_state(ClientState::new(STATE))
        .inbox(store.clone())
        .workers(0);
    let server = TestServer::start(receiver).await;
    // 400 items and 150 KB of tokens (ten of 15 000 bytes, within the limits).
    let body = body_with_tokens(400, 10, 15_000);
    let before = disk_usage(data.path());
    assert_eq!(post_json(&server.url("/"), body.clone()).await.status, 202);
    let grown = disk_usage(data.path()) - before;
    eprintln!(
        "a {} byte body grew the store by {grown} bytes (×{:.2})",
        body.len(),
        grown as f64 / body.len() as f64
    );
    assert!(
        grown < 2 * body.len() as u64,
        "a {} byte body grew the store by {grown} bytes",
        body.len()
    );
    // All 400 items are there, each with the delivery's tokens.
    let claimed = msgraph_webhooks::store::Inbox::claim(&*store, 1000, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 400);
    assert!(claimed.iter().all(|c| matches!(
        &c.item.validation_tokens,
        msgraph_webhooks::notification::ValidationTokens::Tokens(t) if t.len() == 10
    )));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_items_with_tokens_beyond_the_limits_are_dropped_before_the_ack() {
    use msgraph_webhooks::notification::{MAX_VALIDATION_TOKEN_BYTES, MAX_VALIDATION_TOKENS};
    let data = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(data.path()).unwrap());
    let receiver = Receiver::builder(Recorder::default())
        .client_state(ClientState::new(STATE))
        .inbox(store.clone())
        .workers(0);
    let server = TestServer::start(receiver).await;
    let encrypted = |n: usize| {
        let mut item = message_item("sub", STATE, n);
        item["encryptedContent"] = serde_json::json!({"data": "AAAA", "dataKey": "AAAA"});
        item
    };
    for (tokens, token_bytes) in [
        (MAX_VALIDATION_TOKENS + 1, 100),
        (1, MAX_VALIDATION_TOKEN_BYTES + 1),
    ] {
        let token_list: Vec<String> = (0..tokens).map(|_| "t".repeat(token_bytes)).collect();
        let body = serde_json::json!({
            "value": [encrypted(1), message_item("sub", STATE, 2)],
            "validationTokens": token_list,
        });
        assert_eq!(
            post_json(&server.url("/"), body.to_string()).await.status,
            202,
            "{tokens} tokens of {token_bytes} bytes"
        );
    }
    assert_eq!(
        server
            .metrics
            .rejected_count("validation_tokens_over_limit"),
        2
    );
    // The basic items stay (they need no tokens), without the tokens.
    let claimed = msgraph_webhooks::store::Inbox::claim(&*store, 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    for c in &claimed {
        assert!(!c.item.raw.get().contains("encryptedContent"));
        assert!(!matches!(
            c.item.validation_tokens,
            msgraph_webhooks::notification::ValidationTokens::Tokens(_)
        ));
    }
    // Within the limits, an encrypted item is stored with its tokens.
    let body = body_with_tokens(0, MAX_VALIDATION_TOKENS, MAX_VALIDATION_TOKEN_BYTES);
    let mut body: serde_json::Value = serde_json::from_str(&body).unwrap();
    body["value"] = serde_json::json!([encrypted(3)]);
    assert_eq!(
        post_json(&server.url("/"), body.to_string()).await.status,
        202
    );
    let claimed = msgraph_webhooks::store::Inbox::claim(&*store, 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn the_memory_inbox_answers_503_at_its_byte_capacity() {
    use msgraph_webhooks::store::MemoryInbox;
    let inbox = Arc::new(MemoryInbox::new(100_000).max_bytes(1024 * 1024));
    let receiver = Receiver::builder(Recorder::default())
        .client_state(ClientState::new(STATE))
        .inbox(inbox)
        .workers(0);
    let server = TestServer::start(receiver).await;
    // Ten items of 300 KB: far under the item capacity, over the bytes.
    let mut statuses = Vec::new();
    for n in 0..10 {
        let mut item = message_item("sub", STATE, n);
        item["resourceData"]["padding"] = "p".repeat(300_000).into();
        let reply = post_json(&server.url("/"), crate::support::envelope(vec![item])).await;
        statuses.push(reply.status);
    }
    assert_eq!(statuses, [202, 202, 202, 503, 503, 503, 503, 503, 503, 503]);
    server.stop().await;
}

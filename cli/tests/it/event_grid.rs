//! Graph through Azure Event Grid, over real sockets: the CloudEvents
//! abuse-protection handshake, structured and batched CloudEvents whose
//! `data` items take the same path as a direct delivery's, and hostile
//! bodies answered as a direct delivery's rejections are.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use msgraph_webhooks::emulator::{Change, DeliveryKind, Emulator, Outcome};
use msgraph_webhooks::listener::{Limits, ServerConfig};
use msgraph_webhooks::{ChangeType, ClientState, Receiver};
use serde_json::{Value, json};

use crate::support::cli::Process;
use crate::support::graph::{Answering, Graph, Hook};
use crate::support::http::{Reply, post_json, request};
use crate::support::{Recorder, TestServer, envelope, message_item};

const STATE: &str = "secretClientValue";
const SINGLE: &str = "application/cloudevents+json; charset=utf-8";
const BATCH: &str = "application/cloudevents-batch+json; charset=utf-8";

async fn server(recorder: &Recorder) -> TestServer {
    TestServer::start(Receiver::builder(recorder.clone()).client_state(ClientState::new(STATE)))
        .await
}

/// A CloudEvent as Event Grid delivers Graph's: the item in `data`.
fn event(item: Value) -> Value {
    json!({
        "id": format!("event-{}", item["id"].as_str().unwrap_or("x")),
        "type": "Microsoft.Graph.MessageCreated",
        "source": "/tenants/84bd8158-6d4d-4958-8b9f-9d6445542f95/applications/app",
        "subject": item["resource"],
        "time": "2026-03-19T22:11:09.952Z",
        "datacontenttype": "application/json",
        "specversion": "1.0",
        "data": item,
    })
}

/// Sends a request with any headers.
async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(builder.body(Full::new(body.into())).unwrap()),
    )
    .await
    .expect("answer within 10 s")
    .expect("request succeeds");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn abuse_protection_handshake_agrees_to_the_origin() {
    let server = server(&Recorder::default()).await;
    let reply = send(
        "OPTIONS",
        &server.url("/graph"),
        &[
            ("WebHook-Request-Origin", "eventgrid.azure.net"),
            ("WebHook-Request-Rate", "120"),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("webhook-allowed-origin"),
        Some("eventgrid.azure.net")
    );
    assert_eq!(reply.header("webhook-allowed-rate"), Some("*"));
    assert!(reply.body.is_empty());

    // The callback variant is answered synchronously; the URL is never called.
    let reply = send(
        "OPTIONS",
        &server.url("/"),
        &[
            ("WebHook-Request-Origin", "eventgrid.azure.net"),
            ("WebHook-Request-Callback", "http://127.0.0.1:9/validate"),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("webhook-allowed-origin"),
        Some("eventgrid.azure.net")
    );

    // Without the header, OPTIONS is the wrong method, as before.
    let reply = send("OPTIONS", &server.url("/"), &[], "").await;
    assert_eq!(reply.status, 405);
    assert!(reply.header("webhook-allowed-origin").is_none());

    // A forged origin is refused, without a reason and without an echo.
    for bad in ["", "evil origin", "a\"b"] {
        let reply = send(
            "OPTIONS",
            &server.url("/"),
            &[("WebHook-Request-Origin", bad)],
            "",
        )
        .await;
        assert_eq!(reply.status, 400, "{bad:?}");
        assert!(reply.body.is_empty());
        assert!(reply.header("webhook-allowed-origin").is_none());
    }
}

#[tokio::test]
async fn a_structured_event_reaches_the_handler() {
    let recorder = Recorder::default();
    let server = server(&recorder).await;
    let item = message_item("sub-eg", STATE, 1);
    let reply = request(
        "POST",
        &server.url("/"),
        Some(SINGLE),
        event(item.clone()).to_string(),
    )
    .await;
    assert_eq!(reply.status, 202);
    assert!(reply.body.is_empty());
    let changes = recorder.changes_after(1).await;
    assert_eq!(changes[0].subscription_id(), "sub-eg");
    assert_eq!(changes[0].id(), Some("notification-1"));
    assert_eq!(
        changes[0].resource(),
        item["resource"].as_str().unwrap(),
        "the item is the event's data, untouched"
    );
}

#[tokio::test]
async fn a_batch_keeps_the_valid_items_and_drops_the_forged() {
    let recorder = Recorder::default();
    let server = server(&recorder).await;
    let batch = json!([
        event(message_item("sub-eg", STATE, 1)),
        event(message_item("sub-eg", "forged", 2)),
        event(message_item("sub-eg", STATE, 3)),
        event(json!({ "no": "subscription" })),
    ]);
    let reply = request("POST", &server.url("/"), Some(BATCH), batch.to_string()).await;
    assert_eq!(reply.status, 202);
    let changes = recorder.changes_after(2).await;
    let mut ids: Vec<_> = changes.iter().filter_map(|c| c.id()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["notification-1", "notification-3"]);
    assert_eq!(server.metrics.rejected_count("client_state_mismatch"), 1);
    assert_eq!(server.metrics.rejected_count("malformed_item"), 1);
}

#[tokio::test]
async fn the_same_notification_direct_and_through_event_grid_is_handled_once() {
    let recorder = Recorder::default();
    let server = server(&recorder).await;
    let item = message_item("sub-eg", STATE, 7);
    let direct = post_json(&server.url("/"), envelope(vec![item.clone()])).await;
    assert_eq!(direct.status, 202);
    recorder.changes_after(1).await;
    let batch = json!([event(item)]).to_string();
    let reply = request("POST", &server.url("/"), Some(BATCH), batch).await;
    assert_eq!(reply.status, 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.metrics.rejected_count("duplicate") < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Event Grid copy was not dropped as a duplicate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(recorder.changes().len(), 1);
}

#[tokio::test]
async fn hostile_cloud_events_get_a_bare_400() {
    let recorder = Recorder::default();
    let server = server(&recorder).await;
    let good = event(message_item("sub-eg", STATE, 1));
    let mut wrong_version = good.clone();
    wrong_version["specversion"] = json!("0.3");
    let mut no_data = good.clone();
    no_data.as_object_mut().unwrap().remove("data");
    let mut no_source = good.clone();
    no_source.as_object_mut().unwrap().remove("source");
    let mut array_data = good.clone();
    array_data["data"] = json!([good["data"].clone()]);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<(&str, String)> = vec![
        (SINGLE, "{not json".to_owned()),
        (SINGLE, wrong_version.to_string()),
        (SINGLE, no_data.to_string()),
        (SINGLE, no_source.to_string()),
        (SINGLE, array_data.to_string()),
        (SINGLE, json!([good.clone()]).to_string()),
        (BATCH, good.to_string()),
        (BATCH, json!([good.clone(), 1]).to_string()),
        (BATCH, json!([good.clone(), wrong_version]).to_string()),
        (BATCH, deep),
        (BATCH, "\u{0}\u{1}".to_owned()),
    ];
    for (content_type, body) in cases {
        let reply = request("POST", &server.url("/"), Some(content_type), body.clone()).await;
        assert_eq!(reply.status, 400, "{content_type}: {:.80}", body);
        assert!(reply.body.is_empty(), "rejections carry no reason");
    }
    // Nothing of a refused body was stored: the valid event sent after
    // them is the first and only one the handler sees.
    let reply = request("POST", &server.url("/"), Some(SINGLE), good.to_string()).await;
    assert_eq!(reply.status, 202);
    assert_eq!(recorder.changes_after(1).await.len(), 1);
    assert_eq!(recorder.changes().len(), 1);
}

#[tokio::test]
async fn a_huge_batch_is_refused_like_a_huge_delivery() {
    let recorder = Recorder::default();
    let mut limits = Limits::default();
    limits.max_body = 64 * 1024;
    let server = TestServer::start_with(
        Receiver::builder(recorder.clone())
            .client_state(ClientState::new(STATE))
            .limits(limits),
        ServerConfig::default(),
    )
    .await;
    let events: Vec<Value> = (0..200)
        .map(|n| event(message_item("sub-eg", STATE, n)))
        .collect();
    let reply = request(
        "POST",
        &server.url("/"),
        Some(BATCH),
        Value::Array(events).to_string(),
    )
    .await;
    assert_eq!(reply.status, 413);
    assert!(reply.body.is_empty());
}

const GRID: &str = "EventGrid:?azuresubscriptionid=8aa4c1d2-0000-4000-8000-000000000001&resourcegroup=rg&partnertopic=graph&location=westus";

#[tokio::test]
async fn the_emulator_delivers_event_grid_subscriptions_into_the_receiver() {
    let recorder = Recorder::default();
    let receiver = server(&recorder).await;
    let endpoint = url::Url::parse(&receiver.url("/eventgrid")).unwrap();
    let graph = Graph::start(Emulator::builder().event_grid_endpoint(endpoint)).await;
    // No validation request reaches anyone: the partner topic is Azure's.
    let answer = graph
        .create(
            &graph.app_token(),
            &graph.subscription("users/u1/messages", "created", GRID),
        )
        .await;
    assert_eq!(answer.status, 201, "{:#}", answer.json);
    let id = answer.json["id"].as_str().unwrap().to_owned();
    assert!(
        answer.json["notificationUrl"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase()
            .starts_with("eventgrid:?")
    );

    let fired = graph
        .emulator
        .fire(
            &Change::new("users/u1/messages", ChangeType::Created)
                .data(json!({ "id": "AAMkEG1", "subject": "Through the grid" })),
        )
        .unwrap();
    assert_eq!(fired.items, 1);
    let changes = recorder.changes_after(1).await;
    assert_eq!(changes[0].subscription_id(), id);
    assert_eq!(changes[0].resource(), "Users/u1/Messages/AAMkEG1");
    assert_eq!(*changes[0].change_type(), ChangeType::Created);
    // It came as CloudEvents after the handshake: the endpoint counted both.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let handshakes = || {
        receiver
            .metrics
            .render(None)
            .lines()
            .filter(|l| l.contains("outcome=\"cloudevents_handshake\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    while handshakes() < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "no handshake seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_emulator_validates_azure_notification_urls() {
    let endpoint = url::Url::parse("http://127.0.0.1:9/").unwrap();
    let graph = Graph::start(Emulator::builder().event_grid_endpoint(endpoint)).await;
    for name in [
        "azuresubscriptionid",
        "resourcegroup",
        "partnertopic",
        "location",
    ] {
        let url: String = GRID
            .split(['?', '&'])
            .skip(1)
            .filter(|pair| !pair.starts_with(name))
            .collect::<Vec<_>>()
            .join("&");
        let answer = graph
            .create(
                &graph.app_token(),
                &graph.subscription("users/u1/messages", "created", &format!("EventGrid:?{url}")),
            )
            .await;
        assert_eq!(answer.status, 400, "{name}");
        assert_eq!(answer.code(), "InvalidRequest", "{:#}", answer.json);
        assert!(
            answer.message().contains(&format!("'{name}'")),
            "{}",
            answer.message()
        );
    }
    let hub = "EventHub:https://vault.vault.azure.net/secrets/hub?tenantId=contoso.com";
    let answer = graph
        .create(
            &graph.app_token(),
            &graph.subscription("users/u1/messages", "created", hub),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert!(
        answer
            .message()
            .contains("Event Hubs delivery is not emulated"),
        "{}",
        answer.message()
    );
    let answer = graph
        .create(
            &graph.app_token(),
            &graph.subscription("users/u1/messages", "created", "EventHub:http://x.example/"),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.message().contains("https://"),
        "{}",
        answer.message()
    );

    // Without a partner-topic endpoint, EventGrid: is refused up front.
    let bare = Graph::start(Emulator::builder()).await;
    let answer = bare
        .create(
            &bare.app_token(),
            &bare.subscription("users/u1/messages", "created", GRID),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.message().contains("--event-grid-endpoint"),
        "{}",
        answer.message()
    );
}

/// `emulate --event-grid-endpoint` into `listen`, both as processes.
#[tokio::test]
async fn emulate_delivers_through_event_grid_into_listen() {
    let mut listen = Process::spawn(
        &[
            "listen",
            "--addr",
            "127.0.0.1:0",
            "--memory",
            "--client-state",
            STATE,
        ],
        &[],
    );
    let receiver = listen.listening_addr().await;
    let endpoint = format!("http://{receiver}/eventgrid");
    let mut emulator = Process::spawn(
        &[
            "emulate",
            "--addr",
            "127.0.0.1:0",
            "--event-grid-endpoint",
            &endpoint,
        ],
        &[],
    );
    let base = format!("http://{}", emulator.listening_addr().await);
    let client = reqwest::Client::new();
    let token = crate::support::graph::client_token(&client, &base, "cli-test").await;
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::minutes(50))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let created = client
        .post(format!("{base}/v1.0/subscriptions"))
        .bearer_auth(&token)
        .json(&json!({
            "changeType": "created",
            "notificationUrl": GRID,
            "resource": "users/u1/messages",
            "expirationDateTime": expires,
            "clientState": STATE,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    client
        .post(format!("{base}/emulator/changes"))
        .json(&json!({"resource": "users/u1/messages", "changeType": "created", "data": {"id": "AAMkCLI"}}))
        .send()
        .await
        .unwrap();
    let line: Value =
        serde_json::from_str(&listen.next_stdout(Duration::from_secs(20)).await).unwrap();
    assert_eq!(line["kind"], "change");
    assert_eq!(line["resource"], "Users/u1/Messages/AAMkCLI");
    listen.terminate();
    emulator.terminate();
}

/// An endpoint that does not agree in the handshake (a plain webhook)
/// gets no CloudEvents: the delivery is recorded as failed and retried.
#[tokio::test]
async fn the_emulator_posts_nothing_to_an_endpoint_that_does_not_agree() {
    let hook = Hook::start(Answering::Well).await;
    let endpoint = url::Url::parse(&hook.url("/grid")).unwrap();
    let graph = Graph::start(Emulator::builder().event_grid_endpoint(endpoint)).await;
    let answer = graph
        .create(
            &graph.app_token(),
            &graph.subscription("users/u1/messages", "created", GRID),
        )
        .await;
    assert_eq!(answer.status, 201, "{:#}", answer.json);
    graph
        .emulator
        .fire(
            &Change::new("users/u1/messages", ChangeType::Created).data(json!({ "id": "AAMkNo" })),
        )
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let record = loop {
        let log = graph.emulator.deliveries();
        if let Some(record) = log
            .into_iter()
            .find(|d| d.kind == DeliveryKind::Notification)
        {
            break record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery attempt recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(record.status, Some(403));
    assert_eq!(record.outcome, Outcome::Failed);
    let captured = hook.captured();
    assert!(!captured.is_empty(), "the handshake reached the endpoint");
    assert!(
        captured.iter().all(|c| c.body.is_empty()),
        "only handshakes, no events: {captured:?}"
    );
}

/// JSON-shaped text around CloudEvents attribute names.
fn cloud_eventish() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let atom = prop_oneof![
        Just("\"specversion\"".to_owned()),
        Just("\"1.0\"".to_owned()),
        Just("\"id\"".to_owned()),
        Just("\"source\"".to_owned()),
        Just("\"type\"".to_owned()),
        Just("\"data\"".to_owned()),
        Just("\"subscriptionId\"".to_owned()),
        Just("null".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(":".to_owned()),
        Just(",".to_owned()),
        Just("\"\\ud800\"".to_owned()),
        "\"[a-z0-9.]{0,8}\"",
    ];
    proptest::collection::vec(atom, 0..64).prop_map(|parts| parts.concat())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// Whatever the bytes, the parser answers; what it accepts is objects.
    #[test]
    fn cloud_events_parsing_never_panics(body in cloud_eventish()) {
        use msgraph_webhooks::notification::{CloudEventsMode, parse_cloud_events};
        for mode in [CloudEventsMode::Structured, CloudEventsMode::Batch] {
            for text in [body.clone(), format!("[{body}]")] {
                if let Ok(envelope) = parse_cloud_events(text.as_bytes(), mode) {
                    let objects = envelope.items.iter().all(|i| i.get().starts_with('{'));
                    proptest::prop_assert!(objects, "a non-object item was accepted");
                }
            }
        }
    }
}

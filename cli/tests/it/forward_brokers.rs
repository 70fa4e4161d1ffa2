//! The broker sinks against real brokers: NATS JetStream, RabbitMQ and
//! Redis Streams. Each test runs when its broker's URL is set
//! (`MSGRAPH_WEBHOOKS_NATS_URL`, `MSGRAPH_WEBHOOKS_AMQP_URL`,
//! `MSGRAPH_WEBHOOKS_REDIS_URL`) and skips with a message otherwise. Events
//! are real ones, taken by a receiver from a posted notification; each test
//! uses its own subject, stream, exchange, queue or key and removes it.
//! The fault test starts its own `nats-server`.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;
use msgraph_webhooks::forward::amqp::AmqpSink;
use msgraph_webhooks::forward::nats::NatsSink;
use msgraph_webhooks::forward::redis_stream::RedisStreamSink;
use msgraph_webhooks::forward::{Outgoing, Sink};
use msgraph_webhooks::{ClientState, Receiver};
use url::Url;

use crate::support::http::post_json;
use crate::support::services::{OwnNats, free_port};
use crate::support::{Recorder, TestServer, envelope, message_item};

const STATE: &str = "forward-brokers-state";

pub(crate) fn broker_url(var: &str) -> Option<String> {
    let url = std::env::var(var).ok().filter(|u| !u.is_empty());
    if url.is_none() {
        eprintln!("{var} unset: skipping (point it at a running broker)");
    }
    url
}

/// A name no other test or run uses.
pub(crate) fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

/// `n` real events: notifications posted to a receiver, as its handler saw them.
async fn events(n: usize) -> Vec<Outgoing> {
    let recorder = Recorder::default();
    let server = TestServer::start(
        Receiver::builder(recorder.clone()).client_state(ClientState::new(STATE)),
    )
    .await;
    let items = (0..n)
        .map(|i| message_item("sub-forward", STATE, i))
        .collect();
    assert_eq!(
        post_json(&server.url("/"), envelope(items)).await.status,
        202
    );
    let mut events: Vec<Outgoing> = recorder
        .wait_for(n)
        .await
        .iter()
        .map(Outgoing::of)
        .collect();
    events.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(events.len(), n);
    events
}

/// Every event by id, for comparing with what the broker holds.
fn by_id(events: &[Outgoing]) -> HashMap<String, Vec<u8>> {
    events
        .iter()
        .map(|e| (e.id.clone(), e.body.to_vec()))
        .collect()
}

// ---- NATS JetStream ----

/// Every message of `stream`, as (Nats-Msg-Id, payload), read by a consumer.
pub(crate) async fn consume_nats(js: &jetstream::Context, stream: &str) -> Vec<(String, Vec<u8>)> {
    let stream = js.get_stream(stream).await.unwrap();
    let total = stream.get_info().await.unwrap().state.messages as usize;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < total {
        let mut batch = consumer
            .batch()
            .max_messages(total - seen.len())
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        let before = seen.len();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned())
                .expect("every message carries Nats-Msg-Id");
            seen.push((id, message.payload.to_vec()));
        }
        assert!(seen.len() > before, "the consumer stopped short of {total}");
    }
    seen
}

pub(crate) async fn jetstream_of(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

#[tokio::test]
async fn nats_every_event_arrives_with_its_id_and_body() {
    let Some(base) = broker_url("MSGRAPH_WEBHOOKS_NATS_URL") else {
        return;
    };
    let subject = unique("mgw.test.");
    let stream = unique("MGW_TEST_");
    let url = Url::parse(&format!(
        "{base}/{subject}?create_stream=true&stream={stream}"
    ))
    .unwrap();
    let sink = NatsSink::connect(&url).await.unwrap();
    assert!(
        sink.describe().ends_with(&format!("/{subject}")),
        "{}",
        sink.describe()
    );
    let sent = events(50).await;
    for event in &sent {
        sink.send(event).await.unwrap();
    }
    let js = jetstream_of(&base).await;
    let info = js
        .get_stream(&stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.config.storage, jetstream::stream::StorageType::File);
    let got = consume_nats(&js, &stream).await;
    assert_eq!(got.len(), sent.len());
    let expected = by_id(&sent);
    for (id, body) in &got {
        assert_eq!(expected.get(id), Some(body), "message {id}");
    }
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn nats_a_repeated_id_is_deduplicated_by_jetstream() {
    let Some(base) = broker_url("MSGRAPH_WEBHOOKS_NATS_URL") else {
        return;
    };
    let subject = unique("mgw.test.");
    let stream = unique("MGW_TEST_");
    let url = Url::parse(&format!(
        "{base}/{subject}?create_stream=true&stream={stream}"
    ))
    .unwrap();
    let sink = NatsSink::connect(&url).await.unwrap();
    let sent = events(2).await;
    let first = sink.publish(&sent[0]).await.unwrap();
    let again = sink.publish(&sent[0]).await.unwrap();
    let other = sink.publish(&sent[1]).await.unwrap();
    assert!(!first.duplicate);
    assert!(
        again.duplicate,
        "the second publish of one id is a duplicate"
    );
    assert_eq!(again.sequence, first.sequence);
    assert!(!other.duplicate);
    let js = jetstream_of(&base).await;
    let got = consume_nats(&js, &stream).await;
    let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, [sent[0].id.as_str(), sent[1].id.as_str()]);
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn nats_a_subject_no_stream_captures_is_a_clear_permanent_error() {
    let Some(base) = broker_url("MSGRAPH_WEBHOOKS_NATS_URL") else {
        return;
    };
    let subject = unique("mgw.nostream.");
    let url = Url::parse(&format!("{base}/{subject}")).unwrap();
    let error = NatsSink::connect(&url).await.expect_err("refused");
    assert!(!error.is_retryable());
    let message = error.to_string();
    assert!(
        message.contains(&format!("no JetStream stream captures subject {subject}"))
            && message.contains("create_stream=true"),
        "{message}"
    );
    // Nothing was created behind our back.
    let js = jetstream_of(&base).await;
    assert!(js.stream_by_subject(subject).await.is_err());
}

#[tokio::test]
async fn nats_killed_and_restarted_sends_fail_retryable_then_nothing_acked_is_lost() {
    if broker_url("MSGRAPH_WEBHOOKS_NATS_URL").is_none() {
        return;
    }
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut server = OwnNats::start(port, dir.path()).await;
    let base = format!("nats://127.0.0.1:{port}");
    let url = Url::parse(&format!(
        "{base}/graph.events?create_stream=true&stream=GRAPH"
    ))
    .unwrap();
    let sink = NatsSink::connect(&url).await.unwrap();
    let sent = events(40).await;
    let mut acked = Vec::new();
    for event in &sent[..20] {
        sink.send(event).await.unwrap();
        acked.push(event.id.clone());
    }

    server.kill();
    for event in &sent[20..23] {
        let error = sink.send(event).await.expect_err("the server is down");
        assert!(error.is_retryable(), "{error}");
    }

    server.restart().await;
    // The client reconnects on its own; the failed ones are retried as a
    // forwarding handler would, then the rest go out.
    for event in &sent[20..] {
        let mut attempts = 0;
        loop {
            match sink.send(event).await {
                Ok(()) => break,
                Err(e) => {
                    assert!(e.is_retryable(), "{e}");
                    attempts += 1;
                    assert!(attempts < 50, "no reconnect: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        acked.push(event.id.clone());
    }

    let js = jetstream_of(&base).await;
    let got = consume_nats(&js, "GRAPH").await;
    let expected = by_id(&sent);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (id, body) in &got {
        assert_eq!(expected.get(id), Some(body), "message {id}");
        *counts.entry(id.as_str()).or_default() += 1;
    }
    for id in &acked {
        assert!(counts.contains_key(id.as_str()), "acked {id} is lost");
    }
    // Retries of one id within the duplicate window were stored once.
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    assert_eq!(got.len(), sent.len());
}

// ---- RabbitMQ ----

#[tokio::test]
async fn amqp_every_event_arrives_persistent_with_its_message_id() {
    use lapin::options::{
        BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    let Some(base) = broker_url("MSGRAPH_WEBHOOKS_AMQP_URL") else {
        return;
    };
    let exchange = unique("mgw-test-x-");
    let queue = unique("mgw-test-q-");
    let connection = lapin::Connection::connect(&base, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "graph".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let url = Url::parse(&format!("{base}?exchange={exchange}&routing_key=graph")).unwrap();
    let sink = AmqpSink::connect(&url).await.unwrap();
    assert!(!sink.describe().contains("guest:"), "{}", sink.describe());
    let sent = events(50).await;
    for event in &sent {
        sink.send(event).await.unwrap();
    }
    let expected = by_id(&sent);
    let mut seen = 0;
    while let Some(message) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let delivery = message.delivery;
        let properties = &delivery.properties;
        let id = properties
            .message_id()
            .as_ref()
            .expect("message_id")
            .to_string();
        assert_eq!(expected.get(&id), Some(&delivery.data), "message {id}");
        assert_eq!(*properties.delivery_mode(), Some(2));
        assert_eq!(
            properties.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        seen += 1;
    }
    assert_eq!(seen, sent.len());

    // Unbound: the broker returns it, and the send says so (retryable).
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let error = sink.send(&sent[0]).await.expect_err("unroutable");
    assert!(error.is_retryable());
    assert!(error.to_string().contains("no queue is bound"), "{error}");
    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn amqp_a_missing_exchange_is_a_permanent_error() {
    let Some(base) = broker_url("MSGRAPH_WEBHOOKS_AMQP_URL") else {
        return;
    };
    let exchange = unique("mgw-test-missing-");
    let url = Url::parse(&format!("{base}?exchange={exchange}&routing_key=k")).unwrap();
    let error = AmqpSink::connect(&url).await.expect_err("refused");
    assert!(!error.is_retryable());
    assert!(error.to_string().contains(&exchange), "{error}");
}

// ---- Redis Streams ----

/// One `XRANGE` entry: its id and its field/value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

#[tokio::test]
async fn redis_every_event_is_one_stream_entry_with_id_kind_and_body() {
    let Some(base) = broker_url("MSGRAPH_WEBHOOKS_REDIS_URL") else {
        return;
    };
    let key = unique("mgw-test-stream-");
    let url = Url::parse(&format!("{}/?stream={key}", base.trim_end_matches('/'))).unwrap();
    let sink = RedisStreamSink::connect(&url).await.unwrap();
    let sent = events(50).await;
    for event in &sent {
        sink.send(event).await.unwrap();
    }
    let client = redis::Client::open(base.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(entries.len(), sent.len());
    for ((_, fields), event) in entries.iter().zip(&sent) {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(f, _)| f == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("field {name}"))
        };
        assert_eq!(field("id"), event.id.as_bytes());
        assert_eq!(field("kind"), b"change");
        assert_eq!(field("event"), event.body.to_vec());
    }
}

#[tokio::test]
async fn redis_sends_to_a_key_of_another_type_are_permanent_errors() {
    let Some(base) = broker_url("MSGRAPH_WEBHOOKS_REDIS_URL") else {
        return;
    };
    let key = unique("mgw-test-string-");
    let client = redis::Client::open(base.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let url = Url::parse(&format!("{}/?stream={key}", base.trim_end_matches('/'))).unwrap();
    let sink = RedisStreamSink::connect(&url).await.unwrap();
    let sent = events(1).await;
    let error = sink.send(&sent[0]).await.expect_err("WRONGTYPE");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!error.is_retryable(), "{error}");
}

// ---- End to end: Graph through Event Grid into listen --forward nats:// ----

/// The emulator delivers through Event Grid (the CloudEvents handshake,
/// then batched events) into the real `listen --forward nats://…`, on a
/// durable store; a JetStream consumer sees every event once, as the JSON
/// line `listen` would print, with the notification's id as `Nats-Msg-Id`.
#[tokio::test]
async fn event_grid_into_listen_forwarding_to_nats_delivers_every_event() {
    let Some(base) = broker_url("MSGRAPH_WEBHOOKS_NATS_URL") else {
        return;
    };
    let subject = unique("mgw.e2e.");
    let stream = unique("MGW_E2E_");
    let data = tempfile::tempdir().unwrap();
    let forward = format!("{base}/{subject}?create_stream=true&stream={stream}");
    let mut listen = crate::support::cli::Process::spawn(
        &[
            "listen",
            "--addr",
            "127.0.0.1:0",
            "--admin-addr",
            "off",
            "--data-dir",
            data.path().to_str().unwrap(),
            "--client-state",
            STATE,
            "--forward",
            &forward,
        ],
        &[],
    );
    let receiver = listen.listening_addr().await;
    listen.drain_stderr("listen");
    let emulator = msgraph_webhooks::emulator::Emulator::builder()
        .event_grid_endpoint(url::Url::parse(&format!("http://{receiver}/")).unwrap())
        .start()
        .await
        .unwrap();
    let graph = reqwest::Client::new();
    let token = emulator.app_token("11111111-2222-3333-4444-555555555555");
    let expires = (emulator.clock().now() + time::Duration::minutes(50))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let created = graph
        .post(format!("{}/v1.0/subscriptions", emulator.url()))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "changeType": "created",
            "notificationUrl": "EventGrid:?azuresubscriptionid=8aa4c1d2-0000-4000-8000-000000000001&resourcegroup=rg&partnertopic=graph&location=westus",
            "resource": "users/u1/messages",
            "expirationDateTime": expires,
            "clientState": STATE,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    const N: usize = 25;
    let changes: Vec<serde_json::Value> = (0..N)
        .map(|i| serde_json::json!({"resource": "users/u1/messages", "changeType": "created", "data": {"id": format!("AAMkE2E{i}")}}))
        .collect();
    let fired = graph
        .post(format!("{}/emulator/changes", emulator.url()))
        .json(&changes)
        .send()
        .await
        .unwrap();
    assert!(fired.status().is_success(), "{}", fired.status());

    // Wait until the stream holds every event (the forwarder creates it).
    let js = jetstream_of(&base).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let held = match js.get_stream(&stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if held as usize >= N {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{held} of {N} events in the stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = consume_nats(&js, &stream).await;
    let mut resources: Vec<String> = seen
        .iter()
        .map(|(_, body)| {
            let line: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(line["kind"], "change", "{line}");
            assert_eq!(line["subscriptionId"], created["id"]);
            line["resource"].as_str().unwrap().to_owned()
        })
        .collect();
    resources.sort();
    resources.dedup();
    assert_eq!(resources.len(), N, "every event once: {resources:?}");
    let ids: std::collections::HashSet<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), seen.len(), "each Nats-Msg-Id once");
    js.delete_stream(&stream).await.unwrap();
    listen.terminate();
    emulator.shutdown().await;
}

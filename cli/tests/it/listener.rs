//! The endpoint over real sockets: handshake, deliveries, authentication
//! before the ack, the handler contract.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use msgraph_webhooks::handler::HandlerEvent;
use msgraph_webhooks::listener::ServerConfig;
use msgraph_webhooks::retry::RetryPolicy;
use msgraph_webhooks::store::{Inbox, MemoryInbox};
use msgraph_webhooks::{
    BoxError, ChangeEvent, ChangeType, ClientState, LifecycleEventType, Receiver, ResourceKind,
    handler_fn,
};

use crate::support::http::{post_json, raw, request};
use crate::support::{Recorder, TestServer, envelope, message_item};

const STATE: &str = "secretClientValue";
const GRAPH_TOKEN: &str = "Validation%3a+Testing+client+application+reachability+for+subscription+Request-Id%3a+4f1b4c1e-2a7e-4d1c-9f55-1b2c3d4e5f60";
const DECODED: &str = "Validation: Testing client application reachability for subscription Request-Id: 4f1b4c1e-2a7e-4d1c-9f55-1b2c3d4e5f60";

async fn server(recorder: &Recorder) -> TestServer {
    TestServer::start(Receiver::builder(recorder.clone()).client_state(ClientState::new(STATE)))
        .await
}

#[tokio::test]
async fn handshake_echoes_graphs_token_on_every_path() {
    let server = server(&Recorder::default()).await;
    let cases = [
        ("POST", format!("/?validationToken={GRAPH_TOKEN}")),
        (
            "POST",
            format!(
                "/notifications?validationToken={}",
                GRAPH_TOKEN.replace("%3a", "%3A")
            ),
        ),
        (
            "POST",
            format!("/notify?tenant=contoso&validationToken={GRAPH_TOKEN}&route=mail"),
        ),
        ("POST", format!("/lifecycle?validationToken={GRAPH_TOKEN}")),
        ("GET", format!("/?validationToken={GRAPH_TOKEN}")),
    ];
    for (method, path) in cases {
        let reply = request(
            method,
            &server.url(&path),
            Some("text/plain; charset=utf-8"),
            "",
        )
        .await;
        assert_eq!(reply.status, 200, "{method} {path}");
        assert_eq!(reply.text(), DECODED, "{method} {path}");
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    }
}

#[tokio::test]
async fn bad_handshake_tokens_and_methods() {
    let server = server(&Recorder::default()).await;
    let long = "a".repeat(4097);
    let reply = request(
        "POST",
        &server.url(&format!("/?validationToken={long}")),
        None,
        "",
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.is_empty(), "rejections carry no reason");
    let reply = request("POST", &server.url("/?validationToken=%C3%28"), None, "").await;
    assert_eq!(reply.status, 400);
    let reply = request("PUT", &server.url("/?validationToken=x"), None, "").await;
    assert_eq!(reply.status, 405);
    // XSS-looking tokens are echoed as inert text.
    let reply = request(
        "POST",
        &server.url("/?validationToken=%3Cscript%3Ealert(1)%3C%2Fscript%3E"),
        None,
        "",
    )
    .await;
    assert_eq!(reply.text(), "<script>alert(1)</script>");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
}

#[tokio::test]
async fn a_basic_notification_reaches_the_handler_typed() {
    let recorder = Recorder::default();
    let server = server(&recorder).await;
    let body = std::fs::read(format!(
        "{}/tests/data/fixtures/outlook-message.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let reply = post_json(&server.url("/"), body).await;
    assert_eq!(reply.status, 202);
    assert!(reply.body.is_empty());
    recorder.wait_for(1).await;
    let event = &recorder.changes()[0];
    assert_eq!(
        event.subscription_id(),
        "7f105c7d-2dc5-4530-97cd-4e7ae6534c07"
    );
    assert_eq!(event.id(), Some("lsgTZMr9KwAAA"));
    assert_eq!(event.change_type(), &ChangeType::Created);
    assert_eq!(event.resource_kind(), &ResourceKind::Message);
    assert_eq!(
        event.resource(),
        "Users/622eaaff-0683-4862-9de4-f2ec83c2bd98/Messages/AAMkAGUwNjQ4ZjIxAAA="
    );
    assert_eq!(
        event.tenant_id(),
        Some("84bd8158-6d4d-4958-8b9f-9d6445542f95")
    );
    assert_eq!(
        event.resource_data().unwrap().id.as_deref(),
        Some("AAMkAGUwNjQ4ZjIxAAA=")
    );
    assert!(event.data().is_none());
    assert!(event.raw_json().contains("lsgTZMr9KwAAA"));
    let line = HandlerEvent::Change(event.clone()).to_json();
    assert_eq!(line["kind"], "change");
    assert_eq!(line["resourceKind"], "message");
    assert_eq!(line["data"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_batch_of_100_items_all_arrive() {
    let recorder = Recorder::default();
    let server = server(&recorder).await;
    let items = (0..100).map(|n| message_item("sub-1", STATE, n)).collect();
    let reply = post_json(&server.url("/"), envelope(items)).await;
    assert_eq!(reply.status, 202);
    recorder.wait_for(100).await;
    let mut ids: Vec<String> = recorder
        .changes()
        .iter()
        .map(|e| e.id().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100);
}

#[tokio::test]
async fn lifecycle_items_reach_on_lifecycle() {
    let recorder = Recorder::default();
    let server = server(&recorder).await;
    let body = std::fs::read(format!(
        "{}/tests/data/fixtures/lifecycle.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    assert_eq!(post_json(&server.url("/lifecycle"), body).await.status, 202);
    recorder.wait_for(3).await;
    let mut kinds: Vec<_> = recorder
        .lifecycles()
        .iter()
        .map(|e| e.lifecycle_event().clone())
        .collect();
    kinds.sort_by_key(|k| k.as_str().to_owned());
    assert_eq!(
        kinds,
        [
            LifecycleEventType::Missed,
            LifecycleEventType::ReauthorizationRequired,
            LifecycleEventType::SubscriptionRemoved
        ]
    );
    let event = &recorder.lifecycles()[0];
    assert_eq!(
        event.subscription_id(),
        "e3898f08-5cd0-4a6a-80fc-6addbfb73b7b"
    );
    assert!(event.subscription_expiration().is_some());
}

#[tokio::test]
async fn wrong_client_state_gets_202_and_reaches_nobody() {
    let recorder = Recorder::default();
    let server = server(&recorder).await;
    let bad = envelope(vec![
        message_item("sub-1", "guessed", 1),
        serde_json::json!({"subscriptionId": "sub-1", "changeType": "created", "resource": "x"}),
        serde_json::json!({"subscriptionId": "sub-1", "clientState": STATE}),
        serde_json::json!("not an object"),
    ]);
    let reply = post_json(&server.url("/"), bad).await;
    assert_eq!(reply.status, 202, "suspicious items never get a 4xx");
    assert_eq!(server.metrics.rejected_count("client_state_mismatch"), 2);
    assert_eq!(server.metrics.rejected_count("malformed_item"), 2);
    // A good item afterwards is the sync point: once it arrives, the bad ones
    // had every chance to arrive too.
    let good = envelope(vec![message_item("sub-1", STATE, 7)]);
    assert_eq!(post_json(&server.url("/"), good).await.status, 202);
    recorder.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let events = recorder.changes();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id(), Some("notification-7"));
}

#[tokio::test]
async fn malformed_oversized_empty_and_wrong_method() {
    let recorder = Recorder::default();
    let receiver = Receiver::builder(recorder.clone())
        .client_state(ClientState::new(STATE))
        .max_body(64 * 1024);
    let server = TestServer::start(receiver).await;
    let url = server.url("/");
    for (body, status) in [
        ("", 400),
        ("{", 400),
        ("not json at all", 400),
        ("[]", 400),
        (r#"{"value":{}}"#, 400),
        (r#"{"nothing":[]}"#, 400),
        (r#"{"value":[]}"#, 202),
    ] {
        let reply = post_json(&url, body).await;
        assert_eq!(reply.status, status, "{body:?}");
        assert!(reply.body.is_empty());
    }
    let big = envelope((0..400).map(|n| message_item("sub-1", STATE, n)).collect());
    assert!(big.len() > 64 * 1024);
    assert_eq!(post_json(&url, big.clone()).await.status, 413);

    // Without a Content-Length (chunked), the limit still holds and the
    // server stops reading at the limit.
    let head = "POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    let mut chunked = head.as_bytes().to_vec();
    for chunk in big.as_bytes().chunks(8192) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(server.addr, &chunked, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    for method in ["PUT", "DELETE", "PATCH", "GET"] {
        let reply = request(method, &url, None, "").await;
        assert_eq!(reply.status, 405, "{method}");
        assert_eq!(reply.header("allow"), Some("POST"));
    }
    assert!(recorder.events().is_empty());
}

#[tokio::test]
async fn a_panicking_handler_leaves_the_server_serving() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Recorder::default();
    let handler = {
        let calls = calls.clone();
        let seen = seen.clone();
        handler_fn(move |event: ChangeEvent| {
            let calls = calls.clone();
            let seen = seen.clone();
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("the app's bug");
                }
                msgraph_webhooks::Handler::on_change(&seen, event).await
            }
        })
    };
    let receiver = Receiver::builder(handler)
        .client_state(ClientState::new(STATE))
        .retry(RetryPolicy::new(3, Duration::from_millis(10)))
        .workers(1);
    let server = TestServer::start(receiver).await;
    assert_eq!(
        post_json(
            &server.url("/"),
            envelope(vec![message_item("s", STATE, 1)])
        )
        .await
        .status,
        202
    );
    // The item whose first attempt panicked is retried and handled.
    seen.wait_for(1).await;
    assert_eq!(seen.changes()[0].attempt(), 1);
    // The server and the worker are still there.
    assert_eq!(
        post_json(
            &server.url("/"),
            envelope(vec![message_item("s", STATE, 2)])
        )
        .await
        .status,
        202
    );
    seen.wait_for(2).await;
    let metrics = metrics_text(&server).await;
    assert!(
        metrics.contains("msgraph_webhooks_handler_calls_total{outcome=\"panic\"} 1"),
        "{metrics}"
    );
}

async fn metrics_text(server: &TestServer) -> String {
    request("GET", &server.admin_url("/metrics"), None, "")
        .await
        .text()
}

#[tokio::test]
async fn failing_handler_is_retried_then_dead_lettered() {
    let inbox = Arc::new(MemoryInbox::new(100));
    let attempts = Arc::new(AtomicU32::new(0));
    let handler = {
        let attempts = attempts.clone();
        handler_fn(move |_event| {
            let attempts = attempts.clone();
            async move {
                attempts.fetch_add(1, Ordering::SeqCst);
                Err::<(), BoxError>("downstream is down".into())
            }
        })
    };
    let receiver = Receiver::builder(handler)
        .client_state(ClientState::new(STATE))
        .inbox(inbox.clone())
        .retry(RetryPolicy::new(3, Duration::from_millis(5)))
        .workers(2);
    let server = TestServer::start(receiver).await;
    assert_eq!(
        post_json(
            &server.url("/"),
            envelope(vec![message_item("s", STATE, 1)])
        )
        .await
        .status,
        202
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while inbox.dead_letters().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead-lettered within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let (claimed, reason) = &inbox.dead_letters()[0];
    assert!(reason.contains("downstream is down"), "{reason}");
    assert_eq!(claimed.attempts, 3, "every failed attempt is counted");
    assert_eq!(inbox.stats().await.unwrap().depth, 0);
}

#[tokio::test]
async fn a_full_inbox_answers_503_with_retry_after_and_handshakes_still_work() {
    // Workers never drain: the handler blocks forever.
    let handler = handler_fn(|_event| async move {
        std::future::pending::<()>().await;
        Ok(())
    });
    let receiver = Receiver::builder(handler)
        .client_state(ClientState::new(STATE))
        .inbox(Arc::new(MemoryInbox::new(2)))
        .workers(1);
    let server = TestServer::start(receiver).await;
    let url = server.url("/");
    let two = envelope(vec![
        message_item("s", STATE, 1),
        message_item("s", STATE, 2),
    ]);
    assert_eq!(post_json(&url, two).await.status, 202);
    let reply = post_json(&url, envelope(vec![message_item("s", STATE, 3)])).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("5"));
    let reply = request(
        "POST",
        &server.url(&format!("/?validationToken={GRAPH_TOKEN}")),
        None,
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "the handshake never waits on the inbox");
    assert_eq!(reply.text(), DECODED);
}

#[tokio::test]
async fn http2_prior_knowledge_works() {
    use http_body_util::{BodyExt as _, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let recorder = Recorder::default();
    let mut config = ServerConfig::default();
    config.http2 = true;
    let receiver = Receiver::builder(recorder.clone()).client_state(ClientState::new(STATE));
    let server = TestServer::start_with(receiver, config).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    let request = http::Request::post(server.url("/"))
        .header("content-type", "application/json")
        .body(Full::new(
            envelope(vec![message_item("s", STATE, 1)]).into(),
        ))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 202);
    let _ = response.into_body().collect().await;
    recorder.wait_for(1).await;
}

#[tokio::test]
async fn the_service_mounts_as_an_axum_route() {
    use axum::Router;
    use axum::routing::get;

    let recorder = Recorder::default();
    let receiver = Receiver::builder(recorder.clone())
        .client_state(ClientState::new(STATE))
        .build()
        .unwrap();
    let workers = receiver.spawn_workers();
    let app = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .route_service("/graph", receiver.service());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(async move { axum::serve(listener, app).await });

    let hello = request("GET", &format!("http://{addr}/hello"), None, "").await;
    assert_eq!(hello.text(), "hi");
    let shake = request(
        "POST",
        &format!("http://{addr}/graph?validationToken={GRAPH_TOKEN}"),
        None,
        "",
    )
    .await;
    assert_eq!((shake.status, shake.text().as_str()), (200, DECODED));
    let reply = post_json(
        &format!("http://{addr}/graph"),
        envelope(vec![message_item("s", STATE, 1)]),
    )
    .await;
    assert_eq!(reply.status, 202);
    recorder.wait_for(1).await;
    served.abort();
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn subscriptions_recorded_by_another_instance_are_authenticated() {
    use msgraph_webhooks::store::RecordStore as _;
    use msgraph_webhooks::store::{MemoryRecords, SubscriptionRecord};

    let records = Arc::new(MemoryRecords::new());
    let registry = Arc::new(msgraph_webhooks::SubscriptionRegistry::new().source(records.clone()));
    let recorder = Recorder::default();
    let server = TestServer::start(Receiver::builder(recorder.clone()).registry(registry)).await;
    // Recorded after this instance started, as a subscription manager elsewhere would.
    records
        .put(SubscriptionRecord::new(
            "sub-x",
            Some(ClientState::new("own-state")),
        ))
        .await
        .unwrap();
    let body = envelope(vec![
        message_item("sub-x", "own-state", 1),
        message_item("sub-x", STATE, 2),
        message_item("sub-unknown", "own-state", 3),
    ]);
    assert_eq!(post_json(&server.url("/"), body).await.status, 202);
    recorder.wait_for(1).await;
    assert_eq!(server.metrics.rejected_count("client_state_mismatch"), 1);
    assert_eq!(server.metrics.rejected_count("unknown_subscription"), 1);
    assert_eq!(recorder.changes()[0].id(), Some("notification-1"));
}

#[tokio::test]
async fn an_unreachable_record_source_answers_503() {
    use futures_util::future::BoxFuture;
    use msgraph_webhooks::store::StoreError;
    use msgraph_webhooks::store::{RecordStore, SubscriptionRecord};

    struct Down;
    impl RecordStore for Down {
        fn get_many(
            &self,
            _: Vec<String>,
        ) -> BoxFuture<'_, Result<Vec<Option<SubscriptionRecord>>, StoreError>> {
            Box::pin(async { Err(StoreError::unavailable("connection refused")) })
        }
        fn put(&self, _: SubscriptionRecord) -> BoxFuture<'_, Result<(), StoreError>> {
            Box::pin(async { Err(StoreError::unavailable("connection refused")) })
        }
        fn remove(&self, _: String) -> BoxFuture<'_, Result<(), StoreError>> {
            Box::pin(async { Err(StoreError::unavailable("connection refused")) })
        }
        fn all(&self) -> BoxFuture<'_, Result<Vec<SubscriptionRecord>, StoreError>> {
            Box::pin(async { Err(StoreError::unavailable("connection refused")) })
        }
    }
    let registry = Arc::new(msgraph_webhooks::SubscriptionRegistry::new().source(Arc::new(Down)));
    let server = TestServer::start(Receiver::builder(Recorder::default()).registry(registry)).await;
    let reply = post_json(
        &server.url("/"),
        envelope(vec![message_item("s", STATE, 1)]),
    )
    .await;
    assert_eq!(
        reply.status, 503,
        "without the records nothing can be authenticated"
    );
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn a_copy_arriving_while_another_worker_handles_it_is_not_handled_twice() {
    // The first call waits for the gate; meanwhile Graph's copies of the
    // same notification reach the other worker too.
    let calls = Arc::new(AtomicU32::new(0));
    let (entered, mut first_entered) = tokio::sync::mpsc::channel::<()>(4);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handler = {
        let (calls, gate) = (calls.clone(), gate.clone());
        handler_fn(move |_event: ChangeEvent| {
            let (calls, gate, entered) = (calls.clone(), gate.clone(), entered.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let _ = entered.send(()).await;
                let _permit = gate.acquire().await;
                Ok::<(), BoxError>(())
            }
        })
    };
    let receiver = Receiver::builder(handler)
        .client_state(ClientState::new(STATE))
        .workers(2);
    let server = TestServer::start(receiver).await;
    let copy = || envelope(vec![message_item("s", STATE, 1)]);
    assert_eq!(post_json(&server.url("/"), copy()).await.status, 202);
    tokio::time::timeout(Duration::from_secs(10), first_entered.recv())
        .await
        .expect("the first copy reaches the handler");
    // A worker claims up to two batches ahead of its handler, so of three
    // more copies, one at least reaches the other worker.
    for _ in 0..3 {
        assert_eq!(post_json(&server.url("/"), copy()).await.status, 202);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The copies wait while the first is held, then are dropped as
    // duplicates once it is handled.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.add_permits(10);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while server.metrics.rejected_count("duplicate") < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the copies were not dropped as duplicates within 15 s; handler calls: {}",
            calls.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "handled exactly once");
}

/// `/metrics` would tell a caller whether a guessed subscription id or
/// clientState was right: it lives on the admin address only.
#[tokio::test]
async fn metrics_are_on_the_admin_address_never_on_the_endpoint() {
    use tower::ServiceExt as _;

    let recorder = Recorder::default();
    let server = server(&recorder).await;
    let guess = envelope(vec![message_item("guessed-sub", "guessed-state", 1)]);
    assert_eq!(post_json(&server.url("/"), guess).await.status, 202);
    for path in ["/metrics", "/metrics?x=1", "/admin/metrics"] {
        let reply = request("GET", &server.url(path), None, "").await;
        assert_eq!(reply.status, 405, "{path} answers like any path");
        assert!(reply.body.is_empty(), "{path}");
        assert!(!reply.headers.contains_key("content-type"), "{path}");
    }
    let admin = request("GET", &server.admin_url("/metrics"), None, "").await;
    assert_eq!(admin.status, 200);
    assert!(
        admin
            .text()
            .contains("msgraph_webhooks_items_rejected_total{reason=\"client_state_mismatch\"} 1"),
        "{}",
        admin.text()
    );
    assert_eq!(
        request("GET", &server.admin_url("/nope"), None, "")
            .await
            .status,
        404
    );
    // The tower service mounted elsewhere answers the same.
    let receiver = Receiver::builder(Recorder::default())
        .client_state(ClientState::new(STATE))
        .build()
        .unwrap();
    let response = receiver
        .service()
        .oneshot(
            http::Request::get("/metrics")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}

//! The validation handshake inside `POST /subscriptions`: every failure is
//! `400` with Graph's message, and the subscription is not created.

use std::time::Duration;

use msgraph_webhooks::emulator::{DeliveryKind, Emulator, Outcome};
use serde_json::json;
use tokio::io::AsyncReadExt as _;

use crate::support::graph::{Answer, Answering, Graph, Hook};

const NOT_OK: &str = "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.";
const MISMATCH: &str = "Subscription validation request failed. Response must exactly match validationToken query parameter.";
const TIMED_OUT: &str = "Subscription validation request timed out.";

/// Creates a subscription to `url` and checks it failed with `message`,
/// that nothing was created, and that the attempt is in the log.
async fn fails(graph: &Graph, url: &str, message: &str, outcome: Outcome) {
    let token = graph.app_token();
    let answer: Answer = graph
        .create(
            &token,
            &graph.subscription("users/u1/messages", "created", url),
        )
        .await;
    assert_eq!(answer.status, 400, "{:#}", answer.json);
    assert_eq!(answer.message(), message);
    assert_eq!(answer.code(), "InvalidRequest");
    let list = graph
        .call("GET", "/v1.0/subscriptions", Some(&token), None, &[])
        .await;
    assert_eq!(list.json["value"], json!([]), "nothing was created");
    assert!(graph.emulator.subscription_ids().is_empty());
    let log = graph.emulator.deliveries();
    let last = log.last().expect("the validation request is logged");
    assert_eq!(last.kind, DeliveryKind::Validation);
    assert_eq!(last.outcome, outcome);
}

#[tokio::test]
async fn no_answer_connection_refused() {
    let graph = Graph::start(Emulator::builder()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    fails(
        &graph,
        &format!("http://{addr}/n"),
        NOT_OK,
        Outcome::Unreachable,
    )
    .await;
}

#[tokio::test]
async fn no_answer_connection_closed() {
    let graph = Graph::start(Emulator::builder()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closer = tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            drop(socket);
        }
    });
    fails(
        &graph,
        &format!("http://{addr}/n"),
        NOT_OK,
        Outcome::Unreachable,
    )
    .await;
    closer.abort();
}

#[tokio::test]
async fn wrong_status() {
    let graph = Graph::start(Emulator::builder()).await;
    for status in [500, 202, 401, 301] {
        let hook = Hook::start(Answering::Status(status)).await;
        fails(&graph, &hook.url("/n"), NOT_OK, Outcome::Failed).await;
    }
}

#[tokio::test]
async fn wrong_body() {
    let graph = Graph::start(Emulator::builder()).await;
    for body in [
        "",
        "Validation: Testing client application reachability for subscription",
        "Validation%3A+Testing+client+application+reachability",
    ] {
        let hook = Hook::start(Answering::Body(body)).await;
        fails(&graph, &hook.url("/n"), MISMATCH, Outcome::Mismatch).await;
    }
}

#[tokio::test]
async fn a_huge_answer_is_not_read_in_full() {
    let graph = Graph::start(Emulator::builder()).await;
    let huge: &'static str = Box::leak("Validation: ".repeat(200_000).into_boxed_str());
    let hook = Hook::start(Answering::Body(huge)).await;
    fails(&graph, &hook.url("/n"), MISMATCH, Outcome::Mismatch).await;
}

#[tokio::test]
async fn an_html_page() {
    let graph = Graph::start(Emulator::builder()).await;
    let hook = Hook::start(Answering::Body(
        "<!DOCTYPE html><html><head><title>It works!</title></head><body><h1>Welcome</h1></body></html>",
    ))
    .await;
    fails(&graph, &hook.url("/n"), MISMATCH, Outcome::Mismatch).await;
}

#[tokio::test]
async fn too_slow_in_scaled_time() {
    // Timeouts 50 times faster: Graph's 10 s are 200 ms; the endpoint takes 5 s.
    let graph = Graph::start(Emulator::builder().timeout_scale(50.0)).await;
    let hook = Hook::start(Answering::After(Duration::from_secs(5))).await;
    fails(&graph, &hook.url("/n"), TIMED_OUT, Outcome::TimedOut).await;

    // An endpoint that reads the request and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            held.push(socket);
        }
    });
    fails(
        &graph,
        &format!("http://{addr}/n"),
        TIMED_OUT,
        Outcome::TimedOut,
    )
    .await;
    silent.abort();
}

#[tokio::test]
async fn the_request_is_graphs_and_keeps_the_urls_query() {
    let graph = Graph::start(Emulator::builder()).await;
    let hook = Hook::start(Answering::Well).await;
    let token = graph.app_token();
    let answer = graph
        .create(
            &token,
            &graph.subscription(
                "users/u1/messages",
                "created",
                &hook.url("/n?tenant=contoso&x=a%20b"),
            ),
        )
        .await;
    assert_eq!(answer.status, 201, "{:#}", answer.json);
    let captured = hook.captured();
    assert_eq!(captured.len(), 1);
    let request = &captured[0];
    let query = request.query.as_deref().unwrap();
    assert!(
        query.starts_with("tenant=contoso&x=a%20b&validationToken=Validation%3A+Testing+client+application+reachability+for+subscription+Request-Id%3A+"),
        "{query}"
    );
    assert_eq!(
        request.content_type.as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert!(request.body.is_empty());
}

#[tokio::test]
async fn a_failing_lifecycle_url_fails_the_create() {
    let graph = Graph::start(Emulator::builder()).await;
    let good = Hook::start(Answering::Well).await;
    let bad = Hook::start(Answering::Status(404)).await;
    let mut body = graph.subscription("users/u1/messages", "created", &good.url("/n"));
    body["lifecycleNotificationUrl"] = json!(bad.url("/lifecycle"));
    let answer = graph.create(&graph.app_token(), &body).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.message(), NOT_OK);
    assert!(graph.emulator.subscription_ids().is_empty());
    assert_eq!(
        good.captured().len(),
        1,
        "the notification URL passed first"
    );
}

#[tokio::test]
async fn an_update_to_a_failing_url_is_refused_and_changes_nothing() {
    let graph = Graph::start(Emulator::builder()).await;
    let good = Hook::start(Answering::Well).await;
    let bad = Hook::start(Answering::Body("nope")).await;
    let token = graph.app_token();
    let created = graph
        .create(
            &token,
            &graph.subscription("users/u1/messages", "created", &good.url("/n")),
        )
        .await;
    let id = created.json["id"].as_str().unwrap();
    let path = format!("/v1.0/subscriptions/{id}");
    let answer = graph
        .call(
            "PATCH",
            &path,
            Some(&token),
            Some(&json!({"notificationUrl": bad.url("/n")})),
            &[],
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.message(), MISMATCH);
    let read = graph.call("GET", &path, Some(&token), None, &[]).await;
    assert_eq!(read.json["notificationUrl"], good.url("/n"));

    // A good new URL is validated, then used.
    let other = Hook::start(Answering::Well).await;
    let answer = graph
        .call(
            "PATCH",
            &path,
            Some(&token),
            Some(&json!({"notificationUrl": other.url("/n")})),
            &[],
        )
        .await;
    assert_eq!(answer.status, 200, "{:#}", answer.json);
    assert_eq!(answer.json["notificationUrl"], other.url("/n"));
    assert_eq!(other.captured().len(), 1);
    // Renewing alone does not validate again.
    let answer = graph
        .call(
            "PATCH",
            &path,
            Some(&token),
            Some(&json!({"expirationDateTime": graph.expires_in(60)})),
            &[],
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(other.captured().len(), 1);
}

#[tokio::test]
async fn https_only_except_loopback() {
    let graph = Graph::start(Emulator::builder()).await;
    let token = graph.app_token();
    for (url, message) in [
        (
            "http://example.com/n",
            "notificationUrl must be an https:// URL (http:// is accepted for loopback addresses).",
        ),
        (
            "not a url",
            "notificationUrl 'not a url' is not a valid absolute URL.",
        ),
        (
            "EventHub:https://vault.vault.azure.net/secrets/hub?tenantId=contoso.com",
            "notificationUrl: Event Hubs delivery is not emulated; use an https:// URL (http:// for loopback) or an EventGrid: URL.",
        ),
    ] {
        let answer = graph
            .create(
                &token,
                &graph.subscription("users/u1/messages", "created", url),
            )
            .await;
        assert_eq!(answer.status, 400);
        assert_eq!(answer.message(), message);
    }
}

//! Graph's throttling of `/subscriptions` in the emulator: `429` with
//! `Retry-After` and the error envelope past a limit, room again once the
//! window slides, reads limited apart from writes, the per-tenant limit
//! across apps, and the library's client and `subscribe` retrying through it.

use std::sync::Arc;
use std::time::Duration;

use msgraph_webhooks::ChangeType;
use msgraph_webhooks::emulator::{ApiLimits, Emulator};
use msgraph_webhooks::subscriptions::{GraphClient, NewSubscription, StaticToken};
use serde_json::Value;

use crate::subscriptions_cli::graph_flags;
use crate::support::cli::Process;
use crate::support::graph::{APP, Answer, Answering, Graph, Hook};

/// Limits far above what a test reaches, but for the ones it sets.
fn limits(window: Duration) -> ApiLimits {
    let mut limits = ApiLimits::default();
    limits.window = window;
    limits
}

/// The `Retry-After` of a `429` in Graph's envelope, checked.
fn throttled(answer: &Answer) -> u64 {
    assert_eq!(answer.status, 429, "{:#}", answer.json);
    assert_eq!(answer.code(), "TooManyRequests", "{:#}", answer.json);
    assert!(
        answer
            .message()
            .starts_with("Too many requests from Identifier:"),
        "{}",
        answer.message()
    );
    let inner = &answer.json["error"]["innerError"];
    for field in ["date", "request-id", "client-request-id"] {
        assert!(inner[field].is_string(), "{field} in {inner:#}");
    }
    assert_eq!(
        answer.headers["request-id"].to_str().unwrap(),
        inner["request-id"].as_str().unwrap()
    );
    assert!(
        answer.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds")
}

async fn delete(graph: &Graph, token: &str, id: &str) -> Answer {
    graph
        .call(
            "DELETE",
            &format!("/v1.0/subscriptions/{id}"),
            Some(token),
            None,
            &[],
        )
        .await
}

async fn list(graph: &Graph, token: &str) -> Answer {
    graph
        .call("GET", "/beta/subscriptions", Some(token), None, &[])
        .await
}

#[tokio::test]
async fn emulator_throttle_writes_past_the_limit_get_429_until_the_window_slides() {
    let mut limits = limits(Duration::from_secs(2));
    limits.writes_per_app_per_tenant = 2;
    let graph = Graph::start(Emulator::builder().api_limits(limits)).await;
    let hook = Hook::start(Answering::Well).await;
    let token = graph.app_token();
    // Different users: a second subscription like the first is a duplicate.
    let body = |user: &str| {
        graph.subscription(&format!("users/{user}/messages"), "created", &hook.url("/"))
    };
    for user in ["ada", "bob"] {
        let created = graph.create(&token, &body(user)).await;
        assert_eq!(created.status, 201, "{:#}", created.json);
    }
    let refused = graph
        .create_with(&token, &body("cy"), &[("client-request-id", "mine-42")])
        .await;
    let retry_after = throttled(&refused);
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(
        refused.json["error"]["innerError"]["client-request-id"],
        "mine-42"
    );
    assert!(
        refused.message().contains(&APP.to_ascii_lowercase()),
        "names the app: {}",
        refused.message()
    );
    assert_eq!(graph.emulator.subscription_ids().len(), 2, "not created");
    assert_eq!(graph.emulator.throttled_requests(), 1);

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(graph.create(&token, &body("cy")).await.status, 201);
    assert_eq!(graph.emulator.subscription_ids().len(), 3);
}

#[tokio::test]
async fn emulator_throttle_reads_are_limited_apart_from_writes() {
    let mut limits = limits(Duration::from_secs(60));
    limits.writes_per_app_per_tenant = 1;
    limits.requests_per_app_per_tenant = 3;
    let graph = Graph::start(Emulator::builder().api_limits(limits)).await;
    let token = graph.app_token();
    // Requests without a valid token get their 401 and count for nothing.
    for _ in 0..5 {
        let anonymous = graph
            .call("GET", "/v1.0/subscriptions", None, None, &[])
            .await;
        assert_eq!(anonymous.status, 401);
    }
    // A write that fails still counts: Graph counts requests, not successes.
    assert_eq!(delete(&graph, &token, "nope").await.status, 404);
    throttled(&delete(&graph, &token, "nope").await);
    // Writes are throttled, reads still pass, under v1.0 and beta alike…
    assert_eq!(list(&graph, &token).await.status, 200);
    let get = graph
        .call("GET", "/v1.0/subscriptions/nope", Some(&token), None, &[])
        .await;
    assert_eq!(get.status, 404);
    // …until all requests (the write included) reach their own limit.
    let refused = list(&graph, &token).await;
    throttled(&refused);
    assert!(
        refused.message().contains("subscriptionservice.requests"),
        "{}",
        refused.message()
    );
    assert_eq!(graph.emulator.throttled_requests(), 2);
    // Other routes are not the subscription service's.
    let delta = graph
        .call("GET", "/v1.0/users/delta", Some(&token), None, &[])
        .await;
    assert_eq!(delta.status, 200, "{:#}", delta.json);
}

#[tokio::test]
async fn emulator_throttle_the_tenant_limit_spans_apps() {
    let mut limits = limits(Duration::from_secs(60));
    limits.writes_per_tenant = 3;
    let graph = Graph::start(Emulator::builder().api_limits(limits)).await;
    let tenant = graph.emulator.tenant_id().to_owned();
    let first = graph.emulator.app_token("first-app");
    let second = graph.emulator.app_token("second-app");
    for token in [&first, &first, &second] {
        assert_eq!(delete(&graph, token, "nope").await.status, 404);
    }
    let refused = delete(&graph, &second, "nope").await;
    throttled(&refused);
    assert!(
        refused.message().contains(&format!("Identifier:{tenant} ")),
        "the tenant's limit: {}",
        refused.message()
    );
    throttled(&delete(&graph, &graph.emulator.app_token("third-app"), "nope").await);
    // Another tenant has its own window; reads still pass in this one.
    let elsewhere = graph.emulator.app_token_with(
        "0f0e0d0c-0b0a-0908-0706-050403020100",
        "first-app",
        &["Mail.Read"],
    );
    assert_eq!(delete(&graph, &elsewhere, "nope").await.status, 404);
    assert_eq!(list(&graph, &second).await.status, 200);
}

#[tokio::test]
async fn emulator_throttle_unlimited_never_throttles() {
    let mut limits = ApiLimits::unlimited();
    limits.writes_per_app_per_tenant = 0;
    let graph = Graph::start(Emulator::builder().api_limits(limits)).await;
    let token = graph.app_token();
    for _ in 0..20 {
        assert_eq!(delete(&graph, &token, "nope").await.status, 404);
    }
    assert_eq!(graph.emulator.throttled_requests(), 0);
}

/// The client already retries `429` after `Retry-After`: against an
/// emulator allowing two writes a second, every create of a burst succeeds.
#[tokio::test]
async fn emulator_throttle_the_graph_client_retries_through_429s() {
    let mut limits = limits(Duration::from_secs(1));
    limits.writes_per_app_per_tenant = 2;
    let emulator = Emulator::builder()
        .api_limits(limits)
        .start()
        .await
        .unwrap();
    let hook = Hook::start(Answering::Well).await;
    let client = GraphClient::new(StaticToken::new(emulator.app_token(APP)))
        .base_url(emulator.graph_url())
        .clock(Arc::new(emulator.clock().clone()));
    let expires = emulator.clock().now() + time::Duration::hours(1);
    let creates = (0..5).map(|n| {
        let client = client.clone();
        let subscription = NewSubscription::new(
            format!("users/user{n}/messages"),
            [ChangeType::Created],
            hook.url("/"),
            expires,
        );
        async move { client.create(&subscription).await }
    });
    let created = futures_util::future::join_all(creates).await;
    for result in &created {
        assert!(result.is_ok(), "{result:?}");
    }
    assert_eq!(emulator.subscription_ids().len(), 5);
    assert!(
        emulator.throttled_requests() >= 3,
        "some creates were answered 429 first: {}",
        emulator.throttled_requests()
    );
}

/// `subscribe` runs on the same client: its create meets a full window,
/// waits out `Retry-After`, and succeeds.
#[tokio::test]
async fn emulator_throttle_subscribe_waits_out_retry_after() {
    // Long enough that the process starts and asks within the window the
    // test fills; short enough to wait out.
    let mut limits = limits(Duration::from_secs(5));
    limits.writes_per_app_per_tenant = 1;
    let emulator = Emulator::builder()
        .api_limits(limits)
        .start()
        .await
        .unwrap();
    let hook = Hook::start(Answering::Well).await;
    let base = emulator.url().to_owned();
    // The app's one write of this window.
    let token = emulator.app_token(APP);
    let answer = reqwest::Client::new()
        .delete(format!("{base}/v1.0/subscriptions/nope"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);

    let mut args: Vec<String> = vec![
        "subscribe".into(),
        "users/ada/messages:created".into(),
        "--public-url".into(),
        hook.url(""),
        "--memory".into(),
        "--keep".into(),
    ];
    args.extend(graph_flags(&base));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut subscribe = Process::spawn(&args, &[("MSGRAPH_WEBHOOKS_CLIENT_SECRET", "s3cret")]);
    subscribe.drain_stderr("subscribe");
    let line = subscribe.next_stdout(Duration::from_secs(30)).await;
    assert!(line.starts_with("created "), "{line}");
    assert!(emulator.throttled_requests() >= 1, "the create met a 429");
    let live: Value = reqwest::get(format!("{base}/emulator/subscriptions"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(live["value"].as_array().unwrap().len(), 1, "{live:#}");
    subscribe.terminate();
    let _ = subscribe.child.wait().await;
}

/// `emulate --api-limit N`: N requests per app per tenant per window.
#[tokio::test]
async fn emulator_throttle_emulate_takes_a_limit_from_the_command_line() {
    let mut emulate = Process::spawn(
        &["emulate", "--addr", "127.0.0.1:0", "--api-limit", "1"],
        &[],
    );
    let base = format!("http://{}", emulate.listening_addr().await);
    emulate.drain_stderr("emulate");
    let client = reqwest::Client::new();
    let token = &crate::support::graph::client_token(&client, &base, APP).await;
    let list = || {
        client
            .get(format!("{base}/v1.0/subscriptions"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(list().await.unwrap().status(), 200);
    let refused = list().await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "TooManyRequests");
    emulate.terminate();
    assert!(emulate.child.wait().await.unwrap().success());
}

//! The inspector's API on a real admin address, behind a real receiver
//! with a durable store: each item's fate as it moves on (handled, retried,
//! dead-lettered, rejected with its reason and hint), the dead-letter
//! replay, the long poll, and what it refuses (no token, a foreign Host, a
//! replay without its header). The `clientState` never shows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use msgraph_webhooks::inspector::Inspector;
use msgraph_webhooks::retry::RetryPolicy;
use msgraph_webhooks::store::{Backend, SqliteStore};
use msgraph_webhooks::{ChangeEvent, ClientState, Receiver, handler_fn};
use serde_json::{Value, json};

pub(crate) const STATE: &str = "the-state-of-this-test";

pub(crate) struct Running {
    pub(crate) endpoint: String,
    pub(crate) admin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    _data: tempfile::TempDir,
}

impl Running {
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), &mut self.served).await;
    }
}

/// A receiver whose handler fails for resources containing `fail` until
/// `fixed` is set, with the inspector and, when given, an admin token.
pub(crate) async fn start(fixed: Arc<AtomicBool>, token: Option<&str>) -> Running {
    let data = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(data.path()).unwrap());
    let handler = handler_fn(move |change: ChangeEvent| {
        let fixed = fixed.clone();
        async move {
            if change.notification().resource.contains("fail") && !fixed.load(Ordering::SeqCst) {
                return Err("the handler failed on purpose".into());
            }
            Ok(())
        }
    });
    let mut builder = Receiver::builder(handler)
        .client_state(ClientState::new(STATE))
        .backend(&Backend::sqlite(store))
        .retry(RetryPolicy::new(2, Duration::from_millis(20)))
        .inspector(Arc::new(Inspector::new(50)));
    if let Some(token) = token {
        builder = builder.admin_token(token);
    }
    let receiver = builder.build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/", listener.local_addr().unwrap());
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        receiver
            .serve_with_admin(listener, Some(admin), &Default::default(), async {
                let _ = stopped.await;
            })
            .await
    });
    Running {
        endpoint,
        admin: admin_url,
        stop: Some(stop),
        served,
        _data: data,
    }
}

pub(crate) fn item(id: &str, resource: &str, state: &str) -> Value {
    json!({
        "subscriptionId": "sub-1",
        "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z",
        "changeType": "created",
        "resource": resource,
        "clientState": state,
        "tenantId": "t",
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": id}
    })
}

pub(crate) async fn post(url: &str, items: Vec<Value>) -> u16 {
    reqwest::Client::new()
        .post(url)
        .json(&json!({ "value": items }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = reqwest::Client::new().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn json_of(url: &str) -> Value {
    let (status, body) = get(url, &[]).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The fate of the newest item whose resource is `resource`.
fn fate_of(page: &Value, resource: &str) -> Option<Value> {
    page["deliveries"].as_array()?.iter().find_map(|d| {
        d["items"]
            .as_array()?
            .iter()
            .find(|i| i["resource"] == resource)
            .map(|i| i["fate"].clone())
    })
}

/// Polls the API until `resource`'s item is in `state`.
async fn wait_for_state(admin: &str, resource: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = json_of(&format!("{admin}/inspector/api/deliveries")).await;
        if let Some(fate) = fate_of(&page, resource)
            && fate["state"] == state
        {
            return fate;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{resource} never became {state}: {page:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_items_fate_shows_with_its_reason_and_never_the_client_state() {
    let fixed = Arc::new(AtomicBool::new(false));
    let running = start(fixed.clone(), None).await;
    let (endpoint, admin) = (running.endpoint.clone(), running.admin.clone());

    assert_eq!(
        post(
            &endpoint,
            vec![
                item("1", "users/a/messages/ok", STATE),
                item("2", "users/a/messages/forged", "a-guessed-state"),
            ]
        )
        .await,
        202
    );
    wait_for_state(&admin, "users/a/messages/ok", "handled").await;
    let rejected = wait_for_state(&admin, "users/a/messages/forged", "rejected").await;
    assert_eq!(rejected["reason"], "client_state_mismatch");
    assert!(
        rejected["hint"].as_str().unwrap().contains("clientState"),
        "{rejected}"
    );

    assert_eq!(
        post(&endpoint, vec![item("3", "users/a/messages/fail", STATE)]).await,
        202
    );
    let dead = wait_for_state(&admin, "users/a/messages/fail", "deadLettered").await;
    assert!(
        dead["reason"]
            .as_str()
            .unwrap()
            .contains("failed on purpose"),
        "{dead}"
    );

    // The delivery's record: what it was, its status and its ack time.
    let page = json_of(&format!("{admin}/inspector/api/deliveries")).await;
    let newest = &page["deliveries"][0];
    assert_eq!(newest["path"], "notification");
    assert_eq!(newest["status"], 202);
    assert!(newest["ackMs"].as_f64().unwrap() >= 0.0);
    let all = page.to_string();
    assert!(!all.contains(STATE), "the clientState leaked: {all}");
    assert!(
        !all.contains("a-guessed-state"),
        "a sender's state leaked: {all}"
    );

    // Filters: by outcome, by subscription.
    let rejected_only = json_of(&format!("{admin}/inspector/api/deliveries?state=rejected")).await;
    assert_eq!(rejected_only["deliveries"].as_array().unwrap().len(), 1);
    let other = json_of(&format!(
        "{admin}/inspector/api/deliveries?subscription=sub-2"
    ))
    .await;
    assert!(other["deliveries"].as_array().unwrap().is_empty());

    // The dead letter, and its replay once the handler is fixed.
    let letters = json_of(&format!("{admin}/inspector/api/dead-letters")).await;
    let letter = &letters["deadLetters"][0];
    assert_eq!(letter["item"]["resource"], "users/a/messages/fail");
    assert!(!letters.to_string().contains(STATE));
    let id = letter["id"].as_str().unwrap().to_owned();
    let replay = format!("{admin}/inspector/api/dead-letters/replay?id={id}");
    let client = reqwest::Client::new();
    let refused = client.post(&replay).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 403, "a replay needs its header");
    fixed.store(true, Ordering::SeqCst);
    let replayed = client
        .post(&replay)
        .header("x-inspector-action", "replay")
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status().as_u16(), 200);
    wait_for_state(&admin, "users/a/messages/fail", "handled").await;
    let again = client
        .post(&replay)
        .header("x-inspector-action", "replay")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 404, "a dead letter replays once");

    let health = json_of(&format!("{admin}/inspector/api/health")).await;
    assert_eq!(health["deadLetters"], 0);
    assert_eq!(health["throttle"]["risk"], "ok");
    assert_eq!(
        health["throttleSlots"].as_array().map(|s| !s.is_empty()),
        Some(true)
    );
    let subscriptions = json_of(&format!("{admin}/inspector/api/subscriptions")).await;
    let row = &subscriptions["subscriptions"][0];
    assert_eq!(row["id"], "sub-1");
    assert_eq!(row["traffic"]["items"], 2, "accepted items only: {row}");
    running.stop().await;
}

#[tokio::test]
async fn a_waiting_reader_sees_a_delivery_as_it_happens() {
    let running = start(Arc::new(AtomicBool::new(true)), None).await;
    let (endpoint, admin) = (running.endpoint.clone(), running.admin.clone());
    let version = json_of(&format!("{admin}/inspector/api/deliveries")).await["version"]
        .as_u64()
        .unwrap();
    let waiting = tokio::spawn({
        let url = format!("{admin}/inspector/api/deliveries?wait=20&since={version}");
        async move { json_of(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "nothing new yet: the request waits");
    assert_eq!(
        post(&endpoint, vec![item("1", "users/a/messages/x", "wrong")]).await,
        202
    );
    let page = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("the wait ends with the delivery")
        .unwrap();
    let fate = fate_of(&page, "users/a/messages/x").expect("the new delivery");
    assert_eq!(fate["reason"], "client_state_mismatch");
    // A handshake is recorded too, and is not an ack that Graph times.
    let (status, _) = get(&format!("{endpoint}?validationToken=abc"), &[]).await;
    assert_eq!(status, 200);
    let page = json_of(&format!("{admin}/inspector/api/deliveries?limit=1")).await;
    assert_eq!(page["deliveries"][0]["path"], "handshake");
    running.stop().await;
}

#[tokio::test]
async fn the_api_refuses_what_a_browser_attack_would_send() {
    let running = start(Arc::new(AtomicBool::new(true)), None).await;
    let admin = running.admin.clone();
    // A DNS name that rebinds to 127.0.0.1 is not this machine's name.
    let (status, body) = get(
        &format!("{admin}/inspector/api/deliveries"),
        &[("host", "attacker.example")],
    )
    .await;
    assert_eq!((status, body.as_str()), (403, ""));
    for path in [
        "/inspector/api/nope",
        "/inspector/api/deliveries/99999",
        "/inspector/api/deliveries/x",
        "/inspectorx",
    ] {
        let (status, _) = get(&format!("{admin}{path}"), &[]).await;
        assert_eq!(status, 404, "{path}");
    }
    let hostile = format!(
        "{admin}/inspector/api/deliveries?since=-1&limit=99999999999999999999999&state={}",
        "x".repeat(5000)
    );
    let page = json_of(&hostile).await;
    assert!(page["deliveries"].as_array().unwrap().is_empty());
    // The page is served with a policy that runs its own script only.
    let response = reqwest::get(format!("{admin}/inspector/")).await.unwrap();
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("<script src=\"app.js\">")
    );
    running.stop().await;
}

#[tokio::test]
async fn with_a_token_every_admin_path_but_the_health_check_needs_it() {
    let running = start(Arc::new(AtomicBool::new(true)), Some("tok-123")).await;
    let admin = running.admin.clone();
    for path in [
        "/metrics",
        "/inspector/api/deliveries",
        "/inspector/api/health",
    ] {
        let (status, _) = get(&format!("{admin}{path}"), &[]).await;
        assert_eq!(status, 401, "{path}");
        let (status, _) = get(
            &format!("{admin}{path}"),
            &[("authorization", "Bearer tok-12")],
        )
        .await;
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, _) = get(
            &format!("{admin}{path}"),
            &[("authorization", "Bearer tok-123")],
        )
        .await;
        assert_eq!(status, 200, "{path} with the token");
    }
    // The throttle-risk watch is in the metrics, with or without a page.
    let (_, metrics) = get(
        &format!("{admin}/metrics"),
        &[("authorization", "Bearer tok-123")],
    )
    .await;
    assert!(
        metrics.contains("msgraph_webhooks_slow_answer_share{over=\"3s\"} 0"),
        "{metrics}"
    );
    // With a token, a foreign Host is fine: the token is the proof.
    let (status, _) = get(
        &format!("{admin}/inspector/api/health"),
        &[
            ("authorization", "bearer tok-123"),
            ("host", "inspector.example"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    for path in ["/healthz", "/inspector/", "/inspector/app.js"] {
        let (status, _) = get(&format!("{admin}{path}"), &[]).await;
        assert_eq!(status, 200, "{path} is public");
    }
    running.stop().await;
}

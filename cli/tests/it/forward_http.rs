//! `listen --forward http://…`: the real binary forwarding to a receiver in
//! the test, which checks each delivery's Standard Webhooks signature with
//! an HMAC of its own (not the sink's code path).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;

use crate::support::cli::Process;
use crate::support::envelope;
use crate::support::http::post_json;
use crate::support::load::item;

const STATE: &str = "forward-secret-state";
/// 32 bytes, base64, as the specification serializes secrets.
const SECRET: &str = "whsec_ZmVlZGZhY2VjYWZlYmFiZWRlYWRiZWVmMDEyMzQ1Njc4OWFi";

/// In a script: never answer.
const HANG: u16 = 0;

/// One request the receiver took.
#[derive(Clone, Debug)]
struct Delivery {
    id: String,
    body: serde_json::Value,
}

/// An HTTP receiver answering from a script (then 200), verifying every
/// request's signature and keeping the verified ones it answered 2xx.
#[derive(Clone, Default)]
struct Target {
    script: Arc<Mutex<VecDeque<u16>>>,
    delivered: Arc<Mutex<Vec<Delivery>>>,
    requests: Arc<Mutex<usize>>,
}

impl Target {
    fn answering(script: &[u16]) -> Self {
        let target = Self::default();
        target.script.lock().unwrap().extend(script);
        target
    }

    async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.serve_on(listener)
    }

    fn serve_on(&self, listener: tokio::net::TcpListener) -> SocketAddr {
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn delivered(&self) -> Vec<Delivery> {
        self.delivered.lock().unwrap().clone()
    }

    fn requests(&self) -> usize {
        *self.requests.lock().unwrap()
    }

    async fn wait_for(&self, n: usize) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let delivered = self.delivered();
            if delivered.len() >= n {
                return delivered;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} deliveries within 60 s, got {}",
                delivered.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(State(target): State<Target>, headers: HeaderMap, body: Bytes) -> StatusCode {
    *target.requests.lock().unwrap() += 1;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("the delivery has a {name} header"))
            .to_owned()
    };
    assert_eq!(header("content-type"), "application/json");
    let id = header("webhook-id");
    let timestamp = header("webhook-timestamp");
    let signature = header("webhook-signature");
    assert!(timestamp.parse::<i64>().is_ok(), "{timestamp}");
    assert_eq!(
        signature,
        expected_signature(&id, &timestamp, &body),
        "the signature verifies"
    );
    let status = target.script.lock().unwrap().pop_front().unwrap_or(200);
    if status == HANG {
        std::future::pending::<()>().await;
    }
    if status == 200 {
        let body = serde_json::from_slice(&body).expect("the body is one JSON line");
        target.delivered.lock().unwrap().push(Delivery { id, body });
    }
    StatusCode::from_u16(status).unwrap()
}

/// `v1,` + base64(HMAC-SHA256(key, id.timestamp.body)), with HMAC built by
/// hand from SHA-256 (RFC 2104), independent of the sink's OpenSSL HMAC.
fn expected_signature(id: &str, timestamp: &str, body: &[u8]) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(&key);
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let mut inner = pad(0x36);
    inner.extend_from_slice(format!("{id}.{timestamp}.").as_bytes());
    inner.extend_from_slice(body);
    let mut outer = pad(0x5c);
    outer.extend_from_slice(&openssl::sha::sha256(&inner));
    format!("v1,{}", engine.encode(openssl::sha::sha256(&outer)))
}

/// `listen` with a store in `dir`, forwarding by `routes`; its address.
async fn listen(dir: &str, routes: &[String], extra: &[&str]) -> (Process, SocketAddr) {
    let mut args = vec!["listen", "--addr", "127.0.0.1:0"];
    for route in routes {
        args.extend(["--forward", route]);
    }
    args.extend(extra);
    let env = [
        ("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE),
        ("MSGRAPH_WEBHOOKS_DATA_DIR", dir),
        ("MSGRAPH_WEBHOOKS_FORWARD_SECRET", SECRET),
    ];
    let mut process = Process::spawn(&args, &env);
    let addr = process.listening_addr().await;
    (process, addr)
}

async fn post(addr: SocketAddr, items: Vec<serde_json::Value>) {
    let reply = post_json(&format!("http://{addr}/"), envelope(items)).await;
    assert_eq!(reply.status, 202);
}

async fn stop(mut process: Process) {
    process.terminate();
    assert!(process.child.wait().await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_notification_arrives_once_signed_with_its_json_line() {
    let data = tempfile::tempdir().unwrap();
    let target = Target::default();
    let at = target.serve().await;
    let (mut listen, addr) = listen(
        data.path().to_str().unwrap(),
        &[format!("http://{at}/hook")],
        &[],
    )
    .await;
    listen.drain_stderr("listen");
    let items = (0..30)
        .map(|n| item(&format!("fw-{n}"), STATE, 0))
        .collect();
    post(addr, items).await;
    let delivered = target.wait_for(30).await;
    // Nothing on stdout: with --forward the events go to the targets.
    assert_eq!(
        listen.try_next_stdout(Duration::from_millis(200)).await,
        None
    );
    stop(listen).await;
    let mut ids: Vec<&str> = delivered.iter().map(|d| d.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 30, "each once");
    for delivery in &delivered {
        assert_eq!(delivery.body["kind"], "change");
        assert_eq!(delivery.body["id"], delivery.id.as_str());
        assert_eq!(delivery.body["resourceData"]["id"], delivery.id.as_str());
        assert_eq!(delivery.body["resourceKind"], "message");
    }
    assert_eq!(target.requests(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_the_target_takes_the_event() {
    let data = tempfile::tempdir().unwrap();
    let target = Target::answering(&[500, 503]);
    let at = target.serve().await;
    let (mut listen, addr) = listen(
        data.path().to_str().unwrap(),
        &[format!("http://{at}/hook")],
        &[],
    )
    .await;
    listen.drain_stderr("listen");
    post(addr, vec![item("fw-retried", STATE, 0)]).await;
    let delivered = target.wait_for(1).await;
    stop(listen).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].id, "fw-retried");
    assert_eq!(target.requests(), 3, "two refusals, then the delivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_target_dead_letters_the_event_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let target = Target::answering(&[400, 400]);
    let at = target.serve().await;
    let (mut listen, addr) = listen(&dir, &[format!("http://{at}/hook")], &[]).await;
    post(addr, vec![item("fw-refused", STATE, 0)]).await;
    listen.wait_for_log("dead-lettering item").await;
    listen.drain_stderr("listen");
    stop(listen).await;
    assert!(target.delivered().is_empty());
    // A permanent refusal is not retried: one request, then the dead letter.
    assert_eq!(target.requests(), 1);

    let mut dlq = Process::spawn(&["dlq", "list", "--data-dir", &dir], &[]);
    dlq.drain_stderr("dlq");
    let line = dlq.next_stdout(Duration::from_secs(30)).await;
    assert!(dlq.child.wait().await.unwrap().success());
    let letter: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(letter["item"]["id"], "fw-refused");
    let reason = letter["reason"].as_str().unwrap();
    assert!(reason.contains("400"), "{reason}");
    assert!(reason.contains("permanent"), "{reason}");
    assert!(
        reason.contains(&format!("{at}")),
        "names the target: {reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_is_down_gets_the_event_once_it_is_up() {
    let data = tempfile::tempdir().unwrap();
    // A port nobody listens on yet.
    let reserved = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = reserved.local_addr().unwrap();
    drop(reserved);
    let (mut listen, addr) = listen(
        data.path().to_str().unwrap(),
        &[format!("http://{at}/hook")],
        &[],
    )
    .await;
    post(addr, vec![item("fw-down", STATE, 0)]).await;
    let refused = listen.wait_for_log("will retry").await;
    assert!(refused.contains(&at.to_string()), "{refused}");
    listen.drain_stderr("listen");
    let target = Target::default();
    target.serve_on(tokio::net::TcpListener::bind(at).await.unwrap());
    let delivered = target.wait_for(1).await;
    stop(listen).await;
    assert_eq!(delivered[0].id, "fw-down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_send_each_kind_only_to_its_target() {
    let data = tempfile::tempdir().unwrap();
    let mail = Target::default();
    let calendar = Target::default();
    let mail_at = mail.serve().await;
    let calendar_at = calendar.serve().await;
    let (mut listen, addr) = listen(
        data.path().to_str().unwrap(),
        &[
            format!("kind=message=>http://{mail_at}/hook"),
            format!("kind=event,lifecycle=>http://{calendar_at}/hook"),
        ],
        &[],
    )
    .await;
    listen.drain_stderr("listen");
    let mut items: Vec<serde_json::Value> = (0..3)
        .map(|n| item(&format!("mail-{n}"), STATE, 0))
        .collect();
    for n in 0..2 {
        let mut event = item(&format!("cal-{n}"), STATE, 0);
        event["resource"] = format!("Users/622eaaff/Events/cal-{n}").into();
        event["resourceData"]["@odata.type"] = "#Microsoft.Graph.Event".into();
        items.push(event);
    }
    items.push(serde_json::json!({
        "subscriptionId": "6a1f3c2e-7d4b-4e8a-9b1c-2d3e4f5a6b7c",
        "subscriptionExpirationDateTime": "2026-12-01T00:00:00Z",
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        "clientState": STATE,
        "lifecycleEvent": "reauthorizationRequired"
    }));
    post(addr, items).await;
    let to_mail = mail.wait_for(3).await;
    let to_calendar = calendar.wait_for(3).await;
    stop(listen).await;
    let mut mail_ids: Vec<String> = to_mail.iter().map(|d| d.id.clone()).collect();
    mail_ids.sort_unstable();
    assert_eq!(mail_ids, ["mail-0", "mail-1", "mail-2"]);
    let mut kinds: Vec<String> = to_calendar
        .iter()
        .map(|d| {
            let kind = d.body["kind"].as_str().unwrap();
            match d.body["resourceKind"].as_str() {
                Some(resource) => format!("{kind}:{resource}"),
                None => kind.to_owned(),
            }
        })
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["change:event", "change:event", "lifecycle"]);
    assert_eq!(mail.requests(), 3);
    assert_eq!(calendar.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_never_answers_times_out_and_the_event_is_retried() {
    let data = tempfile::tempdir().unwrap();
    let target = Target::answering(&[HANG]);
    let at = target.serve().await;
    let (mut listen, addr) = listen(
        data.path().to_str().unwrap(),
        &[format!("http://{at}/hook")],
        &["--forward-timeout-secs", "0.5"],
    )
    .await;
    post(addr, vec![item("fw-slow", STATE, 0)]).await;
    let retried = listen.wait_for_log("will retry").await;
    assert!(retried.contains("timed out"), "{retried}");
    listen.drain_stderr("listen");
    let delivered = target.wait_for(1).await;
    stop(listen).await;
    assert_eq!(delivered[0].id, "fw-slow");
    assert_eq!(target.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_forwards_what_an_ingest_only_receiver_stored() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let (mut receiver, addr) = listen(dir, &[], &["--workers", "0"]).await;
    receiver.drain_stderr("listen");
    post(
        addr,
        vec![item("fw-w-0", STATE, 0), item("fw-w-1", STATE, 0)],
    )
    .await;
    let target = Target::default();
    let at = target.serve().await;
    let url = format!("http://{at}/hook");
    let env = [
        ("MSGRAPH_WEBHOOKS_DATA_DIR", dir),
        ("MSGRAPH_WEBHOOKS_FORWARD", url.as_str()),
        ("MSGRAPH_WEBHOOKS_FORWARD_SECRET", SECRET),
    ];
    let mut worker = Process::spawn(&["work", "--workers", "1"], &env);
    worker.wait_for_log("working").await;
    worker.drain_stderr("work");
    let mut ids: Vec<String> = target.wait_for(2).await.into_iter().map(|d| d.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["fw-w-0", "fw-w-1"]);
    stop(worker).await;
    stop(receiver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_forward_flags_stop_the_command_with_what_is_wrong() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    for (args, expected) in [
        (
            vec!["--forward", "ftp://127.0.0.1/x"],
            "not a forwarding target",
        ),
        // A target the broker would refuse for good stops the start (one
        // merely unreachable doesn't: forward_faults.rs).
        (
            vec!["--forward", "nats://127.0.0.1:1/s?bogus=1"],
            "unknown option \"bogus\"",
        ),
        (vec!["--forward", "resource=x=>http://127.0.0.1/"], "kind="),
        (
            vec![
                "--forward",
                "http://127.0.0.1/",
                "--forward-secret",
                "whsec_c2hvcnQ=",
            ],
            "at least 24",
        ),
        (
            vec![
                "--forward",
                "http://127.0.0.1/",
                "--forward-timeout-secs",
                "0",
            ],
            "--forward-timeout-secs",
        ),
    ] {
        let mut all = vec!["listen", "--addr", "127.0.0.1:0", "--data-dir", dir];
        all.extend(&args);
        let mut process = Process::spawn(&all, &[("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE)]);
        let mut stderr = String::new();
        while let Ok(Some(line)) = process.stderr.as_mut().unwrap().next_line().await {
            stderr.push_str(&line);
            stderr.push('\n');
        }
        let status = process.child.wait().await.unwrap();
        assert!(!status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("c2hvcnQ"),
            "the secret is not echoed: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_done_only_once_every_target_took_it() {
    let data = tempfile::tempdir().unwrap();
    let steady = Target::default();
    let flaky = Target::answering(&[503]);
    let steady_at = steady.serve().await;
    let flaky_at = flaky.serve().await;
    let (mut listen, addr) = listen(
        data.path().to_str().unwrap(),
        &[
            format!("http://{steady_at}/hook"),
            format!("http://{flaky_at}/hook"),
        ],
        &[],
    )
    .await;
    listen.drain_stderr("listen");
    post(addr, vec![item("fw-both", STATE, 0)]).await;
    // The flaky target's refusal sends the event around again, to both:
    // at least once, the steady target sees the same webhook-id twice.
    let to_flaky = flaky.wait_for(1).await;
    let to_steady = steady.wait_for(2).await;
    stop(listen).await;
    assert_eq!(to_flaky[0].id, "fw-both");
    assert!(to_steady.iter().all(|d| d.id == "fw-both"));
    assert_eq!(flaky.requests(), 2);
    assert_eq!(steady.requests(), 2);
}

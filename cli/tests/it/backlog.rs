//! A durable store's backlog: `--max-backlog` turns sustained overload into
//! `503` + `Retry-After` (Graph retries later) instead of a growing disk,
//! and SIGTERM with a backlog stops after the batches in hand, leaving the
//! rest in the store for the next start, where every item is handled.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use bytes::Bytes;

use crate::support::cli::Process;
use crate::support::load::{Load, batches};
use crate::support::{envelope, message_item};

const STATE: &str = "backlog-state";
/// Workers of the receivers here, and the items each claims at once
/// (`src/worker/mod.rs`): a worker holds at most three batches (the one
/// it hands the handler, one prepared, one claimed waiting to be).
const WORKERS: usize = 4;
const CLAIM_BATCH: usize = 64;

fn listen(data: &tempfile::TempDir, extra: &[&str]) -> Process {
    let mut args = vec![
        "listen",
        "--addr",
        "127.0.0.1:0",
        "--admin-addr",
        "off",
        "--data-dir",
        data.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Process::spawn(&args, &[("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE)])
}

async fn post(addr: SocketAddr, from: usize, n: usize) -> reqwest::Response {
    let items = (from..from + n)
        .map(|i| message_item("sub-1", STATE, i))
        .collect();
    reqwest::Client::new()
        .post(format!("http://{addr}/"))
        .header("content-type", "application/json")
        .body(envelope(items))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn max_backlog_answers_503_with_retry_after_until_the_workers_catch_up() {
    let data = tempfile::tempdir().unwrap();
    let mut receiver = listen(&data, &["--workers", "0", "--max-backlog", "40"]);
    let addr = receiver.listening_addr().await;
    receiver.drain_stderr("listen");
    for n in 0..4 {
        assert_eq!(post(addr, n * 10, 10).await.status().as_u16(), 202);
    }
    // The bound is reached: refused whole, with the retry hint and nothing else.
    for n in 4..7 {
        let refused = post(addr, n * 10, 10).await;
        assert_eq!(refused.status().as_u16(), 503);
        assert!(refused.headers().get("retry-after").is_some());
        assert!(refused.bytes().await.unwrap().is_empty());
    }
    // A delivery that alone would cross it is refused too.
    assert_eq!(post(addr, 100, 1).await.status().as_u16(), 503);

    // A worker on the same store catches up; deliveries are taken again.
    let mut work = Process::spawn(
        &[
            "work",
            "--admin-addr",
            "off",
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        &[],
    );
    work.drain_stderr("work");
    let stdout = work.stdout.as_mut().unwrap();
    for _ in 0..40 {
        tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
            .await
            .expect("the worker prints the backlog")
            .unwrap()
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = post(addr, 200, 10).await.status().as_u16();
        if status == 202 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            tokio::time::Instant::now() < deadline,
            "taken again within 10 s of the backlog draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    work.terminate();
    receiver.terminate();
    let _ = work.child.wait().await;
    let _ = receiver.child.wait().await;
}

/// An HTTP target that takes a second per event and keeps each id.
#[derive(Clone, Default)]
struct SlowTarget {
    ids: Arc<Mutex<Vec<String>>>,
}

impl SlowTarget {
    async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(slowly))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn taken(&self) -> usize {
        self.ids.lock().unwrap().len()
    }

    fn unique(&self) -> HashSet<String> {
        self.ids.lock().unwrap().iter().cloned().collect()
    }
}

async fn slowly(State(target): State<SlowTarget>, body: Bytes) -> axum::http::StatusCode {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let line: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let id = line["id"].as_str().unwrap().to_owned();
    target.ids.lock().unwrap().push(id);
    axum::http::StatusCode::OK
}

async fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_a_durable_store_leaves_the_backlog_for_the_next_start() {
    const BACKLOG: usize = 3000;
    let data = tempfile::tempdir().unwrap();
    // The backlog, accepted by an ingest-only receiver.
    let mut ingest = listen(&data, &["--workers", "0"]);
    let addr = ingest.listening_addr().await;
    ingest.drain_stderr("ingest");
    let load = Load::new(batches("b", BACKLOG, 0, STATE, 0), vec![addr]);
    load.run(4).await;
    let acked = load.acked();
    assert_eq!(acked.len(), BACKLOG);
    ingest.terminate();
    let _ = ingest.child.wait().await;

    // A receiver with workers forwarding to a slow target: draining the
    // backlog would take ~12 s, over the default 10 s --drain-secs.
    let target = SlowTarget::default();
    let hook = format!("http://{}/hook", target.serve().await);
    let workers = WORKERS.to_string();
    let args = ["--workers", workers.as_str(), "--forward", hook.as_str()];
    let mut receiver = listen(&data, &args);
    receiver.listening_addr().await;
    receiver.drain_stderr("listen");
    wait_until("forwarding under way", Duration::from_secs(30), || {
        target.taken() >= 100
    })
    .await;
    let at_signal = target.taken();
    receiver.terminate();
    let status = receiver.child.wait().await.unwrap();
    assert!(status.success(), "{status:?}");
    let at_exit = target.taken();
    // It stopped after what its workers held, not after the backlog.
    let held = WORKERS * 3 * CLAIM_BATCH;
    assert!(
        at_exit <= at_signal + held,
        "{at_exit} forwarded by the exit, {at_signal} at the signal: more than the {held} the workers held"
    );
    assert!(at_exit < BACKLOG, "the backlog was left in the store");

    // The next start handles the rest: every acknowledged item arrives.
    let mut next = listen(&data, &args);
    next.listening_addr().await;
    next.drain_stderr("listen");
    wait_until(
        "every acknowledged item forwarded",
        Duration::from_secs(120),
        || target.unique().len() >= BACKLOG,
    )
    .await;
    assert_eq!(target.unique(), acked);
    next.terminate();
    let _ = next.child.wait().await;
}

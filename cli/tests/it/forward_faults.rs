//! Nothing acknowledged is lost on the way to a broker: 10 000
//! notifications through the real `listen --forward nats://…` on a durable
//! store, while the broker (a `nats-server` of this test's own) is killed
//! and restarted and the receiver is SIGKILLed and restarted. Every
//! notification that got its `202` reaches the JetStream stream at least
//! once. Runs where the brokers' tests run (`MSGRAPH_WEBHOOKS_NATS_URL`
//! set, `nats-server` installed).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use crate::forward_brokers::{OwnNats, broker_url, consume_nats, jetstream_of, unique};
use crate::support::cli::Process;
use crate::support::load::{Load, batches};

const STATE: &str = "forward-faults-state";
const COUNT: usize = 10_000;
const WORKERS: usize = 4;
/// Items a worker claims at once (`src/worker/mod.rs`): what a SIGKILL can
/// leave sent but not yet completed.
const CLAIM_BATCH: usize = 64;

async fn listen(args: &[String]) -> (Process, SocketAddr) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut process = Process::spawn(&args, &[("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE)]);
    let addr = process.listening_addr().await;
    process.drain_stderr("listen");
    (process, addr)
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within 180 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_to_nats_loses_nothing_acked_across_broker_restarts_and_sigkills() {
    if broker_url("MSGRAPH_WEBHOOKS_NATS_URL").is_none() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = tempfile::tempdir().unwrap();
    let mut nats = OwnNats::start(port, store.path()).await;
    let base = format!("nats://127.0.0.1:{port}");
    let stream = unique("MGW_FAULTS_");
    let data = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "listen",
        "--addr",
        "127.0.0.1:0",
        "--admin-addr",
        "off",
        "--workers",
        &WORKERS.to_string(),
        "--data-dir",
        data.path().to_str().unwrap(),
        "--forward",
        &format!("{base}/graph.faults?create_stream=true&stream={stream}"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let (mut receiver, addr) = listen(&args).await;

    // 10 000 notifications, and 300 of their batches sent again later.
    let all = batches("f", COUNT, 300, STATE, 0);
    let posts = all.len();
    let load = Load::new(all, vec![addr]);
    let sender = tokio::spawn({
        let load = load.clone();
        async move { load.run(8).await }
    });

    // The broker goes away for longer than a publish waits for its ack
    // (5 s), so sends fail and are retried; the receiver keeps acking into
    // its store meanwhile. Then it comes back on its store.
    wait_until("a quarter acknowledged", || load.acked_posts() >= posts / 4).await;
    nats.kill();
    tokio::time::sleep(Duration::from_secs(7)).await;
    nats = OwnNats::start(port, store.path()).await;

    // With the backlog still being forwarded, the receiver is SIGKILLed and
    // restarted on its data dir.
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.kill().await;
    let (restarted, addr) = listen(&args).await;
    receiver = restarted;
    load.retarget(0, addr);
    sender.await.unwrap();
    let acked = load.acked();
    assert_eq!(
        acked.len(),
        COUNT,
        "every notification was acknowledged in the end"
    );

    // Everything acknowledged reaches the stream.
    let js = jetstream_of(&base).await;
    wait_until("every acknowledged notification in the stream", || {
        let js = js.clone();
        let stream = stream.clone();
        let held = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    match js.get_stream(&stream).await {
                        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
                        Err(_) => 0,
                    }
                })
        })
        .join()
        .unwrap();
        held as usize >= COUNT
    })
    .await;
    let seen = consume_nats(&js, &stream).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (_, body) in &seen {
        let line: serde_json::Value = serde_json::from_slice(body).unwrap();
        let id = line["id"].as_str().unwrap().to_owned();
        *counts.entry(id).or_default() += 1;
    }
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged but never forwarded: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let unexpected: HashSet<&String> = counts.keys().filter(|id| !acked.contains(*id)).collect();
    assert!(unexpected.is_empty(), "events nobody sent: {unexpected:?}");
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "measured: {} notifications acknowledged, all in the stream; {duplicates} there twice; answers {:?}",
        acked.len(),
        load.statuses()
    );
    // JetStream drops a repeated Nats-Msg-Id within its window; beyond it,
    // only what the killed receiver's workers held can come twice.
    let bound = WORKERS * CLAIM_BATCH;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, over the {bound} a kill can explain"
    );
    receiver.terminate();
    let _ = receiver.child.wait().await;
    let _ = js.delete_stream(&stream).await;
    drop(nats);
}

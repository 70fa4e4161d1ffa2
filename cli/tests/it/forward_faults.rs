//! Nothing acknowledged is lost on the way to a broker: 10 000
//! notifications through the real `listen --forward …` on a durable store,
//! while the broker (one of this test's own: `nats-server`, a RabbitMQ
//! node, `redis-server`) is killed and restarted and the receiver is
//! SIGKILLed and restarted. Every notification that got its `202` reaches
//! the broker at least once, and the copies stay within what the kills can
//! explain. Each runs where the brokers' tests run (its
//! `MSGRAPH_WEBHOOKS_*_URL` set) and the broker's server is installed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt as _;

use crate::forward_brokers::{broker_url, consume_nats, jetstream_of, unique};
use crate::support::cli::Process;
use crate::support::load::{Load, batches};
use crate::support::services::{OwnNats, OwnRabbit, OwnRedis, free_port};

const STATE: &str = "forward-faults-state";
const COUNT: usize = 10_000;
const WORKERS: usize = 4;
/// Items a worker claims at once (`src/worker/mod.rs`): what one kill can
/// leave sent but not yet completed, per worker.
const CLAIM_BATCH: usize = 64;

/// A broker of the test's own, and where its events are read back.
enum Broker {
    Nats { own: OwnNats, stream: String },
    Rabbit { own: OwnRabbit, queue: String },
    Redis { own: OwnRedis, stream: String },
}

impl Broker {
    /// The `--forward` target.
    fn target(&self) -> String {
        match self {
            Self::Nats { own, stream } => format!(
                "{}/graph.faults?create_stream=true&stream={stream}",
                own.url()
            ),
            Self::Rabbit { own, queue } => format!("{}?routing_key={queue}", own.url()),
            Self::Redis { own, stream } => format!("{}/?stream={stream}", own.url()),
        }
    }

    /// How long the broker stays away: longer than a publish waits for its
    /// answer, so sends fail and are retried.
    fn outage(&self) -> Duration {
        match self {
            Self::Nats { .. } => Duration::from_secs(7),
            // The node takes seconds to start again: that is the outage.
            Self::Rabbit { .. } => Duration::from_secs(1),
            Self::Redis { .. } => Duration::from_secs(4),
        }
    }

    fn kill(&mut self) {
        match self {
            Self::Nats { own, .. } => own.kill(),
            Self::Rabbit { own, .. } => own.kill(),
            Self::Redis { own, .. } => own.kill(),
        }
    }

    async fn restart(&mut self) {
        match self {
            Self::Nats { own, .. } => own.restart().await,
            Self::Rabbit { own, .. } => own.restart().await,
            Self::Redis { own, .. } => own.restart().await,
        }
    }

    /// How many events the broker holds.
    async fn held(&self) -> usize {
        match self {
            Self::Nats { own, stream } => {
                let js = jetstream_of(&own.url()).await;
                match js.get_stream(stream).await {
                    Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages as usize),
                    Err(_) => 0,
                }
            }
            Self::Rabbit { own, queue } => {
                let (_connection, channel) = rabbit_channel(&own.url()).await;
                let declared = channel
                    .queue_declare(
                        queue.as_str().into(),
                        lapin::options::QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        lapin::types::FieldTable::default(),
                    )
                    .await
                    .unwrap();
                declared.message_count() as usize
            }
            Self::Redis { own, stream } => {
                let mut conn = redis_conn(&own.url()).await;
                let len: usize = redis::cmd("XLEN")
                    .arg(stream)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                len
            }
        }
    }

    /// The `id` of every event the broker holds, read back by a consumer.
    async fn ids(&self) -> Vec<String> {
        let bodies: Vec<Vec<u8>> = match self {
            Self::Nats { own, stream } => {
                let js = jetstream_of(&own.url()).await;
                consume_nats(&js, stream)
                    .await
                    .into_iter()
                    .map(|(_, body)| body)
                    .collect()
            }
            Self::Rabbit { own, queue } => {
                let total = self.held().await;
                let (_connection, channel) = rabbit_channel(&own.url()).await;
                let mut consumer = channel
                    .basic_consume(
                        queue.as_str().into(),
                        "faults".into(),
                        lapin::options::BasicConsumeOptions {
                            no_ack: true,
                            ..Default::default()
                        },
                        lapin::types::FieldTable::default(),
                    )
                    .await
                    .unwrap();
                let mut bodies = Vec::with_capacity(total);
                while bodies.len() < total {
                    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                        .await
                        .expect("the queue's messages keep coming")
                        .expect("the consumer stays open")
                        .unwrap();
                    bodies.push(delivery.data);
                }
                bodies
            }
            Self::Redis { own, stream } => {
                let mut conn = redis_conn(&own.url()).await;
                let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(stream)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                reply
                    .ids
                    .iter()
                    .map(|entry| entry.get::<Vec<u8>>("event").expect("an event field"))
                    .collect()
            }
        };
        bodies
            .iter()
            .map(|body| {
                let line: serde_json::Value = serde_json::from_slice(body).unwrap();
                line["id"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// How many copies the kills can explain: JetStream drops a repeated
    /// `Nats-Msg-Id` within its window, so only what the killed receiver's
    /// workers held comes twice; RabbitMQ and Redis keep every copy, so
    /// what was in flight when the broker died (published, its answer
    /// lost) comes twice too.
    fn duplicate_bound(&self) -> usize {
        match self {
            Self::Nats { .. } => WORKERS * CLAIM_BATCH,
            Self::Rabbit { .. } | Self::Redis { .. } => 2 * WORKERS * CLAIM_BATCH,
        }
    }
}

async fn rabbit_channel(url: &str) -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn listen(args: &[String]) -> (Process, SocketAddr) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut process = Process::spawn(&args, &[("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE)]);
    let addr = process.listening_addr().await;
    process.drain_stderr("listen");
    (process, addr)
}

async fn wait_until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The scenario, on any broker.
async fn loses_nothing_acked(mut broker: Broker) {
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
        &broker.target(),
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

    // The broker goes away; the receiver keeps acking into its store
    // meanwhile. Then it comes back on its data.
    wait_until(
        "a quarter acknowledged",
        Duration::from_secs(180),
        async || load.acked_posts() >= posts / 4,
    )
    .await;
    broker.kill();
    tokio::time::sleep(broker.outage()).await;
    broker.restart().await;

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

    // Everything acknowledged reaches the broker.
    wait_until(
        "every acknowledged notification at the broker",
        Duration::from_secs(180),
        async || broker.held().await >= COUNT,
    )
    .await;
    // What the workers still had in hand lands too before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in broker.ids().await {
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
        "measured: {} notifications acknowledged, all at the broker; {duplicates} there twice; answers {:?}",
        acked.len(),
        load.statuses()
    );
    let bound = broker.duplicate_bound();
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, over the {bound} the kills can explain"
    );
    receiver.terminate();
    let _ = receiver.child.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_to_nats_loses_nothing_acked_across_broker_restarts_and_sigkills() {
    if broker_url("MSGRAPH_WEBHOOKS_NATS_URL").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let own = OwnNats::start(free_port(), dir.path()).await;
    let stream = unique("MGW_FAULTS_");
    loses_nothing_acked(Broker::Nats { own, stream }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_to_rabbitmq_loses_nothing_acked_across_broker_restarts_and_sigkills() {
    if broker_url("MSGRAPH_WEBHOOKS_AMQP_URL").is_none() {
        return;
    }
    if !OwnRabbit::installed() {
        eprintln!("rabbitmq-server is not installed: skipping (the test starts a node of its own)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let own = OwnRabbit::start(OwnRabbit::free_port(), dir.path()).await;
    let queue = unique("mgw-faults-");
    {
        // A durable queue on the default exchange: it and its persistent
        // messages outlive the node's restart.
        let (connection, channel) = rabbit_channel(&own.url()).await;
        channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = connection.close(200, "declared".into()).await;
    }
    loses_nothing_acked(Broker::Rabbit { own, queue }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_to_redis_loses_nothing_acked_across_broker_restarts_and_sigkills() {
    if broker_url("MSGRAPH_WEBHOOKS_REDIS_URL").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let own = OwnRedis::start(free_port(), dir.path()).await;
    let stream = unique("mgw-faults-");
    loses_nothing_acked(Broker::Redis { own, stream }).await;
}

/// A broker that is down when the receiver starts doesn't stop it: it
/// warns, acks into its store, and forwards once the broker is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_started_while_the_broker_is_down_forwards_once_it_is_up() {
    if broker_url("MSGRAPH_WEBHOOKS_NATS_URL").is_none() {
        return;
    }
    const LATE: usize = 60;
    let port = free_port();
    let stream = unique("MGW_LATE_");
    let target = format!("nats://127.0.0.1:{port}/graph.late?create_stream=true&stream={stream}");
    let data = tempfile::tempdir().unwrap();
    let mut receiver = Process::spawn(
        &[
            "listen",
            "--addr",
            "127.0.0.1:0",
            "--admin-addr",
            "off",
            "--data-dir",
            data.path().to_str().unwrap(),
            "--forward",
            &target,
        ],
        &[("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE)],
    );
    let started = receiver.log_until("listening").await;
    let warning = started
        .iter()
        .find(|line| line.contains("unreachable for now"))
        .unwrap_or_else(|| panic!("a warning names the unreachable target: {started:#?}"));
    assert!(warning.contains(&format!("127.0.0.1:{port}")), "{warning}");
    let addr: SocketAddr = started
        .last()
        .unwrap()
        .split_whitespace()
        .find_map(|word| word.strip_prefix("local="))
        .unwrap()
        .parse()
        .unwrap();
    receiver.drain_stderr("listen");

    let load = Load::new(batches("late", LATE, 0, STATE, 0), vec![addr]);
    load.run(2).await;
    let acked = load.acked();
    assert_eq!(acked.len(), LATE, "acked while the broker is down");
    // Sends fail for a while (and are retried with backoff).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let dir = tempfile::tempdir().unwrap();
    let own = OwnNats::start(port, dir.path()).await;
    let broker = Broker::Nats { own, stream };
    wait_until(
        "every acknowledged notification in the stream",
        Duration::from_secs(60),
        async || broker.held().await >= LATE,
    )
    .await;
    let ids: HashSet<String> = broker.ids().await.into_iter().collect();
    assert_eq!(ids, acked);
    receiver.terminate();
    let _ = receiver.child.wait().await;
}

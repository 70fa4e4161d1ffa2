//! Forwarding benchmark: events per second `msgraph-webhooks work
//! --forward URL` takes from a durable store to each target, against the
//! target's own ceiling measured in the same run: the same client library
//! publishing events of the same size, with the same confirmation awaited
//! (a 2xx, JetStream's ack, a publisher confirm, `XADD`'s id) and as many
//! in flight as the workers keep (workers × 64).
//!
//! Run with `bench/forward.sh`, or directly:
//!
//! ```text
//! cargo bench --bench forward
//! BENCH_FORWARD_ITEMS=50000 BENCH_ROUNDS=5 cargo bench --bench forward
//! ```
//!
//! The store is filled once by `listen --workers 0` (every item accepted and
//! fsynced), and each round drains a copy of it with `work`, so the rate is
//! forwarding alone: claim, parse, send, await the confirmation, complete.
//! The HTTP target is a bare hyper server in a process of its own; the NATS,
//! RabbitMQ and Redis rows need `MSGRAPH_WEBHOOKS_NATS_URL`,
//! `MSGRAPH_WEBHOOKS_AMQP_URL` and `MSGRAPH_WEBHOOKS_REDIS_URL`. Traffic
//! goes to 127.0.0.1 only, and every stream, queue and key the run makes is
//! deleted after it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

mod common;
use common::{BIN, Server, fill};

const ROLE: &str = "FORWARD_BENCH_ROLE";
/// Workers `work` runs, and items each claims at once (`src/worker/mod.rs`).
const WORKERS: usize = 4;
const CLAIM_BATCH: usize = 64;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var(ROLE).as_deref() == Ok("http-target") {
        runtime.block_on(http_target());
        return;
    }
    // `cargo test --benches` runs bench targets with `--bench` absent: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    runtime.block_on(run());
}

/// The HTTP target: `200` to every POST after reading its body; `GET`
/// answers how many POSTs it took and the size of the last body.
async fn http_target() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening local={}", listener.local_addr().unwrap());
    let taken = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        let taken = taken.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let taken = taken.clone();
                async move {
                    let counting = request.method() == hyper::Method::GET;
                    let size = request
                        .into_body()
                        .collect()
                        .await
                        .map_or(0, |b| b.to_bytes().len());
                    let (count, last) = &*taken;
                    let answer = if counting {
                        format!(
                            "{} {}",
                            count.load(Ordering::Relaxed),
                            last.load(Ordering::Relaxed)
                        )
                    } else {
                        last.store(size as u64, Ordering::Relaxed);
                        count.fetch_add(1, Ordering::Relaxed);
                        String::new()
                    };
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(answer))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

struct Settings {
    items: usize,
    rounds: usize,
}

impl Settings {
    fn from_env() -> Self {
        let number = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Self {
            items: number("BENCH_FORWARD_ITEMS", 20_000),
            rounds: number("BENCH_ROUNDS", 3).max(1),
        }
    }
}

/// Copies the files of `from` into a new directory.
fn copy_store(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
        }
    }
    to
}

/// A forwarding target: where events go, how many arrived, and the client
/// library publishing straight to it.
enum Target {
    Http {
        server: Server,
        client: reqwest::Client,
    },
    Nats {
        url: String,
        js: async_nats::jetstream::Context,
    },
    Amqp {
        url: String,
        _connection: lapin::Connection,
        channel: lapin::Channel,
    },
    Redis {
        url: String,
        conn: redis::aio::MultiplexedConnection,
    },
}

/// One place events go in one measurement: a fresh stream, queue or key.
struct Destination {
    name: String,
}

static NEXT_DESTINATION: AtomicU64 = AtomicU64::new(0);

impl Target {
    fn label(&self) -> &'static str {
        match self {
            Self::Http { .. } => "HTTP (bare hyper target)",
            Self::Nats { .. } => "NATS JetStream (file stream)",
            Self::Amqp { .. } => "RabbitMQ (durable queue, confirms)",
            Self::Redis { .. } => "Redis Streams (XADD)",
        }
    }

    async fn destination(&self) -> Destination {
        let name = format!(
            "mgw_bench_{}_{}",
            std::process::id(),
            NEXT_DESTINATION.fetch_add(1, Ordering::Relaxed)
        );
        match self {
            Self::Http { .. } | Self::Redis { .. } => {}
            Self::Nats { js, .. } => {
                js.create_stream(async_nats::jetstream::stream::Config {
                    name: name.clone(),
                    subjects: vec![format!("{name}.events")],
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .unwrap();
            }
            Self::Amqp { channel, .. } => {
                channel
                    .queue_declare(
                        name.as_str().into(),
                        lapin::options::QueueDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        lapin::types::FieldTable::default(),
                    )
                    .await
                    .unwrap();
            }
        }
        Destination { name }
    }

    /// The `--forward` URL of `destination`.
    fn forward_url(&self, destination: &Destination) -> String {
        let name = &destination.name;
        match self {
            Self::Http { server, .. } => format!("http://{}/{name}", server.addr),
            Self::Nats { url, .. } => format!("{url}/{name}.events"),
            Self::Amqp { url, .. } => format!("{url}?routing_key={name}"),
            Self::Redis { url, .. } => format!("{url}/?stream={name}"),
        }
    }

    /// Events the target holds: for HTTP, POSTs taken since the start.
    async fn held(&self, destination: &Destination) -> usize {
        let name = destination.name.as_str();
        match self {
            Self::Http { .. } => self.http_counts().await.0,
            Self::Nats { js, .. } => {
                let mut stream = js.get_stream(name).await.unwrap();
                stream.info().await.unwrap().state.messages as usize
            }
            Self::Amqp { channel, .. } => channel
                .queue_declare(
                    name.into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await
                .unwrap()
                .message_count() as usize,
            Self::Redis { conn, .. } => {
                let mut conn = conn.clone();
                redis::cmd("XLEN")
                    .arg(name)
                    .query_async(&mut conn)
                    .await
                    .unwrap()
            }
        }
    }

    /// Publishes one event straight to the destination and awaits the
    /// target's confirmation, as the sink does.
    async fn publish(&self, destination: &Destination, id: &str, body: Bytes) {
        let name = destination.name.as_str();
        match self {
            Self::Http { server, client } => {
                let status = client
                    .post(format!("http://{}/{name}", server.addr))
                    .header("content-type", "application/json")
                    .header("webhook-id", id)
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert!(status.is_success());
            }
            Self::Nats { js, .. } => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", id);
                js.publish_with_headers(format!("{name}.events"), headers, body)
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            Self::Amqp { channel, .. } => {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        name.into(),
                        lapin::options::BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &body,
                        lapin::BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_content_type("application/json".into())
                            .with_message_id(id.into()),
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                assert!(confirm.is_ack());
            }
            Self::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let _: String = redis::cmd("XADD")
                    .arg(name)
                    .arg("*")
                    .arg("id")
                    .arg(id)
                    .arg("kind")
                    .arg("change")
                    .arg("event")
                    .arg(body.as_ref())
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
    }

    /// The HTTP target's POSTs so far and the size of the last one's body.
    async fn http_counts(&self) -> (usize, usize) {
        let Self::Http { server, client } = self else {
            return (0, 0);
        };
        let text = client
            .get(format!("http://{}/", server.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let (count, size) = text.split_once(' ').unwrap();
        (count.parse().unwrap(), size.parse().unwrap())
    }

    async fn remove(&self, destination: &Destination) {
        let name = destination.name.as_str();
        match self {
            Self::Http { .. } => {}
            Self::Nats { js, .. } => {
                let _ = js.delete_stream(name).await;
            }
            Self::Amqp { channel, .. } => {
                let _ = channel
                    .queue_delete(name.into(), lapin::options::QueueDeleteOptions::default())
                    .await;
            }
            Self::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let _: Result<(), _> = redis::cmd("DEL").arg(name).query_async(&mut conn).await;
            }
        }
    }
}

async fn targets() -> Vec<Target> {
    let mut targets = Vec::new();
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command.env(ROLE, "http-target");
    targets.push(Target::Http {
        server: Server::start(command).await,
        client: reqwest::Client::new(),
    });
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match env("MSGRAPH_WEBHOOKS_NATS_URL") {
        Some(url) => {
            let client = async_nats::connect(url.as_str()).await.unwrap();
            let js = async_nats::jetstream::new(client);
            targets.push(Target::Nats { url, js });
        }
        None => eprintln!("NATS row skipped: set MSGRAPH_WEBHOOKS_NATS_URL"),
    }
    match env("MSGRAPH_WEBHOOKS_AMQP_URL") {
        Some(url) => {
            let connection =
                lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                    .await
                    .unwrap();
            let channel = connection.create_channel().await.unwrap();
            channel
                .confirm_select(lapin::options::ConfirmSelectOptions::default())
                .await
                .unwrap();
            targets.push(Target::Amqp {
                url,
                _connection: connection,
                channel,
            });
        }
        None => eprintln!("RabbitMQ row skipped: set MSGRAPH_WEBHOOKS_AMQP_URL"),
    }
    match env("MSGRAPH_WEBHOOKS_REDIS_URL") {
        Some(url) => {
            let conn = redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            targets.push(Target::Redis { url, conn });
        }
        None => eprintln!("Redis row skipped: set MSGRAPH_WEBHOOKS_REDIS_URL"),
    }
    targets
}

/// The target's ceiling: `items` events of `size` bytes, `in_flight` at a
/// time, each awaited until confirmed. Events per second.
async fn ceiling(target: &Target, items: usize, size: usize, in_flight: usize) -> f64 {
    let destination = target.destination().await;
    let padding = "x".repeat(size.saturating_sub(40));
    let next = AtomicU64::new(0);
    let started = Instant::now();
    join_all((0..in_flight).map(|_| async {
        loop {
            let n = next.fetch_add(1, Ordering::Relaxed) as usize;
            if n >= items {
                return;
            }
            let id = format!("ceiling-{n}");
            let body = Bytes::from(format!("{{\"id\":\"{id}\",\"pad\":\"{padding}\"}}"));
            target.publish(&destination, &id, body).await;
        }
    }))
    .await;
    let rate = items as f64 / started.elapsed().as_secs_f64();
    target.remove(&destination).await;
    rate
}

/// `work --forward` draining a copy of the filled store into a fresh
/// destination: events per second from the first arrival to the last.
async fn forwarded(target: &Target, filled: &Path, items: usize) -> f64 {
    let destination = target.destination().await;
    let store = copy_store(filled);
    let before = target.held(&destination).await;
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(["work", "--admin-addr", "off"])
        .args(["--workers", &WORKERS.to_string()])
        .args(["--data-dir", store.path().to_str().unwrap()])
        .args(["--forward", &target.forward_url(&destination)])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    let mut work = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, usize)> = None;
    let finished = loop {
        let held = target.held(&destination).await - before;
        let now = Instant::now();
        if first.is_none() && held > 0 {
            first = Some((now, held));
        }
        if held >= items {
            break now;
        }
        assert!(now < deadline, "{held} of {items} forwarded in 600 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let _ = work.kill().await;
    let _ = work.wait().await;
    target.remove(&destination).await;
    let (first_at, first_count) = first.unwrap();
    (items - first_count) as f64 / (finished - first_at).as_secs_f64()
}

/// `work` draining a copy of the filled store with no target, printing
/// each event's line to a pipe: the pipeline's own rate, which bounds every
/// forwarded one. Events per second from the first line to the last.
async fn printed(filled: &Path, items: usize) -> f64 {
    use tokio::io::AsyncBufReadExt as _;
    let store = copy_store(filled);
    let mut work = tokio::process::Command::new(BIN)
        .args(["work", "--admin-addr", "off"])
        .args(["--workers", &WORKERS.to_string()])
        .args(["--data-dir", store.path().to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(work.stdout.take().unwrap()).lines();
    lines.next_line().await.unwrap().expect("a first line");
    let first = Instant::now();
    for _ in 1..items {
        lines.next_line().await.unwrap().expect("every line");
    }
    let rate = (items - 1) as f64 / first.elapsed().as_secs_f64();
    let _ = work.kill().await;
    let _ = work.wait().await;
    rate
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn run() {
    let settings = Settings::from_env();
    let filled = tempfile::tempdir().unwrap();
    fill(filled.path(), 0, settings.items as u64).await;
    let in_flight = WORKERS * CLAIM_BATCH;
    let mut pipeline = Vec::new();
    for _ in 0..settings.rounds {
        pipeline.push(printed(filled.path(), settings.items).await);
    }
    eprintln!("measured work printing: {pipeline:.0?}");
    let pipeline = median(pipeline);
    let targets = targets().await;
    // The size of one forwarded line, learned by the HTTP target (always the
    // first): what the ceilings publish too.
    let mut size = 0;
    let mut rows = Vec::new();
    for target in &targets {
        let (mut ceilings, mut forwards) = (Vec::new(), Vec::new());
        for _ in 0..settings.rounds {
            forwards.push(forwarded(target, filled.path(), settings.items).await);
            if size == 0 {
                size = targets[0].http_counts().await.1;
            }
            ceilings.push(ceiling(target, settings.items, size, in_flight).await);
        }
        eprintln!(
            "measured {}: ceiling {ceilings:.0?}, forwarded {forwards:.0?}",
            target.label()
        );
        rows.push((target.label(), median(ceilings), median(forwards)));
    }
    println!();
    println!(
        "{} events of {size} bytes per round, median of {} rounds; {in_flight} in flight ({WORKERS} workers × {CLAIM_BATCH}); {} cores, target and bench on the same machine",
        settings.items,
        settings.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| target | its ceiling (events/s, same client, same confirmation) | `work --forward` (events/s) | share of the ceiling |"
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| none: `work` printing JSON lines (the pipeline's own rate) | — | {pipeline:.0} | — |"
    );
    for (label, ceiling, forwarded) in rows {
        println!(
            "| {label} | {ceiling:.0} | {forwarded:.0} | {:.0} % |",
            100.0 * forwarded / ceiling
        );
    }
}

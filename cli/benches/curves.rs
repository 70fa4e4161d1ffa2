//! How cost grows: the embedded durable store's ingest with a backlog of
//! 0, 100 000 and 1 000 000 items already in it (requests/s, ack latency,
//! `/metrics` and `dlq list` times, disk bytes and RSS per stored item),
//! ingest with 1, 10, 100 and 1000 items per POST (items/s, ack
//! latency), and ingest with 10, 10 000 and 1 000 000 subscription records
//! in the store (`--subscription-records`: each item authenticated by its
//! subscription's record), each against bare hyper's rate measured in the
//! same run. `BENCH_BACKLOGS`, `BENCH_PER_POST` and `BENCH_RECORDS` pick the
//! points.
//! Prints Markdown tables and, with `BENCH_CSV=DIR`, writes the points as
//! CSV for `bench/plot_curves.py`.
//!
//! Run with `bench/curves.sh`, or directly:
//!
//! ```text
//! cargo bench --bench curves
//! BENCH_BACKLOGS=0,100000 BENCH_SECS=5 cargo bench --bench curves
//! ```
//!
//! The servers are separate processes (`listen --workers 0`: ingest only,
//! so the backlog stays as it is while measured); the load generator is
//! this process. Traffic goes to 127.0.0.1 only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

mod common;
use common::{
    BIN, CLIENT_STATE, Server, Settings, dir_bytes, fill, load, rss_bytes, subscription_id,
    terminate,
};

const ROLE: &str = "CURVES_BENCH_ROLE";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var(ROLE).as_deref() == Ok("bare") {
        runtime.block_on(common::bare_server());
        return;
    }
    // `cargo test --benches` runs bench targets with `--bench` absent: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    runtime.block_on(run());
}

fn listen(data: &std::path::Path, admin: Option<u16>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(BIN);
    let admin = admin.map_or("off".to_owned(), |port| format!("127.0.0.1:{port}"));
    command
        .args(["listen", "--addr", "127.0.0.1:0", "--workers", "0"])
        .args(["--admin-addr", &admin, "--data-dir", data.to_str().unwrap()])
        .env("MSGRAPH_WEBHOOKS_CLIENT_STATE", CLIENT_STATE)
        .env("RUST_LOG", "warn,msgraph_webhooks::listener::server=info");
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The median of `rounds` timings of `f`, in milliseconds.
async fn median_ms<F: AsyncFnMut()>(rounds: usize, mut f: F) -> f64 {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        f().await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

async fn bare_rps(settings: &Settings) -> f64 {
    let mut bare = tokio::process::Command::new(std::env::current_exe().unwrap());
    bare.env(ROLE, "bare");
    let mut server = Server::start(bare).await;
    let measured = load(server.addr, server.child.id(), settings, None).await;
    let _ = server.child.kill().await;
    measured.rps()
}

struct BacklogPoint {
    backlog: u64,
    rps: f64,
    p99_ms: f64,
    metrics_ms: f64,
    dlq_list_ms: f64,
    disk_bytes: u64,
    rss_bytes: u64,
}

async fn backlog_point(settings: &Settings, backlog: u64) -> BacklogPoint {
    let data = tempfile::tempdir().unwrap();
    if backlog > 0 {
        // Ids far from the load's, so nothing collides.
        fill(data.path(), 1 << 40, backlog).await;
    }
    let disk_bytes = dir_bytes(data.path());
    let admin = free_port();
    let mut server = Server::start(listen(data.path(), Some(admin))).await;
    let pid = server.child.id().unwrap();
    let rss = rss_bytes(pid);
    let measured = load(server.addr, Some(pid), settings, None).await;
    let client = reqwest::Client::new();
    let metrics_ms = median_ms(21, async || {
        let text = client
            .get(format!("http://127.0.0.1:{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("msgraph_webhooks_inbox_depth"));
    })
    .await;
    let dlq_list_ms = median_ms(5, async || {
        let status = tokio::process::Command::new(BIN)
            .args(["dlq", "list", "--data-dir", data.path().to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(status.success());
    })
    .await;
    terminate(&mut server.child).await;
    BacklogPoint {
        backlog,
        rps: measured.rps(),
        p99_ms: measured.percentile_ms(0.99),
        metrics_ms,
        dlq_list_ms,
        disk_bytes,
        rss_bytes: rss,
    }
}

struct BatchPoint {
    per_post: usize,
    items_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn batch_point(settings: &Settings, per_post: usize) -> BatchPoint {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(listen(data.path(), None)).await;
    let settings = Settings {
        items_per_request: per_post,
        // Fewer connections for big bodies: 1000 items are ~0.5 MB each.
        connections: if per_post >= 100 {
            8
        } else {
            settings.connections
        },
        ..Settings::from_env()
    };
    let measured = load(server.addr, server.child.id(), &settings, None).await;
    terminate(&mut server.child).await;
    BatchPoint {
        per_post,
        items_per_sec: measured.rps() * per_post as f64,
        p50_ms: measured.percentile_ms(0.5),
        p99_ms: measured.percentile_ms(0.99),
    }
}

struct RecordsPoint {
    records: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_bytes: u64,
}

/// Ingest with `records` subscription records in the store (as `--subscribe`
/// keeps them), the load's notifications naming them round robin: at a
/// million every request of the run names a subscription not seen before,
/// which the registry looks up in the store (the worst case); at 10 and
/// 10 000 they are soon all in its memory.
async fn records_point(settings: &Settings, records: u64) -> RecordsPoint {
    use msgraph_webhooks::ClientState;
    use msgraph_webhooks::store::{RecordStore, SqliteStore, SubscriptionRecord};
    let data = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(data.path()).unwrap();
        let ids: Vec<u64> = (0..records).collect();
        for chunk in ids.chunks(2000) {
            // Concurrent puts share commits (the writer groups them).
            futures_util::future::try_join_all(chunk.iter().map(|&n| {
                let record = SubscriptionRecord::new(
                    subscription_id(n, records),
                    Some(ClientState::new(CLIENT_STATE)),
                );
                store.put(record)
            }))
            .await
            .unwrap();
        }
    }
    let mut command = listen(data.path(), None);
    // Each item authenticated by its subscription's record, not one state.
    command
        .arg("--subscription-records")
        .env_remove("MSGRAPH_WEBHOOKS_CLIENT_STATE");
    let mut server = Server::start(command).await;
    let pid = server.child.id().unwrap();
    let settings = Settings {
        subscriptions: records,
        ..*settings
    };
    let measured = load(server.addr, Some(pid), &settings, None).await;
    let rss = rss_bytes(pid);
    terminate(&mut server.child).await;
    RecordsPoint {
        records,
        rps: measured.rps(),
        p50_ms: measured.percentile_ms(0.5),
        p99_ms: measured.percentile_ms(0.99),
        rss_bytes: rss,
    }
}

fn list(var: &str, default: &str) -> Vec<u64> {
    std::env::var(var)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

async fn run() {
    let settings = Settings::from_env();
    let bare = bare_rps(&settings).await;
    eprintln!("measured bare hyper: {bare:.0} requests/s");

    let mut backlogs = Vec::new();
    for backlog in list("BENCH_BACKLOGS", "0,100000,1000000") {
        let point = backlog_point(&settings, backlog).await;
        eprintln!("measured backlog {backlog}: {:.0} requests/s", point.rps);
        backlogs.push(point);
    }
    let mut batches = Vec::new();
    for per_post in list("BENCH_PER_POST", "1,10,100,1000") {
        let point = batch_point(&settings, per_post as usize).await;
        eprintln!(
            "measured {per_post} per POST: {:.0} items/s",
            point.items_per_sec
        );
        batches.push(point);
    }
    let mut record_points = Vec::new();
    for records in list("BENCH_RECORDS", "10,10000,1000000") {
        let point = records_point(&settings, records).await;
        eprintln!("measured {records} records: {:.0} requests/s", point.rps);
        record_points.push(point);
    }

    println!();
    println!(
        "bare hyper {bare:.0} requests/s in the same run; {} connections, {} s per point after {} s warm-up; {} cores",
        settings.connections,
        settings.duration.as_secs(),
        settings.warmup.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| backlog (items in the store) | ingest requests/s | vs bare hyper | p99 ack (ms) | `/metrics` (ms) | `dlq list` (ms) | disk bytes per stored item | RSS (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let empty_disk = backlogs
        .iter()
        .find(|p| p.backlog == 0)
        .map_or(0, |p| p.disk_bytes);
    for p in &backlogs {
        let per_item = if p.backlog == 0 {
            "—".to_owned()
        } else {
            format!(
                "{:.0}",
                (p.disk_bytes.saturating_sub(empty_disk)) as f64 / p.backlog as f64
            )
        };
        println!(
            "| {} | {:.0} | {:.0} % | {:.2} | {:.2} | {:.0} | {per_item} | {:.1} |",
            p.backlog,
            p.rps,
            100.0 * p.rps / bare,
            p.p99_ms,
            p.metrics_ms,
            p.dlq_list_ms,
            p.rss_bytes as f64 / (1 << 20) as f64
        );
    }
    println!();
    println!("| items per POST | items/s | requests/s | p50 / p99 ack (ms) |");
    println!("|---:|---:|---:|---:|");
    for p in &batches {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} / {:.2} |",
            p.per_post,
            p.items_per_sec,
            p.items_per_sec / p.per_post as f64,
            p.p50_ms,
            p.p99_ms
        );
    }
    println!();
    println!(
        "| subscription records in the store | ingest requests/s | vs bare hyper | p50 / p99 ack (ms) | RSS after (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for p in &record_points {
        println!(
            "| {} | {:.0} | {:.0} % | {:.2} / {:.2} | {:.1} |",
            p.records,
            p.rps,
            100.0 * p.rps / bare,
            p.p50_ms,
            p.p99_ms,
            p.rss_bytes as f64 / (1 << 20) as f64
        );
    }
    if let Ok(dir) = std::env::var("BENCH_CSV") {
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        let mut backlog_csv = "backlog,requests_per_sec,p99_ms,metrics_ms,dlq_list_ms\n".to_owned();
        for p in &backlogs {
            backlog_csv += &format!(
                "{},{:.1},{:.3},{:.3},{:.1}\n",
                p.backlog, p.rps, p.p99_ms, p.metrics_ms, p.dlq_list_ms
            );
        }
        std::fs::write(dir.join("backlog.csv"), backlog_csv).unwrap();
        let mut batch_csv = "per_post,items_per_sec,p50_ms,p99_ms\n".to_owned();
        for p in &batches {
            batch_csv += &format!(
                "{},{:.1},{:.3},{:.3}\n",
                p.per_post, p.items_per_sec, p.p50_ms, p.p99_ms
            );
        }
        std::fs::write(dir.join("per_post.csv"), batch_csv).unwrap();
        let mut records_csv = "records,requests_per_sec,p50_ms,p99_ms\n".to_owned();
        for p in &record_points {
            records_csv += &format!(
                "{},{:.1},{:.3},{:.3}\n",
                p.records, p.rps, p.p50_ms, p.p99_ms
            );
        }
        std::fs::write(dir.join("records.csv"), records_csv).unwrap();
    }
    // Let the last server's files go before the temp dirs are removed.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

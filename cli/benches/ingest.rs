//! Ingest benchmark: requests per second and ack latency of `msgraph-webhooks
//! listen` for single-item basic notifications over keep-alive connections,
//! against a bare hyper server that answers 202 to any POST, measured in the
//! same run on the same machine.
//!
//! Run with `bench/ingest.sh` (writes BENCHMARKS.md), or directly:
//!
//! ```text
//! cargo bench --bench ingest
//! BENCH_SECS=20 BENCH_CONNECTIONS=32 cargo bench --bench ingest
//! ```
//!
//! Both servers run as separate processes; the load generator is this
//! process. Traffic goes to 127.0.0.1 only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

const ROLE: &str = "INGEST_BENCH_ROLE";

mod common;
use common::{BIN, CLIENT_STATE, Server, body};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var(ROLE).as_deref() == Ok("bare") {
        runtime.block_on(bare_server());
        return;
    }
    // `cargo test --benches` runs bench targets with `--bench` absent: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    runtime.block_on(run());
}

/// The baseline: hyper, one task per connection, 202 to any POST after
/// reading its body.
async fn bare_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening local={}", listener.local_addr().unwrap());
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(
                |request: hyper::Request<hyper::body::Incoming>| async move {
                    let _ = request.into_body().collect().await;
                    let mut response = hyper::Response::new(Empty::<Bytes>::new());
                    *response.status_mut() = hyper::StatusCode::ACCEPTED;
                    Ok::<_, Infallible>(response)
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

struct Settings {
    duration: Duration,
    warmup: Duration,
    connections: usize,
}

impl Settings {
    fn from_env() -> Self {
        let secs = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Self {
            duration: Duration::from_secs(secs("BENCH_SECS", 10)),
            warmup: Duration::from_secs(secs("BENCH_WARMUP_SECS", 2)),
            connections: usize::try_from(secs("BENCH_CONNECTIONS", 32)).unwrap(),
        }
    }
}

/// What one load run measured.
struct Measured {
    /// CPU seconds the server process used while measuring.
    server_cpu: f64,
    /// CPU seconds everything else on the machine used (the load generator
    /// included), from /proc/stat.
    other_cpu: f64,
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Measured {
    /// Server CPU time per answered request, in microseconds.
    fn cpu_us_per_request(&self) -> f64 {
        1e6 * self.server_cpu / self.requests.max(1) as f64
    }

    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        f64::from(self.latencies_us[index]) / 1000.0
    }
}

/// Load on `connections` keep-alive connections. Closed loop (`rate` None):
/// each connection sends the next request as soon as the previous answer is
/// in. Open loop (`rate` Some): requests are scheduled at a fixed total rate
/// and latency counts from the scheduled time, so queueing behind a slow
/// answer is measured, not hidden. Only requests after the warm-up count.
async fn load(
    addr: SocketAddr,
    pid: Option<u32>,
    settings: &Settings,
    rate: Option<f64>,
) -> Measured {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let connections = settings.connections;
    for _ in 0..connections {
        let measuring = measuring.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let (mut requests, mut errors, mut latencies) =
                (0u64, 0u64, Vec::with_capacity(1 << 16));
            let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
            let mut next = tokio::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if interval.is_some() {
                    tokio::time::sleep_until(next).await;
                }
                let request = hyper::Request::post("/")
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .body(Full::new(body(NEXT_ID.fetch_add(1, Ordering::Relaxed))))
                    .unwrap();
                let started = match interval {
                    Some(_) => next.into_std(),
                    None => Instant::now(),
                };
                if let Some(interval) = interval {
                    next += interval;
                }
                let ok = match sender.send_request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        let _ = response.into_body().collect().await;
                        status == hyper::StatusCode::ACCEPTED
                    }
                    Err(_) => false,
                };
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        requests += 1;
                        latencies
                            .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
                    } else {
                        errors += 1;
                    }
                }
                if !ok && sender.ready().await.is_err() {
                    break;
                }
            }
            (requests, errors, latencies)
        }));
    }
    tokio::time::sleep(settings.warmup).await;
    let (server_before, busy_before) = (pid.map_or(0.0, process_cpu), machine_busy_cpu());
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(settings.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let server_cpu = pid.map_or(0.0, process_cpu) - server_before;
    let other_cpu = machine_busy_cpu() - busy_before - server_cpu;
    stop.store(true, Ordering::Relaxed);
    let mut measured = Measured {
        server_cpu,
        other_cpu,
        requests: 0,
        errors: 0,
        elapsed,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let (requests, errors, latencies) = task.await.unwrap();
        measured.requests += requests;
        measured.errors += errors;
        measured.latencies_us.extend(latencies);
    }
    measured.latencies_us.sort_unstable();
    measured
}

/// One server to measure.
struct Target {
    name: &'static str,
    command: tokio::process::Command,
    cleanup: Option<Box<dyn FnOnce()>>,
}

fn listen(extra: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(["listen", "--addr", "127.0.0.1:0"])
        .args(extra)
        .args(
            std::env::var("BENCH_LISTEN_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .env("MSGRAPH_WEBHOOKS_CLIENT_STATE", CLIENT_STATE)
        .env("RUST_LOG", "warn,msgraph_webhooks::listener::server=info");
    command
}

fn targets(data_dir: &std::path::Path) -> Vec<Target> {
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    let mut targets = Vec::new();
    let mut bare = tokio::process::Command::new(std::env::current_exe().unwrap());
    bare.env(ROLE, "bare");
    targets.push(Target {
        name: "bare hyper (baseline)",
        command: bare,
        cleanup: None,
    });
    // The peer: an Express receiver like Microsoft's Node sample (bench/peers).
    let express = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/peers/express");
    if wanted("express") {
        if std::path::Path::new(express).join("node_modules/express").is_dir() {
            let mut node = tokio::process::Command::new("node");
            node.arg(format!("{express}/server.mjs"))
                .env("MSGRAPH_WEBHOOKS_CLIENT_STATE", CLIENT_STATE)
                .env("NODE_ENV", "production");
            targets.push(Target {
                name: "Express 5, like Microsoft's Node sample (keeps nothing)",
                command: node,
                cleanup: None,
            });
        } else {
            eprintln!("Express row skipped: run `npm ci` in bench/peers/express (bench/ingest.sh does)");
        }
    }
    if wanted("memory") {
        targets.push(Target {
            name: "listen --memory",
            command: listen(&["--memory", "--inbox-capacity", "10000000,8GiB"]),
            cleanup: None,
        });
    }
    // The inspector is on by default; this row is the ack path without it.
    if wanted("memory") || wanted("no-inspector") {
        targets.push(Target {
            name: "listen --memory --inspector-capacity 0",
            command: listen(&[
                "--memory",
                "--inbox-capacity",
                "10000000,8GiB",
                "--inspector-capacity",
                "0",
            ]),
            cleanup: None,
        });
    }
    if wanted("durable") {
        targets.push(Target {
            name: "listen (embedded durable, fsync)",
            command: listen(&["--data-dir", data_dir.to_str().unwrap()]),
            cleanup: None,
        });
    }
    let redis = std::env::var("BENCH_REDIS_URL")
        .or_else(|_| std::env::var("MSGRAPH_WEBHOOKS_REDIS_URL"))
        .ok();
    match redis {
        Some(url) if wanted("redis") => {
            let prefix = format!("msgraph-webhooks-bench-{}", std::process::id());
            let cleanup_url = url.clone();
            let cleanup_prefix = prefix.clone();
            targets.push(Target {
                name: "listen --redis",
                command: listen(&["--redis", &url, "--redis-prefix", &prefix]),
                cleanup: Some(Box::new(move || {
                    // Remove what the run left behind in the shared Redis.
                    let _ = std::process::Command::new("sh")
                        .arg("-c")
                        .arg(format!(
                            "redis-cli -u {cleanup_url} --scan --pattern '{cleanup_prefix}:*' | xargs -r redis-cli -u {cleanup_url} del >/dev/null"
                        ))
                        .status();
                })),
            });
        }
        _ if wanted("redis") => {
            eprintln!("redis row skipped: set BENCH_REDIS_URL or MSGRAPH_WEBHOOKS_REDIS_URL")
        }
        _ => {}
    }
    targets
}

async fn run() {
    let settings = Settings::from_env();
    // Profiling aid: load a server that is already running.
    if let Ok(addr) = std::env::var("BENCH_ADDR") {
        let rate = std::env::var("BENCH_RATE")
            .ok()
            .and_then(|r| r.parse().ok());
        let measured = load(addr.parse().unwrap(), None, &settings, rate).await;
        println!(
            "{addr}: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, {} non-202",
            measured.rps(),
            measured.percentile_ms(0.5),
            measured.percentile_ms(0.99),
            measured.errors
        );
        return;
    }
    let data = std::env::temp_dir().join(format!("msgraph-webhooks-bench-{}", std::process::id()));
    let mut rows = Vec::new();
    for target in targets(&data) {
        let mut server = Server::start(target.command).await;
        let pid = server.child.id();
        let max = load(server.addr, pid, &settings, None).await;
        let rate = max.rps() / 2.0;
        let half = load(server.addr, pid, &settings, Some(rate)).await;
        let _ = server.child.kill().await;
        let _ = server.child.wait().await;
        if let Some(cleanup) = target.cleanup {
            cleanup();
        }
        eprintln!("measured {}", target.name);
        rows.push((target.name, max, rate, half));
    }
    let _ = std::fs::remove_dir_all(&data);

    let base_rps = rows[0].1.rps();
    println!();
    println!(
        "{} connections, {} s measured after {} s warm-up per run, {} cores, load generator on the same machine",
        settings.connections,
        settings.duration.as_secs(),
        settings.warmup.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| server | max requests/s | vs baseline | p50 / p99 ack at max (ms) | server CPU µs per request | other load (CPUs) | fixed rate (½ max) | p50 / p99 ack at that rate (ms) | non-202 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, max, rate, half) in &rows {
        println!(
            "| {name} | {:.0} | {:.0} % | {:.2} / {:.2} | {:.1} | {:.2} | {:.0}/s | {:.2} / {:.2} | {} |",
            max.rps(),
            100.0 * max.rps() / base_rps,
            max.percentile_ms(0.50),
            max.percentile_ms(0.99),
            max.cpu_us_per_request(),
            max.other_cpu / max.elapsed.as_secs_f64(),
            rate,
            half.percentile_ms(0.50),
            half.percentile_ms(0.99),
            max.errors + half.errors
        );
    }
}

/// Clock ticks per second of /proc's CPU counters.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds a process used so far (0 if unknown).
fn process_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line.
    let Some(rest) = stat.rsplit(')').next() else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// CPU seconds the whole machine spent busy so far, from /proc/stat.
fn machine_busy_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …: busy = all − idle − iowait.
    let total: f64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0.0) + values.get(4).copied().unwrap_or(0.0);
    (total - idle) / clock_ticks()
}

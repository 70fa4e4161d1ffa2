//! What the benchmarks share: the binary under test, the servers they
//! start, and the notifications they send.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncBufReadExt as _;
use tokio::net::{TcpListener, TcpStream};

/// The CLI binary the benchmarks run.
pub const BIN: &str = env!("CARGO_BIN_EXE_msgraph-webhooks");
/// The `clientState` of every notification they send.
pub const CLIENT_STATE: &str = "bench-client-state";

/// A server process under test.
pub struct Server {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
}

impl Server {
    pub async fn start(mut command: tokio::process::Command) -> Self {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        // The bare server says where it listens on stdout, `listen` in its log on stderr.
        let stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async move {
            let (mut stdout, mut stderr) = (stdout, stderr);
            loop {
                let line = tokio::select! {
                    line = stdout.next_line() => line,
                    line = stderr.next_line() => line,
                };
                let line = line.unwrap().expect("server exited before listening");
                if let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("local="))
                {
                    // Keep draining both pipes so the server never blocks on them.
                    tokio::spawn(
                        async move { while let Ok(Some(_)) = stdout.next_line().await {} },
                    );
                    tokio::spawn(
                        async move { while let Ok(Some(_)) = stderr.next_line().await {} },
                    );
                    return addr.parse::<SocketAddr>().unwrap();
                }
            }
        })
        .await
        .expect("server listening within 30 s");
        Self { child, addr }
    }
}

/// A basic notification; each gets a notification id of its own (as
/// Graph's are), so dedupe treats none as a duplicate.
pub fn item(id: u64) -> serde_json::Value {
    item_of(id, 0)
}

/// The subscription id of notification `id` when the load spreads over
/// `subscriptions` of them (round robin), or the one fixed id for 0.
pub fn subscription_id(id: u64, subscriptions: u64) -> String {
    if subscriptions == 0 {
        "7f105c7d-2dc5-4530-97cd-4e7ae6534c07".to_owned()
    } else {
        format!("bench-sub-{}", id % subscriptions)
    }
}

/// [`item`] of one of `subscriptions` subscriptions (see [`subscription_id`]).
pub fn item_of(id: u64, subscriptions: u64) -> serde_json::Value {
    serde_json::json!({
        "id": format!("bench-{id}"),
        "subscriptionId": subscription_id(id, subscriptions),
        "subscriptionExpirationDateTime": "2026-03-19T22:11:09.952Z",
        "clientState": CLIENT_STATE,
        "changeType": "created",
        "resource": "Users/622eaaff-0683-4862-9de4-f2ec83c2bd98/Messages/AAMkAGUwNjQ4ZjIxAAA=",
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Message",
            "@odata.id": "Users/622eaaff-0683-4862-9de4-f2ec83c2bd98/Messages/AAMkAGUwNjQ4ZjIxAAA=",
            "@odata.etag": "W/\"CQAAABYAAACQ2fKdhq8oSKEDSVrdi3lRAAGDUUXn\"",
            "id": "AAMkAGUwNjQ4ZjIxAAA="
        }
    })
}

/// A delivery of `items` notifications, ids from `first` on.
pub fn envelope(first: u64, items: u64) -> Bytes {
    envelope_of(first, items, 0)
}

/// [`envelope`] with its items spread over `subscriptions` subscriptions.
pub fn envelope_of(first: u64, items: u64, subscriptions: u64) -> Bytes {
    let value: Vec<serde_json::Value> = (first..first + items)
        .map(|id| item_of(id, subscriptions))
        .collect();
    Bytes::from(serde_json::json!({ "value": value }).to_string())
}

/// How long and how hard a load run goes.
pub struct Settings {
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    /// Notifications per POST (`BENCH_ITEMS_PER_POST`, default 1).
    pub items_per_request: usize,
    /// Subscriptions the notifications name, round robin (0: one).
    pub subscriptions: u64,
}

impl Settings {
    pub fn from_env() -> Self {
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
            items_per_request: usize::try_from(secs("BENCH_ITEMS_PER_POST", 1))
                .unwrap()
                .max(1),
            subscriptions: 0,
        }
    }
}

/// What one load run measured.
pub struct Measured {
    /// CPU seconds the server process used while measuring.
    pub server_cpu: f64,
    /// CPU seconds everything else on the machine used (the load generator
    /// included), from /proc/stat.
    pub other_cpu: f64,
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latencies_us: Vec<u32>,
}

impl Measured {
    /// Server CPU time per answered request, in microseconds.
    pub fn cpu_us_per_request(&self) -> f64 {
        1e6 * self.server_cpu / self.requests.max(1) as f64
    }

    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
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
pub async fn load(
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
    let per_request = settings.items_per_request as u64;
    let subscriptions = settings.subscriptions;
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
                    .body(Full::new(envelope_of(
                        NEXT_ID.fetch_add(per_request, Ordering::Relaxed),
                        per_request,
                        subscriptions,
                    )))
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

/// Clock ticks per second of /proc's CPU counters.
pub fn clock_ticks() -> f64 {
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
pub fn process_cpu(pid: u32) -> f64 {
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
pub fn machine_busy_cpu() -> f64 {
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

/// Fills a durable store in `dir` with `items` accepted notifications
/// (ids from `first` on), through `listen --workers 0`, in POSTs of 1000.
pub async fn fill(dir: &std::path::Path, first: u64, items: u64) {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(["listen", "--addr", "127.0.0.1:0", "--admin-addr", "off"])
        .args(["--workers", "0", "--data-dir", dir.to_str().unwrap()])
        .env("MSGRAPH_WEBHOOKS_CLIENT_STATE", CLIENT_STATE)
        .env("RUST_LOG", "warn,msgraph_webhooks::listener::server=info");
    let mut server = Server::start(command).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/", server.addr);
    const PER_POST: u64 = 1000;
    let posts: Vec<(u64, u64)> = (0..items.div_ceil(PER_POST))
        .map(|n| (first + n * PER_POST, PER_POST.min(items - n * PER_POST)))
        .collect();
    for wave in posts.chunks(4) {
        let answers = futures_util::future::join_all(wave.iter().map(|&(from, n)| {
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(envelope(from, n))
                .send()
        }))
        .await;
        for answer in answers {
            assert_eq!(answer.unwrap().status().as_u16(), 202, "the store takes it");
        }
    }
    terminate(&mut server.child).await;
}

/// SIGTERM to `child`, by its pid, and waits for it.
pub async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let _ = child.wait().await;
}

/// Resident memory of a process, in bytes (0 if unknown).
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Bytes the files of a directory (and its subdirectories) take.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    Ok(_) => e.metadata().map_or(0, |m| m.len()),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The baseline: hyper, one task per connection, 202 to any POST after
/// reading its body.
pub async fn bare_server() {
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

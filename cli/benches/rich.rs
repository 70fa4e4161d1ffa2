//! Rich notifications per second through `msgraph-webhooks listen`, against
//! the RSA ceiling of the same machine.
//!
//! Run with: `bench/rich.sh` (or `cargo bench --bench rich`). Environment:
//! `BENCH_ITEMS` per round (default 20 000), `BENCH_ROUNDS` (default 3),
//! `BENCH_BATCH` items per POST (default 50), `BENCH_STORE=memory` for the
//! in-memory inbox instead of `listen`'s default embedded durable store.
//! `bench/rich.sh` runs both.
//!
//! 1. Generates an RSA-2048 certificate, a token signing key and its JWKS
//!    file, and encrypts `BENCH_ITEMS` chat messages with the crate's §6.4
//!    encryptor (before the clock starts).
//! 2. Starts the release binary: `listen --key … --jwks FILE --app-id …` on
//!    127.0.0.1 and warms it up.
//! 3. Each round measures `openssl speed -elapsed -multi <cores> rsa2048`
//!    (private-key operations per second on all cores: the ceiling, since
//!    each rich item costs one), POSTs its items over loopback, stops the
//!    clock when the last decrypted line has been printed, and measures the
//!    ceiling again. The machine may be shared: measuring both on the wall
//!    clock, side by side, lets them see the same neighbours.
//! 4. Prints a Markdown table and the median round.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use msgraph_webhooks::crypto::generate_certificate;
use msgraph_webhooks::tokens::CHANGE_TRACKING_APP_ID;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_msgraph-webhooks");
const APP_ID: &str = "5a2b0e6c-6f41-4b0a-9d61-1f1c5c1e0a11";
const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
const CLIENT_STATE: &str = "bench-client-state";
const WARMUP: usize = 200;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let items = env_usize("BENCH_ITEMS", 20_000);
    let batch = env_usize("BENCH_BATCH", 50).max(1);
    let rounds = env_usize("BENCH_ROUNDS", 3).max(1);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let dir = tempfile::tempdir().expect("a temporary directory");

    // Keys, JWKS, token.
    let cert = generate_certificate("bench", 2048, 1).expect("a certificate");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&key_path, cert.key_and_certificate_pem().as_slice()).expect("key written");
    let signer = openssl::rsa::Rsa::generate(2048).expect("a signing key");
    let jwks = json!({"keys": [{
        "kty": "RSA", "use": "sig", "kid": "bench",
        "n": URL_SAFE_NO_PAD.encode(signer.n().to_vec()),
        "e": URL_SAFE_NO_PAD.encode(signer.e().to_vec()),
    }]});
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).expect("jwks written");
    msgraph_webhooks::tokens::install_jwt_provider();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("bench".into());
    let token = encode(
        &header,
        &json!({
            "aud": APP_ID, "iss": format!("https://sts.windows.net/{TENANT}/"),
            "iat": now, "nbf": now - 60, "exp": now + 3600,
            "appid": CHANGE_TRACKING_APP_ID, "tid": TENANT, "ver": "1.0",
        }),
        &EncodingKey::from_rsa_der(&signer.private_key_to_der().expect("der")),
    )
    .expect("a token");

    eprintln!("bench: encrypting {} items", WARMUP + rounds * items);
    let item = |n: usize| -> Value {
        let message = json!({
            "@odata.type": "#Microsoft.Graph.chatMessage", "id": n.to_string(), "etag": n.to_string(),
            "messageType": "message", "createdDateTime": "2026-07-01T07:56:34.597Z",
            "body": {"contentType": "html", "content": format!("<p>Message number {n} of the benchmark</p>")},
            "from": {"user": {"id": "a660dbf8-1ebf-4be9-be48-19c602bf5194", "displayName": "MOD Administrator"}},
        });
        let content = msgraph_webhooks::emulator::encrypt_resource(
            cert.key().certificate(),
            "bench-cert",
            message.to_string().as_bytes(),
        )
        .expect("encrypted");
        let resource = format!("chats('19:bench@thread.v2')/messages('{n}')");
        json!({
            "subscriptionId": "76222963-cc7b-42d2-882d-8aaa69cb2ba3",
            "subscriptionExpirationDateTime": "2026-01-02T03:12:18.2257768+00:00",
            "changeType": "created", "clientState": CLIENT_STATE, "tenantId": TENANT,
            "resource": resource,
            "resourceData": {"id": n.to_string(), "@odata.type": "#Microsoft.Graph.chatMessage", "@odata.id": resource},
            "encryptedContent": content,
        })
    };
    let bodies = |range: std::ops::Range<usize>| -> Vec<Bytes> {
        range
            .collect::<Vec<_>>()
            .chunks(batch)
            .map(|chunk| {
                let value: Vec<Value> = chunk.iter().map(|n| item(*n)).collect();
                Bytes::from(json!({"value": value, "validationTokens": [token]}).to_string())
            })
            .collect()
    };
    let warmup = bodies(0..WARMUP);
    let rounds: Vec<Vec<Bytes>> = (0..rounds)
        .map(|r| bodies(WARMUP + r * items..WARMUP + (r + 1) * items))
        .collect();

    // The receiver, on the default store (embedded, durable) unless
    // BENCH_STORE=memory.
    let store_args: Vec<String> = match std::env::var("BENCH_STORE").as_deref() {
        Ok("memory") => vec!["--memory".into()],
        _ => vec![
            "--data-dir".into(),
            dir.path().join("store").display().to_string(),
        ],
    };
    eprintln!("bench: store {store_args:?}");
    let mut child = Command::new(BIN)
        .args([
            "listen",
            "--addr",
            "127.0.0.1:0",
            "--key",
            &format!("bench-cert={}", key_path.display()),
            "--jwks",
            jwks_path.to_str().expect("utf-8 path"),
            "--app-id",
            APP_ID,
        ])
        .args(&store_args)
        .env("MSGRAPH_WEBHOOKS_CLIENT_STATE", CLIENT_STATE)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut lines = stderr.lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("listen logs its address")
            .expect("stderr");
        if let Some(addr) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("local="))
        {
            break addr.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let printed = Arc::new(AtomicUsize::new(0));
    let mut stdout = child.stdout.take().expect("stdout");
    let counter = printed.clone();
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 1 << 16];
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0 {
                break;
            }
            let lines = buffer[..n].iter().filter(|b| **b == b'\n').count();
            counter.fetch_add(lines, Ordering::SeqCst);
        }
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let url = format!("http://{addr}/");
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(600);
        while printed.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "items were not all handled in time"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    runtime.block_on(send(&url, warmup));
    wait_for(WARMUP);

    // The machine may be shared: each round measures the ceiling right
    // before and right after its run, on the wall clock like the run, so the
    // three see the same neighbours; the median round is the result.
    println!(
        "| round | `openssl speed -elapsed -multi {cores} rsa2048` sign/s: before, after | rich notifications/s through `listen` | of the ceiling | `listen` items per CPU-second | CPUs used by `listen` / other processes / idle | all acked after | all printed after |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    let mut handled = WARMUP;
    for (round, bodies) in rounds.into_iter().enumerate() {
        let before = openssl_speed(cores, true);
        let cpu_before = cpu_seconds(child.id());
        let machine_before = machine_cpu_seconds();
        eprintln!(
            "bench: round {}: sending {items} rich items in batches of {batch}",
            round + 1
        );
        let started = Instant::now();
        runtime.block_on(send(&url, bodies));
        let acked = started.elapsed();
        handled += items;
        wait_for(handled);
        let elapsed = started.elapsed();
        let cpu = cpu_seconds(child.id()) - cpu_before;
        let machine = machine_cpu_seconds();
        let idle = machine.1 - machine_before.1;
        let others = (machine.0 - machine_before.0 - cpu).max(0.0);
        let after = openssl_speed(cores, true);
        let ceiling = f64::midpoint(before, after);
        let rate = items as f64 / elapsed.as_secs_f64();
        let ratio = rate / ceiling;
        ratios.push(ratio);
        println!(
            "| {} | {before:.0}, {after:.0} | {rate:.0} | {:.1} % | {:.0} | {:.2} / {:.2} / {:.2} | {:.2} s | {:.2} s |",
            round + 1,
            100.0 * ratio,
            items as f64 / cpu,
            cpu / elapsed.as_secs_f64(),
            others / elapsed.as_secs_f64(),
            idle / elapsed.as_secs_f64(),
            acked.as_secs_f64(),
            elapsed.as_secs_f64()
        );
    }
    let per_cpu_second = openssl_speed(cores, false) / cores as f64;
    let _ = child.kill();
    let _ = child.wait();
    ratios.sort_by(f64::total_cmp);
    println!();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "Load average after the run (other processes on the machine): {}.",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!();
    println!(
        "Median of the ceiling: **{:.1} %** ({cores} cores, RSA-2048, {items} items per round in batches of {batch}). \
         `openssl speed -multi {cores} rsa2048` per CPU-second: {per_cpu_second:.0} sign/s.",
        100.0 * ratios[ratios.len() / 2]
    );
}

/// RSA-2048 private-key operations per second from `openssl speed`, on
/// `processes` processes; on the wall clock when `elapsed`, else per CPU
/// second (openssl's default divisor is user CPU time).
fn openssl_speed(processes: usize, elapsed: bool) -> f64 {
    let mut args = vec!["speed", "-seconds", "5"];
    let processes = processes.to_string();
    if processes != "1" {
        args.extend(["-multi", &processes]);
    }
    if elapsed {
        args.push("-elapsed");
    }
    args.push("rsa2048");
    eprintln!("bench: openssl {}", args.join(" "));
    let output = Command::new("openssl")
        .args(&args)
        .stderr(Stdio::null())
        .output()
        .expect("openssl runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .rev()
        .find(|l| l.starts_with("rsa 2048 bits"))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(|v| v.parse().ok())
        .expect("openssl speed reports sign/s for rsa 2048")
}

/// (busy, idle) CPU seconds of the whole machine so far (Linux `/proc/stat`).
fn machine_cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .expect("the cpu line")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let idle = ticks[3] + ticks.get(4).copied().unwrap_or(0.0);
    let busy: f64 = ticks.iter().take(8).sum::<f64>() - idle;
    let hz = clock_ticks();
    (busy / hz, idle / hz)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0)
}

/// User + system CPU seconds a process has used so far (Linux `/proc`).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / clock_ticks()
}

/// POSTs every body over a few keep-alive connections; each must get 202.
async fn send(url: &str, bodies: Vec<Bytes>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let bodies = Arc::new(std::sync::Mutex::new(bodies.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (client, bodies, url) = (client.clone(), bodies.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(body) = bodies.lock().expect("not poisoned").next() else {
                    return;
                };
                let request = http::Request::post(&url)
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .expect("a request");
                let response = client.request(request).await.expect("an answer");
                assert_eq!(response.status(), 202);
            }
        }));
    }
    for task in tasks {
        task.await.expect("sender");
    }
}

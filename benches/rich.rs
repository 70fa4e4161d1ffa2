//! Rich notifications per second through `msgraph-webhooks listen`, against
//! the RSA ceiling of the same machine.
//!
//! Run with: `bench/rich.sh` (or `cargo bench --bench rich`). Environment:
//! `BENCH_ITEMS` (default 20 000), `BENCH_BATCH` items per POST (default 50).
//!
//! 1. Generates an RSA-2048 certificate, a token signing key and its JWKS
//!    file, and encrypts `BENCH_ITEMS` chat messages with the crate's §6.4
//!    encryptor (before the clock starts).
//! 2. Measures `openssl speed -multi <cores> rsa2048`: private-key
//!    operations per second on all cores, the ceiling (each rich item costs
//!    one).
//! 3. Starts the release binary: `listen --key … --jwks FILE --app-id …` on
//!    127.0.0.1, warms it up, then POSTs every item over loopback and stops
//!    the clock when the last decrypted line has been printed.
//! 4. Prints a Markdown table.

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

    eprintln!("bench: encrypting {} items", WARMUP + items);
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
    let measured = bodies(WARMUP..WARMUP + items);

    // The ceiling, on an idle machine.
    eprintln!("bench: openssl speed -multi {cores} rsa2048");
    let speed = Command::new("openssl")
        .args(["speed", "-multi", &cores.to_string(), "-seconds", "10", "rsa2048"])
        .stderr(Stdio::null())
        .output()
        .expect("openssl runs");
    let speed = String::from_utf8_lossy(&speed.stdout);
    let ceiling: f64 = speed
        .lines()
        .rev()
        .find(|l| l.starts_with("rsa 2048 bits"))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(|v| v.parse().ok())
        .expect("openssl speed reports sign/s for rsa 2048");

    // The receiver.
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
        .env("MSGRAPH_WEBHOOKS_CLIENT_STATE", CLIENT_STATE)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut lines = stderr.lines();
    let addr = loop {
        let line = lines.next().expect("listen logs its address").expect("stderr");
        if let Some(addr) = line.split_whitespace().find_map(|w| w.strip_prefix("local=")) {
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
            assert!(Instant::now() < deadline, "items were not all handled in time");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    runtime.block_on(send(&url, warmup));
    wait_for(WARMUP);

    eprintln!("bench: sending {items} rich items in batches of {batch}");
    let started = Instant::now();
    runtime.block_on(send(&url, measured));
    let acked = started.elapsed();
    wait_for(WARMUP + items);
    let elapsed = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();

    let rate = items as f64 / elapsed.as_secs_f64();
    println!("| cores | RSA-2048 private ops/s, `openssl speed -multi {cores}` | rich notifications/s through `listen` | of the ceiling | items | batch | all acked after | all printed after |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {cores} | {ceiling:.0} | {rate:.0} | {:.1} % | {items} | {batch} | {:.2} s | {:.2} s |",
        100.0 * rate / ceiling,
        acked.as_secs_f64(),
        elapsed.as_secs_f64()
    );
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

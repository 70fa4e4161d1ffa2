//! Hostile clients against the standalone server: idle HTTP/2 floods, slow
//! and silent HTTP/1.1 sockets that reconnect, one peer taking every slot,
//! dribbled requests — while Graph's deliveries still get their `202`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use msgraph_webhooks::listener::ServerConfig;
use msgraph_webhooks::{ClientState, Receiver};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::support::http::{post_json, raw};
use crate::support::{Recorder, TestServer, envelope, message_item};

const STATE: &str = "s";

/// A server whose own deadlines are far off: only shedding can free a slot
/// within a test's time.
fn patient(max_connections: usize) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.max_connections = max_connections;
    config.header_read_timeout = Duration::from_secs(60);
    config.request_timeout = Duration::from_secs(60);
    config.idle_timeout = Duration::from_secs(60);
    config.http2 = true;
    config
}

async fn start(config: ServerConfig) -> (TestServer, Recorder) {
    let recorder = Recorder::default();
    let receiver =
        Receiver::builder(recorder.clone()).client_state(ClientState::new(STATE.to_owned()));
    (TestServer::start_with(receiver, config).await, recorder)
}

/// Graph's delivery: one whole request on a new connection. `true` if it got
/// its `202` within `within`.
async fn delivered(server: &TestServer, n: usize, within: Duration) -> bool {
    let body = envelope(vec![message_item("sub", STATE, n)]);
    matches!(
        tokio::time::timeout(within, post_json(&server.url("/"), body)).await,
        Ok(reply) if reply.status == 202
    )
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
    out.extend_from_slice(payload);
    out
}

/// An HTTP/2 client that opens no stream: the preface, SETTINGS, and then
/// only PINGs of its own (every `ping`) and acks of the server's.
async fn idle_h2(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(H2_PREFACE).await.unwrap();
    stream.write_all(&frame(SETTINGS, 0, &[])).await.unwrap();
    stream
}

#[derive(Debug, Default)]
struct H2Ending {
    goaway: bool,
    closed: bool,
}

/// Plays the idle HTTP/2 client until the server closes or `wait` passes.
async fn keep_h2_alive(mut stream: TcpStream, ping: Duration, wait: Duration) -> H2Ending {
    let mut ending = H2Ending::default();
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut tick = tokio::time::interval(ping);
    let mut chunk = [0u8; 4096];
    loop {
        tokio::select! {
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => {
                    ending.closed = true;
                    return ending;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            },
            _ = tick.tick() => {
                if stream.write_all(&frame(PING, 0, b"attacker")).await.is_err() {
                    ending.closed = true;
                    return ending;
                }
            }
            () = tokio::time::sleep_until(deadline) => return ending,
        }
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let payload: Vec<u8> = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            let answer = match (kind, flags & 1) {
                (PING, 0) => Some(frame(PING, 1, &payload)),
                (SETTINGS, 0) => Some(frame(SETTINGS, 1, &[])),
                (GOAWAY, _) => {
                    ending.goaway = true;
                    None
                }
                _ => None,
            };
            if let Some(answer) = answer {
                let _ = stream.write_all(&answer).await;
            }
        }
    }
}

#[tokio::test]
async fn idle_http2_connections_get_a_goaway_pings_or_not() {
    let mut config = patient(64);
    config.idle_timeout = Duration::from_millis(400);
    config.header_read_timeout = Duration::from_millis(400);
    let (server, _) = start(config).await;
    // Only the preface and SETTINGS; and one that also PINGs every 100 ms.
    let silent = idle_h2(server.addr).await;
    let pinging = idle_h2(server.addr).await;
    let (silent, pinging) = tokio::join!(
        keep_h2_alive(silent, Duration::from_secs(3600), Duration::from_secs(20)),
        keep_h2_alive(pinging, Duration::from_millis(100), Duration::from_secs(20)),
    );
    assert!(silent.goaway && silent.closed, "{silent:?}");
    assert!(
        pinging.goaway && pinging.closed,
        "PINGs keep nothing alive: {pinging:?}"
    );
    assert!(server.metrics.connections_closed_count("idle") >= 2);
}

#[tokio::test]
async fn a_flood_of_idle_http2_connections_does_not_lock_out_graph() {
    let (server, recorder) = start(patient(32)).await;
    let mut attackers = JoinSet::new();
    for _ in 0..40 {
        let stream = idle_h2(server.addr).await;
        attackers.spawn(keep_h2_alive(
            stream,
            Duration::from_millis(200),
            Duration::from_secs(60),
        ));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ok = 0;
    for n in 0..10 {
        if delivered(&server, n, Duration::from_secs(3)).await {
            ok += 1;
        }
    }
    assert_eq!(ok, 10, "every delivery gets its 202 beside the flood");
    recorder.wait_for(10).await;
    let shed = server.metrics.connections_closed_count("shed_capacity")
        + server.metrics.connections_closed_count("shed_peer");
    assert!(shed >= 10, "{shed}");
    attackers.abort_all();
}

/// Connects to `addr` from `from` (any address of 127.0.0.0/8).
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("loopback has all of 127/8");
    socket.connect(addr).await.unwrap()
}

/// Silent, dribbling and slow-body attackers that reconnect as soon as the
/// server closes them, until `stop`.
fn slow_attackers(addr: SocketAddr, n: usize, stop: &Arc<AtomicBool>) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for i in 0..n {
        let stop = stop.clone();
        set.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let mut sink = [0u8; 256];
                let dribble: &[u8] = match i % 3 {
                    0 => b"",
                    1 => b"POST / HTTP/1.1\r\nhost: x\r\nx-a: ",
                    _ => b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"value\":[",
                };
                let mut sent = 0;
                loop {
                    if sent < dribble.len()
                        && stream.write_all(&dribble[sent..=sent]).await.is_err()
                    {
                        break;
                    }
                    sent += 1;
                    // Until the server closes it: 0 bytes or an error.
                    match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut sink))
                        .await
                    {
                        Ok(Ok(0) | Err(_)) => break,
                        _ if stop.load(Ordering::Relaxed) => return,
                        _ => {}
                    }
                }
            }
        });
    }
    set
}

#[tokio::test]
async fn silent_and_slow_sockets_that_reconnect_do_not_starve_the_cap() {
    let (server, recorder) = start(patient(24)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = slow_attackers(server.addr, 24, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ok = 0;
    for n in 0..10 {
        if delivered(&server, n, Duration::from_secs(3)).await {
            ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    assert_eq!(ok, 10, "every delivery gets its 202 beside the attackers");
    recorder.wait_for(10).await;
    attackers.abort_all();
    while attackers.join_next().await.is_some() {}
}

#[tokio::test]
async fn one_peer_at_its_limit_gives_way_to_itself_not_to_others() {
    let mut config = patient(100);
    config.max_connections_per_peer = Some(3);
    let (server, _) = start(config).await;
    let mut other = connect_from([127, 0, 0, 3], server.addr).await;
    let mut first = connect_from([127, 0, 0, 2], server.addr).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut rest = Vec::new();
    for _ in 0..3 {
        rest.push(connect_from([127, 0, 0, 2], server.addr).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The peer's fourth connection took the place of its own oldest…
    assert!(closed_within(&mut first, Duration::from_secs(5)).await);
    // …not that of the other peer, older still.
    assert!(!closed_within(&mut other, Duration::from_millis(300)).await);
    for stream in &mut rest {
        assert!(!closed_within(stream, Duration::from_millis(50)).await);
    }
    assert_eq!(server.metrics.connections_closed_count("shed_peer"), 1);
    assert_eq!(server.metrics.connections_closed_count("shed_capacity"), 0);
}

async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut sink = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut sink)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn headers_and_body_share_one_deadline() {
    let mut config = patient(16);
    config.request_timeout = Duration::from_millis(1500);
    // The body's own deadline is far off: only the shared one can answer
    // 408 while the test waits.
    let mut limits = msgraph_webhooks::listener::Limits::default();
    limits.body_timeout = Duration::from_secs(600);
    let receiver = Receiver::builder(Recorder::default())
        .client_state(ClientState::new(STATE.to_owned()))
        .limits(limits);
    let server = TestServer::start_with(receiver, config).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // 1 s of dribbled headers, then a body that never finishes: the
    // deadline counts from the connection, not from the end of the headers.
    for byte in b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n" {
        stream.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stream.write_all(b"\r\n{\"value\":").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn h2c_is_off_unless_asked_for() {
    let recorder = Recorder::default();
    let receiver =
        Receiver::builder(recorder.clone()).client_state(ClientState::new(STATE.to_owned()));
    let server = TestServer::start(receiver).await;
    let mut request = H2_PREFACE.to_vec();
    request.extend_from_slice(&frame(SETTINGS, 0, &[]));
    let answer = raw(server.addr, &request, Duration::from_secs(10)).await;
    // No SETTINGS frame back: HTTP/1.1 refuses the preface (or just closes).
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 "),
        "{answer:?}"
    );
    // HTTP/1.1 still works.
    assert!(delivered(&server, 1, Duration::from_secs(10)).await);
}

/// A hostile sender must not turn the debug log into its own disk-filler:
/// one line per delivery, however many items it drops.
#[tokio::test]
async fn dropped_items_are_logged_once_per_delivery() {
    use crate::support::cli::Process;

    let mut process = Process::spawn(
        &["listen", "--addr", "127.0.0.1:0", "--memory"],
        &[
            ("MSGRAPH_WEBHOOKS_CLIENT_STATE", "right"),
            ("RUST_LOG", "msgraph_webhooks=debug"),
        ],
    );
    let addr = process.listening_addr().await;
    for delivery in 0..3 {
        let items = (0..200)
            .map(|n| message_item("sub", "wrong", delivery * 1000 + n))
            .collect();
        let reply = post_json(&format!("http://{addr}/"), envelope(items)).await;
        assert_eq!(reply.status, 202);
    }
    let stderr = process.stderr.as_mut().unwrap();
    let mut lines = 0;
    let mut last = String::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(2), stderr.next_line()).await
    {
        if line.contains("dropping item") {
            lines += 1;
            last = line;
        }
    }
    assert_eq!(lines, 3, "one line per delivery");
    assert!(last.contains("client_state_mismatch=200"), "{last}");
    process.terminate();
}

/// A path to something huge (a device, a log) fails clearly, without
/// reading it all into memory.
#[test]
fn oversized_key_jwks_and_capture_files_are_refused() {
    use crate::support::cli::BIN;

    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge");
    let file = std::fs::File::create(&huge).unwrap();
    file.set_len(17 * 1024 * 1024).unwrap();
    let huge = huge.to_str().unwrap();
    let key = format!("k={huge}");
    let runs: [&[&str]; 3] = [
        &["inspect", huge, "--insecure-skip-token-validation"],
        &[
            "inspect",
            "-",
            "--key",
            &key,
            "--insecure-skip-token-validation",
        ],
        &[
            "listen",
            "--memory",
            "--allow-any-client-state",
            "--addr",
            "127.0.0.1:0",
            "--key",
            concat!("k=", env!("CARGO_MANIFEST_DIR"), "/../certs/dev.pem"),
            "--app-id",
            "a",
            "--jwks",
            huge,
        ],
    ];
    for args in runs {
        let output = std::process::Command::new(BIN)
            .args(args)
            .env("MSGRAPH_WEBHOOKS_ADMIN_ADDR", "off")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains("larger than 16 MiB"), "{args:?}: {stderr}");
    }
}

/// Rejections show at the default log level — the first of each reason at
/// once, the rest summed up — and each one with --log-rejections.
#[tokio::test]
async fn rejections_are_visible_at_the_default_level_without_flooding_it() {
    use crate::support::cli::Process;

    for (flag, expected) in [(None, 1), (Some("--log-rejections"), 60)] {
        let mut args = vec!["listen", "--addr", "127.0.0.1:0", "--memory"];
        args.extend(flag);
        let mut process = Process::spawn(&args, &[("MSGRAPH_WEBHOOKS_CLIENT_STATE", "right")]);
        let addr = process.listening_addr().await;
        for delivery in 0..3 {
            let items = (0..20)
                .map(|n| message_item("sub-of-mine", "wrong", delivery * 100 + n))
                .collect();
            let reply = post_json(&format!("http://{addr}/"), envelope(items)).await;
            assert_eq!(reply.status, 202);
        }
        let stderr = process.stderr.as_mut().unwrap();
        let mut lines = Vec::new();
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(2), stderr.next_line()).await
        {
            if line.contains("item rejected") {
                lines.push(line);
            }
        }
        assert_eq!(lines.len(), expected, "{flag:?}: {lines:?}");
        assert!(lines[0].contains("WARN"), "{}", lines[0]);
        assert!(lines[0].contains("client_state_mismatch"), "{}", lines[0]);
        assert!(lines[0].contains("sub-of-mine"), "{}", lines[0]);
        assert!(
            !lines[0].contains("wrong"),
            "never the clientState: {}",
            lines[0]
        );
        process.terminate();
    }
}

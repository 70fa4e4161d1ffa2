//! `msgraph-webhooks listen` as a process: output contract and SIGTERM drain.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::cli::Process;
use crate::support::http::post_json;
use crate::support::{envelope, message_item};

const STATE: &str = "cli-secret";

/// `listen` with the default (durable) store in a directory of its own.
fn listen(data: &tempfile::TempDir) -> Process {
    Process::spawn(
        &["listen", "--addr", "127.0.0.1:0", "--drain-secs", "10"],
        &[
            ("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE),
            ("MSGRAPH_WEBHOOKS_DATA_DIR", data.path().to_str().unwrap()),
        ],
    )
}

#[tokio::test]
async fn listen_prints_one_json_line_per_event() {
    let data = tempfile::tempdir().unwrap();
    let mut process = listen(&data);
    let addr = process.listening_addr().await;
    let admin = process.admin_addr().await;
    let reply = post_json(
        &format!("http://{addr}/"),
        envelope(vec![
            message_item("sub-1", STATE, 1),
            message_item("sub-1", "wrong", 2),
        ]),
    )
    .await;
    assert_eq!(reply.status, 202);
    let line = process.next_stdout(Duration::from_secs(10)).await;
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["kind"], "change");
    assert_eq!(event["id"], "notification-1", "the notification's own id");
    assert_eq!(event["subscriptionId"], "sub-1");
    assert_eq!(
        event["subscriptionExpirationDateTime"],
        "2026-03-19T22:11:09.952Z"
    );
    assert_eq!(event["changeType"], "created");
    assert_eq!(event["resourceKind"], "message");
    assert_eq!(event["tenantId"], "84bd8158-6d4d-4958-8b9f-9d6445542f95");
    assert_eq!(event["resourceData"]["id"], "AAMk1");
    assert_eq!(event["data"], serde_json::Value::Null);

    let health =
        crate::support::http::request("GET", &format!("http://{addr}/healthz"), None, "").await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    // The item is printed before the store records it done: poll until the
    // depth gauge catches up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let metrics =
            crate::support::http::request("GET", &format!("http://{admin}/metrics"), None, "")
                .await;
        let text = metrics.text();
        if text.contains("msgraph_webhooks_inbox_depth 0") || tokio::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for expected in [
        "msgraph_webhooks_deliveries_total{outcome=\"accepted\"} 1",
        "msgraph_webhooks_items_accepted_total{kind=\"change\"} 1",
        "msgraph_webhooks_items_rejected_total{reason=\"client_state_mismatch\"} 1",
        "msgraph_webhooks_ack_seconds_count 1",
        "msgraph_webhooks_inbox_depth 0",
        "msgraph_webhooks_handler_calls_total{outcome=\"ok\"} 1",
    ] {
        assert!(text.contains(expected), "{expected} in\n{text}");
    }
    // The notification port tells nobody about what it refused.
    let hidden =
        crate::support::http::request("GET", &format!("http://{addr}/metrics"), None, "").await;
    assert_eq!(
        hidden.status, 405,
        "GET /metrics on the endpoint is like any other path"
    );
    assert!(hidden.text().is_empty());
    process.terminate();
    let status = tokio::time::timeout(Duration::from_secs(20), process.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

/// With `--memory` the workers drain the inbox at SIGTERM: what is left
/// would be lost. (A durable store keeps its backlog for the next start:
/// `backlog.rs`.)
#[tokio::test]
async fn sigterm_stops_accepting_finishes_in_flight_requests_and_drains() {
    let mut process = Process::spawn(
        &[
            "listen",
            "--addr",
            "127.0.0.1:0",
            "--drain-secs",
            "10",
            "--memory",
        ],
        &[("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE)],
    );
    let addr = process.listening_addr().await;

    // Items accepted before the signal.
    let items = (0..50).map(|n| message_item("sub-1", STATE, n)).collect();
    assert_eq!(
        post_json(&format!("http://{addr}/"), envelope(items))
            .await
            .status,
        202
    );

    // A request in flight when the signal arrives: headers and half the body,
    // on a keep-alive connection the server has already served (a connection
    // still waiting in the accept backlog would be reset by the closing
    // listener, not drained).
    let body = envelope(vec![message_item("sub-1", STATE, 999)]);
    let (first, second) = body.as_bytes().split_at(body.len() / 2);
    let mut in_flight = TcpStream::connect(addr).await.unwrap();
    in_flight
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut served = Vec::new();
    while !served.ends_with(b"\r\n\r\nok\n") {
        let mut chunk = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(10), in_flight.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the connection stays open");
        served.extend_from_slice(&chunk[..n]);
    }
    assert!(served.starts_with(b"HTTP/1.1 200"));
    in_flight
        .write_all(
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    in_flight.write_all(first).await.unwrap();

    process.terminate();
    // New connections are refused once shutdown began.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener closed within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The in-flight request still completes and is acknowledged.
    in_flight.write_all(second).await.unwrap();
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), in_flight.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 202"));
    drop(in_flight);

    // Every acknowledged item is printed before the process exits.
    let mut ids = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(
        Duration::from_secs(20),
        process.stdout.as_mut().unwrap().next_line(),
    )
    .await
    .unwrap()
    {
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        ids.push(event["resourceData"]["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 51, "{ids:?}");
    assert!(ids.contains(&"AAMk999".to_owned()));
    let status = tokio::time::timeout(Duration::from_secs(20), process.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn listen_refuses_to_run_unauthenticated() {
    let mut process = Process::spawn(&["listen", "--addr", "127.0.0.1:0"], &[]);
    let status = tokio::time::timeout(Duration::from_secs(20), process.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success());
    let mut stderr = String::new();
    while let Ok(Some(line)) = process.stderr.as_mut().unwrap().next_line().await {
        stderr.push_str(&line);
    }
    assert!(stderr.contains("--client-state"), "{stderr}");
}

//! Connection-level limits: a slow or hostile client cannot starve others.

use std::time::Duration;

use msgraph_webhooks::listener::{Limits, ServerConfig};
use msgraph_webhooks::{ClientState, Receiver};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::http::{post_json, raw};
use crate::support::{Recorder, TestServer, envelope, message_item};

fn config(header_timeout: Duration, max_connections: usize) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.header_read_timeout = header_timeout;
    config.max_connections = max_connections;
    config
}

/// Reads until the server closes the connection; `true` if it did within `wait`.
async fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut sink = Vec::new();
    matches!(
        tokio::time::timeout(wait, stream.read_to_end(&mut sink)).await,
        Ok(Ok(_)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn stalled_headers_are_cut_off() {
    let receiver = Receiver::builder(Recorder::default()).client_state(ClientState::new("s"));
    let server = TestServer::start_with(receiver, config(Duration::from_millis(300), 16)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    assert!(closed_by_server(&mut stream, Duration::from_secs(10)).await);
    // An idle connection that never sends anything is closed too.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    assert!(closed_by_server(&mut idle, Duration::from_secs(10)).await);
}

#[tokio::test]
async fn slow_clients_at_the_connection_cap_do_not_starve_others() {
    let recorder = Recorder::default();
    let receiver = Receiver::builder(recorder.clone()).client_state(ClientState::new("s"));
    let server = TestServer::start_with(receiver, config(Duration::from_millis(300), 2)).await;
    // Two slowloris connections take every slot…
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(b"POST / HTTP/1.1\r\nho").await.unwrap();
        slow.push(stream);
    }
    // …yet a well-behaved client gets through once the header timeout frees one.
    let reply = post_json(
        &server.url("/"),
        envelope(vec![message_item("sub", "s", 1)]),
    )
    .await;
    assert_eq!(reply.status, 202);
    recorder.wait_for(1).await;
}

#[tokio::test]
async fn a_body_that_never_finishes_gets_408() {
    let mut limits = Limits::default();
    limits.body_timeout = Duration::from_millis(300);
    let receiver = Receiver::builder(Recorder::default())
        .client_state(ClientState::new("s"))
        .limits(limits);
    let server = TestServer::start(receiver).await;
    let answer = raw(
        server.addr,
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"value\":",
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let receiver = Receiver::builder(Recorder::default()).client_state(ClientState::new("s"));
    let server = TestServer::start(receiver).await;
    let mut request = b"POST / HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..64 {
        request.extend_from_slice(format!("x-filler-{i}: {}\r\n", "a".repeat(1024)).as_bytes());
    }
    request.extend_from_slice(b"content-length: 0\r\n\r\n");
    let answer = raw(server.addr, &request, Duration::from_secs(10)).await;
    assert!(
        answer.is_empty()
            || answer.starts_with("HTTP/1.1 431")
            || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    // The server still serves.
    let reply = post_json(&server.url("/"), envelope(vec![])).await;
    assert_eq!(reply.status, 202);
}

#[tokio::test]
async fn a_silent_connection_does_not_hold_up_shutdown() {
    // Without the shutdown reaching connections that never sent a byte,
    // stopping would wait out this minute-long header deadline.
    let receiver = Receiver::builder(Recorder::default()).client_state(ClientState::new("s"));
    let server = TestServer::start_with(receiver, config(Duration::from_secs(60), 16)).await;
    let _silent = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tokio::time::timeout(Duration::from_secs(30), server.stop())
        .await
        .expect("shutdown does not wait for the silent connection's header deadline");
}

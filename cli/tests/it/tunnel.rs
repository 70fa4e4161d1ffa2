//! ngrok pairing against a fake agent API on loopback.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use msgraph_webhooks::tunnel::{NgrokAgent, TunnelError};

/// A stand-in for the ngrok agent's `GET /api/tunnels`, answering whatever
/// JSON the test puts in the cell.
async fn agent(tunnels: Arc<Mutex<serde_json::Value>>) -> SocketAddr {
    let app = Router::new().route(
        "/api/tunnels",
        get(move || {
            let tunnels = tunnels.clone();
            async move { axum::Json(tunnels.lock().unwrap().clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn tunnel(public_url: &str, proto: &str, addr: &str) -> serde_json::Value {
    serde_json::json!({"name": "command_line", "public_url": public_url, "proto": proto,
        "config": {"addr": addr, "inspect": true}})
}

#[tokio::test]
async fn finds_the_https_tunnel_of_the_port() {
    let tunnels = Arc::new(Mutex::new(serde_json::json!({"tunnels": [
        tunnel("http://abc.ngrok-free.app", "http", "http://localhost:8080"),
        tunnel("https://other.ngrok-free.app", "https", "http://localhost:3000"),
        tunnel("https://abc.ngrok-free.app", "https", "http://localhost:8080"),
    ], "uri": "/api/tunnels"})));
    let addr = agent(tunnels).await;
    let ngrok = NgrokAgent::new(format!("http://{addr}"));
    assert_eq!(
        ngrok.public_url(8080).await.unwrap(),
        "https://abc.ngrok-free.app"
    );
    assert_eq!(
        ngrok.public_url(3000).await.unwrap(),
        "https://other.ngrok-free.app"
    );
    match ngrok.public_url(9999).await {
        Err(TunnelError::NoTunnel { port, forwards }) => {
            assert_eq!(port, 9999);
            assert!(forwards.contains(&"http://localhost:3000".to_owned()));
        }
        other => panic!("expected NoTunnel, got {other:?}"),
    }
    let message = ngrok.public_url(9999).await.unwrap_err().to_string();
    assert!(message.contains("ngrok http 9999"), "{message}");
}

#[tokio::test]
async fn no_agent_and_odd_answers_are_explained() {
    let closed = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let error = NgrokAgent::new(format!("http://{closed}"))
        .public_url(8080)
        .await
        .unwrap_err();
    assert!(matches!(error, TunnelError::AgentUnreachable(_)));
    assert!(error.to_string().contains("ngrok http"), "{error}");

    let odd = agent(Arc::new(Mutex::new(
        serde_json::json!({"something": "else"}),
    )))
    .await;
    let error = NgrokAgent::new(format!("http://{odd}"))
        .public_url(8080)
        .await
        .unwrap_err();
    assert!(matches!(error, TunnelError::BadAnswer(_)), "{error:?}");
}

#[tokio::test]
async fn watching_follows_a_changed_url() {
    let tunnels = Arc::new(Mutex::new(serde_json::json!({"tunnels": [
        tunnel("https://first.ngrok-free.app", "https", "localhost:8080"),
    ]})));
    let addr = agent(tunnels.clone()).await;
    let mut url = NgrokAgent::new(format!("http://{addr}")).watch(8080, Duration::from_millis(50));
    let first = tokio::time::timeout(Duration::from_secs(10), url.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert_eq!(first.as_deref(), Some("https://first.ngrok-free.app"));

    // ngrok restarted with a new random domain.
    *tunnels.lock().unwrap() = serde_json::json!({"tunnels": [
        tunnel("https://second.ngrok-free.app", "https", "localhost:8080"),
    ]});
    let second = tokio::time::timeout(
        Duration::from_secs(10),
        url.wait_for(|u| u.as_deref() == Some("https://second.ngrok-free.app")),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert_eq!(second.as_deref(), Some("https://second.ngrok-free.app"));

    // The agent stopped: the URL is gone.
    *tunnels.lock().unwrap() = serde_json::json!({"tunnels": []});
    tokio::time::timeout(Duration::from_secs(10), url.wait_for(Option::is_none))
        .await
        .unwrap()
        .unwrap();
}

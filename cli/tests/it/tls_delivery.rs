//! The emulator delivering over HTTPS to `listen --tls-cert/--tls-key`:
//! `emulate --https` writes a receiver certificate signed by its local CA,
//! and its deliveries trust that CA; a receiver certificate of any other CA
//! fails the handshake, so the create is refused as Graph refuses it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use msgraph_webhooks::emulator::{DeliveryKind, Emulator, Outcome};
use serde_json::{Value, json};

use crate::support::cli::Process;
use crate::support::graph::APP;

const STATE: &str = "secretClientValue";

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

/// A client that trusts this CA only.
fn trusting(ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem).unwrap()])
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `listen` over TLS with these files; its address.
async fn listen(cert: &Path, key: &Path) -> (Process, SocketAddr) {
    let mut listen = Process::spawn(
        &[
            "listen",
            "--addr",
            "127.0.0.1:0",
            "--memory",
            "--tls-cert",
            path_str(cert),
            "--tls-key",
            path_str(key),
        ],
        &[("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE)],
    );
    let line = listen.wait_for_log("listening").await;
    assert!(line.contains("tls=on"), "{line}");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("local="))
        .unwrap()
        .parse()
        .unwrap();
    listen.drain_stderr("listen");
    (listen, addr)
}

/// An app token from the emulator's token endpoint at `base`.
async fn token(client: &reqwest::Client, base: &str) -> String {
    crate::support::graph::client_token(client, base, APP).await
}

/// `POST /v1.0/subscriptions` for Ada's messages to `url`: status and body.
async fn create(client: &reqwest::Client, base: &str, token: &str, url: &str) -> (u16, Value) {
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::minutes(50))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let answer = client
        .post(format!("{base}/v1.0/subscriptions"))
        .bearer_auth(token)
        .json(&json!({
            "changeType": "created",
            "notificationUrl": url,
            "resource": "users/ada/messages",
            "expirationDateTime": expires,
            "clientState": STATE,
        }))
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// The two paths of the "listen --tls-cert A --tls-key B" hint in a log line.
fn hinted_files(line: &str) -> (PathBuf, PathBuf) {
    let after = |flag: &str| {
        let rest = line.split(flag).nth(1).expect("the flag in the hint");
        PathBuf::from(rest.split_whitespace().next().unwrap().trim_matches('"'))
    };
    (after("--tls-cert "), after("--tls-key "))
}

#[tokio::test]
async fn tls_delivery_emulate_https_delivers_to_listen_with_its_receiver_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let mut emulate = Process::spawn(
        &[
            "emulate",
            "--addr",
            "127.0.0.1:0",
            "--https",
            "--tls-dir",
            path_str(&tls),
        ],
        &[],
    );
    let addr = emulate.listening_addr().await;
    let hint = emulate.wait_for_log("listen --tls-cert").await;
    let (cert, key) = hinted_files(&hint);
    assert_eq!(
        (cert.as_path(), key.as_path()),
        (
            tls.join("receiver.pem").as_path(),
            tls.join("receiver-key.pem").as_path()
        ),
        "{hint}"
    );
    emulate.drain_stderr("emulate");
    let (mut listen, receiver) = listen(&cert, &key).await;

    let base = format!("https://{addr}");
    let client = trusting(&std::fs::read(tls.join("ca.pem")).unwrap());
    let token = token(&client, &base).await;
    let url = format!("https://127.0.0.1:{}/", receiver.port());
    let (status, created) = create(&client, &base, &token, &url).await;
    assert_eq!(status, 201, "{created:#}");

    let fired = client
        .post(format!("{base}/emulator/changes"))
        .json(&json!({"resource": "users/ada/messages/m1", "changeType": "created"}))
        .send()
        .await
        .unwrap();
    assert!(fired.status().is_success(), "{}", fired.status());
    let line: Value =
        serde_json::from_str(&listen.next_stdout(Duration::from_secs(20)).await).unwrap();
    assert_eq!(line["kind"], "change", "{line:#}");
    assert_eq!(line["subscriptionId"], created["id"]);
    // Graph's spelling of an Outlook item's resource.
    assert_eq!(line["resource"], "Users/ada/Messages/m1");

    // The emulator logs a delivery once its answer is in: poll for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let deliveries: Value = client
            .get(format!("{base}/emulator/deliveries"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let delivered: Vec<&str> = deliveries["value"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["url"] == url.as_str() && d["outcome"] == "delivered")
            .filter_map(|d| d["kind"].as_str())
            .collect();
        if delivered.contains(&"validation") && delivered.contains(&"notification") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the handshake and the notification, delivered over HTTPS: {deliveries:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    listen.terminate();
    emulate.terminate();
    assert!(listen.child.wait().await.unwrap().success());
    assert!(emulate.child.wait().await.unwrap().success());
}

#[tokio::test]
async fn tls_delivery_a_receiver_certificate_of_another_ca_fails_the_handshake() {
    let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let emulator = Emulator::builder()
        .https(ours.path())
        .start()
        .await
        .unwrap();
    let other = Emulator::builder()
        .https(theirs.path())
        .start()
        .await
        .unwrap();
    // The receiver's certificate is the other emulator's CA's.
    let issued = other.issue_server_certificate(&["127.0.0.1"]).unwrap();
    let (cert, key) = (
        theirs.path().join("hook.pem"),
        theirs.path().join("hook-key.pem"),
    );
    issued.write(&cert, &key).unwrap();
    let (mut listen, receiver) = listen(&cert, &key).await;
    let url = format!("https://127.0.0.1:{}/", receiver.port());

    let client = trusting(emulator.ca_pem().unwrap());
    let token = emulator.app_token(APP);
    let (status, refused) = create(&client, emulator.url(), &token, &url).await;
    assert_eq!(status, 400, "{refused:#}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("validation request failed"),
        "{refused:#}"
    );
    let handshake = emulator
        .deliveries()
        .into_iter()
        .find(|d| d.url == url)
        .expect("the handshake was tried");
    assert_eq!(handshake.kind, DeliveryKind::Validation);
    assert_eq!(handshake.outcome, Outcome::Unreachable);
    assert_eq!(
        handshake.status, None,
        "no HTTP answer: the TLS handshake failed"
    );
    assert!(emulator.subscription_ids().is_empty());

    // The same receiver passes with the emulator whose CA signed it.
    let client = trusting(other.ca_pem().unwrap());
    let (status, created) = create(&client, other.url(), &other.app_token(APP), &url).await;
    assert_eq!(status, 201, "{created:#}");
    listen.terminate();
    assert!(listen.child.wait().await.unwrap().success());
}

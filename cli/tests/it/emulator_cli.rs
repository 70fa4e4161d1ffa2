//! `msgraph-webhooks emulate` and `msgraph-webhooks demo`, run as a user runs them.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::cli::Process;
use crate::support::graph::{Answering, Hook};

#[tokio::test]
async fn demo_runs_to_completion_and_exits_zero() {
    let mut demo = Process::spawn(&["demo"], &[]);
    let mut lines = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        let stdout = demo.stdout.as_mut().unwrap();
        while let Ok(Some(line)) = stdout.next_line().await {
            lines.push(line);
        }
    })
    .await;
    assert!(read.is_ok(), "the demo ends within a minute: {lines:#?}");
    let status = tokio::time::timeout(Duration::from_secs(10), demo.child.wait())
        .await
        .unwrap()
        .unwrap();
    let text = lines.join("\n");
    assert!(status.success(), "exit {status:?}\n{text}");
    for expected in [
        "subscribe  basic  me/mailFolders('Inbox')/messages",
        "subscribe  rich   chats/19:demo@thread.v2/messages",
        "handshake passed",
        "event      lifecycle  reauthorizationRequired",
        "/reauthorize → 204",
        "event      change     created  chatMessage  chats('19:demo@thread.v2')/messages('1616990032035')",
        "subscriptions  2 (1 basic, 1 rich)",
        "decrypted, validation token verified: {\"body\":{\"contentType\":\"text\",\"content\":\"Hello from the demo\"}",
        "4 typed events handed to the handler",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("event      change     ") && l.contains(" message "))
            .count(),
        2,
        "{text}"
    );
}

#[tokio::test]
async fn emulate_serves_the_local_graph_until_terminated() {
    let mut emulator = Process::spawn(&["emulate", "--addr", "127.0.0.1:0"], &[]);
    let addr = emulator.listening_addr().await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();

    let token = &crate::support::graph::client_token(&client, &base, "cli-test").await;
    let hook = Hook::start(Answering::Well).await;
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::hours(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let created = client
        .post(format!("{base}/v1.0/subscriptions"))
        .bearer_auth(token)
        .json(&json!({
            "changeType": "created",
            "notificationUrl": hook.url("/n"),
            "resource": "users/u1/messages",
            "expirationDateTime": expires,
            "clientState": "secretClientValue",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let fired: Value = client
        .post(format!("{base}/emulator/changes"))
        .json(&json!({"resource": "users/u1/messages", "changeType": "created", "data": {"id": "AAMk1"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fired["items"], 1);
    let item = hook.wait_items(1).await.remove(0);
    assert_eq!(item["resource"], "Users/u1/Messages/AAMk1");

    emulator.terminate();
    let status = tokio::time::timeout(Duration::from_secs(20), emulator.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn emulate_refuses_a_taken_port() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut emulator = Process::spawn(&["emulate", "--addr", &addr], &[]);
    let status = tokio::time::timeout(Duration::from_secs(20), emulator.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success());
    let mut stderr = Vec::new();
    let lines = emulator.stderr.as_mut().unwrap();
    while let Ok(Some(line)) = lines.next_line().await {
        stderr.push(line);
    }
    assert!(
        stderr
            .iter()
            .any(|l| l.contains(&format!("cannot listen on {addr}"))),
        "{stderr:?}"
    );
}

/// The README's claim: a receiver checks the emulator's tokens by pointing
/// `--jwks` at it and nothing else. `emulate` and `listen` as processes, a
/// rich subscription, and the decrypted resource on listen's stdout.
#[tokio::test]
async fn listen_decrypts_and_verifies_what_emulate_sends() {
    const APP: &str = "11111111-2222-3333-4444-555555555555";
    let mut emulator = Process::spawn(
        &["emulate", "--addr", "127.0.0.1:0", "--token-version", "v2"],
        &[],
    );
    let base = format!("http://{}", emulator.listening_addr().await);

    let dir = tempfile::tempdir().unwrap();
    let certificate = msgraph_webhooks::crypto::generate_certificate("cli test", 2048, 1).unwrap();
    let pem = dir.path().join("key.pem");
    std::fs::write(&pem, certificate.key_and_certificate_pem().as_slice()).unwrap();
    let key = format!("cli-cert={}", pem.display());
    let jwks = format!("{base}/common/discovery/v2.0/keys");
    let mut listen = Process::spawn(
        &[
            "listen",
            "--addr",
            "127.0.0.1:0",
            "--memory",
            "--client-state",
            "secretClientValue",
            "--key",
            &key,
            "--app-id",
            APP,
            "--jwks",
            &jwks,
        ],
        &[],
    );
    let receiver = listen.listening_addr().await;

    let client = reqwest::Client::new();
    let token = crate::support::graph::client_token(&client, &base, APP).await;
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::minutes(50))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let created = client
        .post(format!("{base}/v1.0/subscriptions"))
        .bearer_auth(&token)
        .json(&json!({
            "changeType": "created",
            "notificationUrl": format!("http://{receiver}/"),
            "resource": "teams/t1/channels/c1/messages",
            "expirationDateTime": expires,
            "clientState": "secretClientValue",
            "includeResourceData": true,
            "encryptionCertificate": certificate.encryption_certificate(),
            "encryptionCertificateId": "cli-cert",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    client
        .post(format!("{base}/emulator/changes"))
        .json(&json!({
            "resource": "teams/t1/channels/c1/messages",
            "changeType": "created",
            "data": {"id": "42", "channelIdentity": {"teamId": "t1", "channelId": "c1"},
                     "body": {"content": "over the wire"}}
        }))
        .send()
        .await
        .unwrap();
    let line: Value =
        serde_json::from_str(&listen.next_stdout(Duration::from_secs(20)).await).unwrap();
    assert_eq!(line["kind"], "change");
    assert_eq!(line["resourceKind"], "chatMessage");
    assert_eq!(
        line["resource"],
        "teams('t1')/channels('c1')/messages('42')"
    );
    assert_eq!(line["data"]["body"]["content"], "over the wire");
    listen.terminate();
    emulator.terminate();
}

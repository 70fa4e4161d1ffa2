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

    let token: Value = client
        .post(format!("{base}/common/oauth2/v2.0/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_id=cli-test&client_secret=s&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap();
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

//! The subscription commands as a new user runs them: `emulate` in one
//! process, `listen --subscribe` or `subscribe` in another; `permissions`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::cli::{BIN, Process};
use crate::support::graph::{APP, Answering, Hook};

const TENANT: &str = msgraph_webhooks::emulator::DEFAULT_TENANT_ID;

/// A free port on 127.0.0.1 (bound, then released for the process to take).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) async fn emulate() -> (Process, String) {
    let mut emulator = Process::spawn(&["emulate", "--addr", "127.0.0.1:0"], &[]);
    let base = format!("http://{}", emulator.listening_addr().await);
    emulator.drain_stderr("emulate");
    (emulator, base)
}

pub(crate) fn graph_flags(base: &str) -> Vec<String> {
    vec![
        "--graph-url".into(),
        format!("{base}/v1.0"),
        "--token-url".into(),
        format!("{base}/{{tenant}}/oauth2/v2.0/token"),
        "--tenant-id".into(),
        TENANT.into(),
        "--client-id".into(),
        APP.into(),
    ]
}

pub(crate) async fn subscriptions(base: &str) -> Vec<Value> {
    let answer: Value = reqwest::get(format!("{base}/emulator/subscriptions"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["value"].as_array().cloned().unwrap_or_default()
}

pub(crate) async fn fire(base: &str, resource: &str) {
    let status = reqwest::Client::new()
        .post(format!("{base}/emulator/changes"))
        .json(&json!({"resource": resource, "changeType": "created"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
}

pub(crate) async fn exit_code(process: &mut Process) -> i32 {
    tokio::time::timeout(Duration::from_secs(30), process.child.wait())
        .await
        .expect("the process exits")
        .unwrap()
        .code()
        .unwrap_or(-1)
}

#[tokio::test]
async fn permissions_names_the_kind_and_least_privileged_permissions() {
    let output = tokio::process::Command::new(BIN)
        .args(["permissions", "me/mailFolders('Inbox')/messages"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    for line in [
        "kind: message",
        "delegated (work or school account): Mail.ReadBasic (also accepted: Mail.Read)",
        "delegated (personal Microsoft account): Mail.ReadBasic",
        "application: Mail.Read",
        "max lifetime: 10080 minutes (1440 with resource data)",
    ] {
        assert!(stdout.contains(line), "{line:?} in {stdout}");
    }

    let output = tokio::process::Command::new(BIN)
        .args(["permissions", "communications/callRecords"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("kind: callRecord"), "{stdout}");
    assert!(
        stdout.contains("delegated (work or school account): not supported"),
        "{stdout}"
    );
    assert!(
        stdout.contains("application: CallRecords.Read.All"),
        "{stdout}"
    );

    let output = tokio::process::Command::new(BIN)
        .args(["permissions", "users/ada/favouriteColours"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("does not support subscriptions"),
        "{stderr}"
    );
}

/// `permissions` says which delta query resyncs a resource, or why none does.
#[tokio::test]
async fn permissions_shows_the_delta_query_or_why_there_is_none() {
    let run = |resource: &'static str| async move {
        let output = tokio::process::Command::new(BIN)
            .args(["permissions", resource])
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{resource}");
        String::from_utf8(output.stdout).unwrap()
    };
    let cases = [
        (
            "me/mailFolders('Inbox')/messages",
            "delta query: GET me/mailFolders('Inbox')/messages/delta",
        ),
        ("users", "delta query: GET users/delta"),
        (
            "users/ada@contoso.com/events",
            "delta query: GET users/ada@contoso.com/calendarView/delta (with startDateTime",
        ),
        ("drives/b!x/root", "delta query: GET drives/b!x/root/delta"),
        (
            "users/ada@contoso.com/messages",
            "delta query: none (messages have a delta query per mail folder only",
        ),
        (
            "communications/callRecords",
            "delta query: none (Graph has no delta query for this kind of resource)",
        ),
    ];
    for (resource, line) in cases {
        let stdout = run(resource).await;
        assert!(stdout.contains(line), "{line:?} in {stdout}");
    }
    let stdout = run("me/mailFolders('Inbox')/messages").await;
    assert!(
        stdout.contains("delta permissions: Mail.ReadBasic (delegated), Mail.ReadBasic.All (application); https://learn.microsoft.com/graph/api/message-delta"),
        "{stdout}"
    );
}

/// The README's local test: emulator in one terminal, `listen --subscribe`
/// in another; events arrive; Ctrl-C deletes the subscription.
#[tokio::test]
async fn listen_subscribe_against_emulate() {
    let (emulator, base) = emulate().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let public = format!("http://{addr}");
    let mut args: Vec<String> = vec![
        "listen".into(),
        "--addr".into(),
        addr.clone(),
        "--memory".into(),
        "--subscribe".into(),
        "users/ada@contoso.com/messages:created,updated".into(),
        "--subscribe".into(),
        "users:updated".into(),
        "--public-url".into(),
        public.clone(),
    ];
    args.extend(graph_flags(&base));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut listen = Process::spawn(&args, &[("MSGRAPH_WEBHOOKS_CLIENT_SECRET", "s3cret")]);
    let mut log = listen.log_until("activity=created").await;
    log.extend(listen.log_until("activity=created").await);
    listen.drain_stderr("listen");
    // Alone on its store, it never thinks another instance manages them.
    assert!(
        !log.iter().any(|l| l.contains("another live instance")),
        "{log:#?}"
    );
    let live = subscriptions(&base).await;
    assert_eq!(live.len(), 2, "{live:?}");
    for s in &live {
        assert_eq!(s["notificationUrl"], format!("{public}/"));
        assert_eq!(s["lifecycleNotificationUrl"], format!("{public}/lifecycle"));
    }

    fire(&base, "users/ada@contoso.com/messages/AAMk1").await;
    let line: Value =
        serde_json::from_str(&listen.next_stdout(Duration::from_secs(20)).await).unwrap();
    assert_eq!(line["kind"], "change");
    assert_eq!(line["resourceKind"], "message");
    assert_eq!(line["resource"], "Users/ada@contoso.com/Messages/AAMk1");
    let ids: Vec<&str> = live.iter().filter_map(|s| s["id"].as_str()).collect();
    assert!(ids.contains(&line["subscriptionId"].as_str().unwrap()));

    // A forged POST with a guessed clientState is dropped (each subscription has its own).
    let forged = json!({"value": [{
        "subscriptionId": line["subscriptionId"], "clientState": "guess", "changeType": "created",
        "resource": "users/ada@contoso.com/messages/forged", "tenantId": TENANT,
        "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z"}]});
    let status = reqwest::Client::new()
        .post(format!("{public}/"))
        .json(&forged)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    fire(&base, "users/ada@contoso.com/messages/AAMk2").await;
    let line: Value =
        serde_json::from_str(&listen.next_stdout(Duration::from_secs(20)).await).unwrap();
    assert_eq!(
        line["resource"], "Users/ada@contoso.com/Messages/AAMk2",
        "the forged item never arrives"
    );

    listen.terminate();
    assert_eq!(exit_code(&mut listen).await, 0);
    assert!(subscriptions(&base).await.is_empty(), "deleted on exit");
    emulator.terminate();
}

/// A stand-in for the ngrok agent's `GET /api/tunnels`.
async fn agent(public_url: Arc<Mutex<String>>) -> String {
    let app = axum::Router::new().route(
        "/api/tunnels",
        axum::routing::get(move || {
            let url = public_url.lock().unwrap().clone();
            async move {
                axum::Json(
                    json!({"tunnels": [{"name": "command_line", "public_url": url,
                    "proto": "https", "config": {"addr": "http://localhost:8080"}}]}),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// `subscribe --public-url ngrok`: the tunnel's URL is found, followed when
/// it changes, and the subscription deleted on exit unless `--keep`.
#[tokio::test]
async fn subscribe_follows_the_ngrok_tunnel() {
    let (emulator, base) = emulate().await;
    let (first, second) = (
        Hook::start(Answering::After(Duration::ZERO)).await,
        Hook::start(Answering::After(Duration::ZERO)).await,
    );
    let tunnel = Arc::new(Mutex::new(first.url("")));
    let api = agent(tunnel.clone()).await;
    let mut args: Vec<String> = vec![
        "subscribe".into(),
        "users/ada/messages:created".into(),
        "--public-url".into(),
        "ngrok".into(),
        "--ngrok-api".into(),
        api,
        "--ngrok-poll-secs".into(),
        "0.1".into(),
        "--memory".into(),
    ];
    args.extend(graph_flags(&base));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut subscribe = Process::spawn(&args, &[("MSGRAPH_WEBHOOKS_CLIENT_SECRET", "s3cret")]);
    subscribe.drain_stderr("subscribe");
    let line = subscribe.next_stdout(Duration::from_secs(20)).await;
    assert!(line.starts_with("created "), "{line}");
    let live = subscriptions(&base).await;
    assert_eq!(live[0]["notificationUrl"], first.url("/"));

    // ngrok restarted: a new URL; the subscription moves to it.
    *tunnel.lock().unwrap() = second.url("");
    let mut moved = String::new();
    while !moved.starts_with("recreated") {
        moved = subscribe.next_stdout(Duration::from_secs(20)).await;
    }
    let live = subscriptions(&base).await;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["notificationUrl"], second.url("/"));
    assert_eq!(
        live[0]["lifecycleNotificationUrl"],
        second.url("/lifecycle")
    );
    fire(&base, "users/ada/messages/m1").await;
    assert_eq!(
        second.wait_items(1).await[0]["resource"],
        "Users/ada/Messages/m1"
    );

    subscribe.terminate();
    assert_eq!(exit_code(&mut subscribe).await, 0);
    assert!(subscriptions(&base).await.is_empty(), "deleted on exit");

    // With --keep, it stays.
    let mut keep: Vec<&str> = args.clone();
    keep.push("--keep");
    let mut kept = Process::spawn(&keep, &[("MSGRAPH_WEBHOOKS_CLIENT_SECRET", "s3cret")]);
    kept.drain_stderr("subscribe --keep");
    let line = kept.next_stdout(Duration::from_secs(20)).await;
    assert!(line.starts_with("created "), "{line}");
    kept.terminate();
    assert_eq!(exit_code(&mut kept).await, 0);
    assert_eq!(subscriptions(&base).await.len(), 1, "kept");
    emulator.terminate();
}

/// Refusals before anything is sent, with the rule and the fix; missing
/// Graph access explained.
#[tokio::test]
async fn subscribe_explains_what_is_wrong_without_sending() {
    let tripwire = Hook::start(Answering::Status(500)).await;
    let base = tripwire.url("");
    let run = |extra: Vec<String>, env: Vec<(&'static str, &'static str)>| async move {
        let output = tokio::process::Command::new(BIN)
            .args(extra)
            .env_remove("MSGRAPH_WEBHOOKS_CLIENT_SECRET")
            .envs(env)
            .output()
            .await
            .unwrap();
        (
            output.status.code(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    let secret = vec![("MSGRAPH_WEBHOOKS_CLIENT_SECRET", "s")];
    let mut args = vec![
        "subscribe".to_owned(),
        "users:created".to_owned(),
        "--public-url".to_owned(),
        "https://example.com/".to_owned(),
        "--memory".to_owned(),
    ];
    args.extend(graph_flags(&base));
    let (code, stderr) = run(args.clone(), secret.clone()).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("[change types of the resource]"),
        "{stderr}"
    );
    assert!(stderr.contains("use updated or deleted"), "{stderr}");

    args[1] = "users/ada/messages:created".to_owned();
    let mut long = args.clone();
    long.extend(["--lifetime-minutes".to_owned(), "20000".to_owned()]);
    let (code, stderr) = run(long, secret.clone()).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("10080 minutes") && stderr.contains("--clamp-lifetime"),
        "{stderr}"
    );

    let mut rich = args.clone();
    rich.push("--rich".to_owned());
    let (code, stderr) = run(rich, secret.clone()).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--rich needs a certificate"), "{stderr}");

    let (code, stderr) = run(args.clone(), vec![]).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("MSGRAPH_WEBHOOKS_CLIENT_SECRET"),
        "{stderr}"
    );

    let mut no_url = args.clone();
    no_url.drain(2..4);
    let (code, stderr) = run(no_url, secret).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--public-url"), "{stderr}");

    assert!(tripwire.captured().is_empty(), "nothing reached Graph");
}

/// An outage of the token endpoint is said to be one: the operator is not
/// sent to check credentials that are fine.
#[tokio::test]
async fn a_token_endpoint_outage_is_not_blamed_on_the_credentials() {
    let down = Hook::start(Answering::Status(503)).await;
    let base = down.url("");
    let mut args = vec![
        "subscribe".to_owned(),
        "users/ada/messages:created".to_owned(),
        "--public-url".to_owned(),
        "https://example.com/".to_owned(),
        "--memory".to_owned(),
    ];
    args.extend(graph_flags(&base));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut process = Process::spawn(&args, &[("MSGRAPH_WEBHOOKS_CLIENT_SECRET", "s")]);
    let line = process.wait_for_log("token endpoint").await;
    assert!(
        line.contains("unavailable") && line.contains("503"),
        "{line}"
    );
    assert!(!line.contains("--client-secret"), "{line}");
    assert!(!down.captured().is_empty(), "the token endpoint was asked");
    process.terminate();
}

/// A split deployment: `subscribe` keeps the subscriptions (each with a
/// clientState of its own, in the store), and a receiver-only `listen` on
/// the same store authenticates each item by its subscription's record.
#[tokio::test]
async fn a_receiver_only_listen_authenticates_by_the_stores_records() {
    let (emulator, base) = emulate().await;
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut listen = Process::spawn(
        &[
            "listen",
            "--addr",
            &addr,
            "--subscription-records",
            "--data-dir",
            dir,
        ],
        &[],
    );
    listen.listening_addr().await;
    listen.drain_stderr("listen");

    let mut args: Vec<String> = vec![
        "subscribe".into(),
        "users/ada@contoso.com/messages:created".into(),
        "--public-url".into(),
        format!("http://{addr}"),
        "--data-dir".into(),
        dir.into(),
    ];
    args.extend(graph_flags(&base));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut subscribe = Process::spawn(&args, &[("MSGRAPH_WEBHOOKS_CLIENT_SECRET", "s3cret")]);
    subscribe.wait_for_log("activity=created").await;
    subscribe.drain_stderr("subscribe");

    fire(&base, "users/ada@contoso.com/messages/AAMk1").await;
    let line: Value =
        serde_json::from_str(&listen.next_stdout(Duration::from_secs(20)).await).unwrap();
    assert_eq!(line["resource"], "Users/ada@contoso.com/Messages/AAMk1");
    let live = subscriptions(&base).await;
    assert_eq!(line["subscriptionId"], live[0]["id"]);

    // A guessed clientState for that subscription is still dropped.
    let forged = json!({"value": [{
        "subscriptionId": line["subscriptionId"], "clientState": "guess", "changeType": "created",
        "resource": "users/ada@contoso.com/messages/forged", "tenantId": TENANT,
        "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z"}]});
    let status = reqwest::Client::new()
        .post(format!("http://{addr}/"))
        .json(&forged)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    fire(&base, "users/ada@contoso.com/messages/AAMk2").await;
    let line: Value =
        serde_json::from_str(&listen.next_stdout(Duration::from_secs(20)).await).unwrap();
    assert_eq!(line["resource"], "Users/ada@contoso.com/Messages/AAMk2");

    subscribe.terminate();
    assert_eq!(exit_code(&mut subscribe).await, 0);
    listen.terminate();
    assert_eq!(exit_code(&mut listen).await, 0);
    emulator.terminate();
}

/// `emulate --time-scale 600` runs ten minutes a second; a manager planning
/// by the system clock would let the emulator expire its subscription. With
/// `--graph-clock` it renews on the emulator's time and keeps it alive.
#[tokio::test]
async fn listen_follows_the_emulators_scaled_clock() {
    let mut emulator = Process::spawn(
        &["emulate", "--addr", "127.0.0.1:0", "--time-scale", "600"],
        &[],
    );
    let base = format!("http://{}", emulator.listening_addr().await);
    emulator.drain_stderr("emulate");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args: Vec<String> = vec![
        "listen".into(),
        "--addr".into(),
        addr.clone(),
        "--memory".into(),
        "--subscribe".into(),
        "users/ada@contoso.com/messages:created".into(),
        "--lifetime-minutes".into(),
        "60".into(),
        "--public-url".into(),
        format!("http://{addr}"),
        "--graph-clock".into(),
        format!("{base}/emulator/clock"),
    ];
    args.extend(graph_flags(&base));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut listen = Process::spawn(&args, &[("MSGRAPH_WEBHOOKS_CLIENT_SECRET", "s3cret")]);
    listen.wait_for_log("activity=created").await;
    // 36 emulated minutes (60 % of the hour) are under 4 real seconds.
    listen.wait_for_log("activity=renewed").await;
    listen.drain_stderr("listen");
    // Two emulated hours later (12 s), well past the first hour's expiry,
    // the subscription is alive and delivers.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let live = subscriptions(&base).await;
    assert_eq!(live.len(), 1, "kept alive on the emulator's time: {live:?}");
    fire(&base, "users/ada@contoso.com/messages/AAMk1").await;
    // Hours passed, so the token's reauthorizationRequired challenges (which
    // the manager answers) are printed too: skip to the change.
    let line = loop {
        let line: Value =
            serde_json::from_str(&listen.next_stdout(Duration::from_secs(20)).await).unwrap();
        if line["kind"] == "change" {
            break line;
        }
    };
    // Outlook's spelling (Microsoft Learn, outlook-change-notifications-overview).
    assert_eq!(line["resource"], "Users/ada@contoso.com/Messages/AAMk1");
    listen.terminate();
    assert_eq!(exit_code(&mut listen).await, 0);
    emulator.terminate();
}

/// A declaration changed between `--keep` runs: the old subscription is
/// deleted (and says so), not left to deliver every change twice.
#[tokio::test]
async fn a_declaration_changed_between_kept_runs_leaves_one_subscription() {
    let (emulator, base) = emulate().await;
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut receiver = Process::spawn(
        &[
            "listen",
            "--addr",
            &addr,
            "--subscription-records",
            "--data-dir",
            dir,
        ],
        &[],
    );
    receiver.listening_addr().await;
    receiver.drain_stderr("listen");
    let run = |change_types: &str| {
        let mut args: Vec<String> = vec![
            "subscribe".into(),
            format!("users/ada@contoso.com/messages:{change_types}"),
            "--public-url".into(),
            format!("http://{addr}"),
            "--data-dir".into(),
            dir.into(),
            "--keep".into(),
        ];
        args.extend(graph_flags(&base));
        args
    };
    let first = run("created");
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let mut subscribe = Process::spawn(&first, &[("MSGRAPH_WEBHOOKS_CLIENT_SECRET", "s3cret")]);
    subscribe.wait_for_log("activity=created").await;
    subscribe.terminate();
    assert_eq!(exit_code(&mut subscribe).await, 0);
    let old = subscriptions(&base).await;
    assert_eq!(old.len(), 1, "kept: {old:?}");

    let second = run("created,updated");
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let mut subscribe = Process::spawn(&second, &[("MSGRAPH_WEBHOOKS_CLIENT_SECRET", "s3cret")]);
    subscribe.wait_for_log("activity=created").await;
    let line = subscribe.wait_for_log("no live instance declares").await;
    assert!(line.contains(old[0]["id"].as_str().unwrap()), "{line}");
    subscribe.drain_stderr("subscribe");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let live = loop {
        let live = subscriptions(&base).await;
        if live.len() == 1 || tokio::time::Instant::now() > deadline {
            break live;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0]["changeType"], "created,updated");
    subscribe.terminate();
    assert_eq!(exit_code(&mut subscribe).await, 0);
    receiver.terminate();
    emulator.terminate();
}

#[tokio::test]
async fn permissions_shows_the_quotas_of_the_kind() {
    let run = |resource: &'static str| async move {
        let output = tokio::process::Command::new(BIN)
            .args(["permissions", resource])
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{resource}");
        String::from_utf8(output.stdout).unwrap()
    };
    let mail = run("users/ada@contoso.com/messages").await;
    assert!(
        mail.contains("quotas (active subscriptions; over one, Graph answers 403): 1000 per mailbox (all apps)"),
        "{mail}"
    );
    let chat = run("chats/19:abc@thread.v2/messages").await;
    assert!(
        chat.contains("1 per app and chat, channel or team"),
        "{chat}"
    );
    assert!(
        chat.contains("10000 per organization (all apps), shared by all Teams resources"),
        "{chat}"
    );
    let drive = run("drives/b!x/root").await;
    assert!(!drive.contains("quotas"), "{drive}");
}

//! Separate roles on the embedded store: receivers that only ingest, workers
//! in another process, and the dead letters listed and replayed from the CLI
//! while a worker runs.

use std::sync::Arc;
use std::time::Duration;

use msgraph_webhooks::retry::RetryPolicy;
use msgraph_webhooks::store::DeadLetters as _;
use msgraph_webhooks::store::SqliteStore;
use msgraph_webhooks::{BoxError, ClientState, Receiver, handler_fn};

use crate::support::cli::Process;
use crate::support::http::post_json;
use crate::support::load::item;
use crate::support::{TestServer, envelope};

const STATE: &str = "roles-secret";

async fn run_to_end(args: &[&str]) -> (bool, Vec<String>) {
    let mut process = Process::spawn(args, &[]);
    process.drain_stderr("cli");
    let mut lines = Vec::new();
    let stdout = process.stdout.as_mut().unwrap();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .expect("the command finishes within 30 s")
    {
        lines.push(line);
    }
    let status = process.child.wait().await.unwrap();
    (status.success(), lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_only_receiver_feeds_a_worker_process() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let env = [
        ("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE),
        ("MSGRAPH_WEBHOOKS_DATA_DIR", dir),
    ];
    let mut receiver = Process::spawn(&["listen", "--addr", "127.0.0.1:0", "--workers", "0"], &env);
    let addr = receiver.listening_addr().await;
    receiver.drain_stderr("listen");
    let items = (0..20).map(|n| item(&format!("w-{n}"), STATE, 0)).collect();
    assert_eq!(
        post_json(&format!("http://{addr}/"), envelope(items))
            .await
            .status,
        202
    );

    // Nothing is handled until a worker runs…
    let mut worker = Process::spawn(&["work", "--workers", "2"], &env);
    let admin = worker.admin_addr().await;
    worker.drain_stderr("work");
    let mut ids = Vec::new();
    while ids.len() < 20 {
        let line = worker.next_stdout(Duration::from_secs(30)).await;
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        ids.push(event["resourceData"]["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    // …and the receiver keeps ingesting while it does.
    let more = envelope(vec![item("w-late", STATE, 0)]);
    assert_eq!(
        post_json(&format!("http://{addr}/"), more).await.status,
        202
    );
    let line = worker.next_stdout(Duration::from_secs(30)).await;
    assert!(line.contains("w-late"), "{line}");
    // The worker's own admin address: what it handled and dead-lettered is
    // visible in a split deployment too.
    // (Counted just after the handler printed: poll until it catches up.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let url = format!("http://{admin}/metrics");
        let text = crate::support::http::request("GET", &url, None, "")
            .await
            .text();
        if text.contains("msgraph_webhooks_handler_calls_total{outcome=\"ok\"} 21")
            || tokio::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        metrics.contains("msgraph_webhooks_handler_calls_total{outcome=\"ok\"} 21"),
        "{metrics}"
    );
    assert!(
        metrics.contains("msgraph_webhooks_dead_lettered_total 0"),
        "{metrics}"
    );
    worker.terminate();
    receiver.terminate();
    assert!(worker.child.wait().await.unwrap().success());
    assert!(receiver.child.wait().await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_from_the_cli() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    {
        // An app whose handler always fails: every item ends up dead.
        let store = Arc::new(SqliteStore::open(&dir).unwrap());
        let handler =
            handler_fn(|_event| async move { Err::<(), BoxError>("the CRM is down".into()) });
        let receiver = Receiver::builder(handler)
            .client_state(ClientState::new(STATE))
            .inbox(store.clone())
            .dedupe(store.clone())
            .dedupe_owner(store.consumer())
            .retry(RetryPolicy::new(2, Duration::from_millis(10)));
        let server = TestServer::start(receiver).await;
        let items = (0..3)
            .map(|n| item(&format!("dead-{n}"), STATE, 0))
            .collect();
        assert_eq!(
            post_json(&server.url("/"), envelope(items)).await.status,
            202
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while store.list(10).await.unwrap().len() < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "three dead letters within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.stop().await;
    }

    let (ok, lines) = run_to_end(&["dlq", "list", "--data-dir", &dir]).await;
    assert!(ok);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let letters: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for letter in &letters {
        assert_eq!(letter["attempts"], 2);
        assert!(
            letter["reason"]
                .as_str()
                .unwrap()
                .contains("the CRM is down")
        );
        assert_eq!(letter["item"]["changeType"], "created");
    }
    // The notification's own id, for whoever replays or reconciles by hand.
    let mut notification_ids: Vec<&str> = letters
        .iter()
        .map(|l| l["item"]["id"].as_str().unwrap())
        .collect();
    notification_ids.sort_unstable();
    assert_eq!(notification_ids, ["dead-0", "dead-1", "dead-2"]);

    // Ids that name nothing are errors, and nothing is replayed without ids
    // or --all.
    for bad in [vec!["99"], vec!["--", "-1"], vec![]] {
        let mut args = vec!["dlq", "replay", "--data-dir", &dir];
        args.extend(bad.iter().copied());
        let (ok, _) = run_to_end(&args).await;
        assert!(!ok, "{bad:?}");
    }
    let (_, lines) = run_to_end(&["dlq", "list", "--data-dir", &dir]).await;
    assert_eq!(lines.len(), 3, "nothing was replayed");

    // Replay one by id, then start a worker: it handles exactly that one.
    let first = letters[0]["id"].as_str().unwrap().to_owned();
    let (ok, lines) = run_to_end(&["dlq", "replay", "--data-dir", &dir, &first]).await;
    assert!(ok);
    assert_eq!(lines, ["1 dead letter(s) moved back into the inbox"]);
    let mut worker = Process::spawn(&["work", "--data-dir", &dir], &[]);
    worker.drain_stderr("work");
    let line = worker.next_stdout(Duration::from_secs(30)).await;
    assert!(line.contains("dead-0"), "{line}");

    // Replay the rest while the worker runs (another process, same store).
    let (ok, _) = run_to_end(&["dlq", "replay", "--data-dir", &dir, "--all"]).await;
    assert!(ok);
    let mut rest = vec![
        worker.next_stdout(Duration::from_secs(30)).await,
        worker.next_stdout(Duration::from_secs(30)).await,
    ];
    rest.sort();
    assert!(
        rest[0].contains("dead-1") && rest[1].contains("dead-2"),
        "{rest:?}"
    );
    let (_, lines) = run_to_end(&["dlq", "list", "--data-dir", &dir]).await;
    assert!(lines.is_empty());
    worker.terminate();
    assert!(worker.child.wait().await.unwrap().success());
}

/// Each command takes only the flags it uses: a flag that would mean
/// nothing there is refused, not silently ignored.
#[test]
fn flags_that_mean_nothing_on_a_command_are_refused() {
    use crate::support::cli::BIN;

    for args in [
        &["work", "--memory"][..],
        &["work", "--inbox-capacity", "5"],
        &["dlq", "list", "--memory"],
        &["dlq", "list", "--dedupe-hours", "5"],
        &["subscribe", "users:updated", "--inbox-capacity", "5"],
        &["subscribe", "users:updated", "--dedupe-hours", "5"],
    ] {
        let output = std::process::Command::new(BIN)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("unexpected argument"), "{args:?}: {stderr}");
    }
}

/// Each subcommand's help is about itself: `inspect` and `work` subscribe
/// to nothing.
#[test]
fn help_texts_speak_of_their_own_command() {
    use crate::support::cli::BIN;

    for command in ["inspect", "work"] {
        let output = std::process::Command::new(BIN)
            .args([command, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("--tenant-id"), "{command}: {help}");
        assert!(!help.contains("--subscribe"), "{command}: {help}");
    }
}

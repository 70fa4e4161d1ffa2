//! Nothing acknowledged is lost on PostgreSQL: receivers and workers on one
//! PostgreSQL killed with SIGKILL under load, a PostgreSQL of the test's
//! own stopped and started again mid-load; and `dlq` on a PostgreSQL schema.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use msgraph_webhooks::notification::ValidationTokens;
use msgraph_webhooks::store::{Inbox as _, PostgresConfig, PostgresStore, StoredItem};

use crate::durability::{Rng, STATE, WORKERS, assert_delivered, started, wait_until};
use crate::support::cli::Process;
use crate::support::load::{Load, Seen, batches, item};

/// The machine's PostgreSQL (`MSGRAPH_WEBHOOKS_POSTGRES_URL`), or `None`
/// with a note.
fn postgres_url() -> Option<String> {
    match std::env::var("MSGRAPH_WEBHOOKS_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "skipped: MSGRAPH_WEBHOOKS_POSTGRES_URL is not set (PostgreSQL tests need it)"
            );
            None
        }
    }
}

fn unique_schema() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("msgraph_webhooks_it_{nanos}")
}

async fn drop_schema(url: &str, schema: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_receivers_and_two_workers_on_postgres_survive_kills() {
    const COUNT: usize = 10_000;
    let Some(url) = postgres_url() else { return };
    let schema = unique_schema();
    let env = [
        ("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE),
        ("MSGRAPH_WEBHOOKS_POSTGRES", url.as_str()),
        ("MSGRAPH_WEBHOOKS_POSTGRES_SCHEMA", schema.as_str()),
        ("MSGRAPH_WEBHOOKS_CLAIM_IDLE_SECS", "2"),
    ];
    let workers = WORKERS.to_string();
    let receive = ["listen", "--addr", "127.0.0.1:0", "--workers", "0"];
    let work = ["work", "--workers", &workers];
    let seen = Seen::default();
    let mut receivers = vec![
        started(&receive, &env, None, "receiver a").await,
        started(&receive, &env, None, "receiver b").await,
    ];
    let mut workers_running = vec![
        started(&work, &env, Some(&seen), "worker a").await.0,
        started(&work, &env, Some(&seen), "worker b").await.0,
    ];

    let all = batches("p", COUNT, 300, STATE, 0);
    let posts = all.len();
    let load = Load::new(all, receivers.iter().map(|(_, addr)| *addr).collect());
    let sender = tokio::spawn({
        let load = load.clone();
        async move { load.run(8).await }
    });

    // Each receiver and each worker is killed once, at random points, in turn.
    let mut rng = Rng::from_env();
    let mut points: Vec<usize> = (0..4)
        .map(|_| rng.between(posts / 10, posts * 9 / 10))
        .collect();
    points.sort_unstable();
    for (k, point) in points.iter().enumerate() {
        wait_until("the kill point", Duration::from_secs(120), || {
            load.acked_posts() >= *point
        })
        .await;
        let which = k / 2;
        if k % 2 == 0 {
            receivers[which].0.kill().await;
            let label = ["receiver a", "receiver b"][which];
            receivers[which] = started(&receive, &env, None, label).await;
            load.retarget(which, receivers[which].1);
        } else {
            workers_running[which].kill().await;
            let label = ["worker a", "worker b"][which];
            workers_running[which] = started(&work, &env, Some(&seen), label).await.0;
        }
    }
    sender.await.unwrap();
    // Two of the kills were workers': each can leave its held items
    // handled but not recorded as handled.
    assert_delivered(&load, &seen, COUNT, 2).await;
    drop((receivers, workers_running));
    drop_schema(&url, &schema).await;
}

/// A PostgreSQL of the test's own (the machine's must keep running for
/// others), in a temporary directory, on a port of its own. Run as the
/// `postgres` user when the test runs as root (initdb refuses root).
struct OwnPostgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    user: Option<&'static str>,
}

impl OwnPostgres {
    /// Initializes and starts one; `None` (with a note) when initdb or
    /// pg_ctl is missing, or there is no user to run them as.
    fn start() -> Option<Self> {
        for tool in ["initdb", "pg_ctl"] {
            if Command::new(tool).arg("--version").output().is_err() {
                eprintln!("skipped: {tool} is not on PATH (the PostgreSQL restart test needs it)");
                return None;
            }
        }
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
        let user = root.then_some("postgres");
        if root
            && !Command::new("id")
                .arg("postgres")
                .output()
                .is_ok_and(|o| o.status.success())
        {
            eprintln!("skipped: running as root with no postgres user to run initdb as");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        if let Some(user) = user {
            let owned = Command::new("chown")
                .arg(user)
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(owned.success(), "chown of the PostgreSQL directory");
        }
        let data = dir.path().join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let own = Self {
            data,
            port,
            user,
            _dir: dir,
        };
        let init = own
            .command("initdb")
            .arg("-D")
            .arg(&own.data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(init.status.success(), "initdb: {init:?}");
        own.pg_ctl_start();
        Some(own)
    }

    fn command(&self, program: &str) -> Command {
        match self.user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--", program]);
                command
            }
            None => Command::new(program),
        }
    }

    fn socket_dir(&self) -> &Path {
        self.data.parent().unwrap()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.socket_dir().display()
        );
        let started = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.socket_dir().join("log"))
            .args(["-o", &options, "-w", "-t", "30", "start"])
            .output()
            .unwrap();
        assert!(started.status.success(), "pg_ctl start: {started:?}");
    }

    /// Stops it the hard way (`-m immediate`: no checkpoint, as a crash), so
    /// what it acknowledged must come back from its WAL.
    fn crash(&self) {
        let stopped = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .unwrap();
        assert!(stopped.status.success(), "pg_ctl stop: {stopped:?}");
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_loses_nothing_acknowledged() {
    const COUNT: usize = 4_000;
    if postgres_url().is_none() {
        return;
    }
    let Some(postgres) = tokio::task::spawn_blocking(OwnPostgres::start)
        .await
        .unwrap()
    else {
        return;
    };
    let url = postgres.url();
    let env = [
        ("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE),
        ("MSGRAPH_WEBHOOKS_POSTGRES", url.as_str()),
        ("MSGRAPH_WEBHOOKS_CLAIM_IDLE_SECS", "2"),
    ];
    let workers = WORKERS.to_string();
    let args = ["listen", "--addr", "127.0.0.1:0", "--workers", &workers];
    let seen = Seen::default();
    let (receiver, addr) = started(&args, &env, Some(&seen), "listen").await;

    let all = batches("q", COUNT, 100, STATE, 0);
    let posts = all.len();
    let load = Load::new(all, vec![addr]);
    let sender = tokio::spawn({
        let load = load.clone();
        async move { load.run(8).await }
    });
    wait_until("the restart point", Duration::from_secs(120), || {
        load.acked_posts() >= posts / 3
    })
    .await;
    let postgres = tokio::task::spawn_blocking(move || {
        postgres.crash();
        postgres
    })
    .await
    .unwrap();
    let acked_before = load.acked().len();
    let refused_before = load.statuses().get("503").copied().unwrap_or(0);
    // Down for long enough that the senders see it.
    wait_until(
        "503s while PostgreSQL is down",
        Duration::from_secs(30),
        || load.statuses().get("503").copied().unwrap_or(0) >= refused_before + 20,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        load.acked().len(),
        acked_before,
        "nothing is acknowledged while PostgreSQL is down"
    );
    let postgres = tokio::task::spawn_blocking(move || {
        postgres.pg_ctl_start();
        postgres
    })
    .await
    .unwrap();
    // The same receiver, not restarted, takes deliveries again.
    sender.await.unwrap();
    assert_delivered(&load, &seen, COUNT, 1).await;
    drop(receiver);
    drop(postgres);
}

/// Runs `dlq ARGS` on the schema; its exit status and stdout lines.
async fn dlq(args: &[&str], url: &str, schema: &str) -> (bool, Vec<String>) {
    let mut args = args.to_vec();
    args.insert(0, "dlq");
    let env = [
        ("MSGRAPH_WEBHOOKS_POSTGRES", url),
        ("MSGRAPH_WEBHOOKS_POSTGRES_SCHEMA", schema),
    ];
    let mut process = Process::spawn(&args, &env);
    process.drain_stderr("dlq");
    let mut lines = Vec::new();
    while let Some(line) = process.try_next_stdout(Duration::from_secs(30)).await {
        lines.push(line);
    }
    (process.child.wait().await.unwrap().success(), lines)
}

#[tokio::test]
async fn dlq_lists_and_replays_dead_letters_on_postgres() {
    let Some(url) = postgres_url() else { return };
    let schema = unique_schema();
    let mut config = PostgresConfig::default();
    config.schema = schema.clone();
    let store = PostgresStore::connect(&url, config).await.unwrap();
    let raw = serde_json::value::RawValue::from_string(item("dead-1", STATE, 0).to_string());
    store
        .append(vec![StoredItem::new(
            raw.unwrap(),
            ValidationTokens::Absent,
        )])
        .await
        .unwrap();
    let mut claimed = store.claim(1, Duration::from_secs(1)).await.unwrap();
    let mut dead = claimed.pop().expect("the item is claimed");
    dead.attempts = 5;
    store
        .dead_letter(dead, "handler error: boom".into())
        .await
        .unwrap();

    let (ok, lines) = dlq(&["list"], &url, &schema).await;
    assert!(ok);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let letter: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(letter["reason"], "handler error: boom");
    assert_eq!(letter["attempts"], 5);
    assert_eq!(letter["item"]["id"], "dead-1");

    let id = letter["id"].as_str().unwrap();
    let (ok, lines) = dlq(&["replay", id], &url, &schema).await;
    assert!(ok, "{lines:?}");
    assert_eq!(lines, ["1 dead letter(s) moved back into the inbox"]);
    let (ok, lines) = dlq(&["list"], &url, &schema).await;
    assert!(ok && lines.is_empty(), "{lines:?}");
    let again = store.claim(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!((again.len(), again[0].attempts), (1, 0));
    drop_schema(&url, &schema).await;
}

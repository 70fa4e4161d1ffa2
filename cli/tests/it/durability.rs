//! Nothing acknowledged is lost: receivers and workers killed with SIGKILL
//! mid-stream, Redis restarted under load, a disk that fills up. (The same
//! on PostgreSQL is in `durability_postgres`, with these helpers.)

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::cli::Process;
use crate::support::load::{Load, Seen, batches};
use crate::support::services::{OwnRedis, free_port};

pub(crate) const STATE: &str = "durability-secret";
pub(crate) const WORKERS: usize = 4;
/// Items a worker holds at once (the worker's claim batch, `CLAIM_BATCH` in
/// `src/worker/mod.rs`): what a kill can leave handled but not yet recorded
/// as handled.
const CLAIM_BATCH: usize = 64;

/// A small deterministic generator for kill points; the seed is printed so
/// a failing run can be repeated with `MSGRAPH_WEBHOOKS_TEST_SEED`.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn from_env() -> Self {
        let seed = std::env::var("MSGRAPH_WEBHOOKS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("kill points seeded with MSGRAPH_WEBHOOKS_TEST_SEED={seed}");
        Self(seed | 1)
    }

    /// A number in `low..high`.
    pub(crate) fn between(&mut self, low: usize, high: usize) -> usize {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        low + (r % (high - low) as u64) as usize
    }
}

pub(crate) async fn started(
    args: &[&str],
    env: &[(&str, &str)],
    seen: Option<&Seen>,
    label: &'static str,
) -> (Process, SocketAddr) {
    let mut process = Process::spawn(args, env);
    let needle = if args[0] == "work" {
        "working"
    } else {
        "listening"
    };
    let line = process.wait_for_log(needle).await;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("local="))
        .map_or_else(|| "0.0.0.0:0".parse().unwrap(), |a| a.parse().unwrap());
    if let Some(seen) = seen {
        seen.follow(&mut process);
    }
    process.drain_stderr(label);
    (process, addr)
}

pub(crate) async fn wait_until(what: &str, wait: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + wait;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {wait:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every acknowledged id reached the handler; duplicates only within the
/// window a kill can open (items a killed worker held: handled, but not yet
/// recorded as handled). The test's intentional copies (hundreds of items)
/// must all be dropped, so a broken dedupe shows far above this bound.
pub(crate) async fn assert_delivered(load: &Load, seen: &Seen, expected: usize, kills: usize) {
    let acked = load.acked();
    assert_eq!(
        acked.len(),
        expected,
        "every notification was eventually acknowledged"
    );
    seen.wait_for_all(&acked, Duration::from_secs(180)).await;
    let counts = seen.counts();
    let unexpected: HashSet<_> = counts.keys().filter(|id| !acked.contains(*id)).collect();
    assert!(unexpected.is_empty(), "events nobody sent: {unexpected:?}");
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "{} notifications acknowledged, all handled; {duplicates} handled twice; answers {:?}",
        acked.len(),
        load.statuses()
    );
    let bound = kills * WORKERS * CLAIM_BATCH;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates: more than the {kills} kill(s) × {WORKERS} workers × {CLAIM_BATCH} held items can explain; dedupe failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_receiver_mid_stream_loses_nothing_acknowledged() {
    const COUNT: usize = 10_000;
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let workers = WORKERS.to_string();
    let args = ["listen", "--addr", "127.0.0.1:0", "--workers", &workers];
    let env = [
        ("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE),
        ("MSGRAPH_WEBHOOKS_DATA_DIR", dir.as_str()),
    ];
    let seen = Seen::default();
    let (mut receiver, addr) = started(&args, &env, Some(&seen), "listen").await;

    // 10 000 notifications, and 300 of their batches sent again later.
    let all = batches("k", COUNT, 300, STATE, 0);
    let posts = all.len();
    let load = Load::new(all, vec![addr]);
    let sender = tokio::spawn({
        let load = load.clone();
        async move { load.run(8).await }
    });

    let mut rng = Rng::from_env();
    let mut points: Vec<usize> = (0..3)
        .map(|_| rng.between(posts / 10, posts * 9 / 10))
        .collect();
    points.sort_unstable();
    for point in &points {
        wait_until("the kill point", Duration::from_secs(120), || {
            load.acked_posts() >= *point
        })
        .await;
        receiver.kill().await;
        let (restarted, addr) = started(&args, &env, Some(&seen), "listen").await;
        receiver = restarted;
        load.retarget(0, addr);
    }
    sender.await.unwrap();
    assert_delivered(&load, &seen, COUNT, points.len()).await;

    receiver.terminate();
    assert!(receiver.child.wait().await.unwrap().success());
}

/// The machine's Redis (`MSGRAPH_WEBHOOKS_REDIS_URL`), or `None` with a note.
fn redis_url() -> Option<String> {
    match std::env::var("MSGRAPH_WEBHOOKS_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped: MSGRAPH_WEBHOOKS_REDIS_URL is not set (Redis tests need it)");
            None
        }
    }
}

fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("msgraph-webhooks-it-{nanos}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_receivers_and_two_workers_on_redis_survive_kills() {
    const COUNT: usize = 10_000;
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix();
    let env = [
        ("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE),
        ("MSGRAPH_WEBHOOKS_REDIS", url.as_str()),
        ("MSGRAPH_WEBHOOKS_REDIS_PREFIX", prefix.as_str()),
        ("MSGRAPH_WEBHOOKS_CLAIM_IDLE_SECS", "2"),
    ];
    let workers = WORKERS.to_string();
    let receive = ["listen", "--addr", "127.0.0.1:0", "--workers", "0"];
    let work = ["work", "--workers", &workers];
    let seen = Seen::default();
    let (mut receiver_a, addr_a) = started(&receive, &env, None, "receiver a").await;
    let (_receiver_b, addr_b) = started(&receive, &env, None, "receiver b").await;
    let (mut worker_a, _) = started(&work, &env, Some(&seen), "worker a").await;
    let (_worker_b, _) = started(&work, &env, Some(&seen), "worker b").await;

    let all = batches("r", COUNT, 300, STATE, 0);
    let posts = all.len();
    let load = Load::new(all, vec![addr_a, addr_b]);
    let sender = tokio::spawn({
        let load = load.clone();
        async move { load.run(8).await }
    });
    let mut rng = Rng::from_env();
    let receiver_kill = rng.between(posts / 10, posts / 2);
    let worker_kill = rng.between(posts / 2, posts * 9 / 10);

    wait_until("the receiver kill point", Duration::from_secs(120), || {
        load.acked_posts() >= receiver_kill
    })
    .await;
    receiver_a.kill().await;
    let (restarted, addr) = started(&receive, &env, None, "receiver a").await;
    receiver_a = restarted;
    load.retarget(0, addr);

    wait_until("the worker kill point", Duration::from_secs(120), || {
        load.acked_posts() >= worker_kill
    })
    .await;
    worker_a.kill().await;
    let (restarted, _) = started(&work, &env, Some(&seen), "worker a").await;
    worker_a = restarted;

    sender.await.unwrap();
    assert_delivered(&load, &seen, COUNT, 1).await;
    drop((receiver_a, worker_a));
    cleanup(&url, &prefix).await;
}

pub(crate) async fn cleanup(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_under_load_loses_nothing_acknowledged() {
    const COUNT: usize = 4_000;
    if redis_url().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut redis = OwnRedis::start(port, dir.path()).await;
    let url = format!("redis://127.0.0.1:{port}");
    let env = [
        ("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE),
        ("MSGRAPH_WEBHOOKS_REDIS", url.as_str()),
        ("MSGRAPH_WEBHOOKS_CLAIM_IDLE_SECS", "2"),
    ];
    let workers = WORKERS.to_string();
    let args = ["listen", "--addr", "127.0.0.1:0", "--workers", &workers];
    let seen = Seen::default();
    let (receiver, addr) = started(&args, &env, Some(&seen), "listen").await;

    let all = batches("x", COUNT, 100, STATE, 0);
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
    redis.kill_and_restart().await;
    sender.await.unwrap();

    let refused = load.statuses().get("503").copied().unwrap_or(0);
    assert!(
        refused > 0,
        "deliveries while Redis was down were refused with 503"
    );
    assert_delivered(&load, &seen, COUNT, 1).await;
    drop(receiver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mount)
        .status();
    if !matches!(mounted, Ok(s) if s.success()) {
        eprintln!("skipped: cannot mount a 2 MiB tmpfs here (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mount.clone());

    let data = mount.to_str().unwrap().to_owned();
    let env = [
        ("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE),
        ("MSGRAPH_WEBHOOKS_DATA_DIR", data.as_str()),
    ];
    let args = ["listen", "--addr", "127.0.0.1:0", "--workers", "2"];
    let seen = Seen::default();
    let (mut receiver, addr) = started(&args, &env, Some(&seen), "listen").await;

    // ~2 KiB items: the 2 MiB filesystem fills within a few hundred.
    let load = Load::new(batches("d", 3_000, 0, STATE, 2_000), vec![addr]);
    let sender = tokio::spawn({
        let load = load.clone();
        async move { load.run(4).await }
    });
    wait_until("503s from the full disk", Duration::from_secs(120), || {
        load.statuses().get("503").copied().unwrap_or(0) >= 20
    })
    .await;
    let acked_while_full = load.acked();

    // Room again: no restart, the same process takes deliveries again.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=256m"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(grown.success());
    sender.await.unwrap();
    assert_eq!(load.acked().len(), 3_000);
    assert!(acked_while_full.len() < 3_000);
    seen.wait_for_all(&load.acked(), Duration::from_secs(180))
        .await;

    receiver.terminate();
    assert!(receiver.child.wait().await.unwrap().success());
    let store = msgraph_webhooks::store::SqliteStore::open(&mount).unwrap();
    store.integrity_check().await.unwrap();
}

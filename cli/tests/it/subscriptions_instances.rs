//! Subscriptions through ordinary operations, as an operator meets them:
//! several instances on one store (a rolling restart, a crash and restart,
//! separate declaration sets), failed and early recreates, a mistyped
//! public URL, a fast clock, and Ctrl-C while Graph hangs. The real binary
//! against `emulate`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::subscriptions_cli::{emulate, exit_code, fire, free_port, graph_flags, subscriptions};
use crate::support::cli::Process;
use crate::support::relay::{Mode, Relay};

const MAIL: &str = "users/ada@contoso.com/messages:created";

/// `listen --subscribe MAIL` on `port`, reached at `public`, with `store`
/// flags; also returns the environment.
fn listen(port: u16, public: &str, base: &str, store: &[&str], env: &[(&str, &str)]) -> Process {
    let mut args: Vec<String> = vec![
        "listen".into(),
        "--addr".into(),
        format!("127.0.0.1:{port}"),
        "--subscribe".into(),
        MAIL.into(),
        "--public-url".into(),
        public.into(),
    ];
    args.extend(store.iter().map(|s| (*s).to_owned()));
    args.extend(graph_flags(base));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = env.to_vec();
    env.push(("MSGRAPH_WEBHOOKS_CLIENT_SECRET", "s3cret"));
    Process::spawn(&args, &env)
}

/// The ids of the emulator's subscriptions.
async fn ids(base: &str) -> Vec<String> {
    subscriptions(base)
        .await
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect()
}

/// Waits (up to `wait`) until the emulator has exactly one subscription
/// other than `old`; returns it.
async fn replaced(base: &str, old: &str, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    loop {
        let now = ids(base).await;
        if now.len() == 1 && now[0] != old {
            return now[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "{old} recreated within {wait:?}: the emulator has {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Graph removes `id` and tells its lifecycle URL so.
async fn remove(base: &str, id: &str) {
    let status = reqwest::Client::new()
        .post(format!("{base}/emulator/lifecycle"))
        .json(&json!({"subscriptionId": id, "lifecycleEvent": "subscriptionRemoved"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
}

/// Fires a change on the mailbox; the next change line on `process`'s
/// stdout (lifecycle lines skipped) must come from `id`.
async fn delivered(base: &str, process: &mut Process, id: &str, message: &str) {
    fire(base, &format!("users/ada@contoso.com/messages/{message}")).await;
    loop {
        let line: Value =
            serde_json::from_str(&process.next_stdout(Duration::from_secs(20)).await).unwrap();
        if line["kind"] == "change" {
            assert_eq!(line["subscriptionId"], id, "{line}");
            // Graph's Outlook spelling, whatever the change was fired as.
            assert_eq!(
                line["resource"],
                format!("Users/ada@contoso.com/Messages/{message}")
            );
            return;
        }
    }
}

fn redis_url() -> Option<String> {
    let url = std::env::var("MSGRAPH_WEBHOOKS_REDIS_URL").ok();
    if url.is_none() {
        eprintln!("MSGRAPH_WEBHOOKS_REDIS_URL unset: skipping");
    }
    url
}

fn random_prefix() -> String {
    format!(
        "it-instances-{}",
        msgraph_webhooks::ClientState::random().expose()
    )
}

/// Two instances share Redis behind one public URL; the one that created
/// the subscription is stopped (a rolling restart). The subscription stays,
/// the survivor takes the lease over within seconds and acts on the next
/// lifecycle event; an instance without the lease stops and changes
/// nothing; the last one out deletes it.
#[tokio::test]
async fn a_rolling_restart_keeps_the_subscription_and_the_survivor_takes_over() {
    let Some(url) = redis_url() else { return };
    let prefix = random_prefix();
    rolling_restart(&["--redis", url.as_str(), "--redis-prefix", prefix.as_str()]).await;
    crate::durability::cleanup(&url, &prefix).await;
}

/// The same on one data dir (SQLite) shared by the instances of a machine.
#[tokio::test]
async fn a_rolling_restart_on_a_data_dir_keeps_the_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    rolling_restart(&["--data-dir", data_dir.to_str().unwrap()]).await;
}

async fn rolling_restart(store: &[&str]) {
    let (emulator, base) = emulate().await;
    let (port_a, port_b) = (free_port(), free_port());
    let balancer = Relay::start(&format!("http://127.0.0.1:{port_a}")).await;
    let public = balancer.url("");

    let mut a = listen(port_a, &public, &base, store, &[]);
    a.wait_for_log("activity=created").await;
    a.drain_stderr("a");
    let mut b = listen(port_b, &public, &base, store, &[]);
    b.wait_for_log("listening").await;
    // B marks itself alive as it starts; a moment for the store write.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = ids(&base).await;
    assert_eq!(first.len(), 1, "created once: {first:?}");
    let first = first[0].clone();

    let stopped = Instant::now();
    a.terminate();
    balancer.retarget(&format!("http://127.0.0.1:{port_b}"));
    assert_eq!(exit_code(&mut a).await, 0);
    assert_eq!(
        ids(&base).await,
        [first.as_str()],
        "a stopping instance leaves what a live one keeps"
    );
    b.wait_for_log("took the subscriptions lease").await;
    let took_over = stopped.elapsed();
    eprintln!("measured: the survivor took the lease {took_over:?} after SIGTERM");
    assert!(took_over < Duration::from_secs(10), "{took_over:?}");
    assert_eq!(ids(&base).await, [first.as_str()], "still there");
    b.drain_stderr("b");

    // The survivor manages: Graph removes the subscription, B recreates it.
    remove(&base, &first).await;
    let second = replaced(&base, &first, Duration::from_secs(15)).await;
    delivered(&base, &mut b, &second, "AAMk1").await;

    // An instance without the lease stops: nothing changes.
    let mut c = listen(free_port(), &public, &base, store, &[]);
    c.wait_for_log("listening").await;
    c.drain_stderr("c");
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.terminate();
    assert_eq!(exit_code(&mut c).await, 0);
    assert_eq!(ids(&base).await, [second.as_str()], "left to B");
    delivered(&base, &mut b, &second, "AAMk2").await;

    // The last one out deletes.
    b.terminate();
    assert_eq!(exit_code(&mut b).await, 0);
    assert!(ids(&base).await.is_empty(), "deleted by the last instance");
    emulator.terminate();
}

/// An instance is killed (no cleanup) and restarted on the same data dir
/// at once. Graph removes the subscription while the dead instance's lease
/// is still running: the event is queued, not dropped, and the restarted
/// instance acts on it as soon as the lease lapses.
#[tokio::test]
async fn a_restart_after_a_crash_takes_over_when_the_dead_lease_lapses() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.to_str().unwrap();
    let store = ["--data-dir", data_dir];
    let lease = [("MSGRAPH_WEBHOOKS_LEASE_SECS", "6")];
    let (emulator, base) = emulate().await;
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");

    let mut first = listen(port, &public, &base, &store, &lease);
    first.wait_for_log("activity=created").await;
    let old = ids(&base).await;
    assert_eq!(old.len(), 1);
    first.kill().await;

    let restarted_at = Instant::now();
    let mut again = listen(port, &public, &base, &store, &lease);
    again.wait_for_log("listening").await;
    again.drain_stderr("restarted");
    remove(&base, &old[0]).await;
    let new = replaced(&base, &old[0], Duration::from_secs(15)).await;
    let managed = restarted_at.elapsed();
    eprintln!(
        "measured: after SIGKILL and restart, the removed subscription recreated \
         {managed:?} after the restart (lease 6 s)"
    );
    delivered(&base, &mut again, &new, "AAMk2").await;
    again.terminate();
    assert_eq!(exit_code(&mut again).await, 0);
    assert!(
        ids(&base).await.is_empty(),
        "the only live instance deletes"
    );
    emulator.terminate();
}

/// A TCP server that accepts connections and never answers.
async fn silent_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{addr}")
}

/// Ctrl-C while Graph hangs, on the DELETE of a stop or inside a pass:
/// the process exits within `--drain-secs`.
#[tokio::test]
async fn ctrl_c_is_bounded_by_drain_secs_when_graph_hangs() {
    let (emulator, base) = emulate().await;
    let graph = Relay::start(&base).await;
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let drain = [("MSGRAPH_WEBHOOKS_DRAIN_SECS", "2")];
    let mut subscribed = listen(port, &public, &graph.url(""), &["--memory"], &drain);
    subscribed.wait_for_log("activity=created").await;
    subscribed.drain_stderr("listen");
    graph.set(Mode::Hang);
    let interrupted = Instant::now();
    subscribed.interrupt();
    assert_eq!(exit_code(&mut subscribed).await, 0);
    let stop = interrupted.elapsed();
    eprintln!("measured: exit {stop:?} after SIGINT with Graph hanging on DELETE");
    assert!(stop < Duration::from_secs(5), "{stop:?}");
    assert_eq!(
        ids(&base).await.len(),
        1,
        "left to expire: Graph never answered"
    );

    // Graph hangs from the start: the first pass never ends.
    let silent = silent_server().await;
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let mut stuck = listen(port, &public, &silent, &["--memory"], &drain);
    stuck.wait_for_log("listening").await;
    stuck.drain_stderr("stuck");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let interrupted = Instant::now();
    stuck.interrupt();
    assert_eq!(exit_code(&mut stuck).await, 0);
    let stop = interrupted.elapsed();
    eprintln!("measured: exit {stop:?} after SIGINT with Graph hanging in a pass");
    assert!(stop < Duration::from_secs(5), "{stop:?}");
    emulator.terminate();
}

/// A second Ctrl-C exits at once, whatever the drain is waiting for (here
/// a DELETE Graph never answers, with two minutes to drain).
#[tokio::test]
async fn a_second_ctrl_c_exits_at_once() {
    let (emulator, base) = emulate().await;
    let graph = Relay::start(&base).await;
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let drain = [("MSGRAPH_WEBHOOKS_DRAIN_SECS", "120")];
    let mut subscribed = listen(port, &public, &graph.url(""), &["--memory"], &drain);
    subscribed.wait_for_log("activity=created").await;
    subscribed.drain_stderr("listen");
    graph.set(Mode::Hang);
    subscribed.interrupt();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        subscribed.child.try_wait().unwrap().is_none(),
        "still waiting for Graph"
    );
    let again = Instant::now();
    subscribed.interrupt();
    let code = exit_code(&mut subscribed).await;
    let stop = again.elapsed();
    eprintln!("measured: exit {stop:?} after the second SIGINT");
    assert!(stop < Duration::from_secs(2), "{stop:?}");
    assert_eq!(code, 130);
    emulator.terminate();
}

/// `subscribe SPEC…` on `store` for the receiver at `public`, kept alive
/// until stopped, deleting on exit what no live instance keeps.
fn subscribe(specs: &[&str], public: &str, base: &str, store: &[&str]) -> Process {
    let mut args: Vec<String> = vec!["subscribe".into()];
    args.extend(specs.iter().map(|s| (*s).to_owned()));
    args.extend(["--public-url".into(), public.to_owned()]);
    args.extend(store.iter().map(|s| (*s).to_owned()));
    args.extend(graph_flags(base));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Process::spawn(&args, &[("MSGRAPH_WEBHOOKS_CLIENT_SECRET", "s3cret")])
}

/// The emulator's subscriptions as sorted `resource:changeType` specs,
/// once they settle at `count` (or after 15 s).
async fn specs(base: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut now: Vec<String> = subscriptions(base)
            .await
            .iter()
            .map(|s| {
                format!(
                    "{}:{}",
                    s["resource"].as_str().unwrap_or_default(),
                    s["changeType"].as_str().unwrap_or_default()
                )
            })
            .collect();
        now.sort();
        if now.len() == count || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two declaration sets on one data dir (`subscribe A`, `subscribe B C`)
/// both run; a third instance declaring A waits and says so, takes A over
/// when A's first instance stops, and the last one out of each deletes.
#[tokio::test]
async fn separate_declaration_sets_on_one_store_each_run() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.to_str().unwrap();
    let store = ["--data-dir", data_dir];
    let (emulator, base) = emulate().await;
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let mut receiver = Process::spawn(
        &[
            "listen",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--subscription-records",
            "--data-dir",
            data_dir,
        ],
        &[],
    );
    receiver.listening_addr().await;
    receiver.drain_stderr("listen");

    let mut a = subscribe(&[MAIL], &public, &base, &store);
    a.wait_for_log("activity=created").await;
    a.drain_stderr("a");
    let started = Instant::now();
    let mut bc = subscribe(&["users:updated", "groups:updated"], &public, &base, &store);
    bc.wait_for_log("activity=created").await;
    bc.wait_for_log("activity=created").await;
    eprintln!(
        "measured: the second declaration set created both within {:?}",
        started.elapsed()
    );
    bc.drain_stderr("bc");
    assert_eq!(
        specs(&base, 3).await,
        [
            "groups:updated",
            "users/ada@contoso.com/messages:created",
            "users:updated"
        ]
    );

    // A second instance of A waits for A's lease, and says so.
    let mut a2 = subscribe(&[MAIL], &public, &base, &store);
    let line = a2
        .wait_for_log("another live instance manages these subscriptions")
        .await;
    assert!(
        line.contains("users/ada@contoso.com/messages|created"),
        "{line}"
    );
    let stopped = Instant::now();
    a.terminate();
    assert_eq!(exit_code(&mut a).await, 0);
    a2.wait_for_log("took the subscriptions lease").await;
    eprintln!(
        "measured: the waiting instance took A over {:?} after SIGTERM",
        stopped.elapsed()
    );
    assert_eq!(specs(&base, 3).await.len(), 3, "A left to its survivor");

    // The last one out of each set deletes its own, and only its own.
    bc.terminate();
    assert_eq!(exit_code(&mut bc).await, 0);
    assert_eq!(
        specs(&base, 1).await,
        ["users/ada@contoso.com/messages:created"]
    );
    a2.terminate();
    assert_eq!(exit_code(&mut a2).await, 0);
    assert!(specs(&base, 0).await.is_empty());
    receiver.terminate();
    emulator.terminate();
}

/// Graph delivers a change of a subscription before the creator has the
/// answer (its `201` held on the way back), to a receiver in another
/// process that only reads the store: the item is recognised by the
/// pending record the creator wrote before asking, not dropped as
/// `unknown_subscription`.
#[tokio::test]
async fn items_delivered_before_the_create_answers_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.to_str().unwrap();
    let (emulator, base) = emulate().await;
    let graph = Relay::start(&base).await;
    graph.set(Mode::HoldCreated);
    let port = free_port();
    let mut receiver = Process::spawn(
        &[
            "listen",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--subscription-records",
            "--data-dir",
            data_dir,
        ],
        &[],
    );
    receiver.listening_addr().await;
    receiver.drain_stderr("listen");

    let mut args: Vec<String> = vec![
        "subscribe".into(),
        MAIL.into(),
        "--public-url".into(),
        format!("http://127.0.0.1:{port}"),
        "--data-dir".into(),
        data_dir.into(),
    ];
    let mut flags = graph_flags(&base);
    let at = flags.iter().position(|f| f == "--graph-url").unwrap();
    flags[at + 1] = graph.url("/v1.0");
    args.extend(flags);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut creator = Process::spawn(&args, &[("MSGRAPH_WEBHOOKS_CLIENT_SECRET", "s3cret")]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        if let [id] = ids(&base).await.as_slice() {
            break id.clone();
        }
        assert!(Instant::now() < deadline, "the emulator created it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Graph has it; the creator does not know its id yet.
    delivered(&base, &mut receiver, &id, "AAMk1").await;

    graph.release();
    let line = creator.wait_for_log("activity=created").await;
    assert!(line.contains(&id), "{line}");
    creator.drain_stderr("subscribe");
    delivered(&base, &mut receiver, &id, "AAMk2").await;
    creator.terminate();
    assert_eq!(exit_code(&mut creator).await, 0);
    receiver.terminate();
    emulator.terminate();
}

/// A restart with a mistyped `--public-url` (nothing listens there) leaves
/// the working subscription in place and says why, instead of deleting it
/// to make room for one whose handshake then fails.
#[tokio::test]
async fn a_mistyped_public_url_keeps_the_working_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.to_str().unwrap();
    let store = ["--data-dir", data_dir, "--keep"];
    let (emulator, base) = emulate().await;
    let port = free_port();
    let mut receiver = Process::spawn(
        &[
            "listen",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--subscription-records",
            "--data-dir",
            data_dir,
        ],
        &[],
    );
    receiver.listening_addr().await;
    receiver.drain_stderr("listen");

    let mut first = subscribe(&[MAIL], &format!("http://127.0.0.1:{port}"), &base, &store);
    first.wait_for_log("activity=created").await;
    first.terminate();
    assert_eq!(exit_code(&mut first).await, 0);
    let working = ids(&base).await;
    assert_eq!(working.len(), 1);

    let typo = format!("http://127.0.0.1:{}", free_port());
    let mut second = subscribe(&[MAIL], &typo, &base, &store);
    let line = second.wait_for_log("fails the validation handshake").await;
    assert!(line.contains("the working subscription stays"), "{line}");
    second.drain_stderr("typo");
    assert_eq!(ids(&base).await, working, "not deleted");
    let live = subscriptions(&base).await;
    assert_eq!(
        live[0]["notificationUrl"],
        format!("http://127.0.0.1:{port}/")
    );
    delivered(&base, &mut receiver, &working[0], "AAMk1").await;
    second.terminate();
    assert_eq!(exit_code(&mut second).await, 0);
    receiver.terminate();
    emulator.terminate();
}

/// `listen --memory --subscribe` is killed, Graph queues changes for it,
/// and it restarts knowing nothing: the live subscription whose
/// `clientState` it lost is replaced, and the replacement reports a resync
/// (Graph's queued retries for the old one are gone).
#[tokio::test]
async fn replacing_an_unknown_live_subscription_reports_a_resync() {
    let (emulator, base) = emulate().await;
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let mut first = listen(port, &public, &base, &["--memory"], &[]);
    first.wait_for_log("activity=created").await;
    let old = ids(&base).await;
    assert_eq!(old.len(), 1);
    first.kill().await;
    for n in 1..=3 {
        fire(&base, &format!("users/ada@contoso.com/messages/AAMk{n}")).await;
    }

    let mut again = listen(port, &public, &base, &["--memory"], &[]);
    let line = again.wait_for_log("unknown clientState").await;
    assert!(line.contains(&old[0]), "{line}");
    let line = again.wait_for_log("changes may have been missed").await;
    assert!(line.contains("reason=recreated"), "{line}");
    again.wait_for_log("activity=resync").await;
    again.drain_stderr("restarted");
    let new = replaced(&base, &old[0], Duration::from_secs(15)).await;
    delivered(&base, &mut again, &new, "AAMk4").await;
    again.terminate();
    assert_eq!(exit_code(&mut again).await, 0);
    emulator.terminate();
}

/// A clock that reads `ahead` later than the real one, served as the
/// emulator serves its own (`{"now", "timeScale"}`) for `--graph-clock`.
async fn fast_clock(ahead: time::Duration) -> String {
    let app = axum::Router::new().route(
        "/clock",
        axum::routing::get(move || async move {
            let now = time::OffsetDateTime::now_utc() + ahead;
            axum::Json(json!({
                "now": now.format(&time::format_description::well_known::Rfc3339).unwrap(),
                "timeScale": 1.0,
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/clock")
}

/// The manager's clock is two hours ahead of Graph's: Graph refuses the
/// longest lifetime as too far, the manager asks for what Graph states
/// (by Graph's clock), and the subscription exists within seconds.
#[tokio::test]
async fn a_fast_local_clock_still_gets_a_subscription() {
    let (emulator, base) = emulate().await;
    let clock = fast_clock(time::Duration::hours(2)).await;
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut process = listen(
        port,
        &public,
        &base,
        &["--memory"],
        &[("MSGRAPH_WEBHOOKS_GRAPH_CLOCK", clock.as_str())],
    );
    process.wait_for_log("expiration too far").await;
    process.wait_for_log("activity=created").await;
    eprintln!(
        "measured: created {:?} after the start with the clock 2 h fast",
        started.elapsed()
    );
    process.drain_stderr("listen");
    let live = subscriptions(&base).await;
    assert_eq!(live.len(), 1);
    let expires = time::OffsetDateTime::parse(
        live[0]["expirationDateTime"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let most = time::OffsetDateTime::now_utc() + time::Duration::minutes(10080);
    assert!(expires <= most, "{expires} within Graph's 10080 minutes");
    assert!(
        expires > most - time::Duration::minutes(30),
        "{expires}: close to the longest Graph allows"
    );
    delivered(
        &base,
        &mut process,
        live[0]["id"].as_str().unwrap(),
        "AAMk1",
    )
    .await;
    process.terminate();
    assert_eq!(exit_code(&mut process).await, 0);
    emulator.terminate();
}

/// Graph removes the subscription and the replacement's handshake fails at
/// first (the endpoint flapping behind its load balancer): the old record
/// stays until the replacement exists, the replacement comes, and the
/// resync is reported.
#[tokio::test]
async fn a_recreate_whose_handshake_fails_at_first_still_resyncs() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.to_str().unwrap();
    let (emulator, base) = emulate().await;
    let port = free_port();
    let front = Relay::start(&format!("http://127.0.0.1:{port}")).await;
    let mut process = listen(port, &front.url(""), &base, &["--data-dir", data_dir], &[]);
    process.wait_for_log("activity=created").await;
    let old = ids(&base).await;
    assert_eq!(old.len(), 1);

    front.set(Mode::FailHandshakes(2));
    let removed = Instant::now();
    remove(&base, &old[0]).await;
    process
        .wait_for_log("the validation handshake failed; trying again")
        .await;
    let line = process.wait_for_log("changes may have been missed").await;
    assert!(line.contains("reason=removed"), "{line}");
    eprintln!(
        "measured: recreated with a resync {:?} after subscriptionRemoved, two handshakes failing",
        removed.elapsed()
    );
    process.drain_stderr("listen");
    let new = replaced(&base, &old[0], Duration::from_secs(15)).await;
    delivered(&base, &mut process, &new, "AAMk1").await;
    process.terminate();
    assert_eq!(exit_code(&mut process).await, 0);
    emulator.terminate();
}

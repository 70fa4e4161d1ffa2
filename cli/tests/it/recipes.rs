//! The README's "Use it from any language" recipes, run as written against
//! the real `listen --forward`: a Python and a Node endpoint verifying the
//! Standard Webhooks signature with the `standardwebhooks` packages, a
//! Python JetStream consumer (`nats-py`) and a Python RabbitMQ consumer
//! (`pika`). Each must print every notification posted to the receiver,
//! once; the endpoints must refuse a forged or altered delivery. They run
//! where the interop clients run (`MSGRAPH_WEBHOOKS_INTEROP_PYTHON`,
//! `MSGRAPH_WEBHOOKS_INTEROP_NODE`; `.ci/run` installs their packages),
//! the consumers where the brokers are.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::forward_brokers::{broker_url, unique};
use crate::support::cli::Process;
use crate::support::load::{Load, batches};

const STATE: &str = "recipes-state";
const SECRET: &str = "whsec_ZmVlZGZhY2VjYWZlYmFiZWRlYWRiZWVmMDEyMzQ1Njc4OWFi";
const COUNT: usize = 30;

fn interop(path: &str) -> String {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/interop"))
        .join(path)
        .to_str()
        .unwrap()
        .to_owned()
}

fn python() -> Option<String> {
    let python = std::env::var("MSGRAPH_WEBHOOKS_INTEROP_PYTHON").ok();
    if python.is_none() {
        eprintln!("MSGRAPH_WEBHOOKS_INTEROP_PYTHON unset: skipping the Python recipes");
    }
    python
}

fn node() -> Option<String> {
    let node = std::env::var("MSGRAPH_WEBHOOKS_INTEROP_NODE").ok();
    let installed = Path::new(&interop("node/node_modules/standardwebhooks")).is_dir();
    match node {
        Some(node) if installed => Some(if node == "1" { "node".to_owned() } else { node }),
        _ => {
            eprintln!(
                "MSGRAPH_WEBHOOKS_INTEROP_NODE unset or `npm ci` not run in tests/interop/node: skipping the Node recipe"
            );
            None
        }
    }
}

/// A recipe running: its stdout lines are the events it printed.
struct Recipe {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    /// The last words of its ready line ("listening PORT", "consuming").
    ready: String,
}

impl Recipe {
    async fn start(program: &str, script: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(program)
            .arg(interop(script))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let line = stderr
                    .next_line()
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("{script} exited before it was ready"));
                if line.starts_with("listening") || line.starts_with("consuming") {
                    return line;
                }
                eprintln!("[{script}] {line}");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{script} ready within 30 s"));
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("[recipe] {line}");
            }
        });
        Self {
            child,
            stdout,
            ready,
        }
    }

    fn port(&self) -> u16 {
        self.ready
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The ids of the next `n` events it prints (`KIND ID RESOURCE`).
    async fn printed(&mut self, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        while ids.len() < n {
            let line = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("{} of {n} events printed within 60 s", ids.len()))
                .unwrap()
                .expect("the recipe keeps running");
            let mut words = line.split_whitespace();
            assert_eq!(words.next(), Some("change"), "{line}");
            ids.push(words.next().unwrap().to_owned());
        }
        ids
    }
}

/// A receiver forwarding, with its store.
struct Forwarding {
    receiver: Process,
    _store: tempfile::TempDir,
}

impl Forwarding {
    async fn stop(mut self) {
        self.receiver.terminate();
        let _ = self.receiver.child.wait().await;
    }
}

/// `listen --forward target` on a fresh store; `COUNT` notifications posted
/// to it, all acknowledged. Returns the receiver and the acked ids.
async fn forward_to(target: &str, extra: &[&str]) -> (Forwarding, HashSet<String>) {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let mut args = vec![
        "listen",
        "--addr",
        "127.0.0.1:0",
        "--admin-addr",
        "off",
        "--data-dir",
        &dir,
        "--forward",
        target,
    ];
    args.extend_from_slice(extra);
    let mut receiver = Process::spawn(&args, &[("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE)]);
    let addr: SocketAddr = receiver.listening_addr().await;
    receiver.drain_stderr("listen");
    let load = Load::new(batches("recipe", COUNT, 3, STATE, 0), vec![addr]);
    load.run(2).await;
    let acked = load.acked();
    assert_eq!(acked.len(), COUNT);
    let forwarding = Forwarding {
        receiver,
        _store: data,
    };
    (forwarding, acked)
}

/// Every acked notification printed once, and nothing else.
async fn prints_each_once(recipe: &mut Recipe, acked: &HashSet<String>) {
    let ids = recipe.printed(COUNT).await;
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "each event once: {ids:?}");
    assert_eq!(&unique, acked);
}

/// A delivery the endpoint must refuse: `400`, and nothing printed.
async fn refuses_forgeries(port: u16) {
    let client = reqwest::Client::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = r#"{"kind":"change","id":"forged","resource":"users/x/messages/1"}"#;
    let stale = (now - 3600).to_string();
    let fresh = now.to_string();
    for (timestamp, signature) in [
        (
            fresh.as_str(),
            "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ),
        (fresh.as_str(), ""),
        (
            stale.as_str(),
            "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ),
    ] {
        let status = client
            .post(format!("http://127.0.0.1:{port}/hook"))
            .header("webhook-id", "forged")
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 400, "{timestamp} {signature:?}");
    }
}

async fn endpoint_recipe(program: &str, script: &str) {
    let mut recipe = Recipe::start(
        program,
        script,
        &[("FORWARD_SECRET", SECRET), ("PORT", "0")],
    )
    .await;
    let port = recipe.port();
    refuses_forgeries(port).await;
    let target = format!("http://127.0.0.1:{port}/hook");
    let (forwarding, acked) = forward_to(&target, &["--forward-secret", SECRET]).await;
    prints_each_once(&mut recipe, &acked).await;
    forwarding.stop().await;
}

#[tokio::test]
async fn the_python_endpoint_recipe_verifies_and_prints_every_event() {
    let Some(python) = python() else { return };
    endpoint_recipe(&python, "python/hook.py").await;
}

#[tokio::test]
async fn the_node_endpoint_recipe_verifies_and_prints_every_event() {
    let Some(node) = node() else { return };
    endpoint_recipe(&node, "node/hook.mjs").await;
}

#[tokio::test]
async fn the_python_jetstream_consumer_recipe_prints_every_event() {
    let Some(python) = python() else { return };
    let Some(nats) = broker_url("MSGRAPH_WEBHOOKS_NATS_URL") else {
        return;
    };
    let stream = unique("MGW_RECIPE_");
    let subject = format!("{}.events", stream.to_lowercase());
    // listen makes the stream at start; the consumer binds to it after.
    let target = format!("{nats}/{subject}?create_stream=true&stream={stream}");
    let (forwarding, acked) = forward_to(&target, &[]).await;
    let mut recipe = Recipe::start(
        &python,
        "python/nats_consumer.py",
        &[
            ("NATS_URL", nats.as_str()),
            ("SUBJECT", subject.as_str()),
            ("DURABLE", "recipe"),
        ],
    )
    .await;
    prints_each_once(&mut recipe, &acked).await;
    forwarding.stop().await;
    let _ = recipe.child.kill().await;
    let client = async_nats::connect(nats.as_str()).await.unwrap();
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&stream)
        .await;
}

#[tokio::test]
async fn the_python_rabbitmq_consumer_recipe_prints_every_event() {
    let Some(python) = python() else { return };
    let Some(amqp) = broker_url("MSGRAPH_WEBHOOKS_AMQP_URL") else {
        return;
    };
    let queue = unique("mgw-recipe-");
    // The consumer declares the queue before listen publishes to it.
    let mut recipe = Recipe::start(
        &python,
        "python/rabbitmq_consumer.py",
        &[("AMQP_URL", amqp.as_str()), ("QUEUE", queue.as_str())],
    )
    .await;
    let target = format!("{amqp}?routing_key={queue}");
    let (forwarding, acked) = forward_to(&target, &[]).await;
    prints_each_once(&mut recipe, &acked).await;
    forwarding.stop().await;
    let _ = recipe.child.kill().await;
    let connection = lapin::Connection::connect(&amqp, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let _ = channel
        .queue_delete(
            queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await;
}

//! Clients nobody here wrote, against the emulator over HTTPS, unmodified,
//! trusting the emulator's local CA:
//!
//! - Microsoft's Python MSAL, azure-identity and Graph SDK
//!   (`tests/interop/python`): run when `MSGRAPH_WEBHOOKS_INTEROP_PYTHON`
//!   names a Python with them installed (`.ci/run` makes that venv from
//!   `tests/interop/python/requirements.txt`);
//! - Microsoft's Node MSAL, `@azure/identity` and Graph JS client
//!   (`tests/interop/node`): run when `MSGRAPH_WEBHOOKS_INTEROP_NODE` names
//!   a `node` binary (or is `1`: the `node` on `PATH`) and
//!   `tests/interop/node/node_modules` is there (`npm ci` in that folder,
//!   as `.ci/run` does).
//!
//! Each script prints an `ok STEP` line per step; the test checks every
//! line, then what the emulator saw: the handshake it made with the
//! receiver for the subscription the script created, and no subscription
//! left after the script deleted it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use msgraph_webhooks::emulator::{DeliveryKind, Emulator, Outcome};
use msgraph_webhooks::{Receiver, SubscriptionRegistry};

use crate::support::{Recorder, TestServer};

const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
const APP: &str = "11111111-2222-3333-4444-555555555555";

/// The folder of the interop clients.
fn interop_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/interop"))
}

fn python() -> Option<String> {
    let python = std::env::var("MSGRAPH_WEBHOOKS_INTEROP_PYTHON").ok();
    if python.is_none() {
        eprintln!(
            "MSGRAPH_WEBHOOKS_INTEROP_PYTHON unset: skipping (make a venv with \
             tests/interop/python/requirements.txt and point it at its python)"
        );
    }
    python
}

/// The `node` to run, when the variable is set and the packages installed.
fn node() -> Option<String> {
    let Ok(node) = std::env::var("MSGRAPH_WEBHOOKS_INTEROP_NODE") else {
        eprintln!(
            "MSGRAPH_WEBHOOKS_INTEROP_NODE unset: skipping (run `npm ci` in \
             tests/interop/node, then set it to a node binary, or to 1 for the node on PATH)"
        );
        return None;
    };
    if !interop_dir().join("node/node_modules").is_dir() {
        eprintln!(
            "tests/interop/node/node_modules missing: skipping (run `npm ci` in tests/interop/node)"
        );
        return None;
    }
    Some(if node == "1" { "node".to_owned() } else { node })
}

/// What a client script is and how it trusts a CA.
struct Clients<'a> {
    program: &'a str,
    script: &'a str,
    /// Environment variables set to the CA's path.
    ca_vars: &'a [&'a str],
    /// Environment variables removed, so the caller's can't weaken TLS.
    unset: &'a [&'a str],
    /// The lines stdout must hold, in any order.
    steps: &'a [&'a str],
}

/// Runs `clients` against an HTTPS emulator with a receiver as the
/// notification URL, checks every step line, then the emulator's side.
async fn run(clients: Clients<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::builder()
        .https(dir.path().join("tls"))
        .start()
        .await
        .unwrap();
    assert!(emulator.url().starts_with("https://"), "{}", emulator.url());
    let ca = emulator.ca_path().expect("a CA with https").to_owned();
    let receiver = TestServer::start(
        Receiver::builder(Recorder::default())
            .registry(Arc::new(SubscriptionRegistry::allow_any())),
    )
    .await;
    let notification_url = receiver.url("/");
    let mut command = tokio::process::Command::new(clients.program);
    command
        .arg(interop_dir().join(clients.script))
        .args([emulator.url(), TENANT, APP, "any-secret", &notification_url])
        .kill_on_drop(true);
    for var in clients.ca_vars {
        command.env(var, &ca);
    }
    for var in clients.unset {
        command.env_remove(var);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the clients finish within 2 minutes")
        .unwrap_or_else(|e| panic!("{} could not start: {e}", clients.program));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for step in clients.steps.iter().chain(&["ok create ", "all passed"]) {
        assert!(stdout.contains(step), "{step}:\n{stdout}\n{stderr}");
    }
    let created = stdout
        .lines()
        .find_map(|line| line.strip_prefix("ok create "))
        .map(str::trim)
        .expect("the create step names the subscription");

    // The emulator's side: it validated the receiver for that subscription
    // (inside the create, as Graph does) ...
    let handshakes: Vec<_> = emulator
        .deliveries()
        .into_iter()
        .filter(|d| d.kind == DeliveryKind::Validation && d.subscription_ids == [created])
        .collect();
    assert_eq!(handshakes.len(), 1, "{handshakes:?}");
    assert_eq!(handshakes[0].outcome, Outcome::Delivered);
    assert_eq!(handshakes[0].status, Some(200));
    assert!(
        handshakes[0].url.starts_with(&notification_url),
        "{}",
        handshakes[0].url
    );
    // ... and holds no subscription after the delete (the refused ones
    // never existed).
    assert_eq!(emulator.subscription_ids(), Vec::<String>::new());
    emulator.shutdown().await;
}

#[tokio::test]
async fn microsofts_python_clients_work_against_the_emulator_over_https() {
    let Some(python) = python() else { return };
    run(Clients {
        program: &python,
        script: "python/clients.py",
        ca_vars: &["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"],
        unset: &[],
        steps: &[
            "ok msal",
            "ok azure-identity",
            "ok get",
            "ok list",
            "ok update",
            "ok reauthorize",
            "ok delete",
            "ok odata-error 400",
        ],
    })
    .await;
}

#[tokio::test]
async fn microsofts_node_clients_work_against_the_emulator_over_https() {
    let Some(node) = node() else { return };
    run(Clients {
        program: &node,
        script: "node/clients.mjs",
        // Node's own trust store plus the CA; TLS checks stay on.
        ca_vars: &["NODE_EXTRA_CA_CERTS"],
        unset: &["NODE_TLS_REJECT_UNAUTHORIZED", "NODE_OPTIONS"],
        steps: &[
            "ok msal @azure/msal-node",
            "ok msal-discovery",
            "ok azure-identity @azure/identity",
            "ok get",
            "ok list",
            "ok update",
            "ok reauthorize",
            "ok delete",
            "ok graph-error 400",
            "ok graph-error-resource 400",
            "ok microsoft-graph-client",
        ],
    })
    .await;
}

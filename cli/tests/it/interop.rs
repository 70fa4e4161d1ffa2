//! Clients nobody here wrote, against the emulator over HTTPS: Microsoft's
//! Python MSAL, azure-identity and Graph SDK (`tests/interop/python`),
//! unmodified, trusting the emulator's local CA. Runs when
//! `MSGRAPH_WEBHOOKS_INTEROP_PYTHON` names a Python with them installed
//! (`.ci/run` makes that venv from `tests/interop/python/requirements.txt`).

use std::sync::Arc;
use std::time::Duration;

use msgraph_webhooks::emulator::Emulator;
use msgraph_webhooks::{Receiver, SubscriptionRegistry};

use crate::support::{Recorder, TestServer};

const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
const APP: &str = "11111111-2222-3333-4444-555555555555";

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

#[tokio::test]
async fn microsofts_python_clients_work_against_the_emulator_over_https() {
    let Some(python) = python() else { return };
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
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/interop/python/clients.py"
    );
    let run = tokio::process::Command::new(&python)
        .arg(script)
        .args([
            emulator.url(),
            TENANT,
            APP,
            "any-secret",
            &receiver.url("/"),
        ])
        .env("SSL_CERT_FILE", &ca)
        .env("REQUESTS_CA_BUNDLE", &ca)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the clients finish within 2 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for step in [
        "ok msal",
        "ok azure-identity",
        "ok create",
        "ok get",
        "ok list",
        "ok update",
        "ok reauthorize",
        "ok delete",
        "ok odata-error 400",
        "all passed",
    ] {
        assert!(stdout.contains(step), "{step}:\n{stdout}\n{stderr}");
    }
    emulator.shutdown().await;
}

//! The environment variables of the CLI: each command reads its own names, and
//! the renamed ones still work for the command they were made for.

use std::net::{SocketAddr, TcpListener};

use crate::support::cli::{BIN, Process};

/// A free loopback port (bound, then released: good enough for one test).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn emulate_listens_where_its_own_variable_says_not_where_listens_does() {
    // Held for the whole test: an emulator that still read listen's variable
    // would fail to bind here, or never get to the address it was given.
    let listens = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen_addr = listens.local_addr().unwrap().to_string();
    let emulator_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut emulator = Process::spawn(
        &["emulate"],
        &[
            ("MSGRAPH_WEBHOOKS_ADDR", &listen_addr),
            ("MSGRAPH_WEBHOOKS_EMULATOR_ADDR", &emulator_addr.to_string()),
        ],
    );
    assert_eq!(emulator.listening_addr().await, emulator_addr);
    let health = reqwest::get(format!("http://{emulator_addr}/emulator/clock"))
        .await
        .unwrap();
    assert!(health.status().is_success(), "{health:?}");
    emulator.terminate();
    let _ = emulator.child.wait().await;

    // listen's variable alone, even one that is no address at all, leaves
    // emulate alone.
    let mut emulator = Process::spawn(
        &["emulate"],
        &[
            ("MSGRAPH_WEBHOOKS_ADDR", "not-an-address"),
            ("MSGRAPH_WEBHOOKS_EMULATOR_ADDR", "127.0.0.1:0"),
        ],
    );
    let addr = emulator.listening_addr().await;
    assert_ne!(addr.port(), 0);
    emulator.terminate();
    let _ = emulator.child.wait().await;
}

fn cert_new(env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(BIN);
    command.args(["cert", "new"]).env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("MSGRAPH_WEBHOOKS_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied()).output().unwrap()
}

#[test]
fn cert_new_reads_its_old_variable_with_a_warning_and_prefers_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old");
    let new = dir.path().join("new");

    let output = cert_new(&[("MSGRAPH_WEBHOOKS_OUT", old.to_str().unwrap())]);
    assert!(output.status.success(), "{output:?}");
    assert!(old.join("key.pem").exists());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("MSGRAPH_WEBHOOKS_OUT is deprecated for `cert new`: set MSGRAPH_WEBHOOKS_CERT_OUT instead"),
        "{stderr}"
    );

    let output = cert_new(&[
        (
            "MSGRAPH_WEBHOOKS_OUT",
            dir.path().join("ignored").to_str().unwrap(),
        ),
        ("MSGRAPH_WEBHOOKS_CERT_OUT", new.to_str().unwrap()),
    ]);
    assert!(output.status.success(), "{output:?}");
    assert!(new.join("key.pem").exists());
    assert!(!dir.path().join("ignored").exists());
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("deprecated"),
        "{output:?}"
    );
}

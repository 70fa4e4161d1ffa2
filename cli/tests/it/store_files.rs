//! The data directory is its owner's only: it holds every subscription's
//! `clientState` and the stored items with their tokens.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use crate::support::cli::Process;
use crate::support::http::post_json;
use crate::support::{envelope, message_item};

const STATE: &str = "files-secret";

/// Every directory and file under `dir` (itself included), with its mode.
fn modes(dir: &Path) -> Vec<(String, u32)> {
    let mut out = vec![(
        dir.display().to_string(),
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
    )];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(modes(&path));
        } else {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            out.push((path.display().to_string(), mode));
        }
    }
    out
}

/// Runs `listen` under umask 000 on `dir`, has it store a delivery (so the
/// WAL and shared-memory files exist), and returns the modes found while it
/// runs.
async fn modes_while_listening(dir: &Path) -> Vec<(String, u32)> {
    let dir_arg = dir.to_str().unwrap();
    let env = [
        ("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE),
        ("MSGRAPH_WEBHOOKS_DATA_DIR", dir_arg),
    ];
    let args = ["listen", "--addr", "127.0.0.1:0", "--workers", "0"];
    let mut process = Process::spawn_with_umask("000", &args, &env);
    let addr = process.listening_addr().await;
    process.drain_stderr("listen");
    let reply = post_json(
        &format!("http://{addr}/"),
        envelope(vec![message_item("sub", STATE, 1)]),
    )
    .await;
    assert_eq!(reply.status, 202);
    let found = modes(dir);
    process.kill().await;
    found
}

fn assert_private(found: &[(String, u32)]) {
    let names: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
    for suffix in [
        "inbox.sqlite3",
        "inbox.sqlite3-wal",
        "inbox.sqlite3-shm",
        ".lock",
    ] {
        assert!(
            names.iter().any(|n| n.ends_with(suffix)),
            "a file ending {suffix} exists: {names:?}"
        );
    }
    let open: Vec<_> = found.iter().filter(|(_, mode)| mode & 0o077 != 0).collect();
    assert!(
        open.is_empty(),
        "open to other users: {open:?} (of {found:?})"
    );
    let dirs: Vec<_> = found
        .iter()
        .filter(|(p, _)| Path::new(p).is_dir())
        .map(|(_, mode)| *mode)
        .collect();
    assert!(dirs.iter().all(|m| *m == 0o700), "directories {dirs:?}");
}

#[tokio::test]
async fn a_new_data_dir_is_private_whatever_the_umask() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("new").join("store");
    let found = tokio::time::timeout(Duration::from_secs(60), modes_while_listening(&dir))
        .await
        .unwrap();
    assert_private(&found);
}

#[tokio::test]
async fn an_existing_data_dir_open_to_others_is_tightened() {
    let dir = tempfile::tempdir().unwrap();
    let wide = std::fs::Permissions::from_mode(0o777);
    std::fs::set_permissions(dir.path(), wide.clone()).unwrap();
    // A database left by a version that created it with the umask's mode.
    let db = dir.path().join("inbox.sqlite3");
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o666)).unwrap();
    let found = tokio::time::timeout(Duration::from_secs(60), modes_while_listening(dir.path()))
        .await
        .unwrap();
    assert_private(&found);
}

//! What the benchmarks share: the binary under test, the servers they
//! start, and the notifications they send.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncBufReadExt as _;

/// The CLI binary the benchmarks run.
pub const BIN: &str = env!("CARGO_BIN_EXE_msgraph-webhooks");
/// The `clientState` of every notification they send.
pub const CLIENT_STATE: &str = "bench-client-state";

/// A server process under test.
pub struct Server {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
}

impl Server {
    pub async fn start(mut command: tokio::process::Command) -> Self {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        // The bare server says where it listens on stdout, `listen` in its log on stderr.
        let stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async move {
            let (mut stdout, mut stderr) = (stdout, stderr);
            loop {
                let line = tokio::select! {
                    line = stdout.next_line() => line,
                    line = stderr.next_line() => line,
                };
                let line = line.unwrap().expect("server exited before listening");
                if let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("local="))
                {
                    // Keep draining both pipes so the server never blocks on them.
                    tokio::spawn(
                        async move { while let Ok(Some(_)) = stdout.next_line().await {} },
                    );
                    tokio::spawn(
                        async move { while let Ok(Some(_)) = stderr.next_line().await {} },
                    );
                    return addr.parse::<SocketAddr>().unwrap();
                }
            }
        })
        .await
        .expect("server listening within 30 s");
        Self { child, addr }
    }
}

/// A single-item basic notification; each request gets a notification id of
/// its own (as Graph's are), so dedupe treats none as a duplicate.
pub fn body(id: u64) -> Bytes {
    Bytes::from(
        serde_json::json!({"value": [{
            "id": format!("bench-{id}"),
            "subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
            "subscriptionExpirationDateTime": "2026-03-19T22:11:09.952Z",
            "clientState": CLIENT_STATE,
            "changeType": "created",
            "resource": "Users/622eaaff-0683-4862-9de4-f2ec83c2bd98/Messages/AAMkAGUwNjQ4ZjIxAAA=",
            "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
            "resourceData": {
                "@odata.type": "#Microsoft.Graph.Message",
                "@odata.id": "Users/622eaaff-0683-4862-9de4-f2ec83c2bd98/Messages/AAMkAGUwNjQ4ZjIxAAA=",
                "@odata.etag": "W/\"CQAAABYAAACQ2fKdhq8oSKEDSVrdi3lRAAGDUUXn\"",
                "id": "AAMkAGUwNjQ4ZjIxAAA="
            }
        }]})
        .to_string(),
    )
}

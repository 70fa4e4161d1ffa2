//! Runs the `msgraph-webhooks` binary as a user would.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_msgraph-webhooks");

/// A running CLI process with its output lines.
pub struct Process {
    pub child: Child,
    pub stdout: Lines<BufReader<ChildStdout>>,
    pub stderr: Lines<BufReader<ChildStderr>>,
}

impl Process {
    /// Starts the binary with `args` (and only the environment given).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, _) in std::env::vars() {
            if key.starts_with("MSGRAPH_WEBHOOKS_") {
                command.env_remove(key);
            }
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the binary starts");
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Reads stderr until the "listening" log line; returns the address in it.
    pub async fn listening_addr(&mut self) -> SocketAddr {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let line = tokio::time::timeout_at(deadline, self.stderr.next_line())
                .await
                .expect("the process logs 'listening' within 30 s")
                .unwrap()
                .expect("the process is still running");
            if line.contains("listening")
                && let Some(addr) = line
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix("local="))
            {
                return addr.parse().unwrap();
            }
        }
    }

    /// The next stdout line (panics after `wait`).
    pub async fn next_stdout(&mut self, wait: Duration) -> String {
        tokio::time::timeout(wait, self.stdout.next_line())
            .await
            .expect("a stdout line in time")
            .unwrap()
            .expect("stdout still open")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("running");
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
    }
}

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
    /// Taken by whoever follows the output (see `load::Seen::follow`).
    pub stdout: Option<Lines<BufReader<ChildStdout>>>,
    /// Taken by [`Process::drain_stderr`].
    pub stderr: Option<Lines<BufReader<ChildStderr>>>,
}

impl Process {
    /// Starts the binary with `args` and, of the `MSGRAPH_WEBHOOKS_*`
    /// variables, only those in `env`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BIN);
        command.args(args);
        Self::start(command, env)
    }

    /// [`spawn`](Self::spawn), under the file-mode mask `umask` (octal, as
    /// the shell's `umask` takes it).
    pub fn spawn_with_umask(umask: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
            .arg(BIN)
            .args(args);
        Self::start(command, env)
    }

    fn start(mut command: Command, env: &[(&str, &str)]) -> Self {
        command
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
        // Tests run side by side: no process may take the fixed default port.
        command.env("MSGRAPH_WEBHOOKS_ADMIN_ADDR", "127.0.0.1:0");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the binary starts");
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        Self {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// Reads stderr until the "listening" log line; returns the address in it.
    pub async fn listening_addr(&mut self) -> SocketAddr {
        self.wait_for_log("listening")
            .await
            .split_whitespace()
            .find_map(|word| word.strip_prefix("local="))
            .expect("the listening line names the address")
            .parse()
            .unwrap()
    }

    /// Reads stderr until the admin address's log line; returns the address.
    /// Logged right after "listening": call [`Process::listening_addr`] first.
    pub async fn admin_addr(&mut self) -> SocketAddr {
        self.wait_for_log("admin address ready")
            .await
            .split_whitespace()
            .find_map(|word| word.strip_prefix("admin="))
            .expect("the admin line names the address")
            .parse()
            .unwrap()
    }

    /// Reads stderr until a line containing `needle` (panics after 30 s).
    pub async fn wait_for_log(&mut self, needle: &str) -> String {
        let stderr = self.stderr.as_mut().expect("stderr not drained");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let line = tokio::time::timeout_at(deadline, stderr.next_line())
                .await
                .unwrap_or_else(|_| panic!("the process logs {needle:?} within 30 s"))
                .unwrap()
                .expect("the process is still running");
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Reads stderr until a line containing `needle` (panics after 30 s);
    /// returns every line read, the needle's last.
    pub async fn log_until(&mut self, needle: &str) -> Vec<String> {
        let stderr = self.stderr.as_mut().expect("stderr not drained");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut lines = Vec::new();
        loop {
            let line = tokio::time::timeout_at(deadline, stderr.next_line())
                .await
                .unwrap_or_else(|_| panic!("the process logs {needle:?} within 30 s"))
                .unwrap()
                .expect("the process is still running");
            let found = line.contains(needle);
            lines.push(line);
            if found {
                return lines;
            }
        }
    }

    /// Keeps reading stderr in the background, so the process never blocks
    /// on a full pipe; lines go to the test's stderr, labelled.
    pub fn drain_stderr(&mut self, label: &'static str) {
        let Some(mut stderr) = self.stderr.take() else {
            return;
        };
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("[{label}] {line}");
            }
        });
    }

    /// The next stdout line (panics after `wait`).
    pub async fn next_stdout(&mut self, wait: Duration) -> String {
        let stdout = self.stdout.as_mut().expect("stdout not taken");
        tokio::time::timeout(wait, stdout.next_line())
            .await
            .expect("a stdout line in time")
            .unwrap()
            .expect("stdout still open")
    }

    /// The next stdout line; `None` at the end of stdout or after `wait`.
    pub async fn try_next_stdout(&mut self, wait: Duration) -> Option<String> {
        let stdout = self.stdout.as_mut().expect("stdout not taken");
        tokio::time::timeout(wait, stdout.next_line())
            .await
            .ok()?
            .ok()?
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Sends SIGINT (Ctrl-C).
    pub fn interrupt(&self) {
        self.signal("-INT");
    }

    /// Sends SIGKILL (no chance to clean up) and waits until the process is gone.
    pub async fn kill(&mut self) {
        self.signal("-KILL");
        let _ = self.child.wait().await;
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running");
        std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
    }
}

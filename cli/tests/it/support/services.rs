//! Services of a test's own, for tests that stop them: the machine's NATS,
//! Redis and RabbitMQ keep running for everyone else. Each is started on a
//! free loopback port with its data in a directory the test owns, and
//! stopped by its process id (a SIGKILL: what a crash looks like).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port`, for at most `limit`.
pub async fn wait_for_port(what: &str, port: u16, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} listens on {port} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills `child` (SIGKILL, by its pid) and reaps it.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A `nats-server` with JetStream, its streams in a directory.
pub struct OwnNats {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl OwnNats {
    pub async fn start(port: u16, dir: &Path) -> Self {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed");
        wait_for_port("nats-server", port, Duration::from_secs(10)).await;
        Self {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on its port and directory.
    pub async fn restart(&mut self) {
        self.kill();
        *self = Self::start(self.port, &self.dir.clone()).await;
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A `redis-server` persisting every write (`appendfsync always`) in a
/// directory, so a restart keeps what it acknowledged.
pub struct OwnRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl OwnRedis {
    pub async fn start(port: u16, dir: &Path) -> Self {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        wait_for_port("redis-server", port, Duration::from_secs(20)).await;
        Self {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on its port and directory.
    pub async fn restart(&mut self) {
        self.kill();
        *self = Self::start(self.port, &self.dir.clone()).await;
    }

    pub async fn kill_and_restart(&mut self) {
        self.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.restart().await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A RabbitMQ node of its own (node name, AMQP and distribution ports,
/// database and logs in a directory), guest/guest on loopback. Its Erlang
/// VM is the process killed; the node's database keeps durable queues and
/// the persistent messages it confirmed.
pub struct OwnRabbit {
    child: Child,
    port: u16,
    dir: PathBuf,
    alive: bool,
}

/// Debian's start script itself: the `rabbitmq-server` on the PATH is a
/// wrapper that, run as root, switches to the `rabbitmq` user and drops
/// the environment that names this node.
const DEBIAN_SCRIPT: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

impl OwnRabbit {
    /// The broker's start script, when RabbitMQ is installed.
    fn script() -> Option<String> {
        if Path::new(DEBIAN_SCRIPT).exists() {
            return Some(DEBIAN_SCRIPT.to_owned());
        }
        let found = Command::new("sh")
            .args(["-c", "command -v rabbitmq-server"])
            .output()
            .ok()?;
        let path = String::from_utf8(found.stdout).ok()?;
        found.status.success().then(|| path.trim().to_owned())
    }

    /// Whether a RabbitMQ node can be started here.
    pub fn installed() -> bool {
        Self::script().is_some()
    }

    pub async fn start(port: u16, dir: &Path) -> Self {
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let child = Command::new(Self::script().expect("rabbitmq-server is installed"))
            .env("RABBITMQ_NODENAME", format!("mgw-test-{port}@localhost"))
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", (port - 1).to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rabbitmq-server starts");
        let mut own = Self {
            child,
            port,
            dir: dir.to_path_buf(),
            alive: true,
        };
        wait_for_port("rabbitmq-server", port, Duration::from_secs(60)).await;
        own.wait_ready().await;
        own
    }

    /// The node opens its port before it takes logins: waits for a connection.
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let open =
                lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default())
                    .await;
            if let Ok(connection) = open {
                let _ = connection.close(200, "ready".into()).await;
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "rabbitmq-server takes connections within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The node's URL, default vhost.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// A free port whose neighbour below (the node's distribution port) is free too.
    pub fn free_port() -> u16 {
        loop {
            let port = free_port();
            if port > 1024 && std::net::TcpListener::bind(("127.0.0.1", port - 1)).is_ok() {
                return port;
            }
        }
    }

    pub fn kill(&mut self) {
        if !std::mem::take(&mut self.alive) {
            return;
        }
        kill(&mut self.child);
        // The pid file names the VM should the script have forked it after all.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill")
                .args(["-9", pid.trim()])
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_file(self.dir.join("pid"));
        }
    }

    /// Starts it again on its port and directory.
    pub async fn restart(&mut self) {
        self.kill();
        *self = Self::start(self.port, &self.dir.clone()).await;
    }
}

impl Drop for OwnRabbit {
    fn drop(&mut self) {
        self.kill();
    }
}

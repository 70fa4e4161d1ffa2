//! Pairing with a local ngrok agent: find the public HTTPS URL that forwards
//! to the receiver's port, and notice when it changes.
//!
//! Every Graph sample tells you to start `ngrok http 8080` and paste its
//! random URL into your configuration, again after every restart. The agent
//! publishes its tunnels at `http://127.0.0.1:4040/api/tunnels`; reading it
//! removes the copy-paste, and watching it lets the subscription manager move
//! subscriptions to a new URL by itself.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

/// Where the ngrok agent serves its local API by default.
pub const DEFAULT_AGENT_API: &str = "http://127.0.0.1:4040";

/// Why no public URL was found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TunnelError {
    /// Nothing answers at the agent's API address.
    AgentUnreachable(String),
    /// The agent answered something that is not its tunnel list.
    BadAnswer(String),
    /// The agent runs, but no HTTPS tunnel forwards to this port.
    NoTunnel {
        /// The receiver's port.
        port: u16,
        /// What the agent's tunnels forward to, for the message.
        forwards: Vec<String>,
    },
}

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelError::AgentUnreachable(why) => write!(
                f,
                "no ngrok agent answers ({why}); start one in another terminal: ngrok http <port>"
            ),
            TunnelError::BadAnswer(why) => {
                write!(f, "the ngrok agent's API answered unexpectedly: {why}")
            }
            TunnelError::NoTunnel { port, forwards } if forwards.is_empty() => {
                write!(f, "the ngrok agent has no tunnel; run: ngrok http {port}")
            }
            TunnelError::NoTunnel { port, forwards } => write!(
                f,
                "no ngrok https tunnel forwards to port {port} (the agent's tunnels forward to {}); run: ngrok http {port}",
                forwards.join(", ")
            ),
        }
    }
}

impl std::error::Error for TunnelError {}

#[derive(Deserialize)]
struct Tunnels {
    tunnels: Vec<Tunnel>,
}

#[derive(Deserialize)]
struct Tunnel {
    public_url: String,
    #[serde(default)]
    proto: String,
    #[serde(default)]
    config: TunnelConfig,
}

#[derive(Default, Deserialize)]
struct TunnelConfig {
    #[serde(default)]
    addr: String,
}

/// The local ngrok agent's API.
#[derive(Clone, Debug)]
pub struct NgrokAgent {
    api: String,
    http: reqwest::Client,
}

impl Default for NgrokAgent {
    fn default() -> Self {
        Self::new(DEFAULT_AGENT_API)
    }
}

impl NgrokAgent {
    /// The agent whose API is at `api` (e.g. `http://127.0.0.1:4040`).
    pub fn new(api: impl Into<String>) -> Self {
        Self {
            api: api.into().trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .no_proxy()
                .build()
                .unwrap_or_default(),
        }
    }

    /// The public HTTPS URL of the tunnel that forwards to `port`.
    ///
    /// # Errors
    ///
    /// [`TunnelError`] says what is missing and what to run.
    pub async fn public_url(&self, port: u16) -> Result<String, TunnelError> {
        let response = self
            .http
            .get(format!("{}/api/tunnels", self.api))
            .send()
            .await
            .map_err(|e| TunnelError::AgentUnreachable(format!("{}: {e}", self.api)))?;
        if !response.status().is_success() {
            return Err(TunnelError::BadAnswer(format!(
                "status {}",
                response.status()
            )));
        }
        let tunnels: Tunnels = response
            .json()
            .await
            .map_err(|e| TunnelError::BadAnswer(e.to_string()))?;
        tunnels
            .tunnels
            .iter()
            .find(|t| {
                (t.proto == "https" || t.public_url.starts_with("https://"))
                    && forwards_to(&t.config.addr) == Some(port)
            })
            .map(|t| t.public_url.clone())
            .ok_or_else(|| TunnelError::NoTunnel {
                port,
                forwards: tunnels
                    .tunnels
                    .iter()
                    .map(|t| t.config.addr.clone())
                    .collect(),
            })
    }

    /// Watches the tunnel of `port`: the receiver holds the current public
    /// URL (`None` while there is none) and changes whenever the agent's does.
    /// Polls every `interval` until every receiver is dropped.
    pub fn watch(self, port: u16, interval: Duration) -> watch::Receiver<Option<String>> {
        let (sender, receiver) = watch::channel(None);
        tokio::spawn(async move {
            loop {
                let url = match self.public_url(port).await {
                    Ok(url) => Some(url),
                    Err(e) => {
                        tracing::debug!(error = %e, "no tunnel right now");
                        None
                    }
                };
                let changed = sender.send_if_modified(|current| {
                    if *current == url {
                        false
                    } else {
                        *current = url.clone();
                        true
                    }
                });
                if changed {
                    match &url {
                        Some(url) => tracing::info!(%url, "ngrok tunnel"),
                        None => tracing::warn!(port, "the ngrok tunnel is gone"),
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = sender.closed() => return,
                }
            }
        });
        receiver
    }
}

/// The local port an ngrok `config.addr` forwards to: `http://localhost:8080`,
/// `localhost:8080`, `127.0.0.1:8080`, `8080`.
fn forwards_to(addr: &str) -> Option<u16> {
    let rest = addr.split("://").last().unwrap_or(addr);
    let host_port = rest.split('/').next().unwrap_or(rest);
    let port = host_port.rsplit(':').next().unwrap_or(host_port);
    let host = host_port
        .strip_suffix(port)
        .map(|h| h.trim_end_matches(':'));
    let local = matches!(
        host,
        None | Some("" | "localhost" | "127.0.0.1" | "[::1]" | "0.0.0.0")
    );
    if local { port.parse().ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_addresses() {
        assert_eq!(forwards_to("http://localhost:8080"), Some(8080));
        assert_eq!(forwards_to("https://localhost:8443"), Some(8443));
        assert_eq!(forwards_to("localhost:8080"), Some(8080));
        assert_eq!(forwards_to("127.0.0.1:3000"), Some(3000));
        assert_eq!(forwards_to("8080"), Some(8080));
        assert_eq!(forwards_to("http://[::1]:8080"), Some(8080));
        assert_eq!(
            forwards_to("http://192.168.1.9:8080"),
            None,
            "another machine's port"
        );
        assert_eq!(forwards_to("http://localhost"), None);
    }
}

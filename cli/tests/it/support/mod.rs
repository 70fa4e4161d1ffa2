//! Real servers on 127.0.0.1:0, a plain HTTP client, and the CLI binary.

#![allow(dead_code, unreachable_pub)]

pub mod cli;
pub mod graph;
pub mod http;
pub mod load;
pub mod receivers;
pub mod relay;
pub mod rich;
pub mod services;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msgraph_webhooks::handler::{HandlerEvent, ResyncEvent};
use msgraph_webhooks::listener::ServerConfig;
use msgraph_webhooks::{BoxError, ChangeEvent, Handler, LifecycleEvent, Receiver, ReceiverBuilder};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// A handler that records every event it gets.
#[derive(Clone, Default)]
pub struct Recorder {
    events: Arc<Mutex<Vec<HandlerEvent>>>,
    arrived: Arc<Notify>,
}

impl Recorder {
    pub fn events(&self) -> Vec<HandlerEvent> {
        self.events.lock().unwrap().clone()
    }

    pub fn changes(&self) -> Vec<ChangeEvent> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                HandlerEvent::Change(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    pub fn lifecycles(&self) -> Vec<LifecycleEvent> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                HandlerEvent::Lifecycle(l) => Some(l),
                _ => None,
            })
            .collect()
    }

    /// Waits until at least `n` events arrived (panics after 10 s).
    pub async fn wait_for(&self, n: usize) -> Vec<HandlerEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.arrived.notified();
            let events = self.events();
            if events.len() >= n {
                return events;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "expected {n} events within 10 s, got {}",
                    self.events().len()
                );
            }
        }
    }

    /// Waits until `done` holds for the events (panics after `within`).
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[HandlerEvent]) -> bool,
    ) -> Vec<HandlerEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let events = self.events();
            if done(&events) {
                return events;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("{what}: not within {within:?}; events: {:?}", self.events());
            }
        }
    }

    /// Waits until at least `n` events arrived; returns the change events.
    pub fn resyncs(&self) -> Vec<ResyncEvent> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                HandlerEvent::Resync(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    pub async fn changes_after(&self, n: usize) -> Vec<ChangeEvent> {
        self.wait_for(n).await;
        self.changes()
    }

    fn push(&self, event: HandlerEvent) {
        self.events.lock().unwrap().push(event);
        self.arrived.notify_waiters();
    }
}

impl Handler for Recorder {
    async fn on_change(&self, event: ChangeEvent) -> Result<(), BoxError> {
        self.push(HandlerEvent::Change(event));
        Ok(())
    }

    async fn on_lifecycle(&self, event: LifecycleEvent) -> Result<(), BoxError> {
        self.push(HandlerEvent::Lifecycle(event));
        Ok(())
    }

    async fn on_resync(&self, event: ResyncEvent) -> Result<(), BoxError> {
        self.push(HandlerEvent::Resync(event));
        Ok(())
    }
}

/// A receiver serving on 127.0.0.1 in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The admin address (`/metrics`), served apart from the endpoint.
    pub admin: SocketAddr,
    pub metrics: Arc<msgraph_webhooks::metrics::Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Serves `builder`'s receiver with the default server configuration.
    pub async fn start<H: Handler>(builder: ReceiverBuilder<H>) -> Self {
        Self::start_with(builder, ServerConfig::default()).await
    }

    pub async fn start_with<H: Handler>(builder: ReceiverBuilder<H>, config: ServerConfig) -> Self {
        let receiver: Receiver<H> = builder.build().expect("receiver builds");
        let metrics = receiver.metrics().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            receiver
                .serve_with_admin(listener, Some(admin_listener), &config, async {
                    let _ = stopped.await;
                })
                .await
        });
        Self {
            addr,
            admin,
            metrics,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A URL on the admin address.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Stops the server and waits until it has drained.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One basic change item (Outlook message shape, reference §3.4).
pub fn message_item(subscription_id: &str, client_state: &str, n: usize) -> serde_json::Value {
    serde_json::json!({
        "id": format!("notification-{n}"),
        "subscriptionId": subscription_id,
        "subscriptionExpirationDateTime": "2026-03-19T22:11:09.952Z",
        "clientState": client_state,
        "changeType": "created",
        "resource": format!("Users/622eaaff-0683-4862-9de4-f2ec83c2bd98/Messages/AAMk{n}"),
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Message",
            "@odata.id": format!("Users/622eaaff-0683-4862-9de4-f2ec83c2bd98/Messages/AAMk{n}"),
            "@odata.etag": "W/\"CQAAABYAAACQ2fKdhq8oSKEDSVrdi3lRAAGDUUXn\"",
            "id": format!("AAMk{n}")
        }
    })
}

/// A collection of the given items.
pub fn envelope(items: Vec<serde_json::Value>) -> String {
    serde_json::json!({ "value": items }).to_string()
}

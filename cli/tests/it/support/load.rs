//! A Graph-like sender for crash tests: it POSTs batches of notifications,
//! remembers which ones got a 202, and — like Graph — retries every batch
//! that did not (connection errors, 503s) until it does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// One POST: its notification ids and body.
#[derive(Clone, Debug)]
pub struct Batch {
    pub ids: Vec<String>,
    pub body: Bytes,
}

/// A notification item whose `id` and `resourceData.id` are `id`.
pub fn item(id: &str, client_state: &str, padding: usize) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "subscriptionId": "6a1f3c2e-7d4b-4e8a-9b1c-2d3e4f5a6b7c",
        "subscriptionExpirationDateTime": "2026-12-01T00:00:00Z",
        "clientState": client_state,
        "changeType": "created",
        "resource": format!("Users/622eaaff/Messages/{id}"),
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Message",
            "@odata.etag": "W/\"1\"",
            "id": id,
            "padding": "x".repeat(padding),
        }
    })
}

/// `count` unique notifications in batches of 1 to 5 items, and
/// `duplicates` of those batches again, spread through the sequence.
pub fn batches(
    prefix: &str,
    count: usize,
    duplicates: usize,
    client_state: &str,
    padding: usize,
) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut n = 0;
    while n < count {
        let size = 1 + (n * 7 + 3) % 5;
        let ids: Vec<String> = (n..(n + size).min(count))
            .map(|i| format!("{prefix}-{i}"))
            .collect();
        n += ids.len();
        let items: Vec<serde_json::Value> = ids
            .iter()
            .map(|id| item(id, client_state, padding))
            .collect();
        out.push(Batch {
            ids,
            body: Bytes::from(serde_json::json!({ "value": items }).to_string()),
        });
    }
    let stride = (out.len() / duplicates.max(1)).max(1);
    for k in 0..duplicates.min(out.len()) {
        // A copy much later than its original, as Graph's retries come.
        let copy = out[k * stride].clone();
        let at = (k * stride + out.len() / 2).min(out.len());
        out.insert(at, copy);
    }
    out
}

/// The sender's shared state.
pub struct Load {
    pending: Mutex<VecDeque<Batch>>,
    acked: Mutex<HashSet<String>>,
    statuses: Mutex<HashMap<String, usize>>,
    targets: RwLock<Vec<SocketAddr>>,
    next: AtomicUsize,
    acked_posts: AtomicUsize,
    stop: AtomicBool,
}

impl Load {
    pub fn new(batches: Vec<Batch>, targets: Vec<SocketAddr>) -> Arc<Self> {
        Arc::new(Self {
            pending: Mutex::new(batches.into()),
            acked: Mutex::default(),
            statuses: Mutex::default(),
            targets: RwLock::new(targets),
            next: AtomicUsize::new(0),
            acked_posts: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        })
    }

    /// Points the sender at new addresses (a restarted receiver).
    pub fn retarget(&self, index: usize, addr: SocketAddr) {
        self.targets.write().unwrap()[index] = addr;
    }

    pub fn acked(&self) -> HashSet<String> {
        self.acked.lock().unwrap().clone()
    }

    /// POSTs answered 202 so far.
    pub fn acked_posts(&self) -> usize {
        self.acked_posts.load(Ordering::SeqCst)
    }

    /// How often each answer came ("202", "503", "error").
    pub fn statuses(&self) -> HashMap<String, usize> {
        self.statuses.lock().unwrap().clone()
    }

    pub fn done(&self) -> bool {
        self.pending.lock().unwrap().is_empty()
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Runs `senders` concurrent senders until every batch got a 202 or
    /// [`stop`](Self::stop) is called.
    pub async fn run(self: &Arc<Self>, senders: usize) {
        let mut tasks = Vec::new();
        for _ in 0..senders {
            let load = self.clone();
            tasks.push(tokio::spawn(async move { load.send_loop().await }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    }

    async fn send_loop(&self) {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(2))
            .build_http::<Full<Bytes>>();
        while !self.stop.load(Ordering::SeqCst) {
            let Some(batch) = self.pending.lock().unwrap().pop_front() else {
                return;
            };
            let target = {
                let targets = self.targets.read().unwrap();
                targets[self.next.fetch_add(1, Ordering::Relaxed) % targets.len()]
            };
            let request = http::Request::post(format!("http://{target}/"))
                .header("content-type", "application/json")
                .body(Full::new(batch.body.clone()))
                .unwrap();
            let status = match tokio::time::timeout(
                Duration::from_secs(10),
                client.request(request),
            )
            .await
            {
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    let _ = response.into_body().collect().await;
                    status.to_string()
                }
                _ => "error".to_owned(),
            };
            *self
                .statuses
                .lock()
                .unwrap()
                .entry(status.clone())
                .or_default() += 1;
            if status == "202" {
                self.acked.lock().unwrap().extend(batch.ids.iter().cloned());
                self.acked_posts.fetch_add(1, Ordering::SeqCst);
            } else {
                // Not acknowledged: Graph would send it again later.
                self.pending.lock().unwrap().push_back(batch);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Collects the `resourceData.id` of every event line a process prints,
/// across restarts (each incarnation's stdout is added with [`Seen::follow`]).
#[derive(Clone, Default)]
pub struct Seen {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    pub fn follow(&self, process: &mut super::cli::Process) {
        let stdout = process.stdout.take().expect("stdout not yet followed");
        let lines = self.lines.clone();
        tokio::spawn(async move {
            let mut stdout = stdout;
            while let Ok(Some(line)) = stdout.next_line().await {
                let event: serde_json::Value = serde_json::from_str(&line).unwrap();
                let id = event["resourceData"]["id"].as_str().unwrap().to_owned();
                lines.lock().unwrap().push(id);
            }
        });
    }

    /// Every id seen, with how many times.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for id in self.lines.lock().unwrap().iter() {
            *counts.entry(id.clone()).or_default() += 1;
        }
        counts
    }

    /// Waits until every id in `expected` was seen (panics after `wait`).
    pub async fn wait_for_all(&self, expected: &HashSet<String>, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let counts = self.counts();
            let missing = expected
                .iter()
                .filter(|id| !counts.contains_key(*id))
                .count();
            if missing == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{missing} acknowledged notifications never reached the handler"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

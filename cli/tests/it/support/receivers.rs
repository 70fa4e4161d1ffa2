//! This crate's receiver in the shapes the emulator's delivery tests need:
//! behind a delay the test turns up and down, and with an inbox that
//! refuses (so the endpoint answers 503) a given number of times.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use futures_util::future::BoxFuture;
use msgraph_webhooks::listener::WebhookService;
use msgraph_webhooks::store::StoreError;
use msgraph_webhooks::store::{Claimed, EntryId, Inbox, InboxStats, MemoryInbox, StoredItem};
use msgraph_webhooks::worker::Workers;
use msgraph_webhooks::{ClientState, Receiver};

use super::Recorder;

/// An inbox that refuses its first `refusals` appends, as a full disk would.
pub struct FlakyInbox {
    inner: MemoryInbox,
    refusals: AtomicUsize,
}

impl FlakyInbox {
    pub fn new(refusals: usize) -> Self {
        Self {
            inner: MemoryInbox::new(10_000),
            refusals: AtomicUsize::new(refusals),
        }
    }
}

impl Inbox for FlakyInbox {
    fn append(&self, items: Vec<StoredItem>) -> BoxFuture<'_, Result<(), StoreError>> {
        let refuse = self
            .refusals
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            return Box::pin(async { Err(StoreError::unavailable("refused by the test")) });
        }
        self.inner.append(items)
    }

    fn claim(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>> {
        self.inner.claim(max, wait)
    }

    fn complete(&self, id: EntryId) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.complete(id)
    }

    fn retry(&self, claimed: Claimed, delay: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.retry(claimed, delay)
    }

    fn dead_letter(
        &self,
        claimed: Claimed,
        reason: String,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.dead_letter(claimed, reason)
    }

    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, StoreError>> {
        self.inner.stats()
    }
}

#[derive(Clone)]
struct Front {
    service: WebhookService,
    delay_ms: Arc<AtomicU64>,
}

async fn front(State(front): State<Front>, request: Request) -> axum::response::Response {
    // `/lifecycle` is never slow: lifecycle notifications must get through.
    if request.uri().path() != "/lifecycle" {
        let delay = front.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
    front.service.handle(request).await.into_response()
}

/// This crate's receiver, mounted in an axum app behind an adjustable delay.
pub struct SlowReceiver {
    pub addr: SocketAddr,
    pub recorder: Recorder,
    delay_ms: Arc<AtomicU64>,
    workers: Option<Workers>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowReceiver {
    pub async fn start(client_state: &str, inbox: Option<Arc<dyn Inbox>>) -> Self {
        let recorder = Recorder::default();
        let mut builder = Receiver::builder(recorder.clone())
            .client_state(ClientState::new(client_state))
            .workers(2);
        if let Some(inbox) = inbox {
            builder = builder.inbox(inbox);
        }
        let receiver = builder.build().unwrap();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let app = axum::Router::new().fallback(front).with_state(Front {
            service: receiver.service(),
            delay_ms: delay_ms.clone(),
        });
        let workers = receiver.spawn_workers();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            recorder,
            delay_ms,
            workers: Some(workers),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every answer (but on `/lifecycle`) from now on waits this long.
    pub fn delay(&self, delay: Duration) {
        self.delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap(), Ordering::SeqCst);
    }
}

impl Drop for SlowReceiver {
    fn drop(&mut self) {
        self.task.abort();
        drop(self.workers.take());
    }
}

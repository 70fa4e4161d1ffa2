//! A bound on any inbox's backlog: beyond it, appends are refused with
//! [`StoreError::Full`], which the listener answers with `503` and
//! `Retry-After`, so Graph keeps the notifications and retries them later
//! (with exponential back-off, for up to 4 hours:
//! "Receive change notifications through webhooks",
//! <https://learn.microsoft.com/graph/change-notifications-delivery-webhooks>)
//! instead of the disk filling while the workers fall behind.
//!
//! The depth is the store's own ([`Inbox::stats`]: every item stored and not
//! completed, whoever appended it — several processes share a durable
//! store), read at most every 100 ms (or every twenty times as long as the
//! last read took, on a store where counting costs: PostgreSQL counts its
//! rows) and counted up by this process's appends in between, so the bound
//! costs one query per interval, not one per request, and no append waits
//! for it: one append reads while the others go by the last reading. The
//! bound may be overshot by what the other processes append within one
//! interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::{Claimed, EntryId, Inbox, InboxStats, StoreError, StoredItem};

/// How long a read of the store's depth is trusted, at least.
const REFRESH: Duration = Duration::from_millis(100);
/// ... and at least this many times as long as the read took.
const REFRESH_PER_READ: u32 = 20;

/// An [`Inbox`] that refuses appends once `max` items wait in it; every
/// other operation goes to the inner inbox as is.
///
/// The depth is the store's own ([`Inbox::stats`], counting every
/// process's items on a shared store), read at most every 100 ms and
/// counted up by this process's appends in between; the bound may be
/// overshot by what other processes append within one interval.
///
/// ```
/// use std::sync::Arc;
/// use msgraph_webhooks::store::{BoundedInbox, MemoryInbox};
///
/// let inbox = BoundedInbox::new(Arc::new(MemoryInbox::new(1_000_000)), 50_000);
/// assert_eq!(inbox.max(), 50_000);
/// ```
pub struct BoundedInbox {
    inner: Arc<dyn Inbox>,
    max: u64,
    estimate: Arc<std::sync::Mutex<Estimate>>,
}

/// What this process believes the depth is.
#[derive(Default)]
struct Estimate {
    depth: u64,
    read_at: Option<Instant>,
    /// How long the last reading is trusted.
    trust: Duration,
    /// An append is reading the depth now.
    reading: bool,
}

/// Clears [`Estimate::reading`] however the read ends (the request that
/// reads may be cancelled mid-read).
struct Reading(Arc<std::sync::Mutex<Estimate>>);

impl Drop for Reading {
    fn drop(&mut self) {
        lock(&self.0).reading = false;
    }
}

fn lock(estimate: &std::sync::Mutex<Estimate>) -> std::sync::MutexGuard<'_, Estimate> {
    estimate.lock().unwrap_or_else(|e| e.into_inner())
}

impl BoundedInbox {
    /// Bounds `inner` to `max` waiting items.
    pub fn new(inner: Arc<dyn Inbox>, max: u64) -> Self {
        Self {
            inner,
            max,
            estimate: Arc::default(),
        }
    }

    /// The bound.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Whether `adding` more items fit; refreshes the depth when stale. A
    /// store that can't say lets the append itself answer.
    async fn fits(&self, adding: u64) -> bool {
        let reading = {
            let mut estimate = lock(&self.estimate);
            let stale = estimate
                .read_at
                .is_none_or(|at| at.elapsed() >= estimate.trust.max(REFRESH));
            if stale && !estimate.reading {
                estimate.reading = true;
                Some(Reading(self.estimate.clone()))
            } else {
                None
            }
        };
        if let Some(reading) = reading {
            let started = Instant::now();
            let read = self.inner.stats().await;
            let mut estimate = lock(&reading.0);
            match read {
                Ok(stats) => {
                    estimate.depth = stats.depth;
                    estimate.read_at = Some(Instant::now());
                    estimate.trust = started.elapsed() * REFRESH_PER_READ;
                }
                Err(_) => return true,
            }
        }
        lock(&self.estimate).depth.saturating_add(adding) <= self.max
    }

    async fn append_bounded(&self, items: Vec<StoredItem>) -> Result<(), StoreError> {
        let adding = items.len() as u64;
        if !self.fits(adding).await {
            return Err(StoreError::Full);
        }
        self.inner.append(items).await?;
        let mut estimate = lock(&self.estimate);
        estimate.depth = estimate.depth.saturating_add(adding);
        Ok(())
    }
}

impl std::fmt::Debug for BoundedInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedInbox")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Inbox for BoundedInbox {
    fn append(&self, items: Vec<StoredItem>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.append_bounded(items))
    }

    fn claim(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>> {
        self.inner.claim(max, wait)
    }

    fn complete(&self, id: EntryId) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.complete(id)
    }

    fn complete_many(&self, ids: Vec<EntryId>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.complete_many(ids)
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

    fn is_durable(&self) -> bool {
        self.inner.is_durable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::ValidationTokens;
    use crate::store::MemoryInbox;

    fn items(n: usize) -> Vec<StoredItem> {
        (0..n)
            .map(|i| {
                let raw = serde_json::value::RawValue::from_string(format!("{{\"n\":{i}}}"));
                StoredItem::new(raw.unwrap(), ValidationTokens::Absent)
            })
            .collect()
    }

    #[tokio::test]
    async fn appends_beyond_the_bound_are_full_until_the_workers_catch_up() {
        let inner = Arc::new(MemoryInbox::new(1000));
        let bounded = BoundedInbox::new(inner.clone(), 10);
        bounded.append(items(6)).await.unwrap();
        bounded.append(items(4)).await.unwrap();
        // Counted without waiting for a refresh: the eleventh doesn't fit.
        assert!(matches!(
            bounded.append(items(1)).await,
            Err(StoreError::Full)
        ));
        assert_eq!(
            inner.stats().await.unwrap().depth,
            10,
            "nothing half-stored"
        );
        // A batch that would cross the bound is refused whole.
        let claimed = bounded.claim(5, Duration::ZERO).await.unwrap();
        for item in claimed {
            bounded.complete(item.id).await.unwrap();
        }
        assert!(matches!(
            bounded.append(items(6)).await,
            Err(StoreError::Full)
        ));
        tokio::time::sleep(REFRESH).await;
        bounded.append(items(5)).await.unwrap();
        assert_eq!(inner.stats().await.unwrap().depth, 10);
        assert!(matches!(
            bounded.append(items(1)).await,
            Err(StoreError::Full)
        ));
    }

    /// An inbox whose depth reads wait until let go, and are counted.
    struct SlowCount {
        inner: MemoryInbox,
        go: tokio::sync::Semaphore,
        reads: std::sync::atomic::AtomicUsize,
    }

    impl Inbox for SlowCount {
        fn append(&self, items: Vec<StoredItem>) -> BoxFuture<'_, Result<(), StoreError>> {
            self.inner.append(items)
        }
        fn claim(
            &self,
            max: usize,
            wait: Duration,
        ) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>> {
            self.inner.claim(max, wait)
        }
        fn complete(&self, id: EntryId) -> BoxFuture<'_, Result<(), StoreError>> {
            self.inner.complete(id)
        }
        fn retry(
            &self,
            claimed: Claimed,
            delay: Duration,
        ) -> BoxFuture<'_, Result<(), StoreError>> {
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
            Box::pin(async move {
                self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.go.acquire().await.unwrap().forget();
                self.inner.stats().await
            })
        }
    }

    #[tokio::test]
    async fn no_append_waits_for_another_ones_depth_read_and_a_cancelled_read_is_redone() {
        let slow = Arc::new(SlowCount {
            inner: MemoryInbox::new(1000),
            go: tokio::sync::Semaphore::new(0),
            reads: std::sync::atomic::AtomicUsize::new(0),
        });
        let bounded = Arc::new(BoundedInbox::new(slow.clone(), 100));
        let reader = tokio::spawn({
            let bounded = bounded.clone();
            async move { bounded.append(items(1)).await }
        });
        while slow.reads.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // The first append is reading (and stuck there): the others go by
        // the last reading instead of queueing behind it.
        for _ in 0..5 {
            tokio::time::timeout(Duration::from_secs(30), bounded.append(items(1)))
                .await
                .expect("not held up by the read")
                .unwrap();
        }
        // The reading append goes away mid-read (its request cancelled)...
        reader.abort();
        let _ = reader.await;
        assert_eq!(slow.reads.load(std::sync::atomic::Ordering::SeqCst), 1);
        // ...and the next stale check reads again rather than never.
        slow.go.add_permits(1);
        bounded.append(items(1)).await.unwrap();
        assert_eq!(slow.reads.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(slow.inner.stats().await.unwrap().depth, 6);
    }

    #[tokio::test]
    async fn what_other_processes_append_counts_after_a_refresh() {
        let inner = Arc::new(MemoryInbox::new(1000));
        let bounded = BoundedInbox::new(inner.clone(), 10);
        bounded.append(items(1)).await.unwrap();
        // Another process fills the shared store.
        inner.append(items(9)).await.unwrap();
        tokio::time::sleep(REFRESH).await;
        assert!(matches!(
            bounded.append(items(1)).await,
            Err(StoreError::Full)
        ));
    }
}

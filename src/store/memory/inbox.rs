use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::store::{
    Claimed, DeadLetter, DeadLetters, EntryId, Inbox, InboxStats, StoreError, StoredItem, unix_ms,
};

/// A bounded in-memory inbox.
///
/// Fast and simple, and everything in it is lost when the process ends: use
/// it for tests, or where losing acknowledged notifications is acceptable.
/// It holds at most a number of items and a number of bytes (the items' raw
/// JSON and their deliveries' tokens, each counted once); when full,
/// `append` fails with [`StoreError::Full`] and Graph is told to retry.
#[derive(Debug)]
pub struct MemoryInbox {
    capacity: usize,
    max_bytes: usize,
    state: Mutex<State>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    ready: VecDeque<Claimed>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    /// Every item held (ready, delayed or claimed): the bytes it counts for.
    held: HashMap<EntryId, usize>,
    /// The held items that are claimed.
    claimed: std::collections::HashSet<EntryId>,
    /// The sum of `held`.
    bytes: usize,
    dead: VecDeque<(Claimed, String, i64)>,
    /// Bytes of the items in `dead`.
    dead_bytes: usize,
    /// A claimer was woken for new items and has not claimed yet: further
    /// appends leave the others asleep, and it takes them all in one batch.
    waking: bool,
}

/// Dead letters kept in memory, newest last: at most this many, and at most
/// a quarter of the inbox's byte capacity.
const DEAD_LETTERS_KEPT: usize = 1000;

#[derive(Debug)]
struct Delayed {
    due: Instant,
    seq: u64,
    entry: Claimed,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

impl State {
    fn depth(&self) -> usize {
        self.held.len()
    }

    fn promote_due(&mut self, now: Instant) {
        while self.delayed.peek().is_some_and(|d| d.0.due <= now) {
            if let Some(Reverse(d)) = self.delayed.pop() {
                self.ready.push_back(d.entry);
            }
        }
    }
}

impl MemoryInbox {
    /// Items the receiver's default inbox holds at most: 100 000.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// Bytes an inbox holds at most unless told otherwise: 256 MiB.
    pub const DEFAULT_MAX_BYTES: usize = 256 * 1024 * 1024;

    /// An inbox that holds at most `capacity` items, and at most
    /// [`DEFAULT_MAX_BYTES`](Self::DEFAULT_MAX_BYTES).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            max_bytes: Self::DEFAULT_MAX_BYTES,
            state: Mutex::default(),
            ready: Notify::new(),
        }
    }

    /// Holds at most `max_bytes` of items (their raw JSON, and their
    /// deliveries' tokens once each).
    #[must_use]
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The items dead-lettered so far (the last 1000, within a quarter of the
    /// byte capacity), with their reasons.
    pub fn dead_letters(&self) -> Vec<(Claimed, String)> {
        self.lock()
            .dead
            .iter()
            .map(|(c, reason, _)| (c.clone(), reason.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything
        // that could panic, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes one waiting claimer for ready items, unless one is already on
    /// its way. Waking every claimer for each append (or one per append)
    /// hands each a batch of one; under load this lets batches fill up
    /// while the woken claimer gets going, and when it claims, the next
    /// append wakes the next claimer.
    fn wake_one(&self, state: &mut State) {
        if !state.waking {
            state.waking = true;
            self.ready.notify_one();
        }
    }

    /// Ends a claim, the item staying held (a retry).
    fn unclaim(&self, state: &mut State, id: &EntryId) -> Result<(), StoreError> {
        if state.claimed.remove(id) {
            Ok(())
        } else {
            Err(StoreError::unavailable(format!("item {id} is not claimed")))
        }
    }

    /// Ends a claim and lets the item go (completed or dead).
    fn release(&self, state: &mut State, id: &EntryId) -> Result<(), StoreError> {
        if state.claimed.remove(id) {
            let bytes = state.held.remove(id).unwrap_or(0);
            state.bytes -= bytes;
            Ok(())
        } else {
            Err(StoreError::unavailable(format!("item {id} is not claimed")))
        }
    }
}

impl Inbox for MemoryInbox {
    fn append(&self, items: Vec<StoredItem>) -> BoxFuture<'_, Result<(), StoreError>> {
        let charges = charges(&items);
        let bytes: usize = charges.iter().sum();
        let mut state = self.lock();
        let result = if state.depth() + items.len() > self.capacity
            || state.bytes + bytes > self.max_bytes
        {
            Err(StoreError::Full)
        } else {
            state.bytes += bytes;
            for (item, charge) in items.into_iter().zip(charges) {
                state.next_id += 1;
                let id = EntryId::new(state.next_id.to_string());
                state.held.insert(id.clone(), charge);
                state.ready.push_back(Claimed {
                    id,
                    item,
                    attempts: 0,
                });
            }
            self.wake_one(&mut state);
            Ok(())
        };
        drop(state);
        Box::pin(std::future::ready(result))
    }

    fn claim(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>> {
        Box::pin(async move {
            let deadline = Instant::now() + wait;
            loop {
                let notified = self.ready.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let next_due = {
                    let mut state = self.lock();
                    state.waking = false;
                    state.promote_due(Instant::now());
                    if !state.ready.is_empty() {
                        let n = max.min(state.ready.len()).max(1);
                        let batch: Vec<Claimed> = state.ready.drain(..n).collect();
                        for entry in &batch {
                            state.claimed.insert(entry.id.clone());
                        }
                        if !state.ready.is_empty() {
                            // More than one batch waits: another claimer's turn.
                            self.wake_one(&mut state);
                        }
                        return Ok(batch);
                    }
                    state.delayed.peek().map(|d| d.0.due)
                };
                let wake = next_due.map_or(deadline, |due| due.min(deadline));
                if Instant::now() >= deadline {
                    return Ok(Vec::new());
                }
                tokio::select! {
                    () = &mut notified => {}
                    () = tokio::time::sleep_until(wake) => {}
                }
            }
        })
    }

    fn complete(&self, id: EntryId) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut state = self.lock();
        let result = self.release(&mut state, &id);
        Box::pin(std::future::ready(result))
    }

    fn retry(&self, claimed: Claimed, delay: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        let result = {
            let mut state = self.lock();
            self.unclaim(&mut state, &claimed.id).map(|()| {
                state.next_id += 1;
                let seq = state.next_id;
                state.delayed.push(Reverse(Delayed {
                    due: Instant::now() + delay,
                    seq,
                    entry: claimed,
                }));
            })
        };
        // A sleeping claimer may need to wake earlier for this item.
        self.ready.notify_waiters();
        Box::pin(std::future::ready(result))
    }

    fn dead_letter(
        &self,
        claimed: Claimed,
        reason: String,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut state = self.lock();
        let result = self.release(&mut state, &claimed.id).map(|()| {
            state.dead_bytes += claimed.item.byte_len();
            state
                .dead
                .push_back((claimed, reason, unix_ms(SystemTime::now())));
            while state.dead.len() > DEAD_LETTERS_KEPT
                || (state.dead_bytes > self.max_bytes / 4 && state.dead.len() > 1)
            {
                if let Some((old, _, _)) = state.dead.pop_front() {
                    state.dead_bytes -= old.item.byte_len();
                    tracing::warn!(id = %old.id, "in-memory dead letters full: forgot the oldest");
                }
            }
        });
        Box::pin(std::future::ready(result))
    }

    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, StoreError>> {
        let state = self.lock();
        let now = unix_ms(SystemTime::now());
        let oldest = state
            .ready
            .iter()
            .chain(state.delayed.iter().map(|d| &d.0.entry))
            .map(|c| c.item.received_at_ms)
            .min();
        let stats = InboxStats {
            depth: state.depth() as u64,
            oldest_age: oldest.map(|t| Duration::from_millis(u64::try_from(now - t).unwrap_or(0))),
        };
        Box::pin(std::future::ready(Ok(stats)))
    }
}

/// The bytes each item counts for: its raw JSON, and its share of its
/// delivery's tokens (which its items hold together, once).
fn charges(items: &[StoredItem]) -> Vec<usize> {
    let (groups, token_sets) = crate::store::token_groups(items);
    let mut members = vec![0usize; token_sets.len()];
    for g in groups.iter().flatten() {
        members[*g] += 1;
    }
    items
        .iter()
        .zip(groups)
        .map(|(item, group)| {
            let share = group.map_or(0, |g| token_sets[g].byte_len().div_ceil(members[g]));
            item.raw.get().len() + share
        })
        .collect()
}

impl DeadLetters for MemoryInbox {
    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, StoreError>> {
        let letters = self
            .lock()
            .dead
            .iter()
            .take(limit)
            .map(|(claimed, reason, dead_at_ms)| DeadLetter {
                id: claimed.id.clone(),
                item: claimed.item.clone(),
                attempts: claimed.attempts,
                reason: reason.clone(),
                dead_at_ms: *dead_at_ms,
            })
            .collect();
        Box::pin(std::future::ready(Ok(letters)))
    }

    fn replay(&self, ids: Vec<EntryId>) -> BoxFuture<'_, Result<usize, StoreError>> {
        let moved = {
            let mut state = self.lock();
            let dead = std::mem::take(&mut state.dead);
            let mut moved = 0;
            for (mut claimed, reason, at) in dead {
                if ids.is_empty() || ids.contains(&claimed.id) {
                    claimed.attempts = 0;
                    let bytes = claimed.item.byte_len();
                    state.dead_bytes -= bytes;
                    state.bytes += bytes;
                    state.held.insert(claimed.id.clone(), bytes);
                    state.ready.push_back(claimed);
                    moved += 1;
                } else {
                    state.dead.push_back((claimed, reason, at));
                }
            }
            moved
        };
        self.ready.notify_waiters();
        Box::pin(std::future::ready(Ok(moved)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::ValidationTokens;

    fn item(n: u32) -> StoredItem {
        let raw = serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap();
        StoredItem::new(raw, ValidationTokens::Absent)
    }

    #[tokio::test]
    async fn append_claim_complete_and_capacity() {
        let inbox = MemoryInbox::new(3);
        inbox.append(vec![item(1), item(2)]).await.unwrap();
        assert!(matches!(
            inbox.append(vec![item(3), item(4)]).await,
            Err(StoreError::Full)
        ));
        let batch = inbox.claim(10, Duration::ZERO).await.unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(
            inbox.stats().await.unwrap().depth,
            2,
            "claimed items still count"
        );
        inbox.complete(batch[0].id.clone()).await.unwrap();
        assert!(
            inbox.complete(batch[0].id.clone()).await.is_err(),
            "completing twice is an error"
        );
        inbox
            .dead_letter(batch[1].clone(), "boom".into())
            .await
            .unwrap();
        assert_eq!(inbox.stats().await.unwrap().depth, 0);
        assert_eq!(inbox.dead_letters().len(), 1);
        assert!(
            inbox
                .claim(10, Duration::from_millis(10))
                .await
                .unwrap()
                .is_empty()
        );
    }

    fn sized(bytes: usize, tokens: &ValidationTokens) -> StoredItem {
        let raw = format!("\"{}\"", "x".repeat(bytes - 2));
        let raw = serde_json::value::RawValue::from_string(raw).unwrap();
        StoredItem::new(raw, tokens.clone())
    }

    #[tokio::test]
    async fn the_byte_capacity_counts_raw_items_and_each_deliverys_tokens_once() {
        let inbox = MemoryInbox::new(1000).max_bytes(10_000);
        let tokens = ValidationTokens::Tokens(vec!["t".repeat(5_000)].into());
        // 10 items of 100 bytes sharing 5 000 bytes of tokens: 6 000 bytes.
        let delivery = (0..10).map(|_| sized(100, &tokens)).collect();
        inbox.append(delivery).await.unwrap();
        assert!(matches!(
            inbox
                .append(vec![sized(4_001, &ValidationTokens::Absent)])
                .await,
            Err(StoreError::Full)
        ));
        inbox
            .append(vec![sized(4_000, &ValidationTokens::Absent)])
            .await
            .unwrap();
        // Completing items gives their bytes back.
        let batch = inbox.claim(100, Duration::ZERO).await.unwrap();
        inbox
            .complete_many(batch.into_iter().map(|c| c.id).collect())
            .await
            .unwrap();
        inbox
            .append(vec![sized(10_000, &ValidationTokens::Absent)])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn dead_letters_keep_to_a_quarter_of_the_byte_capacity() {
        let inbox = MemoryInbox::new(1000).max_bytes(40_000);
        for _ in 0..5 {
            inbox
                .append(vec![sized(4_000, &ValidationTokens::Absent)])
                .await
                .unwrap();
            let claimed = inbox.claim(1, Duration::ZERO).await.unwrap().remove(0);
            inbox.dead_letter(claimed, "boom".into()).await.unwrap();
        }
        let kept: Vec<String> = inbox
            .dead_letters()
            .iter()
            .map(|(c, _)| c.id.as_str().to_owned())
            .collect();
        assert_eq!(kept, ["4", "5"], "the newest within 10 000 bytes");
        assert_eq!(inbox.replay(Vec::new()).await.unwrap(), 2);
        assert_eq!(inbox.stats().await.unwrap().depth, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn retried_items_come_back_after_their_delay() {
        let inbox = MemoryInbox::new(10);
        inbox.append(vec![item(1)]).await.unwrap();
        let mut first = inbox.claim(1, Duration::ZERO).await.unwrap().remove(0);
        first.attempts += 1;
        inbox.retry(first, Duration::from_secs(5)).await.unwrap();
        assert!(
            inbox
                .claim(1, Duration::from_secs(4))
                .await
                .unwrap()
                .is_empty()
        );
        let again = inbox.claim(1, Duration::from_secs(2)).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 1);
    }

    #[tokio::test]
    async fn a_waiting_claimer_wakes_on_append() {
        let inbox = std::sync::Arc::new(MemoryInbox::new(10));
        let waiter = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.claim(5, Duration::from_secs(30)).await.unwrap().len() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        inbox.append(vec![item(1)]).await.unwrap();
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .unwrap()
                .unwrap(),
            1
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claimers_woken_one_at_a_time_still_get_every_item() {
        // Claimers wait long: a lost wake-up would leave items unclaimed
        // past the deadline below.
        const ITEMS: u32 = 2000;
        let inbox = std::sync::Arc::new(MemoryInbox::new(10_000));
        let claimed = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let claimers: Vec<_> = (0..4)
            .map(|_| {
                let (inbox, claimed) = (inbox.clone(), claimed.clone());
                tokio::spawn(async move {
                    loop {
                        let batch = inbox.claim(16, Duration::from_secs(60)).await.unwrap();
                        let n = u32::try_from(batch.len()).unwrap();
                        inbox
                            .complete_many(batch.into_iter().map(|c| c.id).collect())
                            .await
                            .unwrap();
                        claimed.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for n in 0..ITEMS {
            inbox.append(vec![item(n)]).await.unwrap();
            if n % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while claimed.load(std::sync::atomic::Ordering::SeqCst) < ITEMS {
            assert!(
                Instant::now() < deadline,
                "{} of {ITEMS} items claimed",
                claimed.load(std::sync::atomic::Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for claimer in claimers {
            claimer.abort();
        }
        assert_eq!(claimed.load(std::sync::atomic::Ordering::SeqCst), ITEMS);
        assert_eq!(inbox.stats().await.unwrap().depth, 0);
    }
}

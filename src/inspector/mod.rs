//! The inspector: what happened to the last deliveries, for a person
//! looking at a page and for scripts reading its JSON.
//!
//! A receiver built with an [`Inspector`] records every request to its
//! notification endpoint (the time, what it was, the status it got, how
//! long the answer took) and each item's fate as it moves on: accepted,
//! handled, retried, dead-lettered, or rejected with its reason and what to
//! do about it. It keeps the last [`Inspector::capacity`] deliveries in a
//! ring, newest first, with at most [`MAX_ITEMS`] items each, so memory is
//! bounded whatever is sent. It never keeps a `clientState`; the decrypted
//! resource only when built with [`Inspector::showing_secrets`].
//!
//! Recording is a short critical section per delivery (the records are
//! built before the lock is taken). The [throttle-risk watch](watch), which
//! every answer feeds whether or not an inspector is attached, lives in the
//! [`Metrics`](crate::metrics::Metrics) and takes no lock at all.

mod api;
mod record;
mod traffic;
pub mod watch;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;

pub use api::InspectorApi;
pub use record::{Delivery, DeliveryPath, Fate, Item, hint};
pub use traffic::{Quiet, Traffic};
pub use watch::{Risk, ThrottleRisk, Watch};

pub(crate) use record::Kept;
use record::Record;
pub(crate) use record::item_of;

/// The most items kept of one delivery; the rest are counted.
pub const MAX_ITEMS: usize = 100;

/// The most subscriptions whose traffic is counted.
const MAX_TRAFFIC: usize = 10_000;

/// The most resources whose last resync is kept.
const MAX_RESYNCS: usize = 1000;

/// The deliveries kept unless told otherwise.
pub const DEFAULT_CAPACITY: usize = 500;

/// The last deliveries to a receiver and what became of their items.
pub struct Inspector {
    ring: Mutex<Ring>,
    changed: tokio::sync::Notify,
    hasher: RandomState,
    capacity: usize,
    show_secrets: bool,
    /// Set when the admin address stops: waits end at once.
    closed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector")
            .field("capacity", &self.capacity)
            .field("show_secrets", &self.show_secrets)
            .finish_non_exhaustive()
    }
}

impl Default for Inspector {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

#[derive(Default)]
struct Ring {
    /// The last sequence number given out.
    seq: u64,
    /// Bumped by every change; records carry the version of their last one.
    version: u64,
    deliveries: VecDeque<Record>,
    /// Where an item is: its delivery's seq and its index there, by the hash
    /// of its raw text (the same text the worker later holds).
    items: HashMap<u64, (u64, usize)>,
    /// What arrived per subscription, for accepted items only (so only
    /// subscriptions the registry knows, however many ids senders invent).
    traffic: HashMap<String, Traffic>,
    /// The last resync handled per resource.
    resyncs: HashMap<String, (String, OffsetDateTime)>,
}

impl Ring {
    fn get_mut(&mut self, seq: u64) -> Option<&mut Record> {
        let first = self.deliveries.front()?.seq;
        let index = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.deliveries.get_mut(index)
    }
}

/// A delivery as the endpoint saw it, before it is recorded.
#[derive(Debug)]
pub(crate) struct Seen {
    pub(crate) path: DeliveryPath,
    pub(crate) items: Vec<(u64, Kept)>,
    /// The accepted items' subscriptions, and the lifecycle event of those
    /// that are lifecycle notifications: what the traffic counts.
    pub(crate) arrivals: Vec<(String, Option<String>)>,
    pub(crate) more_items: usize,
}

impl Seen {
    /// Nothing seen yet, of a request not yet told apart.
    pub(crate) fn new() -> Self {
        Self {
            path: DeliveryPath::Other,
            items: Vec::new(),
            arrivals: Vec::new(),
            more_items: 0,
        }
    }
}

/// Which deliveries a [`Inspector::deliveries`] call wants.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Filter {
    /// Only records changed after this version.
    pub since: u64,
    /// Only deliveries with an item of this subscription (and, with
    /// `state` too, an item of this subscription in that state).
    pub subscription_id: Option<String>,
    /// Only deliveries with an item in this state (`rejected`, `handled`, …;
    /// see [`Fate::state`]).
    pub state: Option<String>,
    /// At most this many (newest first).
    pub limit: Option<usize>,
}

/// An answer of [`Inspector::deliveries`].
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Page {
    /// The inspector's version: pass it as `since` to get only what changes next.
    pub version: u64,
    /// The deliveries, newest first.
    pub deliveries: Vec<Delivery>,
}

impl Inspector {
    /// An inspector keeping the last `capacity` deliveries (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            ring: Mutex::new(Ring::default()),
            changed: tokio::sync::Notify::new(),
            hasher: RandomState::new(),
            capacity: capacity.max(1),
            show_secrets: false,
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Keeps each item's decrypted resource too. Anyone who can read the
    /// admin address then reads the data of your tenant: a flag for a
    /// developer's machine.
    pub fn showing_secrets(mut self) -> Self {
        self.show_secrets = true;
        self
    }

    /// How many deliveries are kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether decrypted resources are kept.
    pub fn shows_secrets(&self) -> bool {
        self.show_secrets
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key an item's fate is found by later.
    pub(crate) fn key(&self, raw: &RawValue) -> u64 {
        self.hasher.hash_one(raw.get())
    }

    /// Records a delivery the endpoint answered.
    pub(crate) fn record(&self, seen: Seen, status: u16, latency: Duration) {
        self.push(seen, Some(status), Some(latency));
    }

    fn push(&self, seen: Seen, status: Option<u16>, latency: Option<Duration>) {
        let at = OffsetDateTime::now_utc();
        let (keys, items): (Vec<u64>, Vec<Kept>) = seen.items.into_iter().unzip();
        let mut ring = self.lock();
        ring.seq += 1;
        ring.version += 1;
        let (seq, version) = (ring.seq, ring.version);
        if ring.deliveries.len() == self.capacity
            && let Some(old) = ring.deliveries.pop_front()
        {
            for key in &old.keys {
                // A later copy of the same item points elsewhere: keep that.
                if ring.items.get(key).is_some_and(|(s, _)| *s == old.seq) {
                    ring.items.remove(key);
                }
            }
        }
        for (index, key) in keys.iter().enumerate() {
            ring.items.insert(*key, (seq, index));
        }
        for (id, lifecycle) in seen.arrivals {
            let room = ring.traffic.len() < MAX_TRAFFIC;
            match ring.traffic.get_mut(&id) {
                Some(traffic) => traffic.arrived(at, lifecycle.as_deref()),
                // Bounded: with any clientState accepted, senders name the ids.
                None if room => ring
                    .traffic
                    .entry(id)
                    .or_default()
                    .arrived(at, lifecycle.as_deref()),
                None => {}
            }
        }
        ring.deliveries.push_back(Record {
            seq,
            version,
            at,
            path: seen.path,
            status,
            ack_ms: latency.map(|l| l.as_secs_f64() * 1000.0),
            items,
            more_items: seen.more_items,
            keys,
        });
        drop(ring);
        self.changed.notify_waiters();
    }

    /// Records what became of a stored item, found by its raw text; an item
    /// this endpoint did not receive (or that left the ring) gets a
    /// [`DeliveryPath::Stored`] record of its own.
    pub(crate) fn settle(&self, raw: &RawValue, fate: Fate, data: Option<&serde_json::Value>) {
        let key = self.key(raw);
        let data = data.filter(|_| self.show_secrets).cloned();
        let mut ring = self.lock();
        let Some(&(seq, index)) = ring.items.get(&key) else {
            drop(ring);
            let mut kept = Kept::new(raw, fate);
            kept.resource_data = data;
            let mut seen = Seen::new();
            seen.path = DeliveryPath::Stored;
            seen.items.push((key, kept));
            self.push(seen, None, None);
            return;
        };
        ring.version += 1;
        let version = ring.version;
        let Some(delivery) = ring.get_mut(seq) else {
            return;
        };
        delivery.version = version;
        if let Some(item) = delivery.items.get_mut(index) {
            item.fate = fate;
            if data.is_some() {
                item.resource_data = data;
            }
        }
        drop(ring);
        self.changed.notify_waiters();
    }

    /// The deliveries `filter` asks for, newest first.
    pub fn deliveries(&self, filter: &Filter) -> Page {
        let ring = self.lock();
        let item_wanted = |kept: &Kept| {
            filter
                .state
                .as_deref()
                .is_none_or(|state| kept.fate.state() == state)
                && filter
                    .subscription_id
                    .as_deref()
                    .is_none_or(|id| kept.item().subscription_id.as_deref() == Some(id))
        };
        let unfiltered = filter.subscription_id.is_none() && filter.state.is_none();
        let wanted = |d: &&Record| {
            d.version > filter.since && (unfiltered || d.items.iter().any(item_wanted))
        };
        let deliveries = ring
            .deliveries
            .iter()
            .rev()
            .filter(wanted)
            .take(filter.limit.unwrap_or(usize::MAX))
            .map(Record::view)
            .collect();
        Page {
            version: ring.version,
            deliveries,
        }
    }

    /// What arrived for each subscription since this inspector started.
    pub fn traffic(&self) -> HashMap<String, Traffic> {
        self.lock().traffic.clone()
    }

    /// Subscriptions that used to receive and have gone quiet for much
    /// longer than usual at `now` (see [`Traffic::quiet_at`]).
    pub fn quiet_at(&self, now: OffsetDateTime) -> Vec<Quiet> {
        let ring = self.lock();
        let mut quiet: Vec<Quiet> = ring
            .traffic
            .iter()
            .filter_map(|(id, traffic)| traffic.quiet_at(id, now))
            .collect();
        quiet.sort_by(|a, b| a.subscription_id.cmp(&b.subscription_id));
        quiet
    }

    /// Ends every [`wait_for`](Self::wait_for) now and later: the admin
    /// address is shutting down, and its drain should not wait out polls.
    pub fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Logs, once a minute until `stop` completes, each subscription that
    /// goes quiet (at warn) and each that receives again (at info).
    pub async fn log_quiet(&self, stop: impl std::future::Future<Output = ()>) {
        let mut logged = std::collections::HashSet::new();
        let mut every = tokio::time::interval(Duration::from_secs(60));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = every.tick() => {}
            }
            let quiet = self.quiet_at(OffsetDateTime::now_utc());
            for q in &quiet {
                if logged.insert(q.subscription_id.clone()) {
                    tracing::warn!(
                        subscription = %q.subscription_id,
                        silent_secs = q.silent_secs.round(),
                        usual_gap_secs = q.usual_gap_secs.round(),
                        "a subscription that used to receive has gone quiet for much longer than \
                         usual: was it deleted, did it expire, or is Graph throttling this \
                         endpoint? (the inspector shows its expiry and lifecycle events)"
                    );
                }
            }
            logged.retain(|id: &String| {
                let still = quiet.iter().any(|q| &q.subscription_id == id);
                if !still {
                    tracing::info!(subscription = %id, "a quiet subscription receives again");
                }
                still
            });
        }
    }

    /// Notes a resync of `resource` handled by the workers, for the
    /// subscriptions view.
    pub(crate) fn resynced(&self, resource: &str, reason: &str) {
        let mut ring = self.lock();
        let at = OffsetDateTime::now_utc();
        ring.resyncs
            .insert(resource.to_owned(), (reason.to_owned(), at));
        if ring.resyncs.len() > MAX_RESYNCS {
            // Bounded: forget the oldest.
            if let Some(oldest) = ring
                .resyncs
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
            {
                ring.resyncs.remove(&oldest);
            }
        }
    }

    /// The last resync per resource: its reason and when it was handled.
    pub fn resyncs(&self) -> HashMap<String, (String, OffsetDateTime)> {
        self.lock().resyncs.clone()
    }

    /// One delivery by its number, if still kept.
    pub fn delivery(&self, seq: u64) -> Option<Delivery> {
        self.lock().get_mut(seq).map(|d| d.view())
    }

    /// Like [`deliveries`](Self::deliveries), but when nothing is newer than
    /// `filter.since`, waits up to `wait` for something to change: a page
    /// that polls this sees each delivery as it happens.
    pub async fn wait_for(&self, filter: &Filter, wait: Duration) -> Page {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let page = self.deliveries(filter);
            let closed = self.closed.load(std::sync::atomic::Ordering::Acquire);
            if closed || page.version > filter.since || tokio::time::Instant::now() >= deadline {
                return page;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.deliveries(filter);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    fn seen(inspector: &Inspector, items: &[&RawValue]) -> Seen {
        let mut seen = Seen::new();
        seen.path = DeliveryPath::Notification;
        for raw in items {
            seen.items
                .push((inspector.key(raw), Kept::new(raw, Fate::Accepted)));
            let id = item_of(raw, Fate::Accepted)
                .subscription_id
                .unwrap_or_default();
            seen.arrivals.push((id, None));
        }
        seen
    }

    #[test]
    fn fates_follow_items_and_the_ring_stays_bounded() {
        let inspector = Inspector::new(3);
        let a = raw(r#"{"subscriptionId":"s1","changeType":"created"}"#);
        let b = raw(r#"{"subscriptionId":"s2","changeType":"updated"}"#);
        inspector.record(seen(&inspector, &[&a, &b]), 202, Duration::from_millis(2));
        inspector.settle(&b, Fate::Handled, None);
        let page = inspector.deliveries(&Filter::default());
        assert_eq!(page.deliveries.len(), 1);
        let fates: Vec<_> = page.deliveries[0]
            .items
            .iter()
            .map(|i| i.fate.state())
            .collect();
        assert_eq!(fates, ["accepted", "handled"]);
        let since = page.version;
        assert!(
            inspector
                .deliveries(&Filter {
                    since,
                    ..Filter::default()
                })
                .deliveries
                .is_empty()
        );
        inspector.settle(&a, Fate::rejected("token_audience"), None);
        let changed = inspector.deliveries(&Filter {
            since,
            ..Filter::default()
        });
        assert_eq!(changed.deliveries.len(), 1);
        let only_s2 = Filter {
            subscription_id: Some("s2".into()),
            state: Some("rejected".into()),
            ..Filter::default()
        };
        assert!(inspector.deliveries(&only_s2).deliveries.is_empty());

        for n in 0..5 {
            let item = raw(&format!(
                r#"{{"subscriptionId":"n{n}","changeType":"created"}}"#
            ));
            inspector.record(seen(&inspector, &[&item]), 202, Duration::ZERO);
        }
        let page = inspector.deliveries(&Filter::default());
        let seqs: Vec<u64> = page.deliveries.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, [6, 5, 4], "newest first, three kept");
        assert_eq!(inspector.lock().items.len(), 3);
        assert!(inspector.delivery(1).is_none());
        assert_eq!(inspector.delivery(5).map(|d| d.seq), Some(5));
        // The first delivery left the ring: its item's fate is a record of its own.
        inspector.settle(&a, Fate::Handled, None);
        let newest = inspector.delivery(7).expect("a stored record");
        assert_eq!((newest.path, newest.status), (DeliveryPath::Stored, None));
        assert_eq!(newest.items[0].subscription_id.as_deref(), Some("s1"));
        assert_eq!(newest.items[0].fate, Fate::Handled);
    }

    #[test]
    fn secrets_are_kept_only_when_asked() {
        let item = raw(r#"{"subscriptionId":"s","changeType":"created","encryptedContent":{}}"#);
        let data = serde_json::json!({"subject": "payroll"});
        for (inspector, kept) in [
            (Inspector::new(2), false),
            (Inspector::new(2).showing_secrets(), true),
        ] {
            inspector.record(seen(&inspector, &[&item]), 202, Duration::ZERO);
            inspector.settle(&item, Fate::Handled, Some(&data));
            let page = inspector.deliveries(&Filter::default());
            let shown = serde_json::to_string(&page).unwrap();
            assert_eq!(shown.contains("payroll"), kept, "{shown}");
        }
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_on_a_new_delivery() {
        let inspector = std::sync::Arc::new(Inspector::new(10));
        let since = inspector.deliveries(&Filter::default()).version;
        let waiting = {
            let inspector = inspector.clone();
            tokio::spawn(async move {
                inspector
                    .wait_for(
                        &Filter {
                            since,
                            ..Filter::default()
                        },
                        Duration::from_secs(30),
                    )
                    .await
            })
        };
        tokio::task::yield_now().await;
        let item = raw(r#"{"subscriptionId":"s","changeType":"created"}"#);
        inspector.record(seen(&inspector, &[&item]), 202, Duration::ZERO);
        let page = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken, not timed out")
            .unwrap();
        assert_eq!(page.deliveries.len(), 1);
        // Nothing new: the wait ends at its deadline with an empty page.
        let page = inspector
            .wait_for(
                &Filter {
                    since: page.version,
                    ..Filter::default()
                },
                Duration::from_millis(20),
            )
            .await;
        assert!(page.deliveries.is_empty());
    }
}

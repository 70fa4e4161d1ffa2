//! The delivery engine: Graph's way of POSTing notifications (Microsoft
//! Learn, "Receive change notifications through webhooks",
//! <https://learn.microsoft.com/graph/change-notifications-delivery-webhooks>). Items for one URL are batched; a 2xx within 3 s is delivered;
//! anything else is retried with exponential backoff, 10 s per retry, for
//! up to 4 hours. Each URL has a throttling state (that page's throttling section): more than 10 % of
//! responses over 3 s in a 10-minute window make it *slow* (new
//! notifications wait 10 minutes); more than 15 % over 10 s make it *drop*
//! (notifications are discarded for 10 minutes, and Outlook subscriptions
//! hear `missed`, as they do of notifications given up on after 4 hours). All of it runs on the emulator's [`Clock`](super::Clock).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use reqwest::Url;
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::Core;
use super::clock::emulated;
use super::notify::lifecycle_item;
use crate::notification::LifecycleEventType;

mod event_grid;
mod log;
mod throttle;

pub(crate) use log::DeliveryLog;
pub use log::{DeliveryKind, DeliveryRecord, EndpointStatus, Outcome, StateChange};
pub use throttle::Throttling;
use throttle::Window;

/// State changes kept per URL (the first, and the most recent).
const MAX_HISTORY: usize = 1_000;

/// How Graph POSTs notifications, in Graph's (emulated) time.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeliveryPolicy {
    /// Time the endpoint has to answer a first attempt (Graph: 3 s).
    pub first_timeout: Duration,
    /// Time the endpoint has to answer a retry (Graph: 10 s).
    pub retry_timeout: Duration,
    /// Wait before the first retry; doubles with each failure (1 minute).
    pub first_retry: Duration,
    /// Longest wait between retries (1 hour).
    pub max_retry_interval: Duration,
    /// How long an item is retried before it is discarded (Graph: 4 hours).
    pub retry_for: Duration,
    /// Most items in one POST (50).
    pub max_batch: usize,
    /// Most POSTs in flight to one URL (4).
    pub max_in_flight: usize,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            first_timeout: Duration::from_secs(3),
            retry_timeout: Duration::from_secs(10),
            first_retry: Duration::from_secs(60),
            max_retry_interval: Duration::from_secs(3600),
            retry_for: Duration::from_secs(4 * 3600),
            max_batch: 50,
            max_in_flight: 4,
        }
    }
}

impl DeliveryPolicy {
    /// The wait before retry number `failures` (1 = after the first failure).
    pub fn backoff(&self, failures: u32) -> Duration {
        self.first_retry
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
            .min(self.max_retry_interval)
    }
}

/// The throttling state of a notification URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum EndpointState {
    /// Notifications go out at once.
    Normal,
    /// New notifications wait [`Throttling::slow_delay`].
    Slow,
    /// Notifications are discarded.
    Drop,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An item on its way to a URL.
#[derive(Clone)]
pub(crate) struct Outgoing {
    pub(crate) item: Value,
    pub(crate) subscription_id: String,
    pub(crate) lifecycle: bool,
    /// For rich items, the (audience, tenant) its validation token is for.
    pub(crate) token_for: Option<(String, String)>,
    /// A rich item of a misconfigured tenant: its deliveries carry
    /// `validationTokens: null`, so it never shares a POST with other items.
    pub(crate) tokens_null: bool,
}

impl std::fmt::Debug for Outgoing {
    // The item holds the subscription's clientState: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("subscription_id", &self.subscription_id)
            .field("lifecycle", &self.lifecycle)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Pending {
    out: Outgoing,
    sequence: u64,
    ready_at: OffsetDateTime,
    attempts: u32,
    first_sent: Option<OffsetDateTime>,
    /// When it was queued: a paused subscription's items are held from then.
    queued_at: OffsetDateTime,
}

#[derive(Debug)]
struct EndpointInner {
    queue: Vec<Pending>,
    state: EndpointState,
    drop_until: Option<OffsetDateTime>,
    window: Window,
    in_flight: usize,
    history: Vec<StateChange>,
    missed_sent: HashSet<String>,
}

/// One notification URL: its queue and throttling state.
#[derive(Debug)]
struct Endpoint {
    url: Url,
    inner: Mutex<EndpointInner>,
    wake: Notify,
}

/// What the endpoint's task should do next.
struct Plan {
    batches: Vec<(Vec<Pending>, EndpointState)>,
    dropped: Vec<Pending>,
    /// Items of paused subscriptions held past [`Reauthorization::hold_paused`](super::Reauthorization::hold_paused).
    given_up: Vec<Pending>,
    next_wake: Option<OffsetDateTime>,
}

/// Every endpoint, and the tasks that deliver to them.
#[derive(Debug, Default)]
pub(crate) struct Engine {
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
    sequence: AtomicU64,
}

impl Engine {
    /// Queues items for `url`, starting its task if it has none.
    pub(crate) fn enqueue(&self, core: &Arc<Core>, url: &Url, items: Vec<Outgoing>) {
        if items.is_empty() {
            return;
        }
        let endpoint = {
            let mut endpoints = lock(&self.endpoints);
            match endpoints.get(url.as_str()) {
                Some(endpoint) => endpoint.clone(),
                None => {
                    let endpoint = Arc::new(Endpoint {
                        url: url.clone(),
                        inner: Mutex::new(EndpointInner {
                            queue: Vec::new(),
                            state: EndpointState::Normal,
                            drop_until: None,
                            window: Window::default(),
                            in_flight: 0,
                            history: vec![StateChange {
                                time: core.clock.now(),
                                state: EndpointState::Normal,
                            }],
                            missed_sent: HashSet::new(),
                        }),
                        wake: Notify::new(),
                    });
                    endpoints.insert(url.as_str().to_owned(), endpoint.clone());
                    core.spawn(run(core.clone(), endpoint.clone()));
                    endpoint
                }
            }
        };
        let now = core.clock.now();
        let delay = emulated(core.config.throttling.slow_delay);
        let mut inner = lock(&endpoint.inner);
        for out in items {
            let ready_at = if inner.state == EndpointState::Slow && !out.lifecycle {
                now + delay
            } else {
                now
            };
            inner.queue.push(Pending {
                out,
                sequence: self.sequence.fetch_add(1, Ordering::Relaxed),
                ready_at,
                attempts: 0,
                first_sent: None,
                queued_at: now,
            });
        }
        drop(inner);
        endpoint.wake.notify_one();
    }

    /// Wakes every URL's task, to look at its queue again (a paused
    /// subscription may have been reauthorized).
    pub(crate) fn wake_all(&self) {
        for endpoint in lock(&self.endpoints).values() {
            endpoint.wake.notify_one();
        }
    }

    /// The throttling picture of every URL the emulator has delivered to.
    pub(crate) fn statuses(&self) -> Vec<EndpointStatus> {
        let endpoints: Vec<Arc<Endpoint>> = lock(&self.endpoints).values().cloned().collect();
        let mut out: Vec<EndpointStatus> = endpoints
            .iter()
            .map(|e| {
                let inner = lock(&e.inner);
                EndpointStatus {
                    url: e.url.to_string(),
                    state: inner.state,
                    history: inner.history.clone(),
                    window_responses: inner.window.responses,
                    window_over_first_timeout: inner.window.over_first,
                    window_over_retry_timeout: inner.window.over_retry,
                    queued: inner.queue.len(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.url.cmp(&b.url));
        out
    }
}

impl Endpoint {
    fn plan(&self, now: OffsetDateTime, core: &Core) -> Plan {
        let throttling = &core.config.throttling;
        let policy = &core.config.delivery;
        let mut inner = lock(&self.inner);
        inner.roll_window(now, throttling);
        if inner.state == EndpointState::Drop && inner.drop_until.is_some_and(|t| now >= t) {
            inner.enter(EndpointState::Slow, now, throttling);
        }
        let mut dropped = Vec::new();
        if inner.state == EndpointState::Drop {
            let (keep, drop): (Vec<Pending>, Vec<Pending>) =
                inner.queue.drain(..).partition(|p| p.out.lifecycle);
            inner.queue = keep;
            dropped = drop;
        }

        // A paused subscription's items wait for its reauthorization, for
        // a while; lifecycle notifications never wait.
        let paused = paused_ids(core, &inner.queue, now);
        let hold = emulated(core.config.reauthorization.hold_paused);
        let held = |p: &Pending| !p.out.lifecycle && paused.contains(&p.out.subscription_id);
        let (given_up, queue): (Vec<Pending>, Vec<Pending>) = inner
            .queue
            .drain(..)
            .partition(|p| held(p) && now >= p.queued_at + hold);
        inner.queue = queue;

        inner.queue.sort_by_key(|p| p.sequence);
        let mut batches = Vec::new();
        let max_batch = policy.max_batch.max(1);
        let sendable = |p: &Pending| p.ready_at <= now && !held(p);
        while inner.in_flight < policy.max_in_flight.max(1) {
            let Some(first) = inner.queue.iter().position(sendable) else {
                break;
            };
            let key = |p: &Pending| (p.out.lifecycle, p.attempts > 0, p.out.tokens_null);
            let wanted = key(&inner.queue[first]);
            let mut batch = Vec::new();
            let mut i = first;
            while i < inner.queue.len() && batch.len() < max_batch {
                if sendable(&inner.queue[i]) && key(&inner.queue[i]) == wanted {
                    batch.push(inner.queue.remove(i));
                } else {
                    i += 1;
                }
            }
            inner.in_flight += 1;
            batches.push((batch, inner.state));
        }

        // Items ready now but held back by the in-flight limit wait for a
        // send to finish, which wakes the task; only future ones set a time.
        let mut next_wake = inner
            .queue
            .iter()
            .map(|p| p.ready_at)
            .filter(|t| *t > now)
            .min();
        let mut consider = |t: OffsetDateTime| {
            next_wake = Some(next_wake.map_or(t, |n| n.min(t)));
        };
        if let Some(until) = inner.drop_until {
            consider(until);
        }
        for p in inner.queue.iter().filter(|p| held(p)) {
            consider(p.queued_at + hold);
        }
        if inner.state != EndpointState::Normal
            && let Some(start) = inner.window.start
        {
            consider(start + emulated(throttling.window));
        }
        Plan {
            batches,
            dropped,
            given_up,
            next_wake,
        }
    }
}

/// The task of one URL: plan, send, wait, until the emulator stops.
async fn run(core: Arc<Core>, endpoint: Arc<Endpoint>) {
    let mut sends = JoinSet::new();
    let mut shutdown = core.shutdown.subscribe();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let woken = endpoint.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let now = core.clock.now();
        let plan = endpoint.plan(now, &core);
        if !plan.dropped.is_empty() {
            dropped(&core, &endpoint, plan.dropped, now);
        }
        if !plan.given_up.is_empty() {
            let state = lock(&endpoint.inner).state;
            given_up(&core, &endpoint, &plan.given_up, now, state);
        }
        for (batch, state) in plan.batches {
            sends.spawn(send(core.clone(), endpoint.clone(), batch, state));
        }
        let sleep = async {
            match plan.next_wake {
                Some(t) => core.clock.sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = &mut woken => {}
            _ = shutdown.changed() => {}
            Some(_) = sends.join_next(), if !sends.is_empty() => {}
        }
    }
    sends.shutdown().await;
}

/// Logs items lost to the drop state, and sends `missed` to the Outlook
/// subscriptions among them that have a lifecycle URL (once per drop).
fn dropped(core: &Arc<Core>, endpoint: &Endpoint, items: Vec<Pending>, now: OffsetDateTime) {
    let ids: Vec<String> = unique(items.iter().map(|p| p.out.subscription_id.clone()));
    core.log.push(DeliveryRecord {
        sequence: 0,
        time: now,
        url: endpoint.url.to_string(),
        kind: DeliveryKind::Notification,
        items: items.len(),
        subscription_ids: ids.clone(),
        attempt: items.iter().map(|p| p.attempts + 1).max().unwrap_or(1),
        status: None,
        outcome: Outcome::Dropped,
        latency_ms: None,
        endpoint_state: EndpointState::Drop,
        body_kept: false,
    });
    for id in ids {
        let first_time = lock(&endpoint.inner).missed_sent.insert(id.clone());
        if first_time {
            send_missed(core, id);
        }
    }
}

/// Queues `missed` for subscription `id` when it is an Outlook one with a
/// lifecycle URL: some of its notifications will never arrive.
fn send_missed(core: &Arc<Core>, id: String) {
    let Some(subscription) = core.store.get(&id) else {
        return;
    };
    let rules = subscription.entry.rules();
    if let Some(url) = &subscription.lifecycle_url
        && rules.lifecycle_events.contains(&LifecycleEventType::Missed)
    {
        let item = lifecycle_item(&subscription, &LifecycleEventType::Missed);
        core.engine.enqueue(
            core,
            url,
            vec![Outgoing {
                item,
                subscription_id: id,
                lifecycle: true,
                token_for: None,
                tokens_null: false,
            }],
        );
    }
}

/// Logs items given up on — retried for the retry period, or held for a
/// paused subscription too long — and sends `missed` to the Outlook
/// subscriptions among them, as after a drop.
fn given_up(
    core: &Arc<Core>,
    endpoint: &Endpoint,
    items: &[Pending],
    now: OffsetDateTime,
    state: EndpointState,
) {
    core.log.push(record(
        endpoint,
        items,
        now,
        state,
        None,
        Outcome::Expired,
        None,
    ));
    let notifications = items.iter().filter(|p| !p.out.lifecycle);
    for id in unique(notifications.map(|p| p.out.subscription_id.clone())) {
        send_missed(core, id);
    }
}

/// The subscriptions among `queue`'s whose delivery is paused at `now`.
fn paused_ids(core: &Core, queue: &[Pending], now: OffsetDateTime) -> HashSet<String> {
    let ids: HashSet<&String> = queue
        .iter()
        .filter(|p| !p.out.lifecycle)
        .map(|p| &p.out.subscription_id)
        .collect();
    ids.into_iter()
        .filter(|&id| core.store.get(id).is_some_and(|s| Core::paused(&s, now)))
        .cloned()
        .collect()
}

fn unique(ids: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in ids {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// The collection body: items, and validation tokens when rich items are in it.
fn body(core: &Core, batch: &[Pending]) -> Vec<u8> {
    let items: Vec<&Value> = batch.iter().map(|p| &p.out.item).collect();
    let pairs: Vec<(String, String)> = {
        let mut pairs = Vec::new();
        for p in batch {
            if let Some(pair) = &p.out.token_for
                && !pairs.contains(pair)
            {
                pairs.push(pair.clone());
            }
        }
        pairs
    };
    let body = if pairs.is_empty() {
        json!({ "value": items })
    } else if batch.iter().any(|p| p.out.tokens_null) {
        json!({ "value": items, "validationTokens": null })
    } else {
        let tokens: Vec<String> = pairs
            .iter()
            .map(|(audience, tenant)| core.identity.validation_token(audience, tenant))
            .collect();
        json!({ "value": items, "validationTokens": tokens })
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Largest answer body read from an endpoint (the rest is ignored).
const MAX_ANSWER: usize = 64 * 1024;

async fn post(
    client: &reqwest::Client,
    url: &Url,
    body: bytes::Bytes,
) -> Result<u16, reqwest::Error> {
    let mut response = client
        .post(url.clone())
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let mut read = 0;
    while let Some(chunk) = response.chunk().await? {
        read += chunk.len();
        if read > MAX_ANSWER {
            break;
        }
    }
    Ok(status)
}

/// Sends one batch and settles every item: delivered, retried later, or
/// discarded after the retry period.
async fn send(core: Arc<Core>, endpoint: Arc<Endpoint>, batch: Vec<Pending>, state: EndpointState) {
    let now = core.clock.now();
    let (batch, gone): (Vec<Pending>, Vec<Pending>) = batch.into_iter().partition(|p| {
        p.out.lifecycle
            || core
                .store
                .get(&p.out.subscription_id)
                .is_some_and(|s| s.expiration > now)
    });
    if !gone.is_empty() {
        core.log.push(record(
            &endpoint,
            &gone,
            now,
            state,
            None,
            Outcome::Discarded,
            None,
        ));
    }
    if batch.is_empty() {
        lock(&endpoint.inner).in_flight -= 1;
        endpoint.wake.notify_one();
        return;
    }

    let policy = &core.config.delivery;
    let retry = batch.iter().any(|p| p.attempts > 0);
    let limit = if retry {
        policy.retry_timeout
    } else {
        policy.first_timeout
    };
    // `EventGrid:` subscriptions go to the partner topic's webhook, as
    // CloudEvents (create refuses them when no endpoint is configured).
    let event_grid = crate::emulator::api::is_event_grid(&endpoint.url)
        .then_some(core.config.event_grid_endpoint.as_ref())
        .flatten();
    let body = bytes::Bytes::from(match event_grid {
        Some(_) => event_grid::body(&core, &batch),
        None => body(&core, &batch),
    });
    let started = Instant::now();
    let attempt = async {
        match event_grid {
            Some(target) => event_grid::post(&core.client, target, body.clone()).await,
            None => post(&core.client, &endpoint.url, body.clone()).await,
        }
    };
    let answer = tokio::time::timeout(core.config.real_timeout(limit), attempt).await;
    let latency = started.elapsed();
    // The endpoint's latency as Graph would have measured it, in Graph time.
    let graph_latency =
        Duration::try_from_secs_f64(latency.as_secs_f64() * core.config.timeout_factor())
            .unwrap_or(Duration::MAX);
    let (status, outcome) = match answer {
        Ok(Ok(status)) if (200..300).contains(&status) => (Some(status), Outcome::Delivered),
        Ok(Ok(status)) => (Some(status), Outcome::Failed),
        Ok(Err(_)) => (None, Outcome::Unreachable),
        Err(_) => (None, Outcome::TimedOut),
    };

    let done = core.clock.now();
    let kind_lifecycle = batch[0].out.lifecycle;
    core.log.push_with_body(
        record(
            &endpoint,
            &batch,
            now,
            state,
            status,
            outcome,
            Some(latency.as_secs_f64() * 1000.0),
        ),
        Some(body),
    );
    let mut expired = Vec::new();
    {
        let mut inner = lock(&endpoint.inner);
        inner.in_flight -= 1;
        if outcome != Outcome::Unreachable && !kind_lifecycle {
            let over_first = graph_latency > policy.first_timeout || outcome == Outcome::TimedOut;
            let over_retry =
                retry && (graph_latency > policy.retry_timeout || outcome == Outcome::TimedOut);
            inner.record_sample(done, over_first, over_retry, &core.config.throttling);
        }
        if outcome != Outcome::Delivered {
            for mut pending in batch {
                pending.attempts += 1;
                let first = *pending.first_sent.get_or_insert(now);
                if done - first >= emulated(policy.retry_for) {
                    expired.push(pending);
                } else {
                    pending.ready_at = done + emulated(policy.backoff(pending.attempts));
                    inner.queue.push(pending);
                }
            }
        }
    }
    if !expired.is_empty() {
        given_up(&core, &endpoint, &expired, done, state);
    }
    endpoint.wake.notify_one();
}

fn record(
    endpoint: &Endpoint,
    batch: &[Pending],
    time: OffsetDateTime,
    state: EndpointState,
    status: Option<u16>,
    outcome: Outcome,
    latency_ms: Option<f64>,
) -> DeliveryRecord {
    DeliveryRecord {
        sequence: 0,
        time,
        url: endpoint.url.to_string(),
        kind: if batch.first().is_some_and(|p| p.out.lifecycle) {
            DeliveryKind::Lifecycle
        } else {
            DeliveryKind::Notification
        },
        items: batch.len(),
        subscription_ids: unique(batch.iter().map(|p| p.out.subscription_id.clone())),
        attempt: batch.iter().map(|p| p.attempts + 1).max().unwrap_or(1),
        status,
        outcome,
        latency_ms,
        endpoint_state: state,
        body_kept: false,
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = DeliveryPolicy::default();
        let minutes: Vec<u64> = (1..=9).map(|n| policy.backoff(n).as_secs() / 60).collect();
        assert_eq!(minutes, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(policy.backoff(u32::MAX), policy.max_retry_interval);
    }

    #[test]
    fn queued_items_never_show_their_client_state() {
        let out = Outgoing {
            item: json!({"subscriptionId": "s1", "clientState": "s3cret-state"}),
            subscription_id: "s1".into(),
            lifecycle: false,
            token_for: None,
            tokens_null: false,
        };
        let pending = Pending {
            out,
            sequence: 1,
            ready_at: datetime!(2026-05-01 12:00 UTC),
            attempts: 0,
            first_sent: None,
            queued_at: datetime!(2026-05-01 12:00 UTC),
        };
        let printed = format!("{pending:?}");
        assert!(
            printed.contains("s1") && !printed.contains("s3cret"),
            "{printed}"
        );
    }
}

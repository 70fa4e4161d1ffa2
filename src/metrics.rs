//! Counters, gauges and the ack-latency histogram, in Prometheus text format.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;

use crate::inspector::Watch;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::store::InboxStats;

type Label = [(&'static str, &'static str); 1];

/// How long a reason's rejections are summed up before the next warn line.
const REJECTION_SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Rejections made visible at the default log level without letting a
/// hostile sender fill the log: the first item of a reason is logged at
/// warn at once, the rest of that reason's minute as one line with their
/// count and one example subscription id. Duplicates are Graph's retries
/// doing their job, and are not logged.
#[derive(Default)]
struct RejectionLog {
    every: std::sync::atomic::AtomicBool,
    windows: std::sync::Mutex<std::collections::HashMap<&'static str, Window>>,
}

struct Window {
    opened: std::time::Instant,
    suppressed: u64,
    example: Option<String>,
}

impl RejectionLog {
    fn note(&self, reason: &'static str, subscription_id: Option<&str>) {
        if reason == "duplicate" {
            return;
        }
        // The id is the sender's text: quoted and cut, it forges no log line.
        let example = subscription_id.map(|id| id.chars().take(64).collect::<String>());
        if self.every.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(reason, subscription = ?example, "item rejected");
            return;
        }
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match windows.get_mut(reason) {
            Some(window) if now.duration_since(window.opened) < REJECTION_SUMMARY_EVERY => {
                window.suppressed += 1;
                if window.example.is_none() {
                    window.example = example;
                }
            }
            Some(window) => {
                let (count, example_then) = (window.suppressed, window.example.take());
                *window = Window {
                    opened: now,
                    suppressed: 0,
                    example: None,
                };
                drop(windows);
                if count > 0 {
                    tracing::warn!(reason, count, example = ?example_then, "more items rejected in the last minute");
                }
                tracing::warn!(reason, subscription = ?example, "item rejected; more of this reason are summed up once a minute");
            }
            None => {
                windows.insert(
                    reason,
                    Window {
                        opened: now,
                        suppressed: 0,
                        example: None,
                    },
                );
                drop(windows);
                tracing::warn!(reason, subscription = ?example, "item rejected; more of this reason are summed up once a minute");
            }
        }
    }
}

/// The receiver's metrics. Rendered by `GET /metrics` of the admin address
/// ([`admin`](crate::admin)), never by the notification endpoint: they tell
/// which items were refused and why. An app that mounts the endpoint
/// elsewhere mounts [`AdminService`](crate::admin::AdminService) where only
/// its operators reach it, or exposes [`render`](Self::render) itself.
pub struct Metrics {
    registry: Registry,
    deliveries: Family<Label, Counter>,
    items_accepted: Family<Label, Counter>,
    items_rejected: Family<Label, Counter>,
    ack_seconds: Histogram,
    inbox_depth: Gauge,
    inbox_oldest_age: Gauge<f64, AtomicU64>,
    handled: Family<Label, Counter>,
    dead_lettered: Counter,
    connections_closed: Family<Label, Counter>,
    slow_share: Family<Label, Gauge<f64, AtomicU64>>,
    rejections: RejectionLog,
    watch: Watch,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("msgraph_webhooks");
        let deliveries = Family::<Label, Counter>::default();
        registry.register(
            "deliveries",
            "HTTP requests to the notification endpoint, by outcome",
            deliveries.clone(),
        );
        let items_accepted = Family::<Label, Counter>::default();
        registry.register(
            "items_accepted",
            "Notification items stored in the inbox, by kind",
            items_accepted.clone(),
        );
        let items_rejected = Family::<Label, Counter>::default();
        registry.register(
            "items_rejected",
            "Notification items dropped, by reason (before or after the ack)",
            items_rejected.clone(),
        );
        let ack_seconds = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 10.0,
        ]);
        registry.register(
            "ack_seconds",
            "Time from request start to the answer of a notification delivery",
            ack_seconds.clone(),
        );
        let inbox_depth = Gauge::default();
        registry.register(
            "inbox_depth",
            "Items stored and not yet processed",
            inbox_depth.clone(),
        );
        let inbox_oldest_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "inbox_oldest_age_seconds",
            "Age of the oldest unprocessed item",
            inbox_oldest_age.clone(),
        );
        let handled = Family::<Label, Counter>::default();
        registry.register(
            "handler_calls",
            "Handler calls, by outcome (ok, error, panic)",
            handled.clone(),
        );
        let dead_lettered = Counter::default();
        registry.register(
            "dead_lettered",
            "Items moved to the dead letters after too many failed attempts",
            dead_lettered.clone(),
        );
        let connections_closed = Family::<Label, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections the server closed or refused on its own, by reason (idle, shed_capacity, shed_peer, refused_peer, tls_handshake)",
            connections_closed.clone(),
        );
        let slow_share = Family::<Label, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "slow_answer_share",
            "Share of the endpoint's answers over the last 10 minutes slower than Graph's 3 s \
             (over=\"3s\"; Graph delays at 0.10) and 10 s (over=\"10s\"; Graph drops at 0.15) timeouts",
            slow_share.clone(),
        );
        Self {
            registry,
            deliveries,
            items_accepted,
            items_rejected,
            ack_seconds,
            inbox_depth,
            inbox_oldest_age,
            handled,
            dead_lettered,
            connections_closed,
            slow_share,
            rejections: RejectionLog::default(),
            watch: Watch::new(100),
        }
    }

    /// Logs every rejected item at warn, with its reason and subscription id
    /// (never the secret), instead of the first of each reason and then a
    /// count once a minute. For finding out why items do not arrive; a
    /// hostile sender can then fill the log.
    pub fn log_every_rejection(&self, every: bool) {
        self.rejections
            .every
            .store(every, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn delivery(&self, outcome: &'static str) {
        self.deliveries.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// The throttle-risk watch every answer of the endpoint feeds.
    pub fn watch(&self) -> &Watch {
        &self.watch
    }

    pub(crate) fn ack_latency(&self, elapsed: Duration) {
        self.watch.record(elapsed);
        self.ack_seconds.observe(elapsed.as_secs_f64());
    }

    pub(crate) fn accepted(&self, kind: &'static str, n: u64) {
        self.items_accepted
            .get_or_create(&[("kind", kind)])
            .inc_by(n);
    }

    /// Counts a rejected item, and logs it as [`RejectionLog`] decides.
    pub(crate) fn rejected(&self, reason: &'static str, subscription_id: Option<&str>) {
        self.items_rejected
            .get_or_create(&[("reason", reason)])
            .inc();
        self.rejections.note(reason, subscription_id);
    }

    pub(crate) fn handled(&self, outcome: &'static str) {
        self.handled.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.inc();
    }

    pub(crate) fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Connections closed or refused so far for `reason` (`idle`,
    /// `shed_capacity`, `shed_peer`, `refused_peer`, `tls_handshake`).
    pub fn connections_closed_count(&self, reason: &'static str) -> u64 {
        self.connections_closed
            .get_or_create(&[("reason", reason)])
            .get()
    }

    /// Items rejected so far for `reason` (a label such as `client_state_mismatch`).
    pub fn rejected_count(&self, reason: &'static str) -> u64 {
        self.items_rejected
            .get_or_create(&[("reason", reason)])
            .get()
    }

    /// The metrics in Prometheus text exposition format, with the inbox
    /// gauges set from `inbox` when given.
    pub fn render(&self, inbox: Option<InboxStats>) -> String {
        if let Some(stats) = inbox {
            self.inbox_depth
                .set(i64::try_from(stats.depth).unwrap_or(i64::MAX));
            self.inbox_oldest_age
                .set(stats.oldest_age.map_or(0.0, |d| d.as_secs_f64()));
        }
        let risk = self.watch.risk();
        self.slow_share
            .get_or_create(&[("over", "3s")])
            .set(risk.slow_share);
        self.slow_share
            .get_or_create(&[("over", "10s")])
            .set(risk.very_slow_share);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

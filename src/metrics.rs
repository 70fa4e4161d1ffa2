//! Counters, gauges and the ack-latency histogram, in Prometheus text format.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::inbox::InboxStats;

type Label = [(&'static str, &'static str); 1];

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
            "Connections the server closed or refused on its own, by reason (idle, shed_capacity, shed_peer, refused_peer)",
            connections_closed.clone(),
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
        }
    }

    pub(crate) fn delivery(&self, outcome: &'static str) {
        self.deliveries.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub(crate) fn ack_latency(&self, elapsed: Duration) {
        self.ack_seconds.observe(elapsed.as_secs_f64());
    }

    pub(crate) fn accepted(&self, kind: &'static str, n: u64) {
        self.items_accepted
            .get_or_create(&[("kind", kind)])
            .inc_by(n);
    }

    pub(crate) fn rejected(&self, reason: &'static str) {
        self.items_rejected
            .get_or_create(&[("reason", reason)])
            .inc();
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
    /// `shed_capacity`, `shed_peer`, `refused_peer`).
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
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

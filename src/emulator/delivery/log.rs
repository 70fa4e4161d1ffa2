//! What the emulator tells about its deliveries: each attempt's record and
//! outcome, a URL's throttling status and its history, and the bounded log
//! behind `GET /emulator/deliveries`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Serialize, Serializer};
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::emulator::store::graph_time;

use super::{EndpointState, lock};

/// What became of one delivery attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum Outcome {
    /// A 2xx in time (for validation: 200 with the token).
    Delivered,
    /// Another status.
    Failed,
    /// No answer in time.
    TimedOut,
    /// No connection, or it broke.
    Unreachable,
    /// 200, but not the token (validation only).
    Mismatch,
    /// Discarded unsent: the endpoint was in the drop state.
    Dropped,
    /// Discarded after retrying for [`DeliveryPolicy::retry_for`](super::DeliveryPolicy::retry_for).
    Expired,
    /// Discarded unsent: the subscription expired or was deleted.
    Discarded,
}

/// What a delivery was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum DeliveryKind {
    /// Change notifications.
    Notification,
    /// Lifecycle notifications.
    Lifecycle,
    /// A validation request (the handshake).
    Validation,
}

/// One row of `GET /emulator/deliveries`: a POST the emulator made or an
/// item batch it discarded.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct DeliveryRecord {
    /// Increases by one per record.
    pub sequence: u64,
    /// When, in emulated time.
    #[serde(serialize_with = "as_graph_time")]
    pub time: OffsetDateTime,
    /// The URL (without the validation token).
    pub url: String,
    /// What was sent.
    pub kind: DeliveryKind,
    /// How many items.
    pub items: usize,
    /// The subscriptions of the items (or the one being validated).
    pub subscription_ids: Vec<String>,
    /// 1 for a first attempt, more for retries (highest in the batch).
    pub attempt: u32,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// The outcome.
    pub outcome: Outcome,
    /// Real milliseconds until the answer (or the timeout), when sent.
    pub latency_ms: Option<f64>,
    /// The URL's throttling state when this happened.
    pub endpoint_state: EndpointState,
    /// Whether the body POSTed is still kept, at
    /// `GET /emulator/deliveries/{sequence}/body` (the newest 200 are).
    pub body_kept: bool,
}

fn as_graph_time<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&graph_time(*t))
}

/// The throttling picture of one URL, for `GET /emulator/endpoints`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EndpointStatus {
    /// The URL.
    pub url: String,
    /// Its state now.
    pub state: EndpointState,
    /// The states it has been in, with when it entered them: the first
    /// (`Normal`) and the last 999.
    pub history: Vec<StateChange>,
    /// Responses counted in the current window.
    pub window_responses: u32,
    /// Of those, over the first timeout.
    pub window_over_first_timeout: u32,
    /// Of those, over the retry timeout.
    pub window_over_retry_timeout: u32,
    /// Items waiting.
    pub queued: usize,
}

/// An entry of [`EndpointStatus::history`].
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct StateChange {
    /// When, in emulated time.
    #[serde(serialize_with = "as_graph_time")]
    pub time: OffsetDateTime,
    /// The state entered.
    pub state: EndpointState,
}

/// The deliveries log: the most recent records, bounded.
#[derive(Debug, Default)]
pub(crate) struct DeliveryLog {
    records: Mutex<VecDeque<DeliveryRecord>>,
    /// The bodies of the newest POSTs, by sequence.
    bodies: Mutex<VecDeque<(u64, bytes::Bytes)>>,
    sequence: AtomicU64,
    appended: Notify,
}

const LOG_CAPACITY: usize = 10_000;

/// Bodies kept, the newest (a POST holds at most 50 items, so at most a few
/// MiB each even for rich ones).
const BODIES_KEPT: usize = 200;

impl DeliveryLog {
    pub(crate) fn push(&self, record: DeliveryRecord) {
        self.push_with_body(record, None);
    }

    /// Logs a record with the body that was POSTed, kept among the newest
    /// [`BODIES_KEPT`] for `GET /emulator/deliveries/{sequence}/body`.
    pub(crate) fn push_with_body(&self, mut record: DeliveryRecord, body: Option<bytes::Bytes>) {
        record.sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        record.body_kept = body.is_some();
        if let Some(body) = body {
            let mut bodies = lock(&self.bodies);
            if bodies.len() == BODIES_KEPT {
                bodies.pop_front();
            }
            bodies.push_back((record.sequence, body));
        }
        let mut records = lock(&self.records);
        if records.len() == LOG_CAPACITY {
            records.pop_front();
        }
        records.push_back(record);
        drop(records);
        self.appended.notify_waiters();
    }

    /// The body POSTed by the record with this sequence, if still kept.
    pub(crate) fn body(&self, sequence: u64) -> Option<bytes::Bytes> {
        lock(&self.bodies)
            .iter()
            .find(|(s, _)| *s == sequence)
            .map(|(_, body)| body.clone())
    }

    pub(crate) fn all(&self) -> Vec<DeliveryRecord> {
        lock(&self.records).iter().cloned().collect()
    }

    pub(crate) fn appended(&self) -> &Notify {
        &self.appended
    }
}

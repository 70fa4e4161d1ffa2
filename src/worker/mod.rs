//! Behind the ack: workers claim items from the inbox, turn each into a
//! verified event, call the handler, and complete, retry or dead-letter it.
//! Rich notifications are verified and decrypted here ([`verify`]).

pub mod verify;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::dedupe::{Claim, Dedupe, DedupeKey};
use crate::handler::{BoxError, ChangeEvent, Handler, LifecycleEvent};
use crate::inbox::{Claimed, Inbox};
use crate::metrics::Metrics;
use crate::notification::{ChangeNotification, Notification, ValidationTokens};

pub use verify::{Verifier, VerifyError};

/// How failed handler calls are retried before an item is dead-lettered.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included. After the last failure the item
    /// is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles with each failure.
    pub initial_delay: Duration,
    /// Upper bound of the delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// A policy with `max_attempts` attempts, starting at `initial_delay`.
    pub fn new(max_attempts: u32, initial_delay: Duration) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            initial_delay,
            ..Self::default()
        }
    }

    /// The delay after `failures` failed attempts: exponential, capped, with
    /// up to 25 % random jitter so retries of a burst spread out.
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = self
            .initial_delay
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
            .min(self.max_delay);
        let mut byte = [0u8; 1];
        let jitter = match openssl::rand::rand_bytes(&mut byte) {
            Ok(()) => f64::from(byte[0]) / 1024.0,
            Err(_) => 0.0,
        };
        exp.mul_f64(1.0 + jitter)
    }
}

/// What became of one claimed item.
#[derive(Debug)]
enum Outcome {
    /// Handled; remove it.
    Done,
    /// It can never be handled (malformed, failed verification, a duplicate); drop it.
    Rejected(&'static str),
    /// The handler failed, or verification could not finish (JWKS
    /// unavailable); retry or dead-letter.
    Failed(String),
    /// Not now (a copy is being handled elsewhere, or the dedupe store is
    /// down); try again after the delay without counting an attempt.
    Defer(Duration, String),
}

/// How long an item waits when its dedupe key is held by another worker or
/// the dedupe store is unreachable.
const DEFER: Duration = Duration::from_secs(2);

/// Turns stored items into events and hands them to the handler.
pub(crate) struct Pipeline<H> {
    pub(crate) handler: H,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) retry: RetryPolicy,
    pub(crate) dedupe: Option<Arc<dyn Dedupe>>,
    /// This pipeline's name as a dedupe owner.
    pub(crate) owner: String,
    pub(crate) dedupe_ttl: Duration,
    pub(crate) dedupe_lease: Duration,
    /// Verifies and decrypts rich items; `None` rejects them.
    pub(crate) verifier: Option<Arc<Verifier>>,
}

/// A claimed item after parsing and verification, ready for the handler.
#[allow(
    clippy::large_enum_variant,
    reason = "at most one batch of them lives at a time; boxing would only cost an allocation"
)]
enum Prepared {
    Change {
        change: ChangeNotification,
        /// The decrypted resource of a rich item.
        data: Option<Value>,
        received_at: OffsetDateTime,
    },
    Lifecycle(LifecycleEvent),
    /// Nothing for the handler: the item is settled as this.
    Settled(Outcome),
}

impl<H: Handler> Pipeline<H> {
    /// Parses a claimed batch and, for rich items, checks tokens and
    /// decrypts (one job on the RSA pool for the batch). Independent of the
    /// handler, so it runs while the previous batch is being handled.
    async fn prepare(&self, batch: Vec<Claimed>) -> Vec<(Claimed, Prepared)> {
        let parsed: Vec<Prepared> = batch.iter().map(|claimed| self.parse(claimed)).collect();
        let changes: Vec<(&ChangeNotification, &ValidationTokens)> = parsed
            .iter()
            .zip(&batch)
            .filter_map(|(prepared, claimed)| match prepared {
                Prepared::Change { change, .. } => Some((change, &claimed.item.validation_tokens)),
                _ => None,
            })
            .collect();
        let mut verified = verify::resource_data_many(self.verifier.as_deref(), &changes)
            .await
            .into_iter();
        batch
            .into_iter()
            .zip(parsed)
            .map(|(claimed, prepared)| {
                let Prepared::Change {
                    change,
                    received_at,
                    ..
                } = prepared
                else {
                    return (claimed, prepared);
                };
                let prepared = match verified.next() {
                    Some(Ok(data)) => Prepared::Change {
                        change,
                        data,
                        received_at,
                    },
                    Some(Err(e)) if e.is_transient() => {
                        Prepared::Settled(Outcome::Failed(e.to_string()))
                    }
                    Some(Err(e)) => {
                        tracing::debug!(id = %claimed.id, reason = e.reason(), "rejecting item");
                        Prepared::Settled(Outcome::Rejected(e.reason()))
                    }
                    None => Prepared::Settled(Outcome::Failed("verification lost an item".into())),
                };
                (claimed, prepared)
            })
            .collect()
    }

    /// Parses one item; change items are not verified yet (`data` is `None`).
    fn parse(&self, claimed: &Claimed) -> Prepared {
        let item = &claimed.item;
        let notification = match Notification::from_json(item.raw.get()) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(id = %claimed.id, error = %e, "dropping malformed item");
                return Prepared::Settled(Outcome::Rejected("malformed_item"));
            }
        };
        let received_at =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(item.received_at_ms) * 1_000_000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        match notification {
            Notification::Change(change) => Prepared::Change {
                change,
                data: None,
                received_at,
            },
            Notification::Lifecycle(lifecycle) => Prepared::Lifecycle(LifecycleEvent::new(
                lifecycle,
                item.raw.clone(),
                received_at,
                claimed.attempts,
            )),
        }
    }

    /// Hands a prepared item to the handler.
    async fn deliver(&self, claimed: &Claimed, prepared: Prepared) -> Outcome {
        match prepared {
            Prepared::Settled(outcome) => outcome,
            Prepared::Change {
                change,
                data,
                received_at,
            } => self.change(change, data, claimed, received_at).await,
            Prepared::Lifecycle(event) => match self.call(|h| h.on_lifecycle(event)).await {
                Ok(()) => Outcome::Done,
                Err(reason) => Outcome::Failed(reason),
            },
        }
    }

    /// A change item: the handler (dedupe was settled for the whole batch).
    async fn change(
        &self,
        change: ChangeNotification,
        data: Option<Value>,
        claimed: &Claimed,
        received_at: OffsetDateTime,
    ) -> Outcome {
        let event = ChangeEvent::new(
            change,
            claimed.item.raw.clone(),
            data,
            received_at,
            claimed.attempts,
        );
        match self.call(|h| h.on_change(event)).await {
            Ok(()) => Outcome::Done,
            Err(reason) => Outcome::Failed(reason),
        }
    }

    /// Calls the handler, turning a panic into an error.
    async fn call<'a, F, Fut>(&'a self, f: F) -> Result<(), String>
    where
        F: FnOnce(&'a H) -> Fut,
        Fut: Future<Output = Result<(), BoxError>> + 'a,
    {
        let handler = &self.handler;
        let result = AssertUnwindSafe(async move { f(handler).await })
            .catch_unwind()
            .await;
        match result {
            Ok(Ok(())) => {
                self.metrics.handled("ok");
                Ok(())
            }
            Ok(Err(e)) => {
                self.metrics.handled("error");
                Err(format!("handler error: {e}"))
            }
            Err(panic) => {
                self.metrics.handled("panic");
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                Err(format!("handler panicked: {message}"))
            }
        }
    }

    /// Delivers a prepared batch and settles it with the stores: dedupe keys
    /// are claimed for the whole batch in one round trip, handled keys
    /// marked and handled items removed in one round trip each; retries and
    /// dead letters go one by one.
    async fn settle_batch(&self, inbox: &dyn Inbox, batch: Vec<(Claimed, Prepared)>) {
        // A copy of an item in the same batch waits for the first one's
        // outcome (handled: then dedupe drops it; failed: then it is handled).
        let mut seen = std::collections::HashSet::new();
        let mut repeats = vec![false; batch.len()];
        let keys: Vec<Option<DedupeKey>> = batch
            .iter()
            .enumerate()
            .map(|(i, (_, prepared))| match (prepared, &self.dedupe) {
                (Prepared::Change { change, .. }, Some(_)) => {
                    let key = DedupeKey::for_change(change)?;
                    if seen.insert(key) {
                        Some(key)
                    } else {
                        repeats[i] = true;
                        None
                    }
                }
                _ => None,
            })
            .collect();
        let mut claims = self.begin_dedupe(&keys).await.into_iter();

        let mut done = Vec::with_capacity(batch.len());
        let mut handled_keys = Vec::new();
        for (((claimed, prepared), key), repeat) in batch.into_iter().zip(keys).zip(repeats) {
            if repeat {
                self.settle_one(
                    inbox,
                    claimed,
                    Outcome::Defer(DEFER, "a copy is in the same batch".into()),
                )
                .await;
                continue;
            }
            let claim =
                key.map(|key| (key, claims.next().unwrap_or(Err("no dedupe answer".into()))));
            let outcome = match &claim {
                Some((_, Ok(Claim::Duplicate))) => Outcome::Rejected("duplicate"),
                Some((_, Ok(Claim::InProgress))) => {
                    Outcome::Defer(DEFER, "a copy is being handled".into())
                }
                Some((_, Err(e))) => Outcome::Defer(DEFER, e.clone()),
                _ => self.deliver(&claimed, prepared).await,
            };
            if let (Some((key, Ok(Claim::Proceed))), Some(dedupe)) = (claim, &self.dedupe) {
                if matches!(outcome, Outcome::Done) {
                    // Recorded at once, without waiting, so a crash can only
                    // repeat the items of the last moment, not of the batch.
                    let (dedupe, owner, ttl) =
                        (dedupe.clone(), self.owner.clone(), self.dedupe_ttl);
                    handled_keys.push(tokio::spawn(async move {
                        dedupe.finish(key, &owner, ttl).await
                    }));
                } else if let Err(e) = dedupe.abandon(key, &self.owner).await {
                    tracing::warn!(error = %e, "could not release a dedupe key");
                }
            }
            match outcome {
                Outcome::Done => done.push(claimed.id),
                Outcome::Rejected(reason) => {
                    self.metrics.rejected(reason);
                    done.push(claimed.id);
                }
                outcome => self.settle_one(inbox, claimed, outcome).await,
            }
        }
        for recorded in handled_keys {
            if let Ok(Err(e)) = recorded.await {
                // The item is removed below all the same; at worst a later
                // copy is handled again, which at-least-once allows.
                tracing::warn!(error = %e, "could not record a handled dedupe key");
            }
        }
        if !done.is_empty() {
            for pause in [100, 500, 2000, 0] {
                match inbox.complete_many(done.clone()).await {
                    Ok(()) => break,
                    Err(e) if pause > 0 => {
                        tracing::warn!(error = %e, "could not remove handled items; trying again");
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                    // They stay stored and claimed: the store hands them out
                    // again later, and dedupe drops them then.
                    Err(e) => tracing::error!(error = %e, "could not remove handled items"),
                }
            }
        }
    }

    /// Claims the dedupe keys of a batch; one answer per `Some` key, in order.
    async fn begin_dedupe(&self, keys: &[Option<DedupeKey>]) -> Vec<Result<Claim, String>> {
        let wanted: Vec<DedupeKey> = keys.iter().flatten().copied().collect();
        let Some(dedupe) = &self.dedupe else {
            return Vec::new();
        };
        if wanted.is_empty() {
            return Vec::new();
        }
        let n = wanted.len();
        match dedupe
            .begin_many(wanted, &self.owner, self.dedupe_lease)
            .await
        {
            Ok(claims) if claims.len() == n => claims.into_iter().map(Ok).collect(),
            Ok(_) => vec![Err("the dedupe store answered for the wrong keys".to_owned()); n],
            Err(e) => vec![Err(e.to_string()); n],
        }
    }

    /// Settles an item that needs more than removal: a retry, a deferral or
    /// a dead letter, with a few attempts if the store fails.
    async fn settle_one(&self, inbox: &dyn Inbox, claimed: Claimed, outcome: Outcome) {
        let id = claimed.id.clone();
        for (attempt, pause) in [100, 500, 2000, 0].into_iter().enumerate() {
            let settled = match &outcome {
                Outcome::Done | Outcome::Rejected(_) => inbox.complete(id.clone()).await,
                Outcome::Defer(delay, why) => {
                    tracing::debug!(%id, ?delay, why, "deferring item");
                    inbox.retry(claimed.clone(), *delay).await
                }
                Outcome::Failed(reason) => {
                    let mut claimed = claimed.clone();
                    claimed.attempts += 1;
                    let failures = claimed.attempts;
                    if failures >= self.retry.max_attempts {
                        tracing::error!(%id, failures, %reason, "dead-lettering item");
                        if attempt == 0 {
                            self.metrics.dead_lettered();
                        }
                        inbox.dead_letter(claimed, reason.clone()).await
                    } else {
                        let delay = self.retry.delay(failures);
                        tracing::warn!(%id, failures, ?delay, %reason, "processing failed; will retry");
                        inbox.retry(claimed, delay).await
                    }
                }
            };
            match settled {
                Ok(()) => return,
                Err(e) if pause > 0 => {
                    tracing::warn!(%id, error = %e, "could not settle item with the inbox; trying again");
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(e) => {
                    // The item stays stored and claimed: the store hands it out
                    // again later (a released or taken-over claim), never loses it.
                    tracing::error!(%id, error = %e, "could not settle item with the inbox");
                }
            }
        }
    }
}

/// How many items a worker claims at once.
const CLAIM_BATCH: usize = 16;
/// How long a claim waits for items before the worker checks for shutdown.
const CLAIM_WAIT: Duration = Duration::from_millis(500);

/// A running pool of workers; see [`crate::Receiver::spawn_workers`].
#[derive(Debug)]
pub struct Workers {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Workers {
    pub(crate) fn spawn<H: Handler>(
        inbox: Arc<dyn Inbox>,
        pipeline: Arc<Pipeline<H>>,
        count: usize,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for _ in 0..count {
            tasks.spawn(work(inbox.clone(), pipeline.clone(), stopped.clone()));
        }
        Self { stop, tasks }
    }

    /// Stops the workers: each finishes what it holds and keeps taking ready
    /// items until the inbox has none, for at most `deadline`; then the
    /// remaining ones are cancelled (their items stay claimed, and a durable
    /// inbox hands them out again after a restart).
    pub async fn shutdown(mut self, deadline: Duration) {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(deadline, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(?deadline, "workers did not drain in time; cancelling them");
            self.tasks.shutdown().await;
        }
    }
}

async fn work<H: Handler>(
    inbox: Arc<dyn Inbox>,
    pipeline: Arc<Pipeline<H>>,
    stopped: watch::Receiver<bool>,
) {
    // Claiming and verifying (RSA on its own pool) run up to two batches
    // ahead of the handler, so the cores stay busy with RSA however long the
    // handler takes to answer; the handler still takes the items in order.
    let (ready, mut prepared) = tokio::sync::mpsc::channel::<Vec<(Claimed, Prepared)>>(1);
    let (inbox, pipeline, stopped) = (&inbox, &pipeline, &stopped);
    let produce = async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            let draining = *stopped.borrow();
            let wait = if draining { Duration::ZERO } else { CLAIM_WAIT };
            match inbox.claim(CLAIM_BATCH, wait).await {
                Ok(batch) if batch.is_empty() && draining => return,
                Ok(batch) if batch.is_empty() => {}
                Ok(batch) => {
                    backoff = Duration::from_millis(50);
                    if ready.send(pipeline.prepare(batch).await).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "claiming from the inbox failed");
                    if draining {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    };
    let consume = async {
        while let Some(batch) = prepared.recv().await {
            pipeline.settle_batch(inbox.as_ref(), batch).await;
        }
    };
    tokio::join!(produce, consume);
}

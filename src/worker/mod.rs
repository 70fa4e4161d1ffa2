//! Behind the ack: workers claim items from the inbox, turn each into a
//! verified event, call the handler, and complete, retry or dead-letter it.
//! Rich notifications are verified and decrypted here ([`Verifier`]).

mod verify;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::handler::{
    ChangeEvent, GiveUp, Handler, HandlerEvent, HandlerPanicked, LifecycleEvent, ResyncEvent,
};
use crate::inspector::{Fate, Inspector};
use crate::metrics::Metrics;
use crate::notification::{ChangeNotification, ItemError, Notification, ValidationTokens};
use crate::resync::ResyncItem;
use crate::retry::RetryPolicy;
use crate::store::{Claim, Claimed, Dedupe, DedupeKey, Inbox};

pub use verify::{Verifier, VerifyError};

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
    /// It was acknowledged but can never be handled as it is (its typed
    /// parse fails): dead-letter it now, with the reason, for someone to see.
    DeadLetter(String),
}

/// What the inspector is told of an event once its outcome is known.
enum Shown {
    /// A change's decrypted resource.
    Data(Value),
    /// A resync: its resource and reason.
    Resync(String, &'static str),
}

impl Shown {
    fn of(event: &HandlerEvent, secrets: bool) -> Option<Self> {
        match event {
            HandlerEvent::Change(change) if secrets => change.data().cloned().map(Shown::Data),
            HandlerEvent::Resync(resync) => Some(Shown::Resync(
                resync.resource().to_owned(),
                resync.reason().as_str(),
            )),
            _ => None,
        }
    }
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
    /// Hears what became of each item.
    pub(crate) inspector: Option<Arc<Inspector>>,
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
    /// A change from a delta query, with its dedupe key.
    Resync(ResyncEvent, DedupeKey),
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
        let received_at =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(item.received_at_ms) * 1_000_000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let notification = match Notification::from_json(item.raw.get()) {
            Ok(n) => n,
            // Only the resync engine stores items that are neither (the
            // listener refuses them at the ack).
            Err(ItemError::NotANotification) if let Some(resync) = ResyncItem::parse(&item.raw) => {
                let key = resync.dedupe_key();
                return match serde_json::from_str(resync.data.get()) {
                    Ok(data) => Prepared::Resync(
                        ResyncEvent::new(resync, data, received_at, claimed.attempts),
                        key,
                    ),
                    Err(e) => {
                        Prepared::Settled(Outcome::DeadLetter(format!("malformed_item: {e}")))
                    }
                };
            }
            Err(e) => {
                // It got its 202 (its head was fine): it must not vanish.
                let reason = format!("malformed_item: {e}");
                tracing::warn!(id = %claimed.id, %reason, "dead-lettering an item that does not parse");
                return Prepared::Settled(Outcome::DeadLetter(reason));
            }
        };
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

    /// The event a prepared item becomes, or its outcome if it has none.
    fn event(claimed: &Claimed, prepared: Prepared) -> Result<HandlerEvent, Outcome> {
        match prepared {
            Prepared::Settled(outcome) => Err(outcome),
            Prepared::Change {
                change,
                data,
                received_at,
            } => Ok(HandlerEvent::Change(ChangeEvent::new(
                change,
                claimed.item.raw.clone(),
                data,
                received_at,
                claimed.attempts,
            ))),
            Prepared::Lifecycle(event) => Ok(HandlerEvent::Lifecycle(event)),
            Prepared::Resync(event, _) => Ok(HandlerEvent::Resync(event)),
        }
    }

    /// Calls the handler once for `events`; a panic fails them all. One
    /// result per event, counted in the metrics: `Err` an outcome, a retry
    /// or, for [`GiveUp`], a dead letter at once.
    async fn call_batch(&self, events: Vec<HandlerEvent>) -> Vec<Result<(), Outcome>> {
        let n = events.len();
        if n == 0 {
            return Vec::new();
        }
        let answered = AssertUnwindSafe(self.handler.on_batch(events))
            .catch_unwind()
            .await;
        match answered {
            Ok(results) if results.len() == n => results
                .into_iter()
                .map(|result| match result {
                    Ok(()) => {
                        self.metrics.handled("ok");
                        Ok(())
                    }
                    Err(e) if e.is::<HandlerPanicked>() => {
                        self.metrics.handled("panic");
                        Err(Outcome::Failed(e.to_string()))
                    }
                    Err(e) if e.is::<GiveUp>() => {
                        self.metrics.handled("error");
                        Err(Outcome::DeadLetter(format!("handler gave up: {e}")))
                    }
                    Err(e) => {
                        self.metrics.handled("error");
                        Err(Outcome::Failed(format!("handler error: {e}")))
                    }
                })
                .collect(),
            Ok(_) => {
                for _ in 0..n {
                    self.metrics.handled("error");
                }
                let lost = "the handler answered for the wrong number of events";
                (0..n)
                    .map(|_| Err(Outcome::Failed(lost.to_owned())))
                    .collect()
            }
            Err(panic) => {
                for _ in 0..n {
                    self.metrics.handled("panic");
                }
                let reason = HandlerPanicked::from_payload(&*panic).to_string();
                (0..n)
                    .map(|_| Err(Outcome::Failed(reason.clone())))
                    .collect()
            }
        }
    }

    /// Delivers a prepared batch and settles it with the stores: dedupe keys
    /// are claimed for the whole batch in one round trip, the handler gets
    /// the deliverable events in one call, handled keys are marked and
    /// handled items removed in one round trip each; retries and dead
    /// letters go one by one.
    async fn settle_batch(&self, inbox: &dyn Inbox, owner: &str, batch: Vec<(Claimed, Prepared)>) {
        // A copy of an item in the same batch waits for the first one's
        // outcome (handled: then dedupe drops it; failed: then it is handled).
        let mut seen = std::collections::HashSet::new();
        let keys: Vec<Option<(DedupeKey, bool)>> = batch
            .iter()
            .map(|(_, prepared)| match (prepared, &self.dedupe) {
                (Prepared::Change { change, .. }, Some(_)) => {
                    let key = DedupeKey::for_change(change)?;
                    Some((key, !seen.insert(key)))
                }
                (Prepared::Resync(_, key), Some(_)) => Some((*key, !seen.insert(*key))),
                _ => None,
            })
            .collect();
        let firsts: Vec<Option<DedupeKey>> = keys
            .iter()
            .map(|k| k.and_then(|(key, repeat)| (!repeat).then_some(key)))
            .collect();
        let mut claims = self.begin_dedupe(owner, &firsts).await.into_iter();

        // Each item: an event for the handler (with the dedupe key it
        // holds), or an outcome already.
        let mut items = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        for ((claimed, prepared), key) in batch.into_iter().zip(keys) {
            let (held, step) = match key {
                Some((_, true)) => (
                    None,
                    Err(Outcome::Defer(DEFER, "a copy is in the same batch".into())),
                ),
                Some((key, false)) => match claims.next().unwrap_or(Err("no dedupe answer".into()))
                {
                    Ok(Claim::Proceed) => (Some(key), Self::event(&claimed, prepared)),
                    Ok(Claim::Duplicate) => (None, Err(Outcome::Rejected("duplicate"))),
                    Ok(_) => (
                        None,
                        Err(Outcome::Defer(DEFER, "a copy is being handled".into())),
                    ),
                    Err(e) => (None, Err(Outcome::Defer(DEFER, e))),
                },
                None => (None, Self::event(&claimed, prepared)),
            };
            let mut shown = None;
            let outcome = match step {
                Ok(event) => {
                    if let Some(inspector) = &self.inspector {
                        shown = Shown::of(&event, inspector.shows_secrets());
                    }
                    events.push(event);
                    None
                }
                Err(outcome) => Some(outcome),
            };
            items.push((claimed, held, outcome, shown));
        }

        let mut results = self.call_batch(events).await.into_iter();
        let mut handled_keys = Vec::new();
        let mut done = Vec::with_capacity(items.len());
        for (claimed, held, outcome, shown) in items {
            let outcome = outcome.unwrap_or_else(|| match results.next() {
                Some(Ok(())) => Outcome::Done,
                Some(Err(outcome)) => outcome,
                None => Outcome::Failed("the handler lost an event".into()),
            });
            if let Some(inspector) = &self.inspector {
                let fate = self.fate(&claimed, &outcome);
                match shown {
                    Some(Shown::Resync(resource, reason)) if fate == Fate::Handled => {
                        inspector.resynced(&resource, reason);
                    }
                    Some(Shown::Data(data)) => {
                        inspector.settle(&claimed.item.raw, fate, Some(&data));
                    }
                    _ => inspector.settle(&claimed.item.raw, fate, None),
                }
            }
            if let (Some(key), Some(dedupe)) = (held, &self.dedupe) {
                if matches!(outcome, Outcome::Done) {
                    handled_keys.push(key);
                } else if let Err(e) = dedupe.abandon(key, owner).await {
                    tracing::warn!(error = %e, "could not release a dedupe key");
                }
            }
            match outcome {
                Outcome::Done => done.push(claimed.id),
                Outcome::Rejected(reason) => {
                    let head = crate::notification::ItemHead::parse(&claimed.item.raw);
                    let subscription = head.as_ref().and_then(|h| h.subscription_id.as_deref());
                    self.metrics.rejected(reason, subscription);
                    done.push(claimed.id);
                }
                outcome => self.settle_one(inbox, claimed, outcome).await,
            }
        }
        if let (Some(dedupe), false) = (&self.dedupe, handled_keys.is_empty())
            && let Err(e) = dedupe
                .finish_many(handled_keys, owner, self.dedupe_ttl)
                .await
        {
            // The items are removed below all the same; at worst a later
            // copy is handled again, which at-least-once allows.
            tracing::warn!(error = %e, "could not record handled dedupe keys");
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

    /// What the inspector shows of an item's outcome.
    fn fate(&self, claimed: &Claimed, outcome: &Outcome) -> Fate {
        match outcome {
            Outcome::Done => Fate::Handled,
            Outcome::Rejected(reason) => Fate::rejected(reason),
            Outcome::Defer(_, why) => Fate::Deferred { why: why.clone() },
            Outcome::DeadLetter(reason) => Fate::DeadLettered {
                reason: reason.clone(),
            },
            Outcome::Failed(reason) if claimed.attempts + 1 >= self.retry.max_attempts => {
                Fate::DeadLettered {
                    reason: reason.clone(),
                }
            }
            Outcome::Failed(reason) => Fate::Retrying {
                attempt: claimed.attempts + 1,
                error: reason.clone(),
            },
        }
    }

    /// Claims the dedupe keys of a batch; one answer per `Some` key, in order.
    async fn begin_dedupe(
        &self,
        owner: &str,
        keys: &[Option<DedupeKey>],
    ) -> Vec<Result<Claim, String>> {
        let wanted: Vec<DedupeKey> = keys.iter().flatten().copied().collect();
        let Some(dedupe) = &self.dedupe else {
            return Vec::new();
        };
        if wanted.is_empty() {
            return Vec::new();
        }
        let n = wanted.len();
        match dedupe.begin_many(wanted, owner, self.dedupe_lease).await {
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
                Outcome::DeadLetter(reason) => {
                    if attempt == 0 {
                        tracing::error!(%id, %reason, "dead-lettering item");
                        self.metrics.dead_lettered();
                    }
                    inbox.dead_letter(claimed.clone(), reason.clone()).await
                }
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
                        let delay = self.retry.backoff(failures);
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

/// How many items a worker claims at once: at most what a claim returns —
/// when items trickle in it takes the few there are. Under load, each batch
/// costs a round of thread wake-ups (RSA pool, printer, inbox); 64 rather
/// than 16 cut the rich benchmark's context switches by half and its CPU
/// besides RSA by a fifth (BENCHMARKS.md). The price: a worker killed
/// between handling a batch and recording it has up to 64 items handled
/// again after the restart.
const CLAIM_BATCH: usize = 64;
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
        for n in 0..count {
            // Each worker claims dedupe keys under its own name, so two
            // workers never both go ahead with copies of one notification.
            let owner = format!("{}/{n}", pipeline.owner);
            tasks.spawn(work(
                inbox.clone(),
                pipeline.clone(),
                owner,
                stopped.clone(),
            ));
        }
        Self { stop, tasks }
    }

    /// Stops the workers, for at most `deadline`; then the remaining ones
    /// are cancelled (their items stay claimed, and a durable inbox hands
    /// them out again after a restart). On a durable inbox
    /// ([`Inbox::is_durable`]) each finishes the batches it holds (at most
    /// three: the one with the handler, one prepared, one claimed waiting
    /// to be) and stops: the backlog waits in the store for the next
    /// start or another process, so a long one doesn't hold the exit up.
    /// On one that isn't, each keeps taking ready items until the inbox has
    /// none, since what is left would be lost.
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
    owner: String,
    stopped: watch::Receiver<bool>,
) {
    // Claiming and verifying (RSA on its own pool) run up to two batches
    // ahead of the handler, so the cores stay busy with RSA however long the
    // handler takes to answer; the handler still takes the items in order.
    let (ready, mut prepared) = tokio::sync::mpsc::channel::<Vec<(Claimed, Prepared)>>(1);
    let drain_backlog = !inbox.is_durable();
    let (inbox, pipeline, stopped) = (&inbox, &pipeline, &stopped);
    let produce = async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            let draining = *stopped.borrow();
            if draining && !drain_backlog {
                return;
            }
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
            pipeline.settle_batch(inbox.as_ref(), &owner, batch).await;
        }
    };
    tokio::join!(produce, consume);
}

//! One round of a cursor: under its lease, page by page, each page durable
//! before the cursor moves.

use std::time::Duration;

use super::{
    DeltaResync, FULL_INBOX_WAIT, LEASE_TTL, MAX_RESETS, Round, Sink, has_latest, lease_name,
    unix_ms,
};
use crate::catalog::DeltaQuery;
use crate::handler::ResyncEvent;
use crate::resync::{Origin, ResyncError, ResyncItem, ResyncReason};
use crate::store::{CursorProgress, Inbox, StoreError, StoredItem};
use crate::subscriptions::{DeltaError, DeltaItem, DeltaNext, DeltaStart};

impl DeltaResync {
    /// One round under the cursor's lease.
    pub(super) async fn round(
        &self,
        key: &str,
        resource: &str,
        query: &DeltaQuery,
        reason: ResyncReason,
    ) -> Result<Round, ResyncError> {
        let lease = lease_name(key);
        let inner = &self.inner;
        if !inner
            .lease
            .acquire(&lease, &inner.holder, LEASE_TTL)
            .await?
        {
            return Ok(Round {
                cursor: key.to_owned(),
                resource: resource.to_owned(),
                busy: true,
                ..Round::default()
            });
        }
        // Extended while the round runs, however long a page takes.
        let heartbeat = {
            let (engine, lease) = (self.inner.clone(), lease.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LEASE_TTL / 3).await;
                    match engine
                        .lease
                        .acquire(&lease, &engine.holder, LEASE_TTL)
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(%lease, "lost a delta lease to another instance");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(%lease, error = %e, "could not extend a delta lease")
                        }
                    }
                }
            })
        };
        let result = self.round_held(&lease, key, resource, query, reason).await;
        heartbeat.abort();
        if let Err(e) = inner.lease.release(&lease, &inner.holder).await {
            tracing::debug!(error = %e, "could not release a delta lease; it lapses");
        }
        result
    }

    fn first_url(&self, query: &DeltaQuery, start: DeltaStart) -> String {
        let mut options = self.inner.options.clone();
        if query.window {
            let now = self.inner.clock.now();
            let (back, ahead) = self.inner.calendar_window;
            options.window = Some((now - back, now + ahead));
        }
        self.inner.client.delta_url(query, start, &options)
    }

    async fn round_held(
        &self,
        lease: &str,
        key: &str,
        resource: &str,
        query: &DeltaQuery,
        reason: ResyncReason,
    ) -> Result<Round, ResyncError> {
        let inner = &self.inner;
        let started = unix_ms(inner.clock.now());
        let cursor = inner.cursors.get(key).await?.unwrap_or_default();
        let reason = cursor
            .due_reason
            .as_deref()
            .and_then(ResyncReason::parse)
            .unwrap_or(reason);
        let mut progress = CursorProgress::of(&cursor);
        progress.resource = resource.to_owned();
        progress.query.clone_from(&query.path);
        // A cursor's first round at startup or on request only sets it
        // (unless asked to hand the state over); later rounds, a trigger
        // before any cursor and a reset's full sync hand over what they find. A baseline
        // resumed after a crash stays one.
        let first = cursor.last_success_ms.is_none();
        let deliver = !first
            || inner.initial_sync
            || !matches!(reason, ResyncReason::Startup | ResyncReason::Requested);
        let mut url = match (&cursor.next_link, &cursor.delta_link) {
            (Some(next), _) => next.clone(),
            (None, Some(delta)) => delta.clone(),
            (None, None) if !deliver && has_latest(query) => {
                self.first_url(query, DeltaStart::Latest)
            }
            (None, None) => self.first_url(query, DeltaStart::Full),
        };
        let origin = Origin {
            reason: reason.clone(),
            resource: resource.to_owned(),
            cursor: key.to_owned(),
        };
        let mut round = Round {
            cursor: key.to_owned(),
            resource: resource.to_owned(),
            reason: Some(reason),
            baseline: !deliver,
            ..Round::default()
        };
        // The next page is fetched while this one is handed over; the
        // cursor moves only once this one is durable.
        let mut fetched = inner.client.delta_page(&url, &inner.options).await;
        loop {
            let page = match fetched {
                Ok(page) => page,
                Err(DeltaError::Reset { location, error }) if round.resets < MAX_RESETS => {
                    round.resets += 1;
                    tracing::warn!(
                        %resource,
                        %error,
                        "graph asked for a full sync: starting over; the handler gets every \
                         item there is, and items removed meanwhile are not named"
                    );
                    progress.next_link = None;
                    progress.delta_link = None;
                    inner.cursors.save(key, progress.clone()).await?;
                    url = location.unwrap_or_else(|| self.first_url(query, DeltaStart::Full));
                    fetched = inner.client.delta_page(&url, &inner.options).await;
                    continue;
                }
                Err(e) => return Err(ResyncError::Graph(Box::new(e))),
            };
            round.pages += 1;
            round.seen += page.items.len() as u64;
            let hand_over = async {
                if deliver && !page.items.is_empty() {
                    self.deliver(&origin, &page.items).await
                } else {
                    Ok(())
                }
            };
            let handed = page.items.len() as u64;
            match page.next {
                DeltaNext::Next(next) => {
                    let (result, prefetched) =
                        tokio::join!(hand_over, inner.client.delta_page(&next, &inner.options));
                    result?;
                    if deliver {
                        round.delivered += handed;
                    }
                    if !self.still_held(lease).await? {
                        round.busy = true;
                        return Ok(round);
                    }
                    progress.next_link = Some(next);
                    inner.cursors.save(key, progress.clone()).await?;
                    fetched = prefetched;
                }
                DeltaNext::Done(delta) => {
                    hand_over.await?;
                    if deliver {
                        round.delivered += handed;
                    }
                    if !self.still_held(lease).await? {
                        round.busy = true;
                        return Ok(round);
                    }
                    progress.next_link = None;
                    progress.delta_link = Some(delta);
                    progress.last_success_ms = Some(unix_ms(inner.clock.now()));
                    inner.cursors.save(key, progress).await?;
                    inner.cursors.clear_due(key, started).await?;
                    return Ok(round);
                }
            }
        }
    }

    /// Extends the round's lease before the cursor moves; `false` when
    /// another instance took the cursor over (this one stalled past the
    /// lease): it goes on from the stored link.
    async fn still_held(&self, lease: &str) -> Result<bool, StoreError> {
        let inner = &self.inner;
        inner.lease.acquire(lease, &inner.holder, LEASE_TTL).await
    }

    /// Hands a page's changes over; returns once they are durable (in the
    /// inbox) or handled.
    async fn deliver(&self, origin: &Origin, items: &[DeltaItem]) -> Result<(), ResyncError> {
        match &self.inner.sink {
            Sink::Inbox(inbox) => {
                let stored: Vec<StoredItem> = items
                    .iter()
                    .map(|item| ResyncItem::stored(origin, item))
                    .collect::<Result<_, _>>()
                    .map_err(|e| ResyncError::Deliver(e.to_string()))?;
                append(inbox.as_ref(), stored).await
            }
            Sink::Handler(handler) => {
                let now = self.inner.clock.now();
                let mut events = Vec::with_capacity(items.len());
                for item in items {
                    let stored = ResyncItem::stored(origin, item)
                        .map_err(|e| ResyncError::Deliver(e.to_string()))?;
                    let parsed = ResyncItem::parse(&stored.raw).ok_or_else(|| {
                        ResyncError::Deliver("a resync item does not read back".to_owned())
                    })?;
                    let data = serde_json::from_str(item.raw.get())
                        .map_err(|e| ResyncError::Deliver(e.to_string()))?;
                    events.push(ResyncEvent::new(parsed, data, now, 0));
                }
                handler(events)
                    .await
                    .map_err(|e| ResyncError::Deliver(e.to_string()))
            }
        }
    }
}

/// Appends, waiting for room while the inbox is full.
async fn append(inbox: &dyn Inbox, items: Vec<StoredItem>) -> Result<(), ResyncError> {
    let deadline = tokio::time::Instant::now() + FULL_INBOX_WAIT;
    let mut pause = Duration::from_millis(50);
    loop {
        match inbox.append(items.clone()).await {
            Ok(()) => return Ok(()),
            Err(StoreError::Full) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(ResyncError::Store(e)),
        }
    }
}

pub(super) fn log_round(round: &Round) {
    if round.baseline {
        tracing::info!(
            resource = %round.resource,
            pages = round.pages,
            "delta cursor set: changes from now on are resynced"
        );
    } else {
        tracing::info!(
            resource = %round.resource,
            reason = %round.reason.as_ref().map_or("", ResyncReason::as_str),
            pages = round.pages,
            changes = round.delivered,
            resets = round.resets,
            "resync done"
        );
    }
}

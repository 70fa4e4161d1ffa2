//! The pass: for each declaration held, create what is missing, renew what
//! is due, follow the public URL and the certificate, delete the undeclared.

use std::collections::{BTreeSet, HashSet};

use time::{Duration, OffsetDateTime};

use crate::store::StoreError;
use crate::store::SubscriptionRecord;
use crate::subscriptions::error::{ClientError, GraphError};
use crate::subscriptions::model::SubscriptionUpdate;
use crate::{BoxError, ClientState};

use super::{Activity, Declared, LIFETIME_MARGIN, Managed, Resync, ResyncReason, Shared, Urls};
use crate::resync::ResyncError;

/// How long a subscription being created is announced for: its create
/// (handshake included) answers well within this, and its first items are
/// recognised by their `clientState` meanwhile.
const PENDING_FOR: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// Kept under the maximum Graph states when it refuses an expiration as too
/// far: measured by Graph's clock (the time of its answer) only the
/// request's time in flight is unknown; by ours, any skew is.
const CLAMP_MARGIN_GRAPH_TIME: Duration = Duration::minutes(1);
const CLAMP_MARGIN_LOCAL_TIME: Duration = Duration::minutes(30);

/// The latest expiration to ask for after Graph answered `error` (its
/// "expiration can only be N minutes in the future") to a request sent at
/// `now` on the manager's clock.
fn expiration_cap(error: &GraphError, now: OffsetDateTime) -> OffsetDateTime {
    let minutes = Duration::minutes(error.max_expiration_minutes().unwrap_or(0));
    match error.graph_time() {
        // Graph checks by its own clock: right whatever the skew.
        Some(graph_now) => graph_now + minutes - CLAMP_MARGIN_GRAPH_TIME,
        None => now + minutes - CLAMP_MARGIN_LOCAL_TIME,
    }
}

/// Outcome of handling one declaration in a pass.
pub(super) enum Step {
    /// Kept: due again at this time.
    Due(OffsetDateTime),
    /// Nothing to do until something changes (no public URL yet).
    Idle,
}

impl Shared {
    /// One pass over the declarations whose lease this instance holds;
    /// `None` when other instances hold them all.
    pub(super) async fn pass(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        let _ops = self.ops.lock().await;
        let mut mine = Vec::new();
        for declared in &self.declared {
            if self.hold(&declared.stable_key()).await? {
                mine.push(declared);
            }
        }
        let now = self.now();
        let public = self.public_url.borrow().clone();
        // Read once: the managed subscriptions, and the pending
        // announcements a crash left behind.
        let stored = self.records.all().await?;
        let records: Vec<Managed> = stored.iter().filter_map(Managed::from_record).collect();
        let live: Option<HashSet<String>> = if mine.is_empty() {
            None
        } else {
            match self.client.list().await {
                Ok(list) => Some(list.into_iter().map(|s| s.id).collect()),
                Err(e) => {
                    tracing::warn!(error = %e, "listing subscriptions failed; checking by record only");
                    None
                }
            }
        };
        let mut next = now + self.settings.check_interval;
        for declared in mine.iter().copied() {
            let key = declared.stable_key();
            if !self.hold(&key).await? {
                // Lost while the pass ran (a store outage longer than the lease).
                continue;
            }
            let mine: Vec<Managed> = records.iter().filter(|m| m.key == key).cloned().collect();
            match self
                .reconcile_one(declared, mine, live.as_ref(), public.as_deref())
                .await
            {
                Ok(Step::Due(due)) => next = next.min(due),
                Ok(Step::Idle) => {}
                Err(e) => {
                    self.emit(Activity::Failed {
                        key,
                        error: e.to_string(),
                    });
                    next = next.min(now + self.settings.retry_after_failure);
                }
            }
        }
        // Records of declarations nobody makes any more (`:created` became
        // `:created,updated` between `--keep` runs): left alone, Graph would
        // deliver every change twice until the old one expired.
        if let Err(e) = self.sweep_pending(stored).await {
            tracing::warn!(error = %e, "could not sweep expired pending subscription records");
        }
        if self.delete_undeclared(&records).await? {
            next = next.min(now + self.settings.retry_after_failure);
        }
        if mine.is_empty() {
            return Ok(None);
        }
        Ok(Some(next))
    }

    /// Deletes the records whose key no live instance declares: not this
    /// one, and no other that shares the store (each marks the keys it
    /// keeps). Each under that key's lease, so of several instances one
    /// deletes, and none while an instance that declares it is starting.
    /// `true` if a delete failed (tried again on a later pass).
    pub(super) async fn delete_undeclared(&self, records: &[Managed]) -> Result<bool, StoreError> {
        let mut failed = false;
        let stale: BTreeSet<&str> = records
            .iter()
            .map(|m| m.key.as_str())
            .filter(|key| self.declared(key).is_none())
            .collect();
        for key in stale {
            if self.kept_by_anyone(key).await? || !self.hold(key).await? {
                continue;
            }
            // Read again under the lease: an instance that declares it may
            // have joined since.
            if !self.kept_by_anyone(key).await? {
                for managed in records.iter().filter(|m| m.key == key) {
                    tracing::info!(%key, id = %managed.id, "no live instance declares this subscription any more: deleting it");
                    if let Err(e) = self.delete_one(key, &managed.id).await {
                        self.emit(Activity::Failed {
                            key: key.to_owned(),
                            error: e.to_string(),
                        });
                        failed = true;
                    }
                }
            }
            self.release(key).await?;
        }
        Ok(failed)
    }

    pub(super) async fn reconcile_one(
        &self,
        declared: &Declared,
        mut mine: Vec<Managed>,
        live: Option<&HashSet<String>>,
        public: Option<&str>,
    ) -> Result<Step, BoxError> {
        let key = declared.stable_key();
        let now = self.now();
        // Two records for one key (instances that once raced): keep the
        // newest live one, delete the others.
        mine.sort_by_key(|m| std::cmp::Reverse(m.expires_at));
        let alive = |m: &Managed| {
            m.removed_at.is_none() && m.expires_at > now && live.is_none_or(|l| l.contains(&m.id))
        };
        let keep = mine.iter().position(alive);
        for (i, extra) in mine.iter().enumerate() {
            if Some(i) != keep && mine.len() > 1 {
                self.delete_one(&key, &extra.id).await?;
            }
        }
        let current = match keep {
            Some(i) => mine.swap_remove(i),
            None => {
                let Some(urls) = declared.urls(public) else {
                    tracing::info!(%key, "no public URL yet: waiting for one to subscribe");
                    return Ok(Step::Idle);
                };
                let gone = mine.first().map(|m| (m.id.clone(), m.removed_at.is_some()));
                // The old record stays until its replacement exists: a
                // create that fails leaves the gap (and its resync) for
                // the next pass.
                let (created, replaced) = self.create(declared, &urls, None).await?;
                if let Some((old, _)) = &gone {
                    self.forget(old).await?;
                }
                if let Some((old, removed)) = gone {
                    self.emit(Activity::Recreated {
                        key: key.clone(),
                        old,
                        new: created.id.clone(),
                    });
                    let reason = if removed {
                        ResyncReason::SubscriptionRemoved
                    } else {
                        ResyncReason::Recreated
                    };
                    self.resync(&key, &created.id, reason).await?;
                } else if replaced {
                    self.resync(&key, &created.id, ResyncReason::Recreated)
                        .await?;
                }
                return Ok(Step::Due(created.renew_at));
            }
        };
        let urls = declared
            .urls(public)
            .unwrap_or_else(|| current.urls.clone());
        let same_kind = current.resource == declared.resource
            && current.change_type == declared.change_type
            && current.rich == declared.rich;
        if !same_kind || current.urls.lifecycle != urls.lifecycle {
            // Graph can't update these in place: a new subscription, then
            // the old one deleted (first, if Graph refuses two); its record
            // stays until the new one exists, so a failed create is a gap
            // the next pass fills, with a resync.
            let (created, _) = self.create(declared, &urls, Some(&current.id)).await?;
            self.delete_one(&key, &current.id).await?;
            self.emit(Activity::Recreated {
                key: key.clone(),
                old: current.id.clone(),
                new: created.id.clone(),
            });
            self.resync(&key, &created.id, ResyncReason::Recreated)
                .await?;
            return Ok(Step::Due(created.renew_at));
        }
        let mut update = SubscriptionUpdate::default();
        if current.urls.notification != urls.notification {
            update.notification_url = Some(urls.notification.clone());
        }
        if declared.needs_certificate()
            && let Some(certificate) = self.certificate_for(declared)
            && current.certificate_id.as_deref() != Some(certificate.id())
        {
            update = update.certificate(&certificate);
        }
        let changed = update.notification_url.is_some() || update.encryption_certificate.is_some();
        if !changed && now < current.renew_at {
            return Ok(Step::Due(current.renew_at));
        }
        if let Some(allowed) = current.update_allowed_at()
            && now < allowed
            && current.expires_at > allowed + Duration::minutes(5)
        {
            // Reauthorized less than 10 minutes ago: Graph asks us to wait.
            return Ok(Step::Due(allowed));
        }
        let renewed = self.renew(declared, current, update, &urls).await?;
        Ok(Step::Due(renewed.renew_at))
    }

    /// Creates the subscription of `declared`, retrying a failed handshake,
    /// adopting or replacing a duplicate, clamping an expiration Graph
    /// finds too far; stores its record. `replacing` is the subscription
    /// this one replaces: when Graph refuses two, it is deleted then (its
    /// record stays until the caller forgets it). The flag says a live
    /// subscription unknown to the records was deleted to make room:
    /// notifications Graph queued for it are lost, so a resync is due.
    pub(super) async fn create(
        &self,
        declared: &Declared,
        urls: &Urls,
        replacing: Option<&str>,
    ) -> Result<(Managed, bool), BoxError> {
        let key = declared.stable_key();
        let certificate = self.certificate_for(declared);
        let mut handshakes = 0;
        let mut conflicts = 0;
        let mut replaced = false;
        let mut cap: Option<OffsetDateTime> = None;
        loop {
            let now = self.now();
            let client_state = ClientState::random();
            let mut request =
                declared.request(urls, certificate.as_ref(), client_state.clone(), now)?;
            if let Some(cap) = cap {
                request.expiration = request.expiration.min(cap);
            }
            self.announce(&client_state).await?;
            let answer = self.client.create(&request).await;
            let error = match answer {
                Ok(created) => {
                    let managed = Managed {
                        id: created.id.clone(),
                        client_state: Some(client_state.clone()),
                        certificate_id: request.encryption_certificate_id.clone(),
                        expires_at: created.expiration,
                        key: key.clone(),
                        resource: declared.resource.clone(),
                        change_type: declared.change_type.clone(),
                        rich: declared.rich,
                        urls: urls.clone(),
                        renew_at: self.renew_at(now, created.expiration),
                        renewed_at: None,
                        reauthorized_at: None,
                        removed_at: None,
                    };
                    let stored = self.store(&managed).await;
                    self.withdraw(&client_state).await;
                    if let Err(e) = stored {
                        // A subscription nobody can authenticate is worse than none.
                        let _ = self.client.delete(&created.id).await;
                        return Err(e.into());
                    }
                    self.emit(Activity::Created {
                        key,
                        id: created.id,
                    });
                    return Ok((managed, replaced));
                }
                Err(error) => error,
            };
            self.withdraw(&client_state).await;
            match error {
                ClientError::Graph(e) if cap.is_none() && e.max_expiration_minutes().is_some() => {
                    cap = Some(expiration_cap(&e, now));
                    tracing::warn!(%key, error = %e, "graph finds the expiration too far (is the local clock ahead of Graph's?): asking for less");
                }
                ClientError::Graph(e) if e.is_conflict() && conflicts < 2 => {
                    conflicts += 1;
                    let Some(existing) = e.conflicting_id().map(str::to_owned) else {
                        return Err(ClientError::Graph(e).into());
                    };
                    if let Some(ours) = self.recorded(&existing).await?
                        && ours.key == key
                    {
                        if replacing == Some(existing.as_str()) {
                            // The one being replaced: Graph keeps one per
                            // resource, so it goes first — but only once
                            // the new URLs pass the handshake Graph will
                            // run, or a mistyped URL would leave nothing.
                            self.probe(urls).await?;
                            match self.client.delete(&existing).await {
                                Ok(()) => continue,
                                Err(e) if e.is_not_found() => continue,
                                Err(e) => return Err(e.into()),
                            }
                        }
                        // Another instance created it and recorded its clientState.
                        self.store(&ours).await?;
                        self.emit(Activity::Adopted { key, id: existing });
                        return Ok((ours, replaced));
                    }
                    // Its clientState is unknown (Graph shows null): replace it.
                    match self.client.delete(&existing).await {
                        Ok(()) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e.into()),
                    }
                    replaced = true;
                    self.emit(Activity::Replaced {
                        key: key.clone(),
                        id: existing,
                    });
                }
                ClientError::Graph(e)
                    if e.is_handshake_failure()
                        && handshakes + 1 < self.settings.handshake_retry.max_attempts =>
                {
                    handshakes += 1;
                    let wait = self.settings.handshake_retry.backoff(handshakes);
                    tracing::warn!(
                        %key,
                        attempt = handshakes,
                        ?wait,
                        error = %e,
                        "the validation handshake failed; trying again (msgraph-webhooks doctor URL explains why)"
                    );
                    tokio::time::sleep(wait).await;
                }
                ClientError::Graph(e) if e.is_handshake_failure() => {
                    return Err(format!(
                        "{e}; run `msgraph-webhooks doctor {}` to see why",
                        urls.notification
                    )
                    .into());
                }
                e => return Err(e.into()),
            }
        }
    }

    /// Runs the validation handshake against `urls` as Graph would, before
    /// a working subscription is deleted to make room for one there.
    pub(super) async fn probe(&self, urls: &Urls) -> Result<(), BoxError> {
        let options = crate::doctor::Options::default();
        for url in std::iter::once(&urls.notification).chain(&urls.lifecycle) {
            let finding = crate::doctor::handshake(url, &options).await?;
            if finding.verdict == crate::doctor::Verdict::Fail {
                return Err(format!(
                    "{url} fails the validation handshake ({}): the working subscription \
                     stays until it passes; run `msgraph-webhooks doctor {url}` to see why",
                    finding.detail
                )
                .into());
            }
        }
        Ok(())
    }

    /// Announces a subscription about to be created with `client_state`,
    /// to this process's registry and, as a pending record, to every
    /// instance reading the store: Graph may deliver its first
    /// notifications before it answers with the id.
    pub(super) async fn announce(&self, client_state: &ClientState) -> Result<(), StoreError> {
        if let Some(registry) = &self.registry {
            registry.expect(client_state.clone(), PENDING_FOR);
        }
        // Real time, as the receivers reading it count (not Graph's clock).
        let until = OffsetDateTime::now_utc() + PENDING_FOR;
        self.records
            .put(SubscriptionRecord::pending(client_state.clone(), until))
            .await
    }

    /// Ends an [announcement](Self::announce): the subscription's own record
    /// is stored, or the create failed. A pending record left behind (a
    /// crash, the store failing now) expires by itself and is swept.
    pub(super) async fn withdraw(&self, client_state: &ClientState) {
        if let Some(registry) = &self.registry {
            registry.registered(client_state);
        }
        let id = SubscriptionRecord::pending_id(client_state.expose());
        if let Err(e) = self.records.remove(id).await {
            tracing::warn!(error = %e, "could not remove a pending subscription record: it expires by itself");
        }
    }

    /// Deletes the pending records whose time is over (left by a crash).
    pub(super) async fn sweep_pending(
        &self,
        stored: Vec<SubscriptionRecord>,
    ) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc();
        for record in stored {
            if record.id.starts_with("pending:") && !record.is_pending_at(now) {
                self.records.remove(record.id).await?;
            }
        }
        Ok(())
    }

    /// Renews `current` (moving or re-keying it with `update`); recreates it
    /// when Graph no longer has it.
    pub(super) async fn renew(
        &self,
        declared: &Declared,
        mut current: Managed,
        mut update: SubscriptionUpdate,
        urls: &Urls,
    ) -> Result<Managed, BoxError> {
        let key = declared.stable_key();
        let mut handshakes = 0;
        let mut cap: Option<OffsetDateTime> = None;
        loop {
            let now = self.now();
            let max = declared.rules().map_or(declared.lifetime_now(), |r| {
                r.max_lifetime(declared.rich) - LIFETIME_MARGIN
            });
            let expiration = now + declared.lifetime_now().min(max);
            update.expiration = Some(cap.map_or(expiration, |cap| expiration.min(cap)));
            match self.client.update(&current.id, &update).await {
                Ok(updated) => {
                    let moved_to = update.notification_url.clone();
                    let certificate_id = update.encryption_certificate_id.clone();
                    current.expires_at = updated.expiration;
                    current.urls.notification = urls.notification.clone();
                    if certificate_id.is_some() {
                        current.certificate_id = certificate_id.clone();
                    }
                    current.renew_at = self.renew_at(now, updated.expiration);
                    current.renewed_at = Some(now);
                    self.store(&current).await?;
                    self.emit(Activity::Renewed {
                        key,
                        id: current.id.clone(),
                        expiration: updated.expiration,
                        moved_to,
                        certificate_id,
                    });
                    return Ok(current);
                }
                Err(e) if e.is_not_found() => {
                    let (created, _) = self.create(declared, urls, None).await?;
                    self.forget(&current.id).await?;
                    self.emit(Activity::Recreated {
                        key: key.clone(),
                        old: current.id,
                        new: created.id.clone(),
                    });
                    self.resync(&key, &created.id, ResyncReason::Recreated)
                        .await?;
                    return Ok(created);
                }
                Err(ClientError::Graph(e))
                    if cap.is_none() && e.max_expiration_minutes().is_some() =>
                {
                    cap = Some(expiration_cap(&e, now));
                    tracing::warn!(%key, error = %e, "graph finds the expiration too far (is the local clock ahead of Graph's?): asking for less");
                }
                Err(ClientError::Graph(e))
                    if e.is_handshake_failure()
                        && handshakes + 1 < self.settings.handshake_retry.max_attempts =>
                {
                    handshakes += 1;
                    tokio::time::sleep(self.settings.handshake_retry.backoff(handshakes)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(super) async fn delete_one(&self, key: &str, id: &str) -> Result<(), BoxError> {
        match self.client.delete(id).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        self.forget(id).await?;
        self.emit(Activity::Deleted {
            key: key.to_owned(),
            id: id.to_owned(),
        });
        Ok(())
    }

    pub(super) async fn delete_all(&self) -> Result<(), StoreError> {
        let keys: HashSet<String> = self.declared.iter().map(Declared::stable_key).collect();
        self.delete_keys(&keys).await
    }

    pub(super) async fn delete_keys(&self, keys: &HashSet<String>) -> Result<(), StoreError> {
        let _ops = self.ops.lock().await;
        for managed in self.managed().await? {
            if !keys.contains(&managed.key) {
                continue;
            }
            if let Err(e) = self.delete_one(&managed.key, &managed.id).await {
                self.emit(Activity::Failed {
                    key: managed.key.clone(),
                    error: format!("deleting {}: {e}", managed.id),
                });
            }
        }
        Ok(())
    }

    pub(super) async fn resync(
        &self,
        key: &str,
        id: &str,
        reason: ResyncReason,
    ) -> Result<(), BoxError> {
        let resource = self
            .declared(key)
            .map(|d| d.resource.clone())
            .unwrap_or_default();
        if let Some(engine) = &self.delta {
            match engine.request(&resource, reason.clone()).await {
                Ok(()) => {
                    self.emit(Activity::Resynced {
                        key: key.to_owned(),
                        reason,
                    });
                    return Ok(());
                }
                // No delta query for it: the hook, as without the engine.
                Err(ResyncError::NoDelta(_)) => {}
                Err(e) => return Err(format!("the resync of {key} failed: {e}").into()),
            }
        }
        let Some(hook) = &self.resync else {
            return Ok(());
        };
        hook(Resync {
            key: key.to_owned(),
            resource,
            subscription_id: id.to_owned(),
            reason: reason.clone(),
        })
        .await
        .map_err(|e| format!("the resync hook of {key} failed: {e}"))?;
        self.emit(Activity::Resynced {
            key: key.to_owned(),
            reason,
        });
        Ok(())
    }
}

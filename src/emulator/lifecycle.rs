//! Making things happen: changes to notify, lifecycle events, and the
//! housekeeping that expires subscriptions, challenges them to reauthorize
//! and pauses their delivery until they do.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::Core;
use super::clock::emulated;
use super::delivery::Outgoing;
use super::notify::{Change, Changed, change_items, lifecycle_item, target};
use super::resources::{self, Applied, MAX_ITEMS};
use super::store::Subscription;
use crate::catalog::{PathError, ResourcePath};
use crate::notification::{ChangeType, LifecycleEventType};

/// What a change or lifecycle event set in motion.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Fired {
    /// The subscriptions notified.
    pub subscription_ids: Vec<String>,
    /// The items queued for delivery.
    pub items: usize,
    /// What the changes did to the emulator's data (changes to resources
    /// without a delta query are not kept); left out of the JSON when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub applied: Vec<Applied>,
}

/// The access token Graph holds for a subscription, and how it asks for a
/// new one (Microsoft Learn, "Reduce missing subscriptions and change
/// notifications", <https://learn.microsoft.com/graph/change-notifications-lifecycle-events>):
/// Graph sends `reauthorizationRequired` "when the access token is about to
/// expire" — the page's illustrative schedule challenges every 15 minutes in
/// the token's last hour — and "eventually change notification delivery
/// pauses, until you take the required action": `POST
/// /subscriptions/{id}/reauthorize`, or a renewal (`PATCH` with an
/// `expirationDateTime`), which "also reauthorizes". No challenge follows
/// the token's expiry.
///
/// This models subscriptions with a `lifecycleNotificationUrl`, the only
/// ones Graph can challenge (and the ones Teams subscriptions over an hour
/// must have); others run until they expire. Notifications of a paused
/// subscription are held and delivered once it is reauthorized, for at most
/// [`hold_paused`](Self::hold_paused); then they are dropped (logged
/// [`Outcome::Expired`](super::Outcome::Expired)) and Outlook subscriptions
/// hear `missed`. The page says changes during the pause "are lost": with
/// `hold_paused` zero, they are dropped at once.
///
/// ```
/// use std::time::Duration;
/// use msgraph_webhooks::emulator::{Emulator, Reauthorization};
///
/// // Tokens of ten minutes, challenged every two.
/// let mut reauthorization = Reauthorization::default();
/// reauthorization.token_lifetime = Duration::from_secs(600);
/// reauthorization.challenge_interval = Duration::from_secs(120);
/// let builder = Emulator::builder().reauthorization(reauthorization);
/// # let _ = builder;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Reauthorization {
    /// How long a token lasts from creation, reauthorization or renewal:
    /// one hour, the low end of the 60 to 90 minutes of the identity
    /// platform's access tokens (Microsoft Learn, "Access tokens in the
    /// Microsoft identity platform", token lifetime,
    /// <https://learn.microsoft.com/entra/identity-platform/access-tokens>),
    /// so an app relying on more fails locally first.
    pub token_lifetime: Duration,
    /// How long before the token expires challenges start (1 hour: the
    /// illustrative schedule's "every 15 mins" branch).
    pub challenge_window: Duration,
    /// Time between challenges (15 minutes); the last is at expiry.
    pub challenge_interval: Duration,
    /// How long a paused subscription's notifications are held (4 hours,
    /// Graph's delivery retry period).
    pub hold_paused: Duration,
}

impl Default for Reauthorization {
    fn default() -> Self {
        Self {
            token_lifetime: Duration::from_secs(3600),
            challenge_window: Duration::from_secs(3600),
            challenge_interval: Duration::from_secs(15 * 60),
            hold_paused: Duration::from_secs(4 * 3600),
        }
    }
}

impl Reauthorization {
    /// The challenge times of a token expiring at `expires`, latest first:
    /// `expires`, then every interval earlier while within the window.
    fn challenges(&self, expires: OffsetDateTime) -> impl Iterator<Item = OffsetDateTime> {
        let interval = emulated(self.challenge_interval).max(time::Duration::SECOND);
        let window = emulated(self.challenge_window);
        (0..10_000i32)
            .map(move |n| interval * n)
            .take_while(move |ahead| *ahead < window || ahead.is_zero())
            .map(move |ahead| expires - ahead)
    }
}

/// A subscription's access token: when it expires, and the challenge last
/// sent for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Authorization {
    pub(crate) expires: OffsetDateTime,
    /// The scheduled time of the last challenge sent for this token.
    pub(crate) challenged: Option<OffsetDateTime>,
}

impl Authorization {
    /// Whether delivery is paused at `now`.
    pub(crate) fn expired(&self, now: OffsetDateTime) -> bool {
        now >= self.expires
    }

    /// The latest challenge due at `now` not sent yet (earlier missed ones
    /// are not sent: one challenge says it all).
    fn due(&self, now: OffsetDateTime, rules: &Reauthorization) -> Option<OffsetDateTime> {
        rules
            .challenges(self.expires)
            .find(|at| *at <= now)
            .filter(|at| self.challenged.is_none_or(|c| c < *at))
    }

    /// The next challenge after `now`.
    fn next(&self, now: OffsetDateTime, rules: &Reauthorization) -> Option<OffsetDateTime> {
        rules.challenges(self.expires).filter(|at| *at > now).last()
    }
}

/// Why the control API refused a request.
#[derive(Debug)]
#[non_exhaustive]
pub enum ControlError {
    /// The `resource` is not a path.
    InvalidResource(PathError),
    /// The change type is not `created`, `updated` or `deleted`.
    InvalidChangeType(String),
    /// No subscription has this id.
    UnknownSubscription(String),
    /// Graph does not send this lifecycle event for the subscription's kind
    /// (Microsoft Learn, "Reduce missing subscriptions and change notifications", <https://learn.microsoft.com/graph/change-notifications-lifecycle-events>: `missed` is for Outlook resources, `subscriptionRemoved`
    /// for Outlook and chat messages).
    UnsupportedLifecycleEvent {
        /// The event.
        event: String,
        /// The subscription's kind.
        kind: String,
    },
    /// The subscription has no `lifecycleNotificationUrl`, so Graph would
    /// send this event nowhere: a test waiting for it would wait for nothing.
    NoLifecycleUrl(String),
    /// Encrypting resource data failed.
    Encryption(String),
    /// Not a delta query the emulator serves (`users/delta`, `drives/{id}/root/delta`, …).
    NotADeltaQuery(String),
    /// The emulator keeps this many items already (tombstones included).
    TooManyItems(usize),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::InvalidResource(e) => write!(f, "invalid resource: {e}"),
            ControlError::InvalidChangeType(t) => write!(
                f,
                "'{t}' is not a change type: use created, updated or deleted"
            ),
            ControlError::UnknownSubscription(id) => write!(f, "no subscription has the id '{id}'"),
            ControlError::UnsupportedLifecycleEvent { event, kind } => {
                write!(f, "Graph does not send '{event}' for {kind} subscriptions")
            }
            ControlError::NoLifecycleUrl(id) => write!(
                f,
                "subscription '{id}' has no lifecycleNotificationUrl: Graph sends its lifecycle \
                 notifications nowhere (create it with one)"
            ),
            ControlError::Encryption(e) => write!(f, "encrypting resource data failed: {e}"),
            ControlError::NotADeltaQuery(path) => write!(
                f,
                "'{path}' is not a delta query of the emulator (e.g. users/delta, \
                 users/{{id}}/mailFolders/{{id}}/messages/delta)"
            ),
            ControlError::TooManyItems(n) => {
                write!(f, "the emulator keeps {n} items already: start a new one")
            }
        }
    }
}

impl std::error::Error for ControlError {}

/// The (audience, tenant) of a rich subscription's validation token: the
/// `notificationUrlAppId` when set, else the subscribing app (Microsoft Learn, "Set up change notifications that include resource data", <https://learn.microsoft.com/graph/change-notifications-with-resource-data>).
fn token_for(subscription: &Subscription) -> Option<(String, String)> {
    subscription.rich().then(|| {
        (
            subscription
                .notification_url_app_id
                .clone()
                .unwrap_or_else(|| subscription.application_id.clone()),
            subscription.tenant_id.clone(),
        )
    })
}

impl Core {
    /// Checks a change before anything is applied.
    pub(crate) fn check(change: &Change) -> Result<ResourcePath, ControlError> {
        let path = ResourcePath::parse(&change.resource).map_err(ControlError::InvalidResource)?;
        if let ChangeType::Unknown(t) = &change.change_type {
            return Err(ControlError::InvalidChangeType(t.clone()));
        }
        Ok(path)
    }

    /// Applies `change` to the collection it names (if it has a delta
    /// query) and queues its notifications for every subscription it
    /// concerns, unless `change.notify` is false.
    pub(crate) fn fire(self: &Arc<Self>, change: &Change) -> Result<Fired, ControlError> {
        let path = Self::check(change)?;
        let mut fired = Fired::default();
        let mut with_id;
        let mut change = change;
        if let Some(location) = resources::locate(&path) {
            let data = match &change.data {
                Some(Value::Object(map)) => Some(map),
                _ => None,
            };
            let data_id = data
                .and_then(|d| d.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let id = location
                .path_id
                .or(data_id)
                .unwrap_or_else(crate::random::uuid);
            let applied = self
                .resources
                .apply(&location.key, &id, &change.change_type, data)
                .map_err(|_| ControlError::TooManyItems(MAX_ITEMS))?;
            fired.applied.push(applied);
            // The notification names the same id as the data.
            if matches!(change.data, None | Some(Value::Object(_))) {
                with_id = change.clone();
                let mut map = match with_id.data.take() {
                    Some(Value::Object(map)) => map,
                    _ => Map::new(),
                };
                map.entry("id").or_insert_with(|| Value::String(id));
                with_id.data = Some(Value::Object(map));
                change = &with_id;
            }
        }
        if !change.notify {
            return Ok(fired);
        }
        let now = self.clock.now();
        let changed = Changed::new(&path);
        let mut by_url: HashMap<Url, Vec<Outgoing>> = HashMap::new();
        for subscription in self.store.all() {
            if subscription.expiration <= now
                || !subscription.change_types.contains(&change.change_type)
                || (change.permissions_changed
                    && !(subscription.security_webhooks && subscription.entry.security_webhooks))
            {
                continue;
            }
            let Some(target) = target(&subscription, &changed) else {
                continue;
            };
            let items = change_items(&subscription, change, target)
                .map_err(|e| ControlError::Encryption(e.to_string()))?;
            fired.items += items.len();
            fired.subscription_ids.push(subscription.id.clone());
            let tokens = token_for(&subscription);
            let tokens_null = tokens.as_ref().is_some_and(|(_, tenant)| {
                self.config
                    .misconfigured_tenants
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(tenant))
            });
            by_url
                .entry(subscription.notification_url.clone())
                .or_default()
                .extend(items.into_iter().map(|item| Outgoing {
                    item,
                    subscription_id: subscription.id.clone(),
                    lifecycle: false,
                    token_for: tokens.clone(),
                    tokens_null,
                }));
        }
        for (url, items) in by_url {
            self.engine.enqueue(self, &url, items);
        }
        Ok(fired)
    }

    /// Applies changes in order after checking them all; one answer.
    pub(crate) fn fire_all(self: &Arc<Self>, changes: &[Change]) -> Result<Fired, ControlError> {
        for change in changes {
            Self::check(change)?;
        }
        let mut all = Fired::default();
        for change in changes {
            let fired = self.fire(change)?;
            for id in fired.subscription_ids {
                if !all.subscription_ids.contains(&id) {
                    all.subscription_ids.push(id);
                }
            }
            all.items += fired.items;
            all.applied.extend(fired.applied);
        }
        Ok(all)
    }

    /// Orders a sync reset of the delta query at `delta_path` (all, for
    /// `None`); returns the collection's key (`None` for all).
    pub(crate) fn reset_delta(
        &self,
        delta_path: Option<&str>,
    ) -> Result<Option<String>, ControlError> {
        let key = delta_path
            .map(|path| {
                super::sync::endpoint(path)
                    .map(|e| e.collection.canonical(None))
                    .ok_or_else(|| ControlError::NotADeltaQuery(path.to_owned()))
            })
            .transpose()?;
        self.delta.reset(key.as_deref());
        Ok(key)
    }

    /// Sends a lifecycle notification to the subscription's lifecycle URL (if
    /// it has one); `subscriptionRemoved` removes the subscription too.
    pub(crate) fn lifecycle(
        self: &Arc<Self>,
        subscription_id: &str,
        event: &LifecycleEventType,
    ) -> Result<Fired, ControlError> {
        let subscription = self
            .store
            .get(subscription_id)
            .ok_or_else(|| ControlError::UnknownSubscription(subscription_id.to_owned()))?;
        let rules = subscription.entry.rules();
        if !rules.lifecycle_events.contains(event) {
            return Err(ControlError::UnsupportedLifecycleEvent {
                event: event.to_string(),
                kind: subscription.kind().to_string(),
            });
        }
        if subscription.lifecycle_url.is_none() {
            return Err(ControlError::NoLifecycleUrl(subscription_id.to_owned()));
        }
        if *event == LifecycleEventType::SubscriptionRemoved {
            self.store.remove(subscription_id);
            self.changed.notify_one();
        }
        Ok(self.send_lifecycle(&subscription, event))
    }

    fn send_lifecycle(
        self: &Arc<Self>,
        subscription: &Subscription,
        event: &LifecycleEventType,
    ) -> Fired {
        let Some(url) = &subscription.lifecycle_url else {
            return Fired::default();
        };
        let item = lifecycle_item(subscription, event);
        self.engine.enqueue(
            self,
            url,
            vec![Outgoing {
                item,
                subscription_id: subscription.id.clone(),
                lifecycle: true,
                token_for: None,
                tokens_null: false,
            }],
        );
        Fired {
            subscription_ids: vec![subscription.id.clone()],
            items: 1,
            applied: Vec::new(),
        }
    }

    /// A fresh access token for a subscription: at creation, reauthorization
    /// and renewal.
    pub(crate) fn authorization(&self) -> Authorization {
        Authorization {
            expires: self.clock.now() + emulated(self.config.reauthorization.token_lifetime),
            challenged: None,
        }
    }

    /// `POST /subscriptions/{id}/reauthorize` succeeded: a fresh token, no
    /// notice due for this expiration, and paused deliveries resume.
    pub(crate) fn reauthorized(&self, id: &str) {
        let fresh = self.authorization();
        self.store.update(id, |s| {
            s.authorization = fresh;
            s.reauthorization_done_for = Some(s.expiration);
        });
        self.changed.notify_one();
    }

    /// Whether delivery to `subscription` is paused at `now`: it has a
    /// lifecycle URL (Graph challenged it there) and its token expired.
    pub(crate) fn paused(subscription: &Subscription, now: OffsetDateTime) -> bool {
        subscription.lifecycle_url.is_some() && subscription.authorization.expired(now)
    }

    /// Expires subscriptions due at `now`, sends the challenges due (the
    /// token's, and the one ahead of the subscription's expiry), wakes the
    /// deliveries (a reauthorized subscription's resume), and says when the
    /// next thing is due.
    fn tend(self: &Arc<Self>, now: OffsetDateTime) -> Option<OffsetDateTime> {
        for expired in self.store.remove_expired(now) {
            tracing::info!(subscription_id = %expired.id, "subscription expired");
        }
        self.engine.wake_all();
        let rules = &self.config.reauthorization;
        let notice = emulated(self.config.reauthorization_notice);
        let mut next: Option<OffsetDateTime> = None;
        for subscription in self.store.all() {
            let mut due = vec![subscription.expiration];
            if subscription.lifecycle_url.is_none() {
                next = due.into_iter().chain(next).min();
                continue;
            }
            let token = subscription.authorization;
            let mut challenged = false;
            if let Some(at) = token.due(now, rules) {
                challenged = self.store.update(&subscription.id, |s| {
                    let first = s.authorization.expires == token.expires
                        && s.authorization.challenged.is_none_or(|c| c < at);
                    if first {
                        s.authorization.challenged = Some(at);
                    }
                    first
                }) == Some(true);
            }
            due.extend(token.next(now, rules));
            if subscription.reauthorization_done_for != Some(subscription.expiration) {
                let at = subscription.expiration - notice;
                if now >= at {
                    let expiration = subscription.expiration;
                    let claimed = self.store.update(&subscription.id, |s| {
                        let first = s.reauthorization_done_for != Some(expiration);
                        s.reauthorization_done_for = Some(expiration);
                        first
                    });
                    challenged |= claimed == Some(true);
                } else {
                    due.push(at);
                }
            }
            if challenged {
                // One challenge, whatever the reasons at this moment.
                self.send_lifecycle(&subscription, &LifecycleEventType::ReauthorizationRequired);
            }
            next = due.into_iter().chain(next).min();
        }
        next
    }
}

/// The housekeeping task: runs [`Core::tend`] whenever something is due or
/// the subscriptions change, until the emulator stops.
pub(crate) async fn housekeeping(core: Arc<Core>) {
    let mut shutdown = core.shutdown.subscribe();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let changed = core.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let next = core.tend(core.clock.now());
        let sleep = async {
            match next {
                Some(t) => core.clock.sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = &mut changed => {}
            _ = shutdown.changed() => {}
        }
    }
}

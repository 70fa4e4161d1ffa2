//! Item authentication before the ack: which subscriptions are ours, and the
//! `clientState` each must carry.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use time::OffsetDateTime;

use crate::ClientState;
use crate::store::{RecordStore, StoreError, SubscriptionRecord};

/// What the app knows of one of its subscriptions.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Registration {
    /// The `clientState` the subscription was created with; `None` if it was
    /// created without one (then items must carry none either).
    pub client_state: Option<ClientState>,
}

impl Registration {
    /// A subscription created with this `clientState`.
    pub fn with_client_state(client_state: ClientState) -> Self {
        Self {
            client_state: Some(client_state),
        }
    }
}

/// How items of subscriptions the registry has no record of are treated.
#[derive(Clone, Debug)]
enum Fallback {
    /// Drop them: only registered subscriptions are accepted.
    Reject,
    /// Accept any subscription whose items carry this `clientState`.
    ClientState(ClientState),
    /// Accept everything. Only for local experiments.
    AllowAny,
}

/// Why an item was dropped before the ack. The delivery is still answered
/// `202`: Graph must not learn which items were refused (Microsoft Learn, "Receive change notifications through webhooks", <https://learn.microsoft.com/graph/change-notifications-delivery-webhooks>).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The item is not an object, or has neither (or both) of `changeType`
    /// and `lifecycleEvent`, or no string `subscriptionId`.
    MalformedItem,
    /// No registration for the item's `subscriptionId`.
    UnknownSubscription,
    /// The item's `clientState` differs from the registered one (or is
    /// missing where one is expected, or present where none is).
    ClientStateMismatch,
    /// The item is encrypted and its delivery carries more validation
    /// tokens, or longer ones, than Graph ever sends
    /// ([`ValidationTokens::within_limits`](crate::notification::ValidationTokens::within_limits)).
    ValidationTokensOverLimit,
}

impl RejectReason {
    /// The reason as a metric label, e.g. `client_state_mismatch`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MalformedItem => "malformed_item",
            RejectReason::UnknownSubscription => "unknown_subscription",
            RejectReason::ClientStateMismatch => "client_state_mismatch",
            RejectReason::ValidationTokensOverLimit => "validation_tokens_over_limit",
        }
    }
}

/// Maps `subscriptionId` to what its items must carry.
///
/// The simple set-up is one `clientState` for every subscription
/// ([`with_client_state`](Self::with_client_state)); the subscription manager
/// registers each subscription it creates with a random state of its own.
///
/// ```
/// use msgraph_webhooks::{ClientState, SubscriptionRegistry};
///
/// let registry = SubscriptionRegistry::with_client_state(ClientState::new("s3cret"));
/// assert!(registry.check("any-subscription", Some("s3cret")).is_ok());
/// assert!(registry.check("any-subscription", Some("guess")).is_err());
/// ```
pub struct SubscriptionRegistry {
    fallback: Fallback,
    records: RwLock<HashMap<String, Registration>>,
    /// States of subscriptions being created, until when: their first
    /// items may come before the id is known.
    expected: RwLock<Vec<(ClientState, std::time::Instant)>>,
    source: Option<Arc<dyn RecordStore>>,
}

impl std::fmt::Debug for SubscriptionRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionRegistry")
            .field("fallback", &self.fallback)
            .field("source", &self.source.is_some())
            .finish_non_exhaustive()
    }
}

impl SubscriptionRegistry {
    /// Accepts only subscriptions registered with [`register`](Self::register).
    pub fn new() -> Self {
        Self {
            fallback: Fallback::Reject,
            records: RwLock::default(),
            expected: RwLock::default(),
            source: None,
        }
    }

    /// Accepts items of any subscription that carry `client_state`, and of
    /// registered subscriptions with their own state.
    pub fn with_client_state(client_state: ClientState) -> Self {
        Self {
            fallback: Fallback::ClientState(client_state),
            records: RwLock::default(),
            expected: RwLock::default(),
            source: None,
        }
    }

    /// Accepts every item, whatever its `clientState`. Nothing then tells
    /// Graph's notifications from anybody else's POSTs: for local experiments only.
    pub fn allow_any() -> Self {
        Self {
            fallback: Fallback::AllowAny,
            records: RwLock::default(),
            expected: RwLock::default(),
            source: None,
        }
    }

    /// Also looks up subscriptions it does not know in `source` (the records
    /// the subscription manager writes, possibly on another instance).
    pub fn source(mut self, source: Arc<dyn RecordStore>) -> Self {
        self.source = Some(source);
        self
    }

    /// Looks up the subscriptions of `items` (each a `subscriptionId` and
    /// the `clientState` it carries) that are not registered yet in the
    /// record source, and registers those it finds. A subscription with no
    /// record yet whose state matches a [pending](SubscriptionRecord::pending)
    /// one (created a moment ago, perhaps by another instance) is
    /// registered with that state. Does nothing without a source.
    ///
    /// # Errors
    ///
    /// The source could not be read: authentication is impossible for now.
    pub async fn refresh(&self, items: &[(&str, Option<&str>)]) -> Result<(), StoreError> {
        let Some(source) = &self.source else {
            return Ok(());
        };
        let missing: Vec<String> = {
            let records = self.records.read().unwrap_or_else(|e| e.into_inner());
            let mut missing: Vec<String> = items
                .iter()
                .filter(|(id, _)| !records.contains_key(*id))
                .map(|(id, _)| (*id).to_owned())
                .collect();
            missing.sort();
            missing.dedup();
            missing
        };
        if missing.is_empty() {
            return Ok(());
        }
        let found = source.get_many(missing.clone()).await?;
        let mut unknown: Vec<&str> = Vec::new();
        for (id, record) in missing.iter().zip(found) {
            match record {
                // Only a subscription's own record names it: never take a
                // pending one by an id an item chose.
                Some(record) if !record.id.starts_with("pending:") => self.register(
                    record.id.clone(),
                    Registration {
                        client_state: record.client_state,
                    },
                ),
                _ => unknown.push(id),
            }
        }
        // Subscriptions created a moment ago: found by their items' state.
        let mut claims: Vec<(&str, String)> = items
            .iter()
            .filter(|(id, _)| unknown.contains(id))
            .filter_map(|(id, state)| Some((*id, SubscriptionRecord::pending_id((*state)?))))
            .collect();
        claims.sort();
        claims.dedup();
        if claims.is_empty() {
            return Ok(());
        }
        let ids = claims.iter().map(|(_, pending)| pending.clone()).collect();
        let now = OffsetDateTime::now_utc();
        for ((id, _), record) in claims.iter().zip(source.get_many(ids).await?) {
            if let Some(record) = record.filter(|r| r.is_pending_at(now)) {
                self.register(
                    *id,
                    Registration {
                        client_state: record.client_state,
                    },
                );
            }
        }
        Ok(())
    }

    /// Expects the first items of a subscription being created with
    /// `client_state`, for `within`: until it is registered under its id,
    /// an unknown subscription whose items carry that state is taken for
    /// it (and registered). The subscription manager calls this before each
    /// create; [`registered`](Self::registered) ends it.
    pub fn expect(&self, client_state: ClientState, within: std::time::Duration) {
        let now = std::time::Instant::now();
        let mut expected = self.expected.write().unwrap_or_else(|e| e.into_inner());
        expected.retain(|(_, until)| *until > now);
        expected.push((client_state, now + within));
    }

    /// Stops expecting `client_state` (its subscription is registered, or
    /// its create failed).
    pub fn registered(&self, client_state: &ClientState) {
        self.expected
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(state, _)| state != client_state);
    }

    /// The expected state `received` matches, if any.
    fn expected(&self, received: Option<&str>) -> Option<ClientState> {
        let received = received?;
        let now = std::time::Instant::now();
        self.expected
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(state, until)| *until > now && state.matches(received))
            .map(|(state, _)| state.clone())
    }

    /// Whether unknown subscriptions are looked up in a record source.
    pub fn has_source(&self) -> bool {
        self.source.is_some()
    }

    /// Registers (or replaces) a subscription.
    pub fn register(&self, subscription_id: impl Into<String>, registration: Registration) {
        self.write().insert(subscription_id.into(), registration);
    }

    /// Forgets a subscription.
    pub fn unregister(&self, subscription_id: &str) {
        self.write().remove(subscription_id);
    }

    /// Checks one item's claim to belong to a subscription of ours.
    ///
    /// # Errors
    ///
    /// [`RejectReason::UnknownSubscription`] or [`RejectReason::ClientStateMismatch`].
    pub fn check(
        &self,
        subscription_id: &str,
        client_state: Option<&str>,
    ) -> Result<(), RejectReason> {
        let records = self.records.read().unwrap_or_else(|e| e.into_inner());
        let expected = match records.get(subscription_id) {
            Some(registration) => registration.client_state.as_ref(),
            None if let Some(state) = self.expected(client_state) => {
                drop(records);
                self.register(subscription_id, Registration::with_client_state(state));
                return Ok(());
            }
            None => match &self.fallback {
                Fallback::Reject => return Err(RejectReason::UnknownSubscription),
                Fallback::ClientState(state) => Some(state),
                Fallback::AllowAny => return Ok(()),
            },
        };
        let matches = match (expected, client_state) {
            (Some(expected), Some(received)) => expected.matches(received),
            (None, None) => true,
            _ => false,
        };
        if matches {
            Ok(())
        } else {
            Err(RejectReason::ClientStateMismatch)
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Registration>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (insert/remove are atomic for our purposes), so poisoning is ignored.
        self.records.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for SubscriptionRegistry {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryRecords;

    #[test]
    fn registered_subscriptions_use_their_own_state() {
        let registry = SubscriptionRegistry::with_client_state(ClientState::new("global"));
        registry.register(
            "sub-1",
            Registration::with_client_state(ClientState::new("own")),
        );
        registry.register("sub-2", Registration::default());
        assert_eq!(registry.check("sub-1", Some("own")), Ok(()));
        assert_eq!(
            registry.check("sub-1", Some("global")),
            Err(RejectReason::ClientStateMismatch)
        );
        assert_eq!(
            registry.check("sub-1", None),
            Err(RejectReason::ClientStateMismatch)
        );
        assert_eq!(registry.check("sub-2", None), Ok(()));
        assert_eq!(
            registry.check("sub-2", Some("x")),
            Err(RejectReason::ClientStateMismatch)
        );
        assert_eq!(registry.check("other", Some("global")), Ok(()));
        assert_eq!(
            registry.check("other", None),
            Err(RejectReason::ClientStateMismatch)
        );
        registry.unregister("sub-1");
        assert_eq!(registry.check("sub-1", Some("global")), Ok(()));
    }

    #[test]
    fn strict_registry_rejects_unknown_subscriptions() {
        let registry = SubscriptionRegistry::new();
        assert_eq!(
            registry.check("x", Some("s")),
            Err(RejectReason::UnknownSubscription)
        );
        let open = SubscriptionRegistry::allow_any();
        assert_eq!(open.check("x", None), Ok(()));
    }

    #[test]
    fn an_expected_state_admits_the_first_items_of_a_new_subscription() {
        let registry = SubscriptionRegistry::new();
        let state = ClientState::random();
        registry.expect(state.clone(), std::time::Duration::from_secs(60));
        assert_eq!(
            registry.check("new", Some("guess")),
            Err(RejectReason::UnknownSubscription)
        );
        assert_eq!(registry.check("new", Some(state.expose())), Ok(()));
        registry.registered(&state);
        // Registered under its id on the first item; the expectation is over.
        assert_eq!(registry.check("new", Some(state.expose())), Ok(()));
        assert_eq!(
            registry.check("other", Some(state.expose())),
            Err(RejectReason::UnknownSubscription)
        );
        let late = ClientState::random();
        registry.expect(late.clone(), std::time::Duration::ZERO);
        assert_eq!(
            registry.check("late", Some(late.expose())),
            Err(RejectReason::UnknownSubscription)
        );
    }

    #[tokio::test]
    async fn a_pending_record_admits_items_by_their_state_only() {
        let records = Arc::new(MemoryRecords::new());
        let registry = SubscriptionRegistry::new().source(records.clone());
        let state = ClientState::random();
        let now = OffsetDateTime::now_utc();
        records
            .put(SubscriptionRecord::pending(
                state.clone(),
                now + time::Duration::minutes(5),
            ))
            .await
            .unwrap();
        let pending_id = SubscriptionRecord::pending_id(state.expose());
        // Naming the pending record as the subscription gets nothing.
        registry
            .refresh(&[(pending_id.as_str(), Some("guess"))])
            .await
            .unwrap();
        assert_eq!(
            registry.check(&pending_id, Some("guess")),
            Err(RejectReason::UnknownSubscription)
        );
        registry
            .refresh(&[("new", Some("guess")), ("other", None)])
            .await
            .unwrap();
        assert_eq!(
            registry.check("new", Some("guess")),
            Err(RejectReason::UnknownSubscription)
        );
        registry
            .refresh(&[("new", Some(state.expose()))])
            .await
            .unwrap();
        assert_eq!(registry.check("new", Some(state.expose())), Ok(()));

        let old = ClientState::random();
        records
            .put(SubscriptionRecord::pending(
                old.clone(),
                now - time::Duration::seconds(1),
            ))
            .await
            .unwrap();
        registry
            .refresh(&[("stale", Some(old.expose()))])
            .await
            .unwrap();
        assert_eq!(
            registry.check("stale", Some(old.expose())),
            Err(RejectReason::UnknownSubscription)
        );
    }
}

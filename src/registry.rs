//! Item authentication before the ack: which subscriptions are ours, and the
//! `clientState` each must carry.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::ClientState;

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
/// `202`: Graph must not learn which items were refused (reference §4.1).
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
}

impl RejectReason {
    /// The reason as a metric label, e.g. `client_state_mismatch`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MalformedItem => "malformed_item",
            RejectReason::UnknownSubscription => "unknown_subscription",
            RejectReason::ClientStateMismatch => "client_state_mismatch",
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
#[derive(Debug)]
pub struct SubscriptionRegistry {
    fallback: Fallback,
    records: RwLock<HashMap<String, Registration>>,
}

impl SubscriptionRegistry {
    /// Accepts only subscriptions registered with [`register`](Self::register).
    pub fn new() -> Self {
        Self {
            fallback: Fallback::Reject,
            records: RwLock::default(),
        }
    }

    /// Accepts items of any subscription that carry `client_state`, and of
    /// registered subscriptions with their own state.
    pub fn with_client_state(client_state: ClientState) -> Self {
        Self {
            fallback: Fallback::ClientState(client_state),
            records: RwLock::default(),
        }
    }

    /// Accepts every item, whatever its `clientState`. Nothing then tells
    /// Graph's notifications from anybody else's POSTs: for local experiments only.
    pub fn allow_any() -> Self {
        Self {
            fallback: Fallback::AllowAny,
            records: RwLock::default(),
        }
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
}

//! Subscription records: what the subscription manager keeps of each
//! subscription, where every instance's receiver reads it.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::StoreError;
use crate::ClientState;

/// A subscription as the subscription manager keeps it, where every instance
/// can read it: enough to authenticate its notifications, and to renew it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SubscriptionRecord {
    /// Graph's id of the subscription.
    pub id: String,
    /// The `clientState` it was created with.
    #[serde(default)]
    pub client_state: Option<ClientState>,
    /// The `encryptionCertificateId` of a rich subscription.
    #[serde(default)]
    pub certificate_id: Option<String>,
    /// When it expires.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// A [`pending`](Self::pending) announcement, not a subscription's own record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pending: bool,
    /// What the subscription manager keeps beside it (its declared key,
    /// resource, URLs, renewal times), in its own typed form: opaque to
    /// stores, which keep the record as it serializes.
    #[serde(flatten)]
    pub(crate) owner: serde_json::Map<String, serde_json::Value>,
}

impl SubscriptionRecord {
    /// A record of subscription `id` created with `client_state`.
    pub fn new(id: impl Into<String>, client_state: Option<ClientState>) -> Self {
        Self {
            id: id.into(),
            client_state,
            certificate_id: None,
            expires_at: None,
            pending: false,
            owner: serde_json::Map::new(),
        }
    }

    /// The announcement of a subscription being created with
    /// `client_state`, until `until`: written before the create request,
    /// removed once the subscription's own record is stored. Graph may
    /// deliver the first notifications before it answers the create with
    /// the id; a receiver that finds no record for their subscription looks
    /// for this one, by the state the items carry.
    pub fn pending(client_state: ClientState, until: OffsetDateTime) -> Self {
        Self {
            id: Self::pending_id(client_state.expose()),
            client_state: Some(client_state),
            certificate_id: None,
            expires_at: Some(until),
            pending: true,
            owner: serde_json::Map::new(),
        }
    }

    /// The id of the [`pending`](Self::pending) record of a subscription
    /// being created with the state `client_state` (a hash of it).
    pub fn pending_id(client_state: &str) -> String {
        format!("pending:{}", ClientState::fingerprint(client_state))
    }

    /// Whether this is a [`pending`](Self::pending) record that has not
    /// expired at `now`.
    pub fn is_pending_at(&self, now: OffsetDateTime) -> bool {
        self.id.starts_with("pending:")
            && self.pending
            && self.expires_at.is_some_and(|until| until > now)
    }
}

/// Where subscription records live, shared by every instance: the durable
/// stores implement it (`SqliteStore`, `RedisStore`), and
/// [`MemoryRecords`](super::MemoryRecords) for a single process.
pub trait RecordStore: Send + Sync + 'static {
    /// The records of `ids`, in order (`None` where there is none).
    fn get_many(
        &self,
        ids: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Option<SubscriptionRecord>>, StoreError>>;

    /// Stores (or replaces) a record.
    fn put(&self, record: SubscriptionRecord) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Deletes a record.
    fn remove(&self, id: String) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Every record.
    fn all(&self) -> BoxFuture<'_, Result<Vec<SubscriptionRecord>, StoreError>>;
}

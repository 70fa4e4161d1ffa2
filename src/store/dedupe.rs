//! Dedupe: Graph sends duplicates (retries after slow answers, internal
//! replays), so a change already handled is not handed to the handler again.
//!
//! The key of a change item is its notification `id` when Graph sent one,
//! else a hash of `subscriptionId`, `changeType`, `resource` and
//! `resourceData.@odata.etag`. An item with neither an `id` nor an etag has no
//! key and is never suppressed: without them a retry cannot be told from a
//! new change to the same resource (OneDrive's `resourceData: null` items are
//! all alike), and suppressing one would lose a real change. Lifecycle items
//! are not deduplicated either: acting on one twice is harmless, missing a
//! repeated `reauthorizationRequired` is not.
//!
//! A key is claimed while its item is being handled (`begin`, with a lease,
//! so a copy arriving meanwhile waits instead of running concurrently),
//! marked done after the handler succeeded (`finish`, kept for the TTL), and
//! released when the handler failed (`abandon`), so the retry runs.

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::StoreError;

use crate::notification::ChangeNotification;

/// How long handled keys are remembered by default: 6 hours, Graph's 4-hour
/// retry window with room to spare.
pub const DEFAULT_TTL: Duration = Duration::from_secs(6 * 3600);

/// How long a claimed key blocks copies while its item is handled.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(300);

/// The dedupe key of a change item: a SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DedupeKey([u8; 32]);

impl fmt::Debug for DedupeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DedupeKey({})", self.to_hex())
    }
}

impl DedupeKey {
    /// The key of a change item, if it has one (see the module docs).
    pub fn for_change(item: &ChangeNotification) -> Option<Self> {
        // Fields are length-prefixed so that no two field lists hash alike.
        let mut hasher = openssl::sha::Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update(&(bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        field(item.subscription_id.as_bytes());
        if let Some(id) = item.id.as_deref().filter(|id| !id.is_empty()) {
            field(b"id");
            field(id.as_bytes());
        } else {
            let etag = item
                .resource_data
                .as_ref()
                .and_then(|d| d.odata_etag.as_deref())
                .filter(|etag| !etag.is_empty())?;
            field(b"etag");
            field(item.change_type.as_str().as_bytes());
            field(item.resource.as_bytes());
            field(etag.as_bytes());
        }
        Some(Self(hasher.finish()))
    }

    /// The key of a resynced item: its cursor, id, removal and content, so
    /// a replay of the same state is a duplicate and a later state is not.
    pub fn for_resync(cursor: &str, id: &str, removed: Option<&str>, data: &[u8]) -> Self {
        let mut hasher = openssl::sha::Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update(&(bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        field(b"resync");
        field(cursor.as_bytes());
        field(id.as_bytes());
        field(removed.unwrap_or_default().as_bytes());
        field(data);
        Self(hasher.finish())
    }

    /// A key from its 32 bytes, as a store reads it back.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key's 32 bytes, as a store writes them.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, for stores that key by text.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What `begin` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// Nobody handled this key: go ahead.
    Proceed,
    /// Already handled: drop the item.
    Duplicate,
    /// Another worker is handling it right now: try again later.
    InProgress,
}

/// Where handled keys are remembered.
pub trait Dedupe: Send + Sync + 'static {
    /// Claims `key` for `owner` for `lease`, unless it is handled or claimed.
    fn begin(
        &self,
        key: DedupeKey,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Claim, StoreError>>;

    /// Marks `key` handled, remembered for `ttl`.
    fn finish(
        &self,
        key: DedupeKey,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Releases `owner`'s claim on `key` so a retry can run.
    fn abandon(&self, key: DedupeKey, owner: &str) -> BoxFuture<'_, Result<(), StoreError>>;

    /// [`begin`](Self::begin) for several keys; the answers in order.
    /// Stores override it to do it in one round trip.
    fn begin_many(
        &self,
        keys: Vec<DedupeKey>,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<Claim>, StoreError>> {
        let owner = owner.to_owned();
        Box::pin(async move {
            let mut claims = Vec::with_capacity(keys.len());
            for key in keys {
                claims.push(self.begin(key, &owner, lease).await?);
            }
            Ok(claims)
        })
    }

    /// [`finish`](Self::finish) for several keys.
    fn finish_many(
        &self,
        keys: Vec<DedupeKey>,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let owner = owner.to_owned();
        Box::pin(async move {
            for key in keys {
                self.finish(key, &owner, ttl).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::Notification;

    fn change(json: &str) -> ChangeNotification {
        match Notification::from_json(json).unwrap() {
            Notification::Change(c) => c,
            _ => panic!("a change item"),
        }
    }

    #[test]
    fn keys_follow_the_documented_rules() {
        let with_id =
            change(r#"{"id":"n1","subscriptionId":"s","changeType":"created","resource":"r"}"#);
        let same_id =
            change(r#"{"id":"n1","subscriptionId":"s","changeType":"updated","resource":"other"}"#);
        let other_sub =
            change(r#"{"id":"n1","subscriptionId":"t","changeType":"created","resource":"r"}"#);
        assert_eq!(
            DedupeKey::for_change(&with_id),
            DedupeKey::for_change(&same_id)
        );
        assert_ne!(
            DedupeKey::for_change(&with_id),
            DedupeKey::for_change(&other_sub)
        );

        let etag = |e: &str, t: &str| {
            change(&format!(
                r#"{{"subscriptionId":"s","changeType":"{t}","resource":"r","resourceData":{{"@odata.etag":"{e}"}}}}"#
            ))
        };
        assert_eq!(
            DedupeKey::for_change(&etag("W/1", "updated")),
            DedupeKey::for_change(&etag("W/1", "updated"))
        );
        assert_ne!(
            DedupeKey::for_change(&etag("W/1", "updated")),
            DedupeKey::for_change(&etag("W/2", "updated"))
        );
        assert_ne!(
            DedupeKey::for_change(&etag("W/1", "updated")),
            DedupeKey::for_change(&etag("W/1", "deleted"))
        );

        let neither = change(
            r#"{"subscriptionId":"s","changeType":"updated","resource":"me/drive/root","resourceData":null}"#,
        );
        assert_eq!(DedupeKey::for_change(&neither), None);
        assert_eq!(DedupeKey::for_change(&with_id).unwrap().to_hex().len(), 64);
    }
}

//! A managed subscription as its [`SubscriptionRecord`] holds it, and the
//! manager's reads and writes of the records.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ClientState;
use crate::registry::Registration;
use crate::store::StoreError;
use crate::store::SubscriptionRecord;

use super::{REAUTHORIZE_GAP, Shared, Urls};

/// The marker in a record's `managedBy`: written by this manager.
const MANAGED_BY: &str = "msgraph-webhooks";

pub(super) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// A subscription this manager keeps, as its record says.
#[derive(Clone, Debug)]
pub(super) struct Managed {
    pub(super) id: String,
    pub(super) client_state: Option<ClientState>,
    pub(super) certificate_id: Option<String>,
    pub(super) expires_at: OffsetDateTime,
    pub(super) key: String,
    pub(super) resource: String,
    pub(super) change_type: String,
    pub(super) rich: bool,
    pub(super) urls: Urls,
    pub(super) renew_at: OffsetDateTime,
    pub(super) renewed_at: Option<OffsetDateTime>,
    pub(super) reauthorized_at: Option<OffsetDateTime>,
    /// Graph said it removed the subscription (`subscriptionRemoved`) to an
    /// instance without the lease: queued here for the lease holder.
    pub(super) removed_at: Option<OffsetDateTime>,
}

/// What the manager keeps in a record beside Graph's fields, as it is
/// written (camelCase, times as RFC 3339).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Kept {
    managed_by: String,
    key: String,
    resource: String,
    change_type: String,
    #[serde(default)]
    rich: bool,
    notification_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lifecycle_notification_url: Option<String>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    renew_at: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    renewed_at: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    reauthorized_at: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    removed_at: Option<OffsetDateTime>,
}

impl Managed {
    pub(super) fn from_record(record: &SubscriptionRecord) -> Option<Self> {
        let kept: Kept = serde_json::from_value(Value::Object(record.owner.clone())).ok()?;
        if kept.managed_by != MANAGED_BY {
            return None;
        }
        let expires_at = record.expires_at?;
        Some(Self {
            id: record.id.clone(),
            client_state: record.client_state.clone(),
            certificate_id: record.certificate_id.clone(),
            expires_at,
            key: kept.key,
            resource: kept.resource,
            change_type: kept.change_type,
            rich: kept.rich,
            urls: Urls {
                notification: kept.notification_url,
                lifecycle: kept.lifecycle_notification_url,
            },
            renew_at: kept.renew_at.unwrap_or(expires_at),
            renewed_at: kept.renewed_at,
            reauthorized_at: kept.reauthorized_at,
            removed_at: kept.removed_at,
        })
    }

    pub(super) fn to_record(&self) -> SubscriptionRecord {
        let mut record = SubscriptionRecord::new(self.id.clone(), self.client_state.clone());
        record.certificate_id = self.certificate_id.clone();
        record.expires_at = Some(self.expires_at);
        let kept = Kept {
            managed_by: MANAGED_BY.to_owned(),
            key: self.key.clone(),
            resource: self.resource.clone(),
            change_type: self.change_type.clone(),
            rich: self.rich,
            notification_url: self.urls.notification.clone(),
            lifecycle_notification_url: self.urls.lifecycle.clone(),
            renew_at: Some(self.renew_at),
            renewed_at: self.renewed_at,
            reauthorized_at: self.reauthorized_at,
            removed_at: self.removed_at,
        };
        // Invariant: a struct of strings, booleans and formatted times
        // always serializes to a JSON object.
        if let Ok(Value::Object(fields)) = serde_json::to_value(kept) {
            record.owner = fields;
        }
        record
    }

    /// When Graph lets it be updated again: 10 minutes after a reauthorize.
    pub(super) fn update_allowed_at(&self) -> Option<OffsetDateTime> {
        self.reauthorized_at.map(|t| t + REAUTHORIZE_GAP)
    }
}

/// A subscription the manager keeps, as the app may inspect it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ManagedSubscription {
    /// The declared key.
    pub key: String,
    /// Graph's id.
    pub id: String,
    /// The resource.
    pub resource: String,
    /// When it expires.
    pub expiration: OffsetDateTime,
    /// When the manager plans to renew it.
    pub renew_at: OffsetDateTime,
    /// Where notifications go.
    pub notification_url: String,
    /// Where lifecycle notifications go.
    pub lifecycle_notification_url: Option<String>,
    /// The certificate a rich subscription is encrypted to.
    pub certificate_id: Option<String>,
}

impl Shared {
    pub(super) async fn managed(&self) -> Result<Vec<Managed>, StoreError> {
        Ok(self
            .records
            .all()
            .await?
            .iter()
            .filter_map(Managed::from_record)
            .collect())
    }

    pub(super) async fn managed_by_id(&self, id: &str) -> Result<Option<Managed>, StoreError> {
        Ok(self
            .records
            .get_many(vec![id.to_owned()])
            .await?
            .into_iter()
            .flatten()
            .find_map(|r| Managed::from_record(&r)))
    }

    /// The record of `id`, waiting a little for it: after a `409` the
    /// instance that created it may be storing it right now.
    pub(super) async fn recorded(&self, id: &str) -> Result<Option<Managed>, StoreError> {
        let deadline = tokio::time::Instant::now() + self.settings.adopt_grace;
        loop {
            if let Some(found) = self.managed_by_id(id).await? {
                return Ok(Some(found));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub(super) async fn store(&self, managed: &Managed) -> Result<(), StoreError> {
        self.records.put(managed.to_record()).await?;
        if let Some(registry) = &self.registry {
            registry.register(
                managed.id.clone(),
                Registration {
                    client_state: managed.client_state.clone(),
                    ..Registration::default()
                },
            );
        }
        Ok(())
    }

    pub(super) async fn forget(&self, id: &str) -> Result<(), StoreError> {
        self.records.remove(id.to_owned()).await?;
        if let Some(registry) = &self.registry {
            registry.unregister(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;

    #[test]
    fn records_round_trip_and_foreign_records_are_ignored() {
        let now = OffsetDateTime::now_utc();
        let managed = Managed {
            id: "s-1".into(),
            client_state: Some(ClientState::new("state")),
            certificate_id: Some("cert".into()),
            expires_at: now + Duration::hours(1),
            key: "k".into(),
            resource: "users".into(),
            change_type: "updated".into(),
            rich: false,
            urls: Urls {
                notification: "https://a/".into(),
                lifecycle: Some("https://a/lifecycle".into()),
            },
            renew_at: now + Duration::minutes(30),
            renewed_at: Some(now),
            reauthorized_at: None,
            removed_at: None,
        };
        let record = managed.to_record();
        let json = serde_json::to_string(&record).unwrap();
        let back: SubscriptionRecord = serde_json::from_str(&json).unwrap();
        let again = Managed::from_record(&back).unwrap();
        assert_eq!(again.key, "k");
        assert_eq!(again.urls, managed.urls);
        assert!(again.client_state.unwrap().matches("state"));
        assert!((again.renew_at - managed.renew_at).abs() < Duration::seconds(1));
        assert!(Managed::from_record(&SubscriptionRecord::new("x", None)).is_none());
    }

    /// A record as earlier versions stored it (SQLite rows, Redis hashes
    /// outlive an upgrade) reads the same, and is written back the same.
    #[test]
    fn records_keep_their_stored_form() {
        let stored = r#"{"id":"s-1","clientState":"state","certificateId":null,"expiresAt":"2026-12-08T10:00:00Z","managedBy":"msgraph-webhooks","key":"users|updated","resource":"users","changeType":"updated","rich":false,"notificationUrl":"https://a/","lifecycleNotificationUrl":"https://a/lifecycle","renewAt":"2026-12-05T10:00:00Z","renewedAt":"2026-12-01T10:00:00Z"}"#;
        let record: SubscriptionRecord = serde_json::from_str(stored).unwrap();
        let managed = Managed::from_record(&record).unwrap();
        assert_eq!(managed.key, "users|updated");
        assert_eq!(
            managed.urls.lifecycle.as_deref(),
            Some("https://a/lifecycle")
        );
        assert_eq!(rfc3339(managed.renew_at), "2026-12-05T10:00:00Z");
        assert!(managed.reauthorized_at.is_none() && managed.removed_at.is_none());
        let again: Value = serde_json::to_value(managed.to_record()).unwrap();
        let before: Value = serde_json::from_str(stored).unwrap();
        for (name, value) in before.as_object().unwrap() {
            if value.is_null() {
                continue;
            }
            assert_eq!(&again[name], value, "{name}");
        }
        let pending = SubscriptionRecord::pending(ClientState::new("x"), managed.expires_at);
        assert_eq!(serde_json::to_value(&pending).unwrap()["pending"], true);
        assert!(Managed::from_record(&pending).is_none());
    }
}

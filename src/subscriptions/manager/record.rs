//! A managed subscription as its [`SubscriptionRecord`] holds it, and the
//! manager's reads and writes of the records.

use serde_json::{Value, json};
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

pub(super) fn parse_time(value: Option<&Value>) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(value?.as_str()?, &Rfc3339).ok()
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

impl Managed {
    pub(super) fn from_record(record: &SubscriptionRecord) -> Option<Self> {
        let other = &record.other;
        if other.get("managedBy").and_then(Value::as_str) != Some(MANAGED_BY) {
            return None;
        }
        let text = |name: &str| other.get(name).and_then(Value::as_str).map(str::to_owned);
        let expires_at = record.expires_at?;
        Some(Self {
            id: record.id.clone(),
            client_state: record.client_state.clone(),
            certificate_id: record.certificate_id.clone(),
            expires_at,
            key: text("key")?,
            resource: text("resource")?,
            change_type: text("changeType")?,
            rich: other.get("rich").and_then(Value::as_bool).unwrap_or(false),
            urls: Urls {
                notification: text("notificationUrl")?,
                lifecycle: text("lifecycleNotificationUrl"),
            },
            renew_at: parse_time(other.get("renewAt")).unwrap_or(expires_at),
            renewed_at: parse_time(other.get("renewedAt")),
            reauthorized_at: parse_time(other.get("reauthorizedAt")),
            removed_at: parse_time(other.get("removedAt")),
        })
    }

    pub(super) fn to_record(&self) -> SubscriptionRecord {
        let mut record = SubscriptionRecord::new(self.id.clone(), self.client_state.clone());
        record.certificate_id = self.certificate_id.clone();
        record.expires_at = Some(self.expires_at);
        let other = &mut record.other;
        other.insert("managedBy".into(), json!(MANAGED_BY));
        other.insert("key".into(), json!(self.key));
        other.insert("resource".into(), json!(self.resource));
        other.insert("changeType".into(), json!(self.change_type));
        other.insert("rich".into(), json!(self.rich));
        other.insert("notificationUrl".into(), json!(self.urls.notification));
        if let Some(url) = &self.urls.lifecycle {
            other.insert("lifecycleNotificationUrl".into(), json!(url));
        }
        other.insert("renewAt".into(), json!(rfc3339(self.renew_at)));
        if let Some(t) = self.renewed_at {
            other.insert("renewedAt".into(), json!(rfc3339(t)));
        }
        if let Some(t) = self.reauthorized_at {
            other.insert("reauthorizedAt".into(), json!(rfc3339(t)));
        }
        if let Some(t) = self.removed_at {
            other.insert("removedAt".into(), json!(rfc3339(t)));
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
}

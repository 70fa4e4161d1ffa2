//! The subscriptions the emulator holds, and how Graph shows them.

use std::collections::HashMap;
use std::sync::Mutex;

use openssl::x509::X509;
use reqwest::Url;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ClientState;
use crate::catalog::{Entry, PaymentModel, ResourcePath};
use crate::notification::{ChangeType, ResourceKind};

/// A subscription's encryption certificate.
#[derive(Clone, Debug)]
pub(crate) struct Certificate {
    pub(crate) x509: X509,
    pub(crate) id: String,
}

impl Certificate {
    /// `encryptionCertificate` as Graph echoes it: base64 DER.
    fn base64(&self) -> Option<String> {
        self.x509
            .to_der()
            .ok()
            .map(|der| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der))
    }
}

/// Properties Graph shows as the request gave them, `null` when it gave
/// none, though the emulator acts on a default.
#[derive(Clone, Debug, Default)]
pub(crate) struct Echo {
    /// `includeResourceData` (absent means `false`).
    pub(crate) include_resource_data: Option<bool>,
    /// `notificationContentType` (absent means `application/json`).
    pub(crate) notification_content_type: Option<String>,
}

/// One subscription, as created through the API.
#[derive(Clone, Debug)]
pub(crate) struct Subscription {
    pub(crate) id: String,
    pub(crate) resource: String,
    pub(crate) path: ResourcePath,
    pub(crate) entry: &'static Entry,
    pub(crate) change_types: Vec<ChangeType>,
    pub(crate) notification_url: Url,
    pub(crate) lifecycle_url: Option<Url>,
    pub(crate) expiration: OffsetDateTime,
    pub(crate) client_state: Option<ClientState>,
    pub(crate) include_resource_data: bool,
    pub(crate) certificate: Option<Certificate>,
    pub(crate) tls_version: String,
    pub(crate) notification_query_options: Option<String>,
    pub(crate) notification_url_app_id: Option<String>,
    pub(crate) application_id: String,
    pub(crate) creator_id: String,
    pub(crate) tenant_id: String,
    /// The signed-in user of a delegated subscription.
    pub(crate) user_id: Option<String>,
    pub(crate) payment_model: Option<PaymentModel>,
    /// Created with `Prefer: include-unknown-enum-members`.
    pub(crate) unknown_enum_members: bool,
    /// Created with `Prefer: includesecuritywebhooks`.
    pub(crate) security_webhooks: bool,
    /// The expiration a `reauthorizationRequired` was sent (or made
    /// unnecessary by a reauthorize call) for; a renewal clears it.
    pub(crate) reauthorization_done_for: Option<OffsetDateTime>,
    /// The access token Graph holds for it (see [`super::Reauthorization`]).
    pub(crate) authorization: super::lifecycle::Authorization,
    /// `v1.0` or `beta`, for `@odata.context`.
    pub(crate) api_version: &'static str,
    /// What the request gave for the properties Graph echoes.
    pub(crate) echo: Echo,
}

impl Subscription {
    pub(crate) fn kind(&self) -> &ResourceKind {
        &self.entry.kind
    }

    /// Whether notifications carry encrypted resource data.
    pub(crate) fn rich(&self) -> bool {
        self.certificate.is_some()
            && (self.include_resource_data
                || self.entry.rules().resource_data
                    == crate::catalog::ResourceDataRule::AlwaysEncrypted)
    }

    /// The user `me` stands for in the path, if any.
    pub(crate) fn me(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// What two subscriptions must share to be duplicates: the app and
    /// tenant, the resource (case, key syntax and `me` aside, query options
    /// sorted) and the change types.
    pub(crate) fn duplicate_key(&self) -> String {
        let mut query: Vec<String> = self
            .path
            .query_options()
            .iter()
            .map(|(k, v)| format!("{}={v}", k.to_lowercase()))
            .collect();
        query.sort();
        let mut types: Vec<&str> = self.change_types.iter().map(ChangeType::as_str).collect();
        types.sort_unstable();
        format!(
            "{}|{}|{}?{}|{}",
            self.application_id.to_lowercase(),
            self.tenant_id.to_lowercase(),
            self.path.canonical(self.me()),
            query.join("&"),
            types.join(",")
        )
    }

    /// The subscription as Graph returns it under `version` (`v1.0` or
    /// `beta`), reached at `base`: the properties in the order Graph writes
    /// them, each present, `null` where unset (Microsoft Learn, "Embed
    /// Microsoft Teams in your app", <https://learn.microsoft.com/graph/teams-embed-within-own-app>,
    /// whose create and update answers are complete; "subscription resource
    /// type", <https://learn.microsoft.com/graph/api/resources/subscription>).
    ///
    /// - `clientState` only in the answer to create (`show_client_state`):
    ///   the update answer and reads carry `null` ("List subscriptions",
    ///   <https://learn.microsoft.com/graph/api/subscription-list>: "not
    ///   returned for security purposes").
    /// - `includeResourceData` and `notificationContentType` as the request
    ///   gave them, `null` when it did not; `latestSupportedTlsVersion`
    ///   defaults to `v1_2`; `encryptionCertificate` is echoed.
    /// - `notificationContentType` is a beta property: the v1.0 schema has
    ///   none (the v1.0 SDKs' `subscription` model lacks it), whatever the
    ///   v1.0 "Create subscription" example shows.
    pub(crate) fn to_json_as(&self, base: &str, version: &str, show_client_state: bool) -> Value {
        let mut map = serde_json::Map::new();
        let mut put = |key: &str, value: Value| {
            map.insert(key.to_owned(), value);
        };
        put(
            "@odata.context",
            json!(format!("{base}/{version}/$metadata#subscriptions/$entity")),
        );
        put("id", json!(self.id));
        put("resource", json!(self.resource));
        put("applicationId", json!(self.application_id));
        put("changeType", json!(self.change_type_text()));
        put(
            "clientState",
            json!(if show_client_state {
                self.client_state.as_ref().map(ClientState::expose)
            } else {
                None
            }),
        );
        put("notificationUrl", json!(self.notification_url.as_str()));
        put(
            "notificationQueryOptions",
            json!(self.notification_query_options),
        );
        if version == "beta" {
            put(
                "notificationContentType",
                json!(self.echo.notification_content_type),
            );
        }
        put(
            "lifecycleNotificationUrl",
            json!(self.lifecycle_url.as_ref().map(Url::as_str)),
        );
        put("expirationDateTime", json!(graph_time(self.expiration)));
        put("creatorId", json!(self.creator_id));
        put(
            "includeResourceData",
            json!(self.echo.include_resource_data),
        );
        put("latestSupportedTlsVersion", json!(self.tls_version));
        put(
            "encryptionCertificate",
            json!(self.certificate.as_ref().and_then(Certificate::base64)),
        );
        put(
            "encryptionCertificateId",
            json!(self.certificate.as_ref().map(|c| c.id.as_str())),
        );
        put("notificationUrlAppId", json!(self.notification_url_app_id));
        Value::Object(map)
    }

    /// [`to_json_as`](Self::to_json_as) under the version the subscription
    /// was created with.
    pub(crate) fn to_json(&self, base: &str, show_client_state: bool) -> Value {
        self.to_json_as(base, self.api_version, show_client_state)
    }

    pub(crate) fn change_type_text(&self) -> String {
        self.change_types
            .iter()
            .map(ChangeType::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The forms Graph writes date-times in, by where they appear: one home
/// for all of them, so a strict parser meets each locally as it would in
/// production.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeForm {
    /// The subscription resource, lifecycle and presence notifications:
    /// UTC, seven fraction digits, `Z` (`2016-03-20T11:00:00.0000000Z`;
    /// Microsoft Learn, "subscription resource type",
    /// <https://learn.microsoft.com/graph/api/resources/subscription>).
    Resource,
    /// Outlook change notifications: seven fraction digits in the
    /// mailbox's offset, `2022-01-02T03:12:18.2257768+05:30` (Microsoft
    /// Learn, "Change notifications for Outlook resources",
    /// <https://learn.microsoft.com/graph/outlook-change-notifications-overview>).
    Outlook,
    /// Teams notifications: seven fraction digits in the tenant's offset,
    /// `2021-02-02T10:30:34.9097561-08:00` (Microsoft Learn, "Get change
    /// notifications for chat and channel messages",
    /// <https://learn.microsoft.com/graph/teams-changenotifications-chatmessage>).
    Teams,
    /// callRecord notifications: milliseconds and `+00:00`,
    /// `2023-02-28T00:00:00.000+00:00` (Microsoft Learn, "Get change
    /// notifications for call records",
    /// <https://learn.microsoft.com/graph/changenotifications-for-callrecords>).
    CallRecord,
    /// Other change notifications: milliseconds, `Z`,
    /// `2016-03-19T22:11:09.952Z` (Microsoft Learn, "Receive change
    /// notifications through webhooks",
    /// <https://learn.microsoft.com/graph/change-notifications-delivery-webhooks>).
    Notification,
}

/// The offset of the emulated mailboxes, as in Outlook's examples.
const MAILBOX_OFFSET: time::UtcOffset = time::macros::offset!(+05:30);

/// The offset of the emulated Teams tenant, as in the Teams examples.
const TEAMS_OFFSET: time::UtcOffset = time::macros::offset!(-08:00);

/// A date-time as Graph writes it in resources: UTC, seven fraction digits, `Z`.
pub(crate) fn graph_time(t: OffsetDateTime) -> String {
    graph_time_as(t, TimeForm::Resource)
}

/// A date-time in one of Graph's forms.
pub(crate) fn graph_time_as(t: OffsetDateTime, form: TimeForm) -> String {
    let offset = match form {
        TimeForm::Outlook => MAILBOX_OFFSET,
        TimeForm::Teams => TEAMS_OFFSET,
        _ => time::UtcOffset::UTC,
    };
    let t = t.to_offset(offset);
    let date = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    );
    match form {
        TimeForm::Resource => format!("{date}.{:07}Z", t.nanosecond() / 100),
        TimeForm::Notification => format!("{date}.{:03}Z", t.millisecond()),
        TimeForm::CallRecord => format!("{date}.{:03}+00:00", t.millisecond()),
        TimeForm::Outlook | TimeForm::Teams => {
            let (h, m, _) = offset.as_hms();
            let sign = if offset.is_negative() { '-' } else { '+' };
            format!(
                "{date}.{:07}{sign}{:02}:{:02}",
                t.nanosecond() / 100,
                h.unsigned_abs(),
                m.unsigned_abs()
            )
        }
    }
}

/// Parses `expirationDateTime`: RFC 3339 with any offset and fraction.
pub(crate) fn parse_time(value: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(value.trim(), &Rfc3339).ok()
}

/// The subscriptions, by id.
#[derive(Debug, Default)]
pub(crate) struct Store {
    subscriptions: Mutex<HashMap<String, Subscription>>,
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Subscription>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The id of a live subscription that `candidate` would duplicate.
    pub(crate) fn duplicate_of(&self, candidate: &Subscription) -> Option<String> {
        let key = candidate.duplicate_key();
        self.lock()
            .values()
            .find(|s| s.id != candidate.id && s.duplicate_key() == key)
            .map(|s| s.id.clone())
    }

    /// Adds a subscription unless one like it exists; then returns its id.
    pub(crate) fn insert_unique(&self, subscription: Subscription) -> Result<(), String> {
        let key = subscription.duplicate_key();
        let mut subscriptions = self.lock();
        if let Some(existing) = subscriptions.values().find(|s| s.duplicate_key() == key) {
            return Err(existing.id.clone());
        }
        subscriptions.insert(subscription.id.clone(), subscription);
        Ok(())
    }

    pub(crate) fn get(&self, id: &str) -> Option<Subscription> {
        self.lock().get(id).cloned()
    }

    /// Replaces a subscription that still exists; `false` if it is gone.
    pub(crate) fn replace(&self, subscription: Subscription) -> bool {
        let mut subscriptions = self.lock();
        match subscriptions.get_mut(&subscription.id) {
            Some(slot) => {
                *slot = subscription;
                true
            }
            None => false,
        }
    }

    /// Applies `f` to a subscription; `None` if it is gone.
    pub(crate) fn update<T>(&self, id: &str, f: impl FnOnce(&mut Subscription) -> T) -> Option<T> {
        self.lock().get_mut(id).map(f)
    }

    pub(crate) fn remove(&self, id: &str) -> Option<Subscription> {
        self.lock().remove(id)
    }

    /// Every subscription, oldest expiration first.
    pub(crate) fn all(&self) -> Vec<Subscription> {
        let mut all: Vec<Subscription> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| a.expiration.cmp(&b.expiration).then(a.id.cmp(&b.id)));
        all
    }

    /// Removes the subscriptions expired at `now`; returns them.
    pub(crate) fn remove_expired(&self, now: OffsetDateTime) -> Vec<Subscription> {
        let mut subscriptions = self.lock();
        let expired: Vec<String> = subscriptions
            .values()
            .filter(|s| s.expiration <= now)
            .map(|s| s.id.clone())
            .collect();
        expired
            .iter()
            .filter_map(|id| subscriptions.remove(id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn graph_time_has_seven_fraction_digits_in_utc() {
        let t = datetime!(2016-11-20 18:23:45.935_691_3 UTC);
        assert_eq!(graph_time(t), "2016-11-20T18:23:45.9356913Z");
        let offset = datetime!(2016-11-20 20:23:45 +02:00);
        assert_eq!(graph_time(offset), "2016-11-20T18:23:45.0000000Z");
        assert_eq!(parse_time("2016-11-20T18:23:45.9356913Z"), Some(t));
        assert_eq!(parse_time("2016-11-20T20:23:45+02:00"), Some(offset));
        for bad in ["", "tomorrow", "2016-11-20", "2016-13-20T18:23:45Z"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_form_is_the_docs_and_reads_back_as_the_same_instant() {
        let t = datetime!(2021-12-31 10:46:44.990_740_56 UTC);
        let cases = [
            (TimeForm::Resource, "2021-12-31T10:46:44.9907405Z"),
            (TimeForm::Outlook, "2021-12-31T16:16:44.9907405+05:30"),
            (TimeForm::Teams, "2021-12-31T02:46:44.9907405-08:00"),
            (TimeForm::CallRecord, "2021-12-31T10:46:44.990+00:00"),
            (TimeForm::Notification, "2021-12-31T10:46:44.990Z"),
        ];
        for (form, text) in cases {
            assert_eq!(graph_time_as(t, form), text);
            let back = parse_time(text).unwrap();
            assert!((back - t).abs() < time::Duration::milliseconds(1), "{text}");
        }
    }
}

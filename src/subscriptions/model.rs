//! The subscription resource as Graph takes and returns it: what is
//! created, what an update changes, what comes back.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::catalog;
use crate::{ChangeType, ClientState};

/// A subscription as Graph returns it.
///
/// `clientState` is `None` in what `get` and `list` return: Graph shows it
/// only in the answers to create and update (Microsoft Learn, "subscription resource type", <https://learn.microsoft.com/graph/api/resources/subscription>).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Subscription {
    /// Graph's id.
    pub id: String,
    /// The resource path.
    #[serde(default)]
    pub resource: String,
    /// The change types, comma-separated.
    #[serde(default)]
    pub change_type: String,
    /// Where notifications go.
    #[serde(default)]
    pub notification_url: String,
    /// Where lifecycle notifications go.
    #[serde(default)]
    pub lifecycle_notification_url: Option<String>,
    /// When it expires.
    #[serde(rename = "expirationDateTime", with = "time::serde::rfc3339")]
    pub expiration: OffsetDateTime,
    /// The `clientState` (create and update answers only).
    #[serde(default)]
    pub client_state: Option<ClientState>,
    /// Whether notifications carry encrypted resource data.
    #[serde(default)]
    pub include_resource_data: Option<bool>,
    /// The certificate id of a rich subscription.
    #[serde(default)]
    pub encryption_certificate_id: Option<String>,
    /// The app that created it.
    #[serde(default)]
    pub application_id: Option<String>,
    /// The user or service principal that created it.
    #[serde(default)]
    pub creator_id: Option<String>,
    /// Every other property, as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The body of `POST /subscriptions`.
///
/// ```
/// use msgraph_webhooks::ChangeType;
/// use msgraph_webhooks::subscriptions::NewSubscription;
/// use time::{Duration, OffsetDateTime};
///
/// let new = NewSubscription::new(
///     "users/ada@contoso.com/messages",
///     [ChangeType::Created, ChangeType::Updated],
///     "https://example.com/notifications",
///     OffsetDateTime::now_utc() + Duration::days(2),
/// )
/// .lifecycle_notification_url("https://example.com/lifecycle");
/// assert_eq!(new.resource, "users/ada@contoso.com/messages");
/// // On the wire as Graph wants it.
/// assert_eq!(new.change_type, "created,updated");
/// ```
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct NewSubscription {
    /// `changeType`: the change types given to [`NewSubscription::new`],
    /// comma-separated as Graph takes them (`created,updated`).
    pub change_type: String,
    /// `notificationUrl`.
    pub notification_url: String,
    /// `resource`.
    pub resource: String,
    /// `expirationDateTime`.
    #[serde(rename = "expirationDateTime", with = "time::serde::rfc3339")]
    pub expiration: OffsetDateTime,
    /// `clientState`: echoed in every notification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_state: Option<ClientState>,
    /// `lifecycleNotificationUrl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle_notification_url: Option<String>,
    /// `includeResourceData`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub include_resource_data: bool,
    /// `encryptionCertificate`: base64 DER.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_certificate: Option<String>,
    /// `encryptionCertificateId`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_certificate_id: Option<String>,
    /// `latestSupportedTlsVersion`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_supported_tls_version: Option<String>,
    /// `notificationUrlAppId`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification_url_app_id: Option<String>,
}

impl NewSubscription {
    /// A basic subscription to `change_types` of `resource` (each named
    /// once, in the order given), notified at `notification_url` until
    /// `expiration`.
    pub fn new(
        resource: impl Into<String>,
        change_types: impl IntoIterator<Item = ChangeType>,
        notification_url: impl Into<String>,
        expiration: OffsetDateTime,
    ) -> Self {
        let change_types: Vec<ChangeType> = change_types.into_iter().collect();
        Self {
            change_type: catalog::join_change_types(&change_types),
            notification_url: notification_url.into(),
            resource: resource.into(),
            expiration,
            client_state: None,
            lifecycle_notification_url: None,
            include_resource_data: false,
            encryption_certificate: None,
            encryption_certificate_id: None,
            latest_supported_tls_version: None,
            notification_url_app_id: None,
        }
    }

    /// Sets `clientState`.
    #[must_use]
    pub fn client_state(mut self, client_state: ClientState) -> Self {
        self.client_state = Some(client_state);
        self
    }

    /// Sets `lifecycleNotificationUrl`.
    #[must_use]
    pub fn lifecycle_notification_url(mut self, url: impl Into<String>) -> Self {
        self.lifecycle_notification_url = Some(url.into());
        self
    }

    /// Asks for resource data, encrypted to `certificate`.
    #[must_use]
    pub fn rich(mut self, certificate: &EncryptionCertificate) -> Self {
        self.include_resource_data = true;
        self.encryption_certificate(certificate)
    }

    /// Sets `includeResourceData` alone (a pre-flight check refuses it
    /// without a certificate where the kind needs one).
    #[must_use]
    pub fn include_resource_data(mut self, include: bool) -> Self {
        self.include_resource_data = include;
        self
    }

    /// Sets the certificate without `includeResourceData` (presence needs it always).
    #[must_use]
    pub fn encryption_certificate(mut self, certificate: &EncryptionCertificate) -> Self {
        self.encryption_certificate_id = Some(certificate.id().to_owned());
        self.encryption_certificate = Some(certificate.certificate().to_owned());
        self
    }
}

/// The body of `PATCH /subscriptions/{id}`: what may change.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SubscriptionUpdate {
    /// A new `expirationDateTime` (renews, and reauthorizes).
    #[serde(
        rename = "expirationDateTime",
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expiration: Option<OffsetDateTime>,
    /// A new `notificationUrl` (Graph validates it with a handshake).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification_url: Option<String>,
    /// A new `encryptionCertificate` (base64 DER).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_certificate: Option<String>,
    /// A new `encryptionCertificateId`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_certificate_id: Option<String>,
}

impl SubscriptionUpdate {
    /// A renewal to `expiration`.
    pub fn renew(expiration: OffsetDateTime) -> Self {
        Self {
            expiration: Some(expiration),
            ..Self::default()
        }
    }

    /// Also moves notifications to `url`.
    #[must_use]
    pub fn notification_url(mut self, url: impl Into<String>) -> Self {
        self.notification_url = Some(url.into());
        self
    }

    /// Also moves the subscription to another certificate.
    #[must_use]
    pub fn certificate(mut self, certificate: &EncryptionCertificate) -> Self {
        self.encryption_certificate_id = Some(certificate.id().to_owned());
        self.encryption_certificate = Some(certificate.certificate().to_owned());
        self
    }
}

/// The certificate rich subscriptions are encrypted to: an id of the app's
/// choosing and the certificate as base64 DER (public; the private key
/// stays in the receiver's [`KeyRing`](crate::crypto::KeyRing)).
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionCertificate {
    id: String,
    certificate: String,
}

impl fmt::Debug for EncryptionCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionCertificate")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl EncryptionCertificate {
    /// A certificate given as base64 DER (what `cert new` prints).
    pub fn new(id: impl Into<String>, base64_der: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            certificate: base64_der.into(),
        }
    }

    /// The certificate of a decryption key, under the id the key ring knows it by.
    ///
    /// # Errors
    ///
    /// OpenSSL failing to encode the certificate.
    pub fn from_key(
        id: impl Into<String>,
        key: &crate::crypto::DecryptionKey,
    ) -> Result<Self, openssl::error::ErrorStack> {
        let der = key.certificate().to_der()?;
        Ok(Self::new(
            id,
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der),
        ))
    }

    /// The certificate in a PEM or DER file, under `id`.
    ///
    /// # Errors
    ///
    /// The file cannot be read (or is over 16 MiB), or holds no certificate.
    pub fn from_file(id: impl Into<String>, path: &std::path::Path) -> Result<Self, String> {
        let bytes =
            crate::files::read_capped(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let x509 = openssl::x509::X509::from_pem(&bytes)
            .or_else(|_| openssl::x509::X509::from_der(&bytes))
            .map_err(|_| format!("{} holds no certificate", path.display()))?;
        let der = x509
            .to_der()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self::new(
            id,
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der),
        ))
    }

    /// The `encryptionCertificateId`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `encryptionCertificate`: base64 DER.
    pub fn certificate(&self) -> &str {
        &self.certificate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_types_go_on_the_wire_comma_separated_each_once() {
        let new = NewSubscription::new(
            "users",
            [
                ChangeType::Updated,
                ChangeType::Deleted,
                ChangeType::Updated,
            ],
            "https://example.com/",
            OffsetDateTime::UNIX_EPOCH,
        );
        let body = serde_json::to_value(&new).unwrap();
        assert_eq!(body["changeType"], "updated,deleted");
        assert_eq!(body["resource"], "users");
    }
}

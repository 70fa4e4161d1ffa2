//! What the app declares: the subscriptions it wants, where their
//! notifications go, and the certificate rich ones are encrypted to.

use time::{Duration, OffsetDateTime};

use crate::catalog::{self, KindRules, ResourceDataRule};
use crate::subscriptions::model::{EncryptionCertificate, NewSubscription};
use crate::subscriptions::preflight::{self, LifetimePolicy, PreflightError};
use crate::{ChangeType, ClientState};

use super::LIFETIME_MARGIN;

/// Where lifecycle notifications of a declared subscription go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum LifecycleUrl {
    /// The public URL with `/lifecycle` appended to its path.
    Derived,
    /// This URL.
    Fixed(String),
    /// None: no lifecycle notifications.
    Off,
}

/// A subscription the app wants to exist.
///
/// By default notifications go to the manager's public URL and lifecycle
/// notifications to the public URL with `/lifecycle` appended (the
/// receiver serves both on any path); the lifetime is the longest the kind
/// allows; the key, which ties the declaration to its Graph subscription
/// across restarts and instances, is the resource and change types.
///
/// ```
/// use msgraph_webhooks::ChangeType;
/// use msgraph_webhooks::subscriptions::Declared;
///
/// let mail = Declared::new("users/ada@contoso.com/messages", [ChangeType::Created, ChangeType::Updated]);
/// assert_eq!(mail.stable_key(), "users/ada@contoso.com/messages|created,updated");
/// let chats = Declared::new("chats/getAllMessages", [ChangeType::Created]).rich(true).key("chats");
/// assert_eq!(chats.stable_key(), "chats");
/// ```
#[derive(Clone, Debug)]
pub struct Declared {
    pub(super) key: Option<String>,
    pub(super) resource: String,
    pub(super) change_type: String,
    pub(super) rich: bool,
    pub(super) certificate_id: Option<String>,
    pub(super) notification_url: Option<String>,
    pub(super) lifecycle_url: LifecycleUrl,
    pub(super) lifetime: Option<Duration>,
    pub(super) lifetime_policy: LifetimePolicy,
    pub(super) rules: Option<KindRules>,
}

impl Declared {
    /// `resource` (a path as in Graph's `resource`) with `change_types`,
    /// as [`NewSubscription::new`] takes them (each once, in the order
    /// given). [`catalog::parse_change_types`] reads them from text such as
    /// `created,updated`.
    pub fn new(
        resource: impl Into<String>,
        change_types: impl IntoIterator<Item = ChangeType>,
    ) -> Self {
        let change_types: Vec<ChangeType> = change_types.into_iter().collect();
        Self {
            key: None,
            resource: resource.into().trim().to_owned(),
            change_type: catalog::join_change_types(&change_types),
            rich: false,
            certificate_id: None,
            notification_url: None,
            lifecycle_url: LifecycleUrl::Derived,
            lifetime: None,
            lifetime_policy: LifetimePolicy::Reject,
            rules: None,
        }
    }

    /// The stable key (default: `resource|changeTypes`).
    pub fn stable_key(&self) -> String {
        self.key
            .clone()
            .unwrap_or_else(|| format!("{}|{}", self.resource, self.change_type))
    }

    /// The resource path.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The change types, comma-separated.
    pub fn change_types(&self) -> &str {
        &self.change_type
    }

    /// Sets the stable key.
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Asks for resource data, encrypted to the manager's active certificate.
    #[must_use]
    pub fn rich(mut self, rich: bool) -> Self {
        self.rich = rich;
        self
    }

    /// Encrypts to this certificate (one the manager knows) instead of the
    /// active one; certificate rotation then leaves the subscription alone.
    #[must_use]
    pub fn certificate_id(mut self, id: impl Into<String>) -> Self {
        self.certificate_id = Some(id.into());
        self
    }

    /// Sends notifications to this URL instead of the public URL.
    #[must_use]
    pub fn notification_url(mut self, url: impl Into<String>) -> Self {
        self.notification_url = Some(url.into());
        self
    }

    /// Sends lifecycle notifications to this URL.
    #[must_use]
    pub fn lifecycle_url(mut self, url: impl Into<String>) -> Self {
        self.lifecycle_url = LifecycleUrl::Fixed(url.into());
        self
    }

    /// Asks for no lifecycle notifications (Teams subscriptions then live
    /// at most an hour). A moved public URL is then followed by an update
    /// instead of a new subscription, since Graph can't update a lifecycle URL.
    #[must_use]
    pub fn without_lifecycle_url(mut self) -> Self {
        self.lifecycle_url = LifecycleUrl::Off;
        self
    }

    /// How long each creation or renewal asks for (default: the longest the
    /// kind allows, less five minutes for a local clock ahead of Graph's).
    #[must_use]
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// What to do when [`lifetime`](Self::lifetime) is over the kind's
    /// maximum: refuse (the default) or clamp.
    #[must_use]
    pub fn lifetime_policy(mut self, policy: LifetimePolicy) -> Self {
        self.lifetime_policy = policy;
        self
    }

    pub(super) fn rules(&self) -> Option<KindRules> {
        self.rules
    }

    pub(super) fn needs_certificate(&self) -> bool {
        self.rich
            || self
                .rules()
                .is_some_and(|r| r.resource_data == ResourceDataRule::AlwaysEncrypted)
    }

    pub(super) fn lifetime_now(&self) -> Duration {
        self.lifetime.unwrap_or_else(|| {
            self.rules()
                .map_or(Duration::minutes(4230), |r| r.max_lifetime(self.rich))
                - LIFETIME_MARGIN
        })
    }

    /// The notification and lifecycle URLs under `public`.
    pub(super) fn urls(&self, public: Option<&str>) -> Option<Urls> {
        let notification = match &self.notification_url {
            Some(url) => normalize(url),
            None => normalize(public?),
        };
        let lifecycle = match &self.lifecycle_url {
            LifecycleUrl::Off => None,
            LifecycleUrl::Fixed(url) => Some(normalize(url)),
            LifecycleUrl::Derived => Some(match public {
                Some(public) => lifecycle_of(public),
                None => lifecycle_of(&notification),
            }),
        };
        Some(Urls {
            notification,
            lifecycle,
        })
    }

    /// The creation request at `now`.
    pub(super) fn request(
        &self,
        urls: &Urls,
        certificate: Option<&EncryptionCertificate>,
        client_state: ClientState,
        now: OffsetDateTime,
    ) -> Result<NewSubscription, PreflightError> {
        // An invalid name stays itself (`Unknown`), for pre-flight to refuse
        // by name.
        let change_types = self
            .change_type
            .split(',')
            .map(|t| ChangeType::parse(t.trim()));
        let mut new = NewSubscription::new(
            &self.resource,
            change_types,
            &urls.notification,
            now + self.lifetime_now(),
        )
        .client_state(client_state)
        .include_resource_data(self.rich);
        if let Some(url) = &urls.lifecycle {
            new = new.lifecycle_notification_url(url);
        }
        if self.needs_certificate()
            && let Some(certificate) = certificate
        {
            new = new.encryption_certificate(certificate);
        }
        preflight::check(&new, now, self.lifetime_policy)
    }
}

/// A URL as the manager writes it (parsed and printed back).
pub(super) fn normalize(url: &str) -> String {
    url::Url::parse(url.trim()).map_or_else(|_| url.trim().to_owned(), |u| u.to_string())
}

/// `url` with `/lifecycle` appended to its path.
pub(super) fn lifecycle_of(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(mut parsed) => {
            let path = format!("{}/lifecycle", parsed.path().trim_end_matches('/'));
            parsed.set_path(&path);
            parsed.set_query(None);
            parsed.to_string()
        }
        Err(_) => format!("{}/lifecycle", url.trim().trim_end_matches('/')),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Urls {
    pub(super) notification: String,
    pub(super) lifecycle: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_urls() {
        let d = Declared::new("users", [ChangeType::Updated]);
        let urls = d.urls(Some("https://abc.ngrok-free.app")).unwrap();
        assert_eq!(urls.notification, "https://abc.ngrok-free.app/");
        assert_eq!(
            urls.lifecycle.as_deref(),
            Some("https://abc.ngrok-free.app/lifecycle")
        );
        let urls = d.urls(Some("https://example.com/hooks/graph?x=1")).unwrap();
        assert_eq!(urls.notification, "https://example.com/hooks/graph?x=1");
        assert_eq!(
            urls.lifecycle.as_deref(),
            Some("https://example.com/hooks/graph/lifecycle")
        );
        assert!(d.urls(None).is_none());
        let fixed = Declared::new("users", [ChangeType::Updated])
            .notification_url("https://a.example/n")
            .without_lifecycle_url();
        assert_eq!(
            fixed.urls(None),
            Some(Urls {
                notification: "https://a.example/n".to_owned(),
                lifecycle: None
            })
        );
    }

    #[test]
    fn change_types_are_normalized_into_the_key() {
        let types = catalog::parse_change_types("Updated, deleted").unwrap();
        let d = Declared::new(" users ", types);
        assert_eq!(d.stable_key(), "users|updated,deleted");
        let twice = Declared::new("users", [ChangeType::Updated, ChangeType::Updated]);
        assert_eq!(twice.stable_key(), "users|updated");
    }
}

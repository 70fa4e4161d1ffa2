//! Pre-flight checks: a subscription request against the
//! catalog's rules ([`crate::catalog`]), before anything is sent to Graph.
//!
//! Graph answers a bad subscription with a terse `400` (or, for a bad
//! notification URL, only after a handshake). These checks refuse it
//! locally, and each [`Problem`] names the rule and the fix.
//!
//! ```
//! use msgraph_webhooks::subscriptions::preflight::{self, LifetimePolicy};
//! use msgraph_webhooks::ChangeType;
//! use msgraph_webhooks::subscriptions::NewSubscription;
//! use time::{Duration, OffsetDateTime};
//!
//! let now = OffsetDateTime::now_utc();
//! let new = NewSubscription::new(
//!     "users/ada@contoso.com/messages",
//!     [ChangeType::Created],
//!     "https://example.com/notifications",
//!     now + Duration::days(30),
//! );
//! let error = preflight::check(&new, now, LifetimePolicy::Reject).unwrap_err();
//! assert!(error.to_string().contains("10080 minutes"));
//!
//! // Or let it be cut to the longest lifetime the kind allows.
//! let clamped = preflight::check(&new, now, LifetimePolicy::Clamp).unwrap();
//! assert!(clamped.expiration <= now + Duration::minutes(10080));
//! ```

use std::fmt;

use time::{Duration, OffsetDateTime};

use super::model::NewSubscription;
use crate::catalog::{self, EndpointError, MIN_LIFETIME, Request, Violation};

/// What to do with an expiration beyond the kind's maximum lifetime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LifetimePolicy {
    /// Refuse the request.
    #[default]
    Reject,
    /// Cut the expiration to the maximum (less a minute, for clock skew).
    Clamp,
}

/// Kept between a clamped expiration and the maximum, so a Graph clock a
/// little behind ours does not refuse it.
const CLAMP_MARGIN: Duration = Duration::minutes(1);

/// One rule a request breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// A catalog rule (resource path, change type, resource data, lifetime,
    /// lifecycle URL, payment model, query options).
    Catalog(Violation),
    /// `notificationUrl` or `lifecycleNotificationUrl` is not an absolute
    /// `https://` URL (`http://` is accepted for loopback, as the emulator does).
    Url {
        /// Which property.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// `clientState` or `encryptionCertificateId` is over 128 characters.
    TooLong {
        /// Which property.
        field: &'static str,
    },
}

impl Problem {
    /// The rule broken, in a few words.
    pub fn rule(&self) -> &'static str {
        match self {
            Problem::Catalog(v) => match v {
                Violation::MalformedResource(_) | Violation::UnsupportedResource { .. } => {
                    "supported resource paths"
                }
                Violation::InvalidChangeType { .. } | Violation::ChangeTypeNotSupported { .. } => {
                    "change types of the resource"
                }
                Violation::PaymentModelNotSupported { .. } | Violation::PaymentModelImmutable => {
                    "payment models of metered APIs"
                }
                Violation::ResourceDataNeedsCertificate { .. }
                | Violation::AlwaysEncrypted { .. }
                | Violation::ResourceDataNotSupported { .. }
                | Violation::SelectRequired { .. } => "resource data and encryption",
                Violation::ExpirationTooFar { .. } => "maximum lifetime",
                Violation::LifecycleUrlRequired { .. } => "lifecycle URL of Teams subscriptions",
                Violation::QueryOptionNotAllowed { .. }
                | Violation::UserSpecificPropertiesNotSupported
                | Violation::PresenceFilterRequired => "query options of the resource",
                Violation::PermissionTypeNotSupported { .. }
                | Violation::MissingPermission { .. }
                | Violation::OtherUsersMailbox { .. } => "permissions",
                Violation::DriveRootOnly | Violation::NotAFolder { .. } => "drive items",
                Violation::CopilotLicenseRequired { .. } => "Copilot licence",
            },
            Problem::Url { .. } => "notification URLs",
            Problem::TooLong { .. } => "property lengths",
        }
    }

    /// The fix, where the catalog's message (Graph's own wording) has none.
    fn fix(&self) -> Option<String> {
        match self {
            Problem::Catalog(Violation::ExpirationTooFar { max_minutes }) => Some(format!(
                "Ask for at most {max_minutes} minutes, or clamp the lifetime \
                 (LifetimePolicy::Clamp; --clamp-lifetime on the command line)."
            )),
            Problem::Url { field, .. } => Some(format!(
                "Give {field} as https://… reachable from the internet (e.g. an ngrok tunnel: --public-url ngrok)."
            )),
            Problem::TooLong { field } => Some(format!("Shorten {field} to 128 characters.")),
            Problem::Catalog(_) => None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] ", self.rule())?;
        match self {
            Problem::Catalog(v) => write!(f, "{v}")?,
            Problem::Url { field, why } => write!(f, "{field} {why}.")?,
            Problem::TooLong { field } => write!(f, "{field} is longer than 128 characters.")?,
        }
        if let Some(fix) = self.fix() {
            write!(f, " {fix}")?;
        }
        Ok(())
    }
}

/// A subscription request that breaks catalog rules: nothing was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreflightError {
    resource: String,
    problems: Vec<Problem>,
}

impl PreflightError {
    /// The resource of the refused request.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Every rule broken, at least one.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

impl fmt::Display for PreflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Graph would refuse the subscription to '{}' (not sent):",
            self.resource
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PreflightError {}

/// The catalog's [endpoint rule](catalog::check_endpoint), as a problem.
fn check_url(field: &'static str, value: &str) -> Option<Problem> {
    let why = match catalog::check_destination(value, false) {
        Ok(_) => return None,
        Err(EndpointError::NotAbsolute) => {
            format!("'{}' is not an absolute URL", super::http::clean(value))
        }
        Err(other) => other.to_string(),
    };
    Some(Problem::Url { field, why })
}

/// Checks `subscription` against every rule at time `now`; returns it as it
/// can be sent (with the expiration clamped under [`LifetimePolicy::Clamp`]).
///
/// Permissions are not checked here: they depend on the token, and Graph
/// answers a missing one with a clear `403`.
///
/// # Errors
///
/// [`PreflightError`] listing every rule broken.
pub fn check(
    subscription: &NewSubscription,
    now: OffsetDateTime,
    policy: LifetimePolicy,
) -> Result<NewSubscription, PreflightError> {
    let mut out = subscription.clone();
    let mut problems: Vec<Problem> = Vec::new();
    problems.extend(check_url("notificationUrl", &out.notification_url));
    if let Some(url) = &out.lifecycle_notification_url {
        problems.extend(check_url("lifecycleNotificationUrl", url));
    }
    if out
        .client_state
        .as_ref()
        .is_some_and(|s| s.expose().chars().count() > 128)
    {
        problems.push(Problem::TooLong {
            field: "clientState",
        });
    }
    if out
        .encryption_certificate_id
        .as_ref()
        .is_some_and(|s| s.chars().count() > 128)
    {
        problems.push(Problem::TooLong {
            field: "encryptionCertificateId",
        });
    }
    let resolved = match catalog::resolve(&out.resource) {
        Ok(resolved) => resolved,
        Err(violation) => {
            problems.insert(0, Problem::Catalog(violation));
            return Err(PreflightError {
                resource: super::http::clean(&out.resource),
                problems,
            });
        }
    };
    if policy == LifetimePolicy::Clamp {
        let max = resolved.rules().max_lifetime(out.include_resource_data);
        if out.expiration > now + max {
            out.expiration = now + (max - CLAMP_MARGIN).max(MIN_LIFETIME);
        }
    }
    let request = Request::new(&out.change_type, out.expiration, now)
        .resource_data(
            out.include_resource_data,
            out.encryption_certificate
                .as_ref()
                .is_some_and(|c| !c.is_empty()),
            out.encryption_certificate_id
                .as_ref()
                .is_some_and(|c| !c.is_empty()),
        )
        .lifecycle_url(out.lifecycle_notification_url.is_some());
    if let Err(violations) = resolved.check(&request) {
        problems.extend(violations.into_iter().map(Problem::Catalog));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(PreflightError {
            resource: super::http::clean(&out.resource),
            problems,
        })
    }
}

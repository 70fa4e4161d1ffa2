//! What `POST /subscriptions` accepts, as data: the resource paths Graph
//! takes subscriptions on, their kinds, change types, permissions per
//! permission type, rich-data and encryption rules, payment models, maximum
//! lifetimes, and the Teams lifecycle-URL rule.
//!
//! The facts are those of Microsoft Graph's "Create subscription" page,
//! arranged in the rules of Microsoft Learn, "Create subscription", <https://learn.microsoft.com/graph/api/subscription-post-subscriptions> and the pages it links. One catalog serves three
//! users: the [emulator](crate::emulator) enforces it, a subscription client
//! checks a request before sending it (each [`Violation`] names the rule and
//! the fix), and a `permissions` command lists the least-privileged
//! permissions of a resource.
//!
//! ```
//! use msgraph_webhooks::catalog::{self, Caller, PermissionType, Request};
//! use time::{Duration, OffsetDateTime};
//!
//! let resolved = catalog::resolve("me/mailFolders('Inbox')/messages").unwrap();
//! assert_eq!(resolved.kind().as_str(), "message");
//! assert_eq!(
//!     resolved.least_privileged(PermissionType::Application).unwrap().name,
//!     "Mail.Read"
//! );
//!
//! let now = OffsetDateTime::now_utc();
//! let caller = Caller::application(["Mail.Read"]);
//! let request = Request::new("created,updated", now + Duration::days(2), now).caller(&caller);
//! assert!(resolved.check(&request).is_ok());
//!
//! // A week and a day is over the 10 080 minutes of Outlook messages.
//! let too_long = Request::new("created", now + Duration::days(8), now).caller(&caller);
//! let violations = resolved.check(&too_long).unwrap_err();
//! assert_eq!(
//!     violations[0].to_string(),
//!     "Subscription expiration can only be 10080 minutes in the future."
//! );
//! ```

mod check;
mod delta;
mod endpoint;
mod entries;
mod model;
mod path;
mod quota;
mod rules;
mod violation;

use time::Duration;

pub use check::{
    Accepted, Caller, Request, Resolved, join_change_types, parse_change_types, resolve,
};
pub use delta::{Delta, DeltaQuery, delta};
pub use endpoint::{
    Destination, EVENT_GRID_PARAMETERS, EndpointError, check_destination, check_endpoint,
};
pub use model::{Entry, PaymentModel, PaymentModels, Permission, PermissionType, entries};
pub use path::{PathError, ResourcePath};
pub use quota::{Quota, QuotaScope, quotas};
pub use rules::{KindRules, ResourceDataRule, rules};
pub use violation::Violation;

/// Expirations closer than this are raised to now + 45 minutes.
pub const MIN_LIFETIME: Duration = Duration::minutes(45);

/// Teams subscriptions expiring further ahead than this need a
/// `lifecycleNotificationUrl`.
pub const TEAMS_LIFECYCLE_THRESHOLD: Duration = Duration::hours(1);

/// Most user ids a presence `$filter=id in (…)` may name.
pub const MAX_PRESENCE_IDS: usize = 650;

/// The Copilot service plan an `aiInteraction` subscription needs
/// (Microsoft 365 Copilot Chat).
pub const COPILOT_SERVICE_PLAN: &str = "3f30311c-6b1e-48a4-ab79-725b469da960";

#[cfg(test)]
mod tests;

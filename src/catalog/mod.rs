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

mod endpoint;
mod entries;
mod path;

use std::fmt;

use time::{Duration, OffsetDateTime};

use crate::notification::{ChangeType, LifecycleEventType, ResourceKind};

pub use endpoint::{EndpointError, check_endpoint};
pub use path::{PathError, ResourcePath};

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

/// How the caller holds its permissions: the columns of the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PermissionType {
    /// Delegated, for a work or school account (`scp` in the token).
    DelegatedWork,
    /// Delegated, for a personal Microsoft account.
    DelegatedPersonal,
    /// Application (`roles` in the token).
    Application,
}

impl PermissionType {
    /// The three columns, in the reference's order.
    pub const ALL: [PermissionType; 3] = [
        PermissionType::DelegatedWork,
        PermissionType::DelegatedPersonal,
        PermissionType::Application,
    ];
}

impl fmt::Display for PermissionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PermissionType::DelegatedWork => "delegated (work or school account)",
            PermissionType::DelegatedPersonal => "delegated (personal Microsoft account)",
            PermissionType::Application => "application",
        })
    }
}

/// One permission a catalog row accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Permission {
    /// Its name, e.g. `Mail.Read`.
    pub name: &'static str,
    /// A resource-specific-consent permission (`*` in the reference),
    /// granted by installing the app in one chat or team.
    pub resource_specific: bool,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)?;
        if self.resource_specific {
            f.write_str("*")?;
        }
        Ok(())
    }
}

/// The payment models a metered API takes as `?model=` in `resource`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PaymentModels {
    /// Not a metered API: `model` is an error.
    NotMetered,
    /// `model=A` or `model=B`; none means evaluation mode.
    AOrB,
    /// `model=B` only; none means evaluation mode.
    BOnly,
}

impl PaymentModels {
    /// Whether `model` is accepted.
    pub fn allows(self, model: PaymentModel) -> bool {
        match self {
            PaymentModels::NotMetered => false,
            PaymentModels::AOrB => true,
            PaymentModels::BOnly => model == PaymentModel::B,
        }
    }
}

/// A payment model of a metered API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PaymentModel {
    /// `model=A`.
    A,
    /// `model=B`.
    B,
}

impl fmt::Display for PaymentModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PaymentModel::A => "A",
            PaymentModel::B => "B",
        })
    }
}

/// One row of the catalog: a family of resource paths, its kind and the
/// permissions it accepts per permission type.
#[derive(Debug)]
#[non_exhaustive]
pub struct Entry {
    /// The kind of resource.
    pub kind: ResourceKind,
    /// Tells apart rows of one kind that differ by account, e.g.
    /// `personal OneDrive` and `OneDrive for Business`.
    pub variant: Option<&'static str>,
    /// Path patterns: `{…}` is one key segment, a final `{**}` one or more
    /// segments; `users/{id}/…` also matches `me/…`.
    pub paths: &'static [&'static str],
    /// What the row subscribes to, in words.
    pub about: &'static str,
    /// Delegated (work or school account) permissions, least privileged
    /// first; empty when that permission type is not supported.
    pub delegated_work: &'static [Permission],
    /// Delegated (personal Microsoft account) permissions; empty when not supported.
    pub delegated_personal: &'static [Permission],
    /// Application permissions; empty when not supported.
    pub application: &'static [Permission],
    /// The payment models the path takes.
    pub payment_models: PaymentModels,
    /// The path names one resource (a chat, a team, a drive's root), not a
    /// collection: notifications carry the path itself as `resource`.
    pub single_resource: bool,
    /// `notifyOnUserSpecificProperties=true` may be added to the path.
    pub user_specific_properties: bool,
    /// `Prefer: include-unknown-enum-members` brings `systemEventMessage` in `messageType`.
    pub unknown_enum_members: bool,
    /// `Prefer: includesecuritywebhooks` adds notifications of permission changes.
    pub security_webhooks: bool,
    /// Folders below the root may be subscribed to (personal OneDrive).
    pub folders_below_root: bool,
    /// The path needs a `$filter` (presence of several users).
    pub filter_required: bool,
}

impl Entry {
    /// The permissions the row accepts for `permission_type`, least
    /// privileged first; empty when the permission type is not supported.
    pub fn permissions(&self, permission_type: PermissionType) -> &'static [Permission] {
        match permission_type {
            PermissionType::DelegatedWork => self.delegated_work,
            PermissionType::DelegatedPersonal => self.delegated_personal,
            PermissionType::Application => self.application,
        }
    }

    /// The rules of the row's kind.
    pub fn rules(&self) -> KindRules {
        rules(&self.kind)
    }
}

/// Every row of the catalog, in the reference's order.
pub fn entries() -> &'static [Entry] {
    entries::ENTRIES
}

/// What a kind allows for resource data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResourceDataRule {
    /// `includeResourceData` may be set, and then needs
    /// `encryptionCertificate` and `encryptionCertificateId`.
    Optional,
    /// Notifications always carry encrypted resource data (presence): the
    /// certificate is required on every subscription.
    AlwaysEncrypted,
    /// Only basic notifications (users, groups, virtual events):
    /// `includeResourceData` is an error.
    NotSupported,
}

/// The rules attached to a kind of resource.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct KindRules {
    /// The change types a subscription may ask for.
    pub change_types: &'static [ChangeType],
    /// The longest lifetime, in minutes from now.
    pub max_lifetime_minutes: i64,
    /// The longest lifetime with `includeResourceData`, when it differs.
    pub max_lifetime_with_resource_data_minutes: Option<i64>,
    /// Resource data and encryption.
    pub resource_data: ResourceDataRule,
    /// A Teams resource: over 1 hour needs a `lifecycleNotificationUrl`;
    /// `$select` is not supported with resource data.
    pub teams: bool,
    /// An Outlook resource (message, event, contact): delegated permissions
    /// reach only the signed-in user's mailbox; `*.Shared` permissions don't
    /// work; rich subscriptions need `$select`.
    pub outlook: bool,
    /// The lifecycle notifications Graph sends for the kind.
    pub lifecycle_events: &'static [LifecycleEventType],
}

impl KindRules {
    /// The longest lifetime for a subscription with or without resource data.
    pub fn max_lifetime(&self, include_resource_data: bool) -> Duration {
        let minutes = match (
            include_resource_data,
            self.max_lifetime_with_resource_data_minutes,
        ) {
            (true, Some(rich)) => rich,
            _ => self.max_lifetime_minutes,
        };
        Duration::minutes(minutes)
    }
}

const ALL_CHANGES: &[ChangeType] = &[
    ChangeType::Created,
    ChangeType::Updated,
    ChangeType::Deleted,
];
const UPDATED_ONLY: &[ChangeType] = &[ChangeType::Updated];
const UPDATED_DELETED: &[ChangeType] = &[ChangeType::Updated, ChangeType::Deleted];
const REAUTH_ONLY: &[LifecycleEventType] = &[LifecycleEventType::ReauthorizationRequired];
const REAUTH_REMOVED: &[LifecycleEventType] = &[
    LifecycleEventType::ReauthorizationRequired,
    LifecycleEventType::SubscriptionRemoved,
];
const OUTLOOK_EVENTS: &[LifecycleEventType] = &[
    LifecycleEventType::ReauthorizationRequired,
    LifecycleEventType::SubscriptionRemoved,
    LifecycleEventType::Missed,
];

/// The rules of a kind: change types (Microsoft Learn, "subscription resource type", <https://learn.microsoft.com/graph/api/resources/subscription>: drive items and lists
/// `updated` only, users and groups `updated` and `deleted`; presence
/// `updated` only), maximum
/// lifetime (the catalog's lifetime table), resource data, Teams and Outlook
/// rules, lifecycle support (Microsoft Learn, "Reduce missing subscriptions and change notifications", <https://learn.microsoft.com/graph/change-notifications-lifecycle-events>).
///
/// Virtual events are missing from the lifetime table; they get the 4 320
/// minutes of the other Teams-hosted kinds. Unknown kinds get the most
/// permissive rules, so the catalog never refuses what it does not know.
pub fn rules(kind: &ResourceKind) -> KindRules {
    use ResourceKind as K;
    let base = KindRules {
        change_types: ALL_CHANGES,
        max_lifetime_minutes: 4320,
        max_lifetime_with_resource_data_minutes: None,
        resource_data: ResourceDataRule::Optional,
        teams: false,
        outlook: false,
        lifecycle_events: REAUTH_ONLY,
    };
    match kind {
        K::SecurityAlert => KindRules {
            max_lifetime_minutes: 43_200,
            ..base
        },
        K::DriveItem | K::List => KindRules {
            change_types: UPDATED_ONLY,
            max_lifetime_minutes: 42_300,
            ..base
        },
        // Users and groups are not among the resources with rich
        // notifications (Microsoft Learn, "Set up change notifications that
        // include resource data", <https://learn.microsoft.com/graph/change-notifications-with-resource-data>).
        K::User | K::Group => KindRules {
            change_types: UPDATED_DELETED,
            max_lifetime_minutes: 41_760,
            resource_data: ResourceDataRule::NotSupported,
            ..base
        },
        K::Message | K::Event | K::Contact => KindRules {
            max_lifetime_minutes: 10_080,
            max_lifetime_with_resource_data_minutes: Some(1_440),
            outlook: true,
            lifecycle_events: OUTLOOK_EVENTS,
            ..base
        },
        K::CallRecord => KindRules {
            max_lifetime_minutes: 4_230,
            teams: true,
            ..base
        },
        K::GroupConversation | K::Printer | K::PrintTaskDefinition | K::TodoTask => KindRules {
            max_lifetime_minutes: 4_230,
            ..base
        },
        K::AiInteraction | K::Unknown(_) => base,
        K::ChatMessage => KindRules {
            teams: true,
            lifecycle_events: REAUTH_REMOVED,
            ..base
        },
        K::CallRecording
        | K::CallTranscript
        | K::Channel
        | K::Chat
        | K::ConversationMember
        | K::Team => KindRules {
            teams: true,
            ..base
        },
        K::OfferShiftRequest
        | K::OpenShiftChangeRequest
        | K::Shift
        | K::SwapShiftsChangeRequest
        | K::TimeOffRequest => KindRules {
            max_lifetime_minutes: 360,
            teams: true,
            ..base
        },
        // Presence changes are `updated` only (Microsoft Learn, "Get change
        // notifications for presence updates in Microsoft Teams",
        // <https://learn.microsoft.com/graph/changenotifications-for-presence>).
        K::Presence => KindRules {
            change_types: UPDATED_ONLY,
            max_lifetime_minutes: 60,
            resource_data: ResourceDataRule::AlwaysEncrypted,
            teams: true,
            ..base
        },
        K::VirtualEventWebinar | K::VirtualEventTownhall => KindRules {
            resource_data: ResourceDataRule::NotSupported,
            ..base
        },
    }
}

/// Who asks: the permission type and permissions of the bearer token, and
/// the signed-in user for delegated tokens.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Caller {
    /// Delegated (which account) or application.
    pub permission_type: PermissionType,
    /// The token's `roles` (application) or `scp` (delegated).
    pub permissions: Vec<String>,
    /// The signed-in user's object id (delegated).
    pub user_id: Option<String>,
    /// The signed-in user's principal name (delegated).
    pub user_principal_name: Option<String>,
}

impl Caller {
    /// An app-only caller with these application permissions.
    pub fn application<S: Into<String>>(roles: impl IntoIterator<Item = S>) -> Self {
        Self {
            permission_type: PermissionType::Application,
            permissions: roles.into_iter().map(Into::into).collect(),
            user_id: None,
            user_principal_name: None,
        }
    }

    /// A signed-in user with these delegated permissions.
    pub fn delegated<S: Into<String>>(
        permission_type: PermissionType,
        scopes: impl IntoIterator<Item = S>,
        user_id: impl Into<String>,
        user_principal_name: impl Into<String>,
    ) -> Self {
        Self {
            permission_type,
            permissions: scopes.into_iter().map(Into::into).collect(),
            user_id: Some(user_id.into()),
            user_principal_name: Some(user_principal_name.into()),
        }
    }

    fn holds(&self, permission: &Permission) -> bool {
        self.permissions
            .iter()
            .any(|p| p.eq_ignore_ascii_case(permission.name))
    }

    /// Whether `user` (a key in a path) is the signed-in user.
    fn is_user(&self, user: &str) -> bool {
        user.eq_ignore_ascii_case("me")
            || self
                .user_id
                .as_deref()
                .is_some_and(|id| id.eq_ignore_ascii_case(user))
            || self
                .user_principal_name
                .as_deref()
                .is_some_and(|upn| upn.eq_ignore_ascii_case(user))
    }
}

/// A subscription request, as far as the catalog's rules look at it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Request<'a> {
    /// `changeType`, a comma-separated list.
    pub change_type: &'a str,
    /// `expirationDateTime`.
    pub expiration: OffsetDateTime,
    /// The time the request is checked at.
    pub now: OffsetDateTime,
    /// `includeResourceData`.
    pub include_resource_data: bool,
    /// Whether `encryptionCertificate` is set.
    pub encryption_certificate: bool,
    /// Whether `encryptionCertificateId` is set.
    pub encryption_certificate_id: bool,
    /// Whether `lifecycleNotificationUrl` is set.
    pub lifecycle_notification_url: bool,
    /// The caller; `None` skips the permission rules (a pre-flight check
    /// without a token).
    pub caller: Option<&'a Caller>,
}

impl<'a> Request<'a> {
    /// A basic request: no resource data, no certificate, no lifecycle URL, no caller.
    pub fn new(change_type: &'a str, expiration: OffsetDateTime, now: OffsetDateTime) -> Self {
        Self {
            change_type,
            expiration,
            now,
            include_resource_data: false,
            encryption_certificate: false,
            encryption_certificate_id: false,
            lifecycle_notification_url: false,
            caller: None,
        }
    }

    /// Sets `includeResourceData` and whether the certificate and its id are given.
    pub fn resource_data(mut self, include: bool, certificate: bool, certificate_id: bool) -> Self {
        self.include_resource_data = include;
        self.encryption_certificate = certificate;
        self.encryption_certificate_id = certificate_id;
        self
    }

    /// Sets whether a `lifecycleNotificationUrl` is given.
    pub fn lifecycle_url(mut self, given: bool) -> Self {
        self.lifecycle_notification_url = given;
        self
    }

    /// Sets the caller whose permissions are checked.
    pub fn caller(mut self, caller: &'a Caller) -> Self {
        self.caller = Some(caller);
        self
    }
}

/// A request that passed every rule, with the values Graph would store.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Accepted {
    /// The row that applies (for the caller's permission type).
    pub entry: &'static Entry,
    /// The change types, parsed.
    pub change_types: Vec<ChangeType>,
    /// The expiration after raising it to the 45-minute floor.
    pub expiration: OffsetDateTime,
    /// The payment model in `resource`; `None` is evaluation mode or not metered.
    pub payment_model: Option<PaymentModel>,
}

/// A rule a subscription request breaks. `Display` says what Graph says
/// where its wording is known, otherwise the rule and the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// `resource` is not a path (empty, malformed).
    MalformedResource(PathError),
    /// No row of the catalog matches `resource`.
    UnsupportedResource {
        /// The resource as given.
        resource: String,
    },
    /// `changeType` names something other than `created`, `updated`, `deleted`.
    InvalidChangeType {
        /// The offending value.
        value: String,
    },
    /// The kind does not take this change type.
    ChangeTypeNotSupported {
        /// The kind.
        kind: ResourceKind,
        /// The change type asked for.
        change_type: ChangeType,
        /// What the kind takes.
        allowed: &'static [ChangeType],
    },
    /// The resource does not support the caller's permission type.
    PermissionTypeNotSupported {
        /// The kind.
        kind: ResourceKind,
        /// The caller's permission type.
        permission_type: PermissionType,
        /// The permission types the resource supports.
        supported: Vec<PermissionType>,
    },
    /// The caller holds none of the permissions the row lists.
    MissingPermission {
        /// The caller's permission type.
        permission_type: PermissionType,
        /// What the row accepts, least privileged first.
        accepted: &'static [Permission],
        /// The caller holds an Outlook `*.Shared` permission, which
        /// subscriptions don't accept.
        shared_permission: bool,
    },
    /// A delegated caller subscribed to another user's Outlook items.
    OtherUsersMailbox {
        /// The kind.
        kind: ResourceKind,
    },
    /// OneDrive for Business and SharePoint take subscriptions on the root only.
    DriveRootOnly,
    /// A driveItem subscription names a file; only folders are accepted.
    NotAFolder {
        /// The item.
        item: String,
    },
    /// The `?model=` of `resource` is not one the path takes.
    PaymentModelNotSupported {
        /// The model as given.
        model: String,
        /// What the path takes.
        supported: PaymentModels,
    },
    /// A PATCH tried to change the payment model.
    PaymentModelImmutable,
    /// `notifyOnUserSpecificProperties` on a path other than `chats/{id}` or `users/{id}/chats`.
    UserSpecificPropertiesNotSupported,
    /// A presence collection without `$filter=id in ('…',…)` of 1 to 650 ids.
    PresenceFilterRequired,
    /// `includeResourceData` without `encryptionCertificate` and `encryptionCertificateId`.
    ResourceDataNeedsCertificate {
        /// The kind.
        kind: ResourceKind,
    },
    /// A presence subscription without `encryptionCertificate` and `encryptionCertificateId`.
    AlwaysEncrypted {
        /// The kind.
        kind: ResourceKind,
    },
    /// `includeResourceData` on a kind that has only basic notifications.
    ResourceDataNotSupported {
        /// The kind.
        kind: ResourceKind,
    },
    /// A rich Outlook subscription without `$select` in `resource`.
    SelectRequired {
        /// The kind.
        kind: ResourceKind,
    },
    /// A query option the subscription does not allow (`$top`, `$skip`,
    /// `$orderby`, `$expand` or `$select` of `Body`/`UniqueBody` on rich
    /// Outlook; `$select` on Teams).
    QueryOptionNotAllowed {
        /// The option.
        option: String,
    },
    /// `expirationDateTime` further ahead than the kind allows.
    ExpirationTooFar {
        /// The maximum, in minutes from now.
        max_minutes: i64,
    },
    /// A Teams subscription over 1 hour without `lifecycleNotificationUrl`.
    LifecycleUrlRequired {
        /// The kind.
        kind: ResourceKind,
    },
    /// The tenant or the user in the path has no Copilot licence.
    CopilotLicenseRequired {
        /// The user in the path, or `None` for the tenant.
        user: Option<String>,
    },
}

impl Violation {
    /// Whether the violation is about permissions or licences (Graph's `403`);
    /// the others are bad requests (`400`).
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            Violation::PermissionTypeNotSupported { .. }
                | Violation::MissingPermission { .. }
                | Violation::OtherUsersMailbox { .. }
                | Violation::CopilotLicenseRequired { .. }
        )
    }
}

fn list<T: fmt::Display>(items: &[T], last: &str) -> String {
    let names: Vec<String> = items.iter().map(ToString::to_string).collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., tail] => format!("{} {last} {tail}", init.join(", ")),
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::MalformedResource(e) => write!(
                f,
                "Invalid resource: {e}. Write a path relative to the Graph root, e.g. me/messages."
            ),
            Violation::UnsupportedResource { resource } => write!(
                f,
                "Resource '{resource}' does not support subscriptions: it matches no supported resource. \
                 Check the path against the list of supported resources (e.g. me/messages, chats/{{id}}/messages)."
            ),
            Violation::InvalidChangeType { value } => write!(
                f,
                "'{value}' is not a change type: changeType is a comma-separated list of created, updated and deleted."
            ),
            Violation::ChangeTypeNotSupported {
                kind,
                change_type,
                allowed,
            } => write!(
                f,
                "changeType '{change_type}' is not supported for {kind} subscriptions: use {}.",
                list(allowed, "or")
            ),
            Violation::PermissionTypeNotSupported {
                kind,
                permission_type,
                supported,
            } => {
                write!(
                    f,
                    "{permission_type} permissions are not supported for this {kind} resource"
                )?;
                if supported.is_empty() {
                    f.write_str(".")
                } else {
                    write!(f, ": use {} permissions.", list(supported, "or"))
                }
            }
            Violation::MissingPermission {
                permission_type,
                accepted,
                shared_permission,
            } => {
                write!(
                    f,
                    "Insufficient privileges: the token's {permission_type} permissions include none of {}. \
                     Grant one of them (least privileged first).",
                    list(accepted, "or")
                )?;
                if *shared_permission {
                    f.write_str(
                        " The Outlook *.Shared permissions don't work for subscriptions: \
                         use the application permission for other users' mailboxes.",
                    )?;
                }
                Ok(())
            }
            Violation::OtherUsersMailbox { kind } => write!(
                f,
                "Delegated permissions reach only the signed-in user's mailbox: subscribe to {kind} \
                 items under me/ (or your own users/{{id}}/), or use application permissions for other mailboxes."
            ),
            Violation::DriveRootOnly => f.write_str(
                "OneDrive for Business and SharePoint take subscriptions on the root folder only: \
                 subscribe to me/drive/root or drives/{id}/root.",
            ),
            Violation::NotAFolder { item } => write!(
                f,
                "'{item}' is a file: driveItem subscriptions take folders only. Subscribe to the folder that holds it."
            ),
            Violation::PaymentModelNotSupported { model, supported } => match supported {
                PaymentModels::NotMetered => write!(
                    f,
                    "Payment model 'model={model}' is not supported: the resource is not a metered API. Remove ?model= from the resource."
                ),
                PaymentModels::AOrB => write!(
                    f,
                    "Payment model 'model={model}' is not supported: use model=A or model=B, or no model for evaluation mode."
                ),
                PaymentModels::BOnly => write!(
                    f,
                    "Payment model 'model={model}' is not supported: this resource supports only model=B (or no model for evaluation mode)."
                ),
            },
            Violation::PaymentModelImmutable => f.write_str(
                "The payment model of an existing subscription can't be changed: create a new subscription with the new model.",
            ),
            Violation::UserSpecificPropertiesNotSupported => f.write_str(
                "notifyOnUserSpecificProperties is supported only on chats/{id} and users/{id}/chats.",
            ),
            Violation::PresenceFilterRequired => write!(
                f,
                "Presence subscriptions on communications/presences need $filter=id in ('{{id}}','{{id}}',…) \
                 naming 1 to {MAX_PRESENCE_IDS} users, or use communications/presences/{{id}} for one user."
            ),
            Violation::ResourceDataNeedsCertificate { kind } => write!(
                f,
                "includeResourceData requires encryptionCertificate and encryptionCertificateId for {kind} \
                 subscriptions: add a base64 DER certificate and an id of your choosing."
            ),
            Violation::AlwaysEncrypted { kind } => write!(
                f,
                "{kind} resource data is always encrypted: every {kind} subscription needs \
                 encryptionCertificate and encryptionCertificateId."
            ),
            Violation::ResourceDataNotSupported { kind } => write!(
                f,
                "{kind} subscriptions support only basic notifications: remove includeResourceData."
            ),
            Violation::SelectRequired { kind } => write!(
                f,
                "{kind} subscriptions with includeResourceData need $select in the resource, \
                 e.g. me/messages?$select=subject,from."
            ),
            Violation::QueryOptionNotAllowed { option } => write!(
                f,
                "The query option '{option}' is not supported for this subscription."
            ),
            Violation::ExpirationTooFar { max_minutes } => write!(
                f,
                "Subscription expiration can only be {max_minutes} minutes in the future."
            ),
            Violation::LifecycleUrlRequired { kind } => write!(
                f,
                "lifecycleNotificationUrl is required for {kind} subscriptions that expire more than 1 hour \
                 from now: add one, or expire within the hour."
            ),
            Violation::CopilotLicenseRequired { user } => {
                let holder = user
                    .as_deref()
                    .map_or_else(|| "the tenant".to_owned(), |u| format!("user '{u}'"));
                write!(
                    f,
                    "aiInteraction subscriptions need a valid Microsoft 365 Copilot licence (service plan \
                     {COPILOT_SERVICE_PLAN}) for {holder}."
                )
            }
        }
    }
}

impl std::error::Error for Violation {}

/// Finds the catalog rows for `resource`.
///
/// Several rows match when one path serves different accounts (a drive's
/// root is in both the personal OneDrive and the OneDrive for Business
/// rows); [`Resolved::entry_for`] picks by permission type.
///
/// # Errors
///
/// [`Violation::MalformedResource`] or [`Violation::UnsupportedResource`].
pub fn resolve(resource: &str) -> Result<Resolved, Violation> {
    let path = ResourcePath::parse(resource).map_err(Violation::MalformedResource)?;
    let mut best = 0;
    let mut matched: Vec<&'static Entry> = Vec::new();
    for entry in entries() {
        let Some(score) = entry.paths.iter().filter_map(|p| path.matches(p)).max() else {
            continue;
        };
        if score > best || matched.is_empty() {
            best = score;
            matched.clear();
        }
        if score == best {
            matched.push(entry);
        }
    }
    if matched.is_empty() {
        return Err(Violation::UnsupportedResource {
            resource: path.as_str().to_owned(),
        });
    }
    Ok(Resolved {
        path,
        entries: matched,
    })
}

/// Parses `changeType`: comma-separated, case-insensitive, at least one.
///
/// # Errors
///
/// [`Violation::InvalidChangeType`] for an empty list or an unknown value.
pub fn parse_change_types(value: &str) -> Result<Vec<ChangeType>, Violation> {
    let mut out: Vec<ChangeType> = Vec::new();
    for part in value.split(',') {
        let parsed = ChangeType::parse(part.trim());
        if matches!(parsed, ChangeType::Unknown(_)) {
            return Err(Violation::InvalidChangeType {
                value: part.trim().to_owned(),
            });
        }
        if !out.contains(&parsed) {
            out.push(parsed);
        }
    }
    Ok(out)
}

/// `changeType` as Graph takes it: the change types comma-separated, each
/// once, in the order given (`created,updated`).
pub fn join_change_types(types: &[ChangeType]) -> String {
    let mut seen: Vec<&ChangeType> = Vec::new();
    for t in types {
        if !seen.contains(&t) {
            seen.push(t);
        }
    }
    seen.iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// A resource path and the catalog rows it matches.
#[derive(Clone, Debug)]
pub struct Resolved {
    path: ResourcePath,
    entries: Vec<&'static Entry>,
}

impl Resolved {
    /// The parsed path.
    pub fn path(&self) -> &ResourcePath {
        &self.path
    }

    /// The kind of resource.
    pub fn kind(&self) -> &ResourceKind {
        &self.entries[0].kind
    }

    /// The rules of the kind.
    pub fn rules(&self) -> KindRules {
        rules(self.kind())
    }

    /// Every matching row (more than one only when accounts differ).
    pub fn entries(&self) -> &[&'static Entry] {
        &self.entries
    }

    /// The row that applies to callers of `permission_type`: the first that
    /// supports it.
    pub fn entry_for(&self, permission_type: PermissionType) -> Option<&'static Entry> {
        self.entries
            .iter()
            .copied()
            .find(|e| !e.permissions(permission_type).is_empty())
    }

    /// The permissions accepted for `permission_type`, least privileged
    /// first; empty when the permission type is not supported.
    pub fn permissions(&self, permission_type: PermissionType) -> &'static [Permission] {
        self.entry_for(permission_type)
            .map_or(&[], |e| e.permissions(permission_type))
    }

    /// The least-privileged permission for `permission_type` that needs no
    /// resource-specific consent (else the first listed).
    pub fn least_privileged(&self, permission_type: PermissionType) -> Option<&'static Permission> {
        let accepted = self.permissions(permission_type);
        accepted
            .iter()
            .find(|p| !p.resource_specific)
            .or_else(|| accepted.first())
    }

    /// The payment model in `?model=`.
    ///
    /// # Errors
    ///
    /// [`Violation::PaymentModelNotSupported`] when the path does not take it.
    pub fn payment_model(&self) -> Result<Option<PaymentModel>, Violation> {
        let Some(model) = self.path.query("model") else {
            return Ok(None);
        };
        let supported = self.entries[0].payment_models;
        let parsed = match model {
            "A" | "a" => Some(PaymentModel::A),
            "B" | "b" => Some(PaymentModel::B),
            _ => None,
        };
        match parsed {
            Some(m) if supported.allows(m) => Ok(Some(m)),
            _ => Err(Violation::PaymentModelNotSupported {
                model: model.to_owned(),
                supported,
            }),
        }
    }

    /// Checks a request against every rule; the violations come in the
    /// order Graph is taken to check them (resource and change type,
    /// permissions, query options, resource data, lifetime).
    ///
    /// # Errors
    ///
    /// Every [`Violation`] found, at least one.
    pub fn check(&self, request: &Request<'_>) -> Result<Accepted, Vec<Violation>> {
        let mut violations = Vec::new();
        let rules = self.rules();
        let kind = self.kind().clone();

        let change_types = match parse_change_types(request.change_type) {
            Ok(types) => {
                for t in &types {
                    if !rules.change_types.contains(t) {
                        violations.push(Violation::ChangeTypeNotSupported {
                            kind: kind.clone(),
                            change_type: t.clone(),
                            allowed: rules.change_types,
                        });
                    }
                }
                types
            }
            Err(v) => {
                violations.push(v);
                Vec::new()
            }
        };

        let entry = match request.caller {
            Some(caller) => match self.check_caller(caller, &rules) {
                Ok(entry) => entry,
                Err(v) => {
                    violations.push(v);
                    self.entries[0]
                }
            },
            None => self.entries[0],
        };

        let payment_model = self.payment_model().unwrap_or_else(|v| {
            violations.push(v);
            None
        });
        violations.extend(self.check_query(entry, &rules, request.include_resource_data));
        violations.extend(check_resource_data(&kind, &rules, request));

        let expiration = match expiration(&rules, request) {
            Ok(expiration) => {
                if rules.teams
                    && expiration > request.now + TEAMS_LIFECYCLE_THRESHOLD
                    && !request.lifecycle_notification_url
                {
                    violations.push(Violation::LifecycleUrlRequired { kind });
                }
                expiration
            }
            Err(v) => {
                violations.push(v);
                request.expiration
            }
        };

        if violations.is_empty() {
            Ok(Accepted {
                entry,
                change_types,
                expiration,
                payment_model,
            })
        } else {
            Err(violations)
        }
    }

    /// Permission type, permissions, and the Outlook mailbox and OneDrive
    /// root rules, which depend on who asks.
    fn check_caller(
        &self,
        caller: &Caller,
        rules: &KindRules,
    ) -> Result<&'static Entry, Violation> {
        let kind = self.kind().clone();
        let Some(entry) = self.entry_for(caller.permission_type) else {
            if kind == ResourceKind::DriveItem && self.entries.iter().all(|e| e.folders_below_root)
            {
                return Err(Violation::DriveRootOnly);
            }
            let supported = PermissionType::ALL
                .into_iter()
                .filter(|t| self.entry_for(*t).is_some())
                .collect();
            return Err(Violation::PermissionTypeNotSupported {
                kind,
                permission_type: caller.permission_type,
                supported,
            });
        };
        let accepted = entry.permissions(caller.permission_type);
        if !accepted.iter().any(|p| caller.holds(p)) {
            let shared_permission = rules.outlook
                && caller
                    .permissions
                    .iter()
                    .any(|p| p.to_ascii_lowercase().contains(".shared"));
            return Err(Violation::MissingPermission {
                permission_type: caller.permission_type,
                accepted,
                shared_permission,
            });
        }
        if rules.outlook
            && caller.permission_type != PermissionType::Application
            && self.path.user().is_some_and(|user| !caller.is_user(user))
        {
            return Err(Violation::OtherUsersMailbox { kind });
        }
        Ok(entry)
    }

    fn check_query(
        &self,
        entry: &Entry,
        rules: &KindRules,
        include_resource_data: bool,
    ) -> Vec<Violation> {
        let mut violations = Vec::new();
        if let Some(value) = self.path.query("notifyOnUserSpecificProperties")
            && !entry.user_specific_properties
            && !value.eq_ignore_ascii_case("false")
        {
            violations.push(Violation::UserSpecificPropertiesNotSupported);
        }
        if entry.filter_required && !presence_filter_ok(self.path.query("$filter")) {
            violations.push(Violation::PresenceFilterRequired);
        }
        if rules.teams && self.path.query("$select").is_some() {
            violations.push(Violation::QueryOptionNotAllowed {
                option: "$select".to_owned(),
            });
        }
        if rules.outlook && include_resource_data {
            match self.path.query("$select") {
                None => violations.push(Violation::SelectRequired {
                    kind: self.kind().clone(),
                }),
                Some(select) => {
                    for field in select.split(',').map(str::trim) {
                        if field.eq_ignore_ascii_case("body")
                            || field.eq_ignore_ascii_case("uniqueBody")
                        {
                            violations.push(Violation::QueryOptionNotAllowed {
                                option: format!("$select={field}"),
                            });
                        }
                    }
                }
            }
            for (name, _) in self.path.query_options() {
                if ["$top", "$skip", "$orderby", "$expand"]
                    .iter()
                    .any(|o| o.eq_ignore_ascii_case(name))
                {
                    violations.push(Violation::QueryOptionNotAllowed {
                        option: name.clone(),
                    });
                }
            }
        }
        violations
    }
}

fn check_resource_data(
    kind: &ResourceKind,
    rules: &KindRules,
    request: &Request<'_>,
) -> Option<Violation> {
    let certificate = request.encryption_certificate && request.encryption_certificate_id;
    match rules.resource_data {
        ResourceDataRule::NotSupported if request.include_resource_data => {
            Some(Violation::ResourceDataNotSupported { kind: kind.clone() })
        }
        ResourceDataRule::AlwaysEncrypted if !certificate => {
            Some(Violation::AlwaysEncrypted { kind: kind.clone() })
        }
        ResourceDataRule::Optional if request.include_resource_data && !certificate => {
            Some(Violation::ResourceDataNeedsCertificate { kind: kind.clone() })
        }
        _ => None,
    }
}

/// The expiration Graph stores: raised to now + 45 minutes when closer,
/// refused when over the kind's maximum.
fn expiration(rules: &KindRules, request: &Request<'_>) -> Result<OffsetDateTime, Violation> {
    let max = rules.max_lifetime(request.include_resource_data);
    if request.expiration > request.now + max {
        return Err(Violation::ExpirationTooFar {
            max_minutes: max.whole_minutes(),
        });
    }
    Ok(request.expiration.max(request.now + MIN_LIFETIME))
}

/// `id in ('a','b',…)` with 1 to 650 quoted ids.
fn presence_filter_ok(filter: Option<&str>) -> bool {
    let Some(filter) = filter else {
        return false;
    };
    let rest = filter.trim();
    let Some(rest) = rest
        .strip_prefix("id")
        .map(str::trim_start)
        .and_then(|r| r.strip_prefix("in"))
        .map(str::trim_start)
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.trim_end().strip_suffix(')'))
    else {
        return false;
    };
    let ids: Vec<&str> = rest.split(',').map(str::trim).collect();
    (1..=MAX_PRESENCE_IDS).contains(&ids.len())
        && ids.iter().all(|id| {
            id.len() > 2
                && ((id.starts_with('\'') && id.ends_with('\''))
                    || (id.starts_with('"') && id.ends_with('"')))
        })
}

#[cfg(test)]
mod tests;

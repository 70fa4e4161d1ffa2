//! The rules a request can break, each worded as Graph words it.

use std::fmt;

use super::{
    COPILOT_SERVICE_PLAN, MAX_PRESENCE_IDS, PathError, PaymentModels, Permission, PermissionType,
};
use crate::notification::{ChangeType, ResourceKind};

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

pub(super) fn list<T: fmt::Display>(items: &[T], last: &str) -> String {
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

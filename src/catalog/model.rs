//! The catalog's rows: a resource path's kind, permissions per
//! permission type, payment models.

use std::fmt;

use super::{KindRules, ResourceDataRule, rules};
use crate::notification::ResourceKind;

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
    /// The kind has rich notifications but this path is missing from
    /// Microsoft's list of them (Microsoft Learn, "Set up Microsoft Graph
    /// change notifications with resource data", supported resources,
    /// <https://learn.microsoft.com/graph/change-notifications-with-resource-data>):
    /// `includeResourceData` is refused here.
    pub basic_only: bool,
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

    /// The rules of the row: its kind's, with resource data refused where
    /// the row is [`basic_only`](Self::basic_only).
    pub fn rules(&self) -> KindRules {
        let mut rules = rules(&self.kind);
        if self.basic_only && rules.resource_data == ResourceDataRule::Optional {
            rules.resource_data = ResourceDataRule::NotSupported;
        }
        rules
    }
}

/// Every row of the catalog, in the reference's order.
pub fn entries() -> &'static [Entry] {
    super::entries::ENTRIES
}

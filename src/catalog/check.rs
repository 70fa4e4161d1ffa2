//! A subscription request checked against the catalog, as Graph checks it.

use time::OffsetDateTime;

use super::{
    Entry, KindRules, MAX_PRESENCE_IDS, MIN_LIFETIME, PaymentModel, Permission, PermissionType,
    ResourceDataRule, ResourcePath, TEAMS_LIFECYCLE_THRESHOLD, Violation, entries,
};
use crate::notification::{ChangeType, ResourceKind};

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

    /// The rules of the row (its kind's, and whether the path has rich
    /// notifications).
    pub fn rules(&self) -> KindRules {
        self.entries[0].rules()
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

pub(super) fn check_resource_data(
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
pub(super) fn expiration(
    rules: &KindRules,
    request: &Request<'_>,
) -> Result<OffsetDateTime, Violation> {
    let max = rules.max_lifetime(request.include_resource_data);
    if request.expiration > request.now + max {
        return Err(Violation::ExpirationTooFar {
            max_minutes: max.whole_minutes(),
        });
    }
    Ok(request.expiration.max(request.now + MIN_LIFETIME))
}

/// `id in ('a','b',…)` with 1 to 650 quoted ids.
pub(super) fn presence_filter_ok(filter: Option<&str>) -> bool {
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

//! The catalog's subscription quotas ([`catalog::quotas`]), enforced when a
//! subscription is created: over one, Graph answers `403 Forbidden` with a
//! message that names the limit (Microsoft Learn, "Set up notifications for
//! changes in resource data", <https://learn.microsoft.com/graph/change-notifications-overview>).
//! The message's wording is the emulator's: Graph's for quotas is not
//! documented; its envelope is the `ExtensionError` form Graph uses for
//! refusals of the subscription extension.

use time::OffsetDateTime;

use super::store::Subscription;
use crate::catalog::{self, Quota, QuotaScope};
use crate::notification::ResourceKind;

/// Whether a kind counts in the organization's quota Teams kinds share.
fn teams(kind: &ResourceKind) -> bool {
    matches!(
        kind,
        ResourceKind::ChatMessage
            | ResourceKind::Channel
            | ResourceKind::Chat
            | ResourceKind::Team
            | ResourceKind::ConversationMember
    )
}

/// What `subscription` counts as within `scope`; `None` where the scope does
/// not apply to it (a per-user quota of a subscription that names no user).
fn scope_key(subscription: &Subscription, scope: QuotaScope) -> Option<String> {
    let user = || {
        subscription
            .me()
            .or_else(|| subscription.path.user())
            .map(str::to_lowercase)
    };
    Some(match scope {
        QuotaScope::App => subscription.application_id.clone(),
        QuotaScope::Tenant | QuotaScope::Organization => subscription.tenant_id.clone(),
        QuotaScope::AppAndTenant => {
            format!("{}|{}", subscription.application_id, subscription.tenant_id)
        }
        QuotaScope::Mailbox => format!("{}|{}", subscription.tenant_id, user()?),
        // All the chats a user is part of (`users/{id}/chats/getAllMessages`).
        QuotaScope::User => {
            let path = subscription.path.canonical(subscription.me());
            if !path.to_ascii_lowercase().ends_with("/chats/getallmessages") {
                return None;
            }
            format!("{}|{}", subscription.tenant_id, user()?)
        }
        // The quota of one chat, channel or team: not of the organization-wide
        // `getAll…` subscriptions.
        QuotaScope::AppAndTarget => {
            let target = subscription.path.canonical(subscription.me());
            if target.to_ascii_lowercase().contains("getall") {
                return None;
            }
            format!(
                "{}|{}|{target}",
                subscription.application_id, subscription.tenant_id
            )
        }
    })
}

/// Whether `other` counts against `quota` of `candidate`'s kind.
fn counts(candidate: &Subscription, quota: &Quota, other: &Subscription) -> bool {
    if quota.shared_by_teams {
        return teams(other.kind());
    }
    std::ptr::eq(
        catalog::quotas(candidate.kind()),
        catalog::quotas(other.kind()),
    )
}

/// The first quota `candidate` would exceed among the live `existing`, with
/// `limits` overriding the catalog's numbers per scope; the refusal's
/// message, or `None`.
pub(crate) fn exceeded(
    existing: &[Subscription],
    candidate: &Subscription,
    limits: &[(QuotaScope, u32)],
    now: OffsetDateTime,
) -> Option<String> {
    for quota in catalog::quotas(candidate.kind()) {
        let Some(key) = scope_key(candidate, quota.scope) else {
            continue;
        };
        let limit = limits
            .iter()
            .find(|(scope, _)| *scope == quota.scope)
            .map_or(quota.limit, |(_, limit)| *limit);
        let used = existing
            .iter()
            .filter(|s| s.expiration > now && counts(candidate, quota, s))
            .filter(|s| scope_key(s, quota.scope).as_deref() == Some(key.as_str()))
            .count();
        if used >= limit as usize {
            let quota = Quota { limit, ..*quota };
            return Some(format!(
                "Operation: Create; Exception: [Status Code: Forbidden; Reason: The subscription \
                 quota for {} resources is reached: at most {quota} active subscriptions.]",
                candidate.kind().as_str()
            ));
        }
    }
    None
}

/// How full each quota in use is, among the live `subscriptions` at `now`:
/// one row per quota and scope that holds at least one subscription.
pub(crate) fn usage(
    subscriptions: &[Subscription],
    limits: &[(QuotaScope, u32)],
    now: OffsetDateTime,
) -> Vec<serde_json::Value> {
    let live: Vec<&Subscription> = subscriptions
        .iter()
        .filter(|s| s.expiration > now)
        .collect();
    let mut rows: Vec<(String, String, usize, u32)> = Vec::new();
    for subscription in &live {
        for quota in catalog::quotas(subscription.kind()) {
            let Some(key) = scope_key(subscription, quota.scope) else {
                continue;
            };
            let limit = limits
                .iter()
                .find(|(scope, _)| *scope == quota.scope)
                .map_or(quota.limit, |(_, limit)| *limit);
            let name = Quota { limit, ..*quota }.to_string();
            if rows.iter().any(|(n, k, _, _)| *n == name && *k == key) {
                continue;
            }
            let used = live
                .iter()
                .filter(|s| counts(subscription, quota, s))
                .filter(|s| scope_key(s, quota.scope).as_deref() == Some(key.as_str()))
                .count();
            rows.push((name, key, used, limit));
        }
    }
    rows.into_iter()
        .map(|(quota, scope, used, limit)| {
            serde_json::json!({"quota": quota, "scope": scope, "used": used, "limit": limit})
        })
        .collect()
}

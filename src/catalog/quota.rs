//! How many subscriptions Graph allows, per kind and scope; over a quota
//! `POST /subscriptions` answers `403 Forbidden` with a message that names
//! the limit.
//!
//! From Microsoft Learn, "Set up notifications for changes in resource
//! data" (<https://learn.microsoft.com/graph/change-notifications-overview>),
//! its sections on the limits of directory, Outlook and Teams resources:
//! users and groups 50 000 subscriptions per app, 1 000 per tenant across
//! apps and 100 per app and tenant; 1 000 active subscriptions per mailbox
//! across apps; Teams resources 1 per app and chat, channel or team and
//! 10 000 per organization, chat messages of all the chats a user is part
//! of 10 per user, call records 100 per organization.

use std::fmt;

use crate::notification::ResourceKind;

/// What a quota counts subscriptions within.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuotaScope {
    /// One app, across all tenants.
    App,
    /// One tenant, all apps together.
    Tenant,
    /// One app in one tenant.
    AppAndTenant,
    /// One mailbox, all apps together.
    Mailbox,
    /// One app and one chat, channel or team (the resource itself): a
    /// second subscription to the same one is over the quota.
    AppAndTarget,
    /// One user (subscriptions to all the chats a user is part of).
    User,
    /// One organization (tenant), all apps and all Teams resources of the
    /// kinds that share it.
    Organization,
}

impl fmt::Display for QuotaScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuotaScope::App => "per app",
            QuotaScope::Tenant => "per tenant (all apps)",
            QuotaScope::AppAndTenant => "per app and tenant",
            QuotaScope::Mailbox => "per mailbox (all apps)",
            QuotaScope::AppAndTarget => "per app and chat, channel or team",
            QuotaScope::User => "per user",
            QuotaScope::Organization => "per organization (all apps)",
        })
    }
}

/// One quota: at most `limit` active subscriptions within `scope`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Quota {
    /// Active subscriptions allowed.
    pub limit: u32,
    /// What they are counted within.
    pub scope: QuotaScope,
    /// Teams kinds share the organization's 10 000: the quota counts all
    /// of them together.
    pub shared_by_teams: bool,
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.limit, self.scope)?;
        if self.shared_by_teams {
            f.write_str(", shared by all Teams resources")?;
        }
        Ok(())
    }
}

const fn quota(limit: u32, scope: QuotaScope) -> Quota {
    Quota {
        limit,
        scope,
        shared_by_teams: false,
    }
}

const TEAMS_ORGANIZATION: Quota = Quota {
    limit: 10_000,
    scope: QuotaScope::Organization,
    shared_by_teams: true,
};

const DIRECTORY: &[Quota] = &[
    quota(50_000, QuotaScope::App),
    quota(1_000, QuotaScope::Tenant),
    quota(100, QuotaScope::AppAndTenant),
];
const OUTLOOK: &[Quota] = &[quota(1_000, QuotaScope::Mailbox)];
const TEAMS_TARGET: &[Quota] = &[quota(1, QuotaScope::AppAndTarget), TEAMS_ORGANIZATION];
const CHAT_MESSAGES: &[Quota] = &[
    quota(1, QuotaScope::AppAndTarget),
    quota(10, QuotaScope::User),
    TEAMS_ORGANIZATION,
];
const CALL_RECORDS: &[Quota] = &[quota(100, QuotaScope::Organization)];

/// The quotas of a kind (none documented: empty).
pub fn quotas(kind: &ResourceKind) -> &'static [Quota] {
    use ResourceKind as K;
    match kind {
        K::User | K::Group => DIRECTORY,
        K::Message | K::Event | K::Contact => OUTLOOK,
        K::ChatMessage => CHAT_MESSAGES,
        K::Channel | K::Chat | K::Team | K::ConversationMember => TEAMS_TARGET,
        K::CallRecord => CALL_RECORDS,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_the_documented_quotas() {
        let limits = |kind: ResourceKind| -> Vec<(u32, QuotaScope)> {
            quotas(&kind).iter().map(|q| (q.limit, q.scope)).collect()
        };
        assert_eq!(
            limits(ResourceKind::Message),
            [(1_000, QuotaScope::Mailbox)]
        );
        assert_eq!(
            limits(ResourceKind::User),
            [
                (50_000, QuotaScope::App),
                (1_000, QuotaScope::Tenant),
                (100, QuotaScope::AppAndTenant)
            ]
        );
        assert_eq!(
            limits(ResourceKind::ChatMessage),
            [
                (1, QuotaScope::AppAndTarget),
                (10, QuotaScope::User),
                (10_000, QuotaScope::Organization)
            ]
        );
        assert_eq!(
            limits(ResourceKind::CallRecord),
            [(100, QuotaScope::Organization)]
        );
        assert!(quotas(&ResourceKind::DriveItem).is_empty());
        assert!(quotas(&ResourceKind::Team)[1].shared_by_teams);
        assert_eq!(
            quotas(&ResourceKind::Chat)[1].to_string(),
            "10000 per organization (all apps), shared by all Teams resources"
        );
    }
}

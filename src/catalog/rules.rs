//! What each kind of resource allows: change types, lifetimes, resource
//! data, lifecycle events.

use time::Duration;

use crate::notification::{ChangeType, LifecycleEventType, ResourceKind};

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
    /// Only basic notifications (users, groups, drive items, To Do tasks,
    /// …: every kind or path missing from Microsoft's list of rich
    /// notifications): `includeResourceData` is an error.
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

pub(super) const ALL_CHANGES: &[ChangeType] = &[
    ChangeType::Created,
    ChangeType::Updated,
    ChangeType::Deleted,
];
pub(super) const UPDATED_ONLY: &[ChangeType] = &[ChangeType::Updated];
pub(super) const UPDATED_DELETED: &[ChangeType] = &[ChangeType::Updated, ChangeType::Deleted];
pub(super) const REAUTH_ONLY: &[LifecycleEventType] =
    &[LifecycleEventType::ReauthorizationRequired];
pub(super) const REAUTH_REMOVED: &[LifecycleEventType] = &[
    LifecycleEventType::ReauthorizationRequired,
    LifecycleEventType::SubscriptionRemoved,
];
pub(super) const OUTLOOK_EVENTS: &[LifecycleEventType] = &[
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
    // Kinds absent from the list of rich notifications (Microsoft Learn,
    // "Set up Microsoft Graph change notifications with resource data",
    // supported resources,
    // <https://learn.microsoft.com/graph/change-notifications-with-resource-data>).
    let basic = KindRules {
        resource_data: ResourceDataRule::NotSupported,
        ..base
    };
    match kind {
        K::SecurityAlert => KindRules {
            max_lifetime_minutes: 43_200,
            ..basic
        },
        K::DriveItem | K::List => KindRules {
            change_types: UPDATED_ONLY,
            max_lifetime_minutes: 42_300,
            ..basic
        },
        K::User | K::Group => KindRules {
            change_types: UPDATED_DELETED,
            max_lifetime_minutes: 41_760,
            ..basic
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
            ..basic
        },
        K::GroupConversation | K::Printer | K::PrintTaskDefinition | K::TodoTask => KindRules {
            max_lifetime_minutes: 4_230,
            ..basic
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
            ..basic
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
        K::VirtualEventWebinar | K::VirtualEventTownhall => basic,
    }
}

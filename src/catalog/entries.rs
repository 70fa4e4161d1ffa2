//! The rows of the rules of Microsoft Learn, "Create subscription", <https://learn.microsoft.com/graph/api/subscription-post-subscriptions> and the pages it links, "Resources, paths and
//! least-privileged permissions", one [`Entry`] each, in the reference's order.
//!
//! `basic_only` marks the rows of kinds with rich notifications whose path
//! is missing from Microsoft's list of them (Microsoft Learn, "Set up
//! Microsoft Graph change notifications with resource data", supported
//! resources, <https://learn.microsoft.com/graph/change-notifications-with-resource-data>).
//!
//! Paths are written with `users/{id}/…` where the reference says `me/…`:
//! [`ResourcePath`](super::ResourcePath) reads `me/…` as `users/me/…`, so
//! both spellings match (the catalog's "any path that starts with `me/` may
//! also be written `users/{id}/`").

use super::{Entry, PaymentModels, Permission};
use crate::notification::ResourceKind;

const fn p(name: &'static str) -> Permission {
    Permission {
        name,
        resource_specific: false,
    }
}

/// A resource-specific-consent permission (`*` in the reference).
const fn rsc(name: &'static str) -> Permission {
    Permission {
        name,
        resource_specific: true,
    }
}

const NONE: &[Permission] = &[];

const ROW: Entry = Entry {
    kind: ResourceKind::User,
    variant: None,
    paths: &[],
    about: "",
    delegated_work: NONE,
    delegated_personal: NONE,
    application: NONE,
    payment_models: PaymentModels::NotMetered,
    single_resource: false,
    user_specific_properties: false,
    unknown_enum_members: false,
    security_webhooks: false,
    folders_below_root: false,
    filter_required: false,
    basic_only: false,
};

const SCHEDULE: &[Permission] = &[p("Schedule.Read.All"), p("Schedule.ReadWrite.All")];
const CHAT_BASIC_USER: &[Permission] = &[p("Chat.ReadBasic"), p("Chat.Read"), p("Chat.ReadWrite")];
const CHAT_BASIC_ALL: &[Permission] = &[
    p("Chat.ReadBasic.All"),
    p("Chat.Read.All"),
    p("Chat.ReadWrite.All"),
];

pub(super) static ENTRIES: &[Entry] = &[
    Entry {
        kind: ResourceKind::AiInteraction,
        paths: &["copilot/users/{userId}/interactionHistory/getAllEnterpriseInteractions"],
        about: "Copilot AI interactions that a particular user is part of",
        delegated_work: &[p("AiEnterpriseInteraction.Read")],
        application: &[
            p("AiEnterpriseInteraction.Read.All"),
            p("AiEnterpriseInteraction.Read.User"),
        ],
        ..ROW
    },
    Entry {
        kind: ResourceKind::AiInteraction,
        paths: &["copilot/interactionHistory/getAllEnterpriseInteractions"],
        about: "Copilot AI interactions in an organization",
        application: &[p("AiEnterpriseInteraction.Read.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::CallRecord,
        paths: &["communications/callRecords"],
        about: "call records of an organization",
        application: &[p("CallRecords.Read.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::CallRecording,
        paths: &["communications/onlineMeetings/getAllRecordings"],
        about: "all recordings in an organization",
        application: &[p("OnlineMeetingRecording.Read.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::CallRecording,
        paths: &["communications/onlineMeetings/{onlineMeetingId}/recordings"],
        about: "all recordings of a specific meeting",
        delegated_work: &[p("OnlineMeetingRecording.Read.All")],
        application: &[p("OnlineMeetingRecording.Read.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::CallRecording,
        paths: &["users/{userId}/onlineMeetings/getAllRecordings"],
        about: "recordings of meetings a specific user organizes",
        delegated_work: &[p("OnlineMeetingRecording.Read.All")],
        application: &[p("OnlineMeetingRecording.Read.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::CallTranscript,
        paths: &["communications/onlineMeetings/getAllTranscripts"],
        about: "all transcripts in an organization",
        application: &[p("OnlineMeetingTranscript.Read.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::CallTranscript,
        paths: &["communications/onlineMeetings/{onlineMeetingId}/transcripts"],
        about: "all transcripts of a specific meeting",
        delegated_work: &[p("OnlineMeetingTranscript.Read.All")],
        application: &[p("OnlineMeetingTranscript.Read.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::CallTranscript,
        paths: &["users/{userId}/onlineMeetings/getAllTranscripts"],
        about: "transcripts of meetings a specific user organizes",
        delegated_work: &[p("OnlineMeetingTranscript.Read.All")],
        application: &[p("OnlineMeetingTranscript.Read.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::Channel,
        paths: &["teams/getAllChannels"],
        about: "all channels in an organization",
        application: &[p("Channel.ReadBasic.All"), p("ChannelSettings.Read.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::Channel,
        paths: &["teams/{id}/channels"],
        about: "the channels of a team",
        delegated_work: &[p("Channel.ReadBasic.All"), p("ChannelSettings.Read.All")],
        application: &[p("Channel.ReadBasic.All"), p("ChannelSettings.Read.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::Chat,
        paths: &["chats"],
        about: "all chats in an organization",
        application: CHAT_BASIC_ALL,
        ..ROW
    },
    Entry {
        kind: ResourceKind::Chat,
        paths: &["chats/{id}"],
        about: "one chat",
        delegated_work: CHAT_BASIC_USER,
        application: &[
            rsc("ChatSettings.Read.Chat"),
            rsc("ChatSettings.ReadWrite.Chat"),
            rsc("Chat.Manage.Chat"),
            p("Chat.ReadBasic.All"),
            p("Chat.Read.All"),
            p("Chat.ReadWrite.All"),
        ],
        single_resource: true,
        user_specific_properties: true,
        ..ROW
    },
    Entry {
        kind: ResourceKind::Chat,
        paths: &["appCatalogs/teamsApps/{id}/installedToChats"],
        about: "all chats in an organization where a particular Teams app is installed",
        application: &[
            p("Chat.ReadBasic.WhereInstalled"),
            p("Chat.Read.WhereInstalled"),
            p("Chat.ReadWrite.WhereInstalled"),
        ],
        payment_models: PaymentModels::BOnly,
        basic_only: true,
        ..ROW
    },
    Entry {
        kind: ResourceKind::Chat,
        paths: &["users/{id}/chats"],
        about: "all chats that a particular user is part of",
        delegated_work: CHAT_BASIC_USER,
        application: CHAT_BASIC_ALL,
        user_specific_properties: true,
        basic_only: true,
        ..ROW
    },
    Entry {
        kind: ResourceKind::ChatMessage,
        paths: &["teams/{id}/channels/{id}/messages"],
        about: "messages of a channel",
        delegated_work: &[p("ChannelMessage.Read.All")],
        application: &[
            rsc("ChannelMessage.Read.Group"),
            p("ChannelMessage.Read.All"),
        ],
        unknown_enum_members: true,
        ..ROW
    },
    Entry {
        kind: ResourceKind::ChatMessage,
        paths: &["teams/getAllMessages"],
        about: "all channel messages in an organization",
        application: &[p("ChannelMessage.Read.All")],
        payment_models: PaymentModels::AOrB,
        ..ROW
    },
    Entry {
        kind: ResourceKind::ChatMessage,
        paths: &["chats/{id}/messages"],
        about: "messages of a chat",
        delegated_work: &[p("Chat.Read"), p("Chat.ReadWrite")],
        application: &[p("Chat.Read.All")],
        unknown_enum_members: true,
        ..ROW
    },
    Entry {
        kind: ResourceKind::ChatMessage,
        paths: &["chats/getAllMessages"],
        about: "all chat messages in an organization",
        application: &[p("Chat.Read.All")],
        payment_models: PaymentModels::AOrB,
        ..ROW
    },
    Entry {
        kind: ResourceKind::ChatMessage,
        paths: &["users/{id}/chats/getAllMessages"],
        about: "messages of all chats a particular user is part of",
        delegated_work: &[p("Chat.Read"), p("Chat.ReadWrite")],
        application: &[p("Chat.Read.All"), p("Chat.ReadWrite.All")],
        payment_models: PaymentModels::BOnly,
        ..ROW
    },
    Entry {
        kind: ResourceKind::ChatMessage,
        paths: &["appCatalogs/teamsApps/{id}/installedToChats/getAllMessages"],
        about: "messages of all chats in an organization where a particular Teams app is installed",
        application: &[
            p("Chat.Read.WhereInstalled"),
            p("Chat.ReadWrite.WhereInstalled"),
        ],
        payment_models: PaymentModels::BOnly,
        basic_only: true,
        ..ROW
    },
    Entry {
        kind: ResourceKind::Contact,
        paths: &["users/{id}/contacts"],
        about: "a user's contacts",
        delegated_work: &[p("Contacts.Read")],
        delegated_personal: &[p("Contacts.Read")],
        application: &[p("Contacts.Read")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::ConversationMember,
        paths: &["chats/getAllMembers"],
        about: "members of all chats in an organization",
        application: &[
            p("ChatMember.Read.All"),
            p("ChatMember.ReadWrite.All"),
            p("Chat.ReadBasic.All"),
            p("Chat.Read.All"),
            p("Chat.ReadWrite.All"),
        ],
        payment_models: PaymentModels::AOrB,
        ..ROW
    },
    Entry {
        kind: ResourceKind::ConversationMember,
        paths: &["chats/{id}/members"],
        about: "members of a chat",
        delegated_work: &[
            p("ChatMember.Read"),
            p("ChatMember.ReadWrite"),
            p("Chat.ReadBasic"),
            p("Chat.Read"),
            p("Chat.ReadWrite"),
        ],
        application: &[
            rsc("ChatMember.Read.Chat"),
            rsc("Chat.Manage.Chat"),
            p("ChatMember.Read.All"),
            p("ChatMember.ReadWrite.All"),
            p("Chat.ReadBasic.All"),
            p("Chat.Read.All"),
            p("Chat.ReadWrite.All"),
        ],
        ..ROW
    },
    Entry {
        kind: ResourceKind::ConversationMember,
        paths: &["appCatalogs/teamsApps/{id}/installedToChats/getAllMembers"],
        about: "members of all chats in an organization where a particular Teams app is installed",
        application: &[
            p("ChatMember.Read.WhereInstalled"),
            p("ChatMember.ReadWrite.WhereInstalled"),
            p("Chat.ReadBasic.WhereInstalled"),
            p("Chat.Read.WhereInstalled"),
            p("Chat.ReadWrite.WhereInstalled"),
        ],
        payment_models: PaymentModels::BOnly,
        basic_only: true,
        ..ROW
    },
    // Microsoft Learn, "Get change notifications for membership changes in
    // teams and channels", <https://learn.microsoft.com/graph/teams-changenotifications-teammembership>;
    // the payment models of teams/getAllMembers are on "Create subscription".
    Entry {
        kind: ResourceKind::ConversationMember,
        paths: &["teams/getAllMembers"],
        about: "members of all teams in an organization",
        application: &[p("TeamMember.Read.All"), p("TeamMember.ReadWrite.All")],
        payment_models: PaymentModels::AOrB,
        ..ROW
    },
    Entry {
        kind: ResourceKind::ConversationMember,
        paths: &["teams/{id}/members"],
        about: "members of a team",
        delegated_work: &[p("TeamMember.Read.All"), p("TeamMember.ReadWrite.All")],
        application: &[
            rsc("TeamMember.Read.Group"),
            p("TeamMember.Read.All"),
            p("TeamMember.ReadWrite.All"),
        ],
        ..ROW
    },
    Entry {
        kind: ResourceKind::ConversationMember,
        paths: &["teams/{id}/channels/getAllMembers"],
        about: "members of all channels of a team",
        application: &[p("ChannelMember.Read.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::DriveItem,
        variant: Some("personal OneDrive"),
        paths: &["users/{id}/drive/root", "users/{id}/drive/items/{id}"],
        about: "a folder of a user's personal OneDrive and everything below it",
        delegated_personal: &[p("Files.Read")],
        single_resource: true,
        folders_below_root: true,
        ..ROW
    },
    Entry {
        kind: ResourceKind::DriveItem,
        variant: Some("OneDrive for Business"),
        paths: &["users/{id}/drive/root", "drives/{id}/root"],
        about: "the root folder of a OneDrive for Business or SharePoint drive",
        delegated_work: &[p("Files.Read.All")],
        application: &[p("Files.Read.All")],
        single_resource: true,
        security_webhooks: true,
        ..ROW
    },
    Entry {
        kind: ResourceKind::Event,
        paths: &["users/{id}/events"],
        about: "a user's calendar events",
        delegated_work: &[p("Calendars.Read")],
        delegated_personal: &[p("Calendars.Read")],
        application: &[p("Calendars.Read")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::Group,
        paths: &["groups"],
        about: "all groups",
        delegated_work: &[p("Group.Read.All")],
        application: &[p("Group.Read.All")],
        ..ROW
    },
    // Microsoft Learn, "Set up notifications for changes in resource data",
    // <https://learn.microsoft.com/graph/change-notifications-overview>,
    // supported resources: "Changes to a specific group: /groups/{id}"; the
    // permissions are the group row of "Create subscription".
    Entry {
        kind: ResourceKind::Group,
        paths: &["groups/{id}"],
        about: "one group",
        delegated_work: &[p("Group.Read.All")],
        application: &[p("Group.Read.All")],
        single_resource: true,
        ..ROW
    },
    Entry {
        kind: ResourceKind::GroupConversation,
        paths: &["groups/{id}/conversations"],
        about: "the conversations of a group",
        delegated_work: &[p("Group.Read.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::List,
        paths: &["sites/{site-id}/lists/{list-id}"],
        about: "a SharePoint list",
        delegated_work: &[p("Sites.Read.All")],
        application: &[p("Sites.Read.All")],
        single_resource: true,
        ..ROW
    },
    Entry {
        kind: ResourceKind::Message,
        paths: &[
            "users/{id}/mailFolders/{id}/messages",
            "users/{id}/messages",
        ],
        about: "a user's mail, or one mail folder's",
        delegated_work: &[p("Mail.ReadBasic"), p("Mail.Read")],
        delegated_personal: &[p("Mail.ReadBasic"), p("Mail.Read")],
        application: &[p("Mail.Read")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::OfferShiftRequest,
        paths: &["teams/{id}/schedule/offerShiftRequests"],
        about: "offer shift requests of a team",
        delegated_work: SCHEDULE,
        application: SCHEDULE,
        ..ROW
    },
    Entry {
        kind: ResourceKind::OpenShiftChangeRequest,
        paths: &["teams/{id}/schedule/openShiftChangeRequests"],
        about: "open shift requests of a team",
        delegated_work: SCHEDULE,
        application: SCHEDULE,
        ..ROW
    },
    Entry {
        kind: ResourceKind::Presence,
        paths: &["communications/presences/{id}"],
        about: "one user's presence",
        delegated_work: &[p("Presence.Read.All")],
        single_resource: true,
        ..ROW
    },
    Entry {
        kind: ResourceKind::Presence,
        paths: &["communications/presences"],
        about: "the presence of several users, by $filter=id in ('{id}',…)",
        delegated_work: &[p("Presence.Read.All")],
        filter_required: true,
        ..ROW
    },
    Entry {
        kind: ResourceKind::Printer,
        paths: &["print/printers/{id}/jobs"],
        about: "the jobs of a printer",
        application: &[p("Printer.Read.All"), p("Printer.ReadWrite.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::PrintTaskDefinition,
        paths: &["print/taskDefinitions/{id}/tasks"],
        about: "the tasks of a print task definition",
        application: &[p("PrintTaskDefinition.ReadWrite.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::SecurityAlert,
        paths: &["security/alerts"],
        about: "security alerts, e.g. security/alerts?$filter=status eq 'New'",
        delegated_work: &[p("SecurityEvents.ReadWrite.All")],
        application: &[p("SecurityEvents.ReadWrite.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::Shift,
        paths: &["teams/{id}/schedule/shifts"],
        about: "the shifts of a team",
        delegated_work: SCHEDULE,
        application: SCHEDULE,
        ..ROW
    },
    Entry {
        kind: ResourceKind::SwapShiftsChangeRequest,
        paths: &["teams/{id}/schedule/swapShiftsChangeRequests"],
        about: "swap shift requests of a team",
        delegated_work: SCHEDULE,
        application: SCHEDULE,
        ..ROW
    },
    Entry {
        kind: ResourceKind::Team,
        paths: &["teams"],
        about: "all teams in an organization",
        application: &[p("Team.ReadBasic.All"), p("TeamSettings.Read.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::Team,
        paths: &["teams/{id}"],
        about: "one team",
        delegated_work: &[p("Team.ReadBasic.All"), p("TeamSettings.Read.All")],
        application: &[p("Team.ReadBasic.All"), p("TeamSettings.Read.All")],
        single_resource: true,
        ..ROW
    },
    Entry {
        kind: ResourceKind::TimeOffRequest,
        paths: &["teams/{id}/schedule/timeOffRequests"],
        about: "time-off requests of a team",
        delegated_work: SCHEDULE,
        application: SCHEDULE,
        ..ROW
    },
    Entry {
        kind: ResourceKind::TodoTask,
        paths: &["users/{id}/todo/lists/{todoTaskListId}/tasks"],
        about: "the tasks of a To Do list",
        delegated_work: &[p("Tasks.ReadWrite")],
        delegated_personal: &[p("Tasks.ReadWrite")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::User,
        paths: &["users"],
        about: "all users",
        delegated_work: &[p("User.Read.All")],
        delegated_personal: &[p("User.Read.All")],
        application: &[p("User.Read.All")],
        ..ROW
    },
    // Microsoft Learn, "Set up notifications for changes in resource data",
    // <https://learn.microsoft.com/graph/change-notifications-overview>,
    // supported resources: "Changes to a specific user: /users/{id}"; the
    // permissions are the user row of "Create subscription".
    Entry {
        kind: ResourceKind::User,
        paths: &["users/{id}"],
        about: "one user",
        delegated_work: &[p("User.Read.All")],
        delegated_personal: &[p("User.Read.All")],
        application: &[p("User.Read.All")],
        single_resource: true,
        ..ROW
    },
    Entry {
        kind: ResourceKind::VirtualEventWebinar,
        paths: &[
            "solutions/virtualEvents/webinars/{id}",
            "solutions/virtualEvents/webinars/{id}/{**}",
        ],
        about: "a webinar of a virtual event, or entities below it",
        delegated_work: &[p("VirtualEvent.Read")],
        application: &[p("VirtualEvent.Read.All")],
        ..ROW
    },
    Entry {
        kind: ResourceKind::VirtualEventTownhall,
        paths: &[
            "solutions/virtualEvents/townhalls/{id}",
            "solutions/virtualEvents/townhalls/{id}/{**}",
        ],
        about: "a town hall of a virtual event, or entities below it",
        delegated_work: &[p("VirtualEvent.Read")],
        application: &[p("VirtualEvent.Read.All")],
        ..ROW
    },
];

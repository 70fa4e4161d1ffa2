//! Which delta query a subscription's resource has: the truth to resync
//! from when Graph missed notifications ("notification as a trigger, delta
//! query as the truth").
//!
//! What this relies on, from Microsoft Learn:
//! - "Use delta query to track changes in Microsoft Graph data"
//!   (<https://learn.microsoft.com/graph/delta-query-overview>): a delta
//!   function is the collection's path with `/delta`; paging follows
//!   `@odata.nextLink` to an `@odata.deltaLink`, which starts the next round.
//! - "message: delta" (<https://learn.microsoft.com/graph/api/message-delta>):
//!   messages have a delta per mail folder only
//!   (`users/{id}/mailFolders/{id}/messages/delta`), least privileged
//!   Mail.ReadBasic (delegated) and Mail.ReadBasic.All (application).
//! - "event: delta" (<https://learn.microsoft.com/graph/api/event-delta>):
//!   events have a delta on a calendarView of the primary calendar, a
//!   window given by `startDateTime` and `endDateTime`; Calendars.Read.
//! - "driveItem: delta" (<https://learn.microsoft.com/graph/api/driveitem-delta>):
//!   `drives/{id}/root/delta` (also `users/{id}/drive/root/delta`); Files.Read
//!   (delegated), Files.Read.All (application).
//! - "chatMessage: delta" (<https://learn.microsoft.com/graph/api/chatmessage-delta>):
//!   `teams/{id}/channels/{id}/messages/delta`, messages of the last eight
//!   months; ChannelMessage.Read.All.
//! - "user: delta" (<https://learn.microsoft.com/graph/api/user-delta>) and
//!   "group: delta" (<https://learn.microsoft.com/graph/api/group-delta>):
//!   `users/delta` and `groups/delta`, narrowed to given objects with
//!   `$filter=id eq '…'`; User.Read.All and GroupMember.Read.All.

use std::fmt;

use super::ResourcePath;

/// How a resource is resynced after missed notifications.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delta {
    /// A delta query covers the subscription's resource.
    Query(DeltaQuery),
    /// None does: the resync hook is called instead, with why.
    None(&'static str),
}

/// A delta query a subscription's resource maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeltaQuery {
    /// The request's path and query, relative to the Graph version root
    /// (e.g. `users/ada/mailFolders('Inbox')/messages/delta`).
    pub path: String,
    /// The query needs a time window (`startDateTime`, `endDateTime`): a
    /// calendarView.
    pub window: bool,
    /// The least privileged permissions, delegated then application.
    pub permissions: (&'static str, &'static str),
    /// The Microsoft Learn page the mapping comes from.
    pub source: &'static str,
}

impl fmt::Display for DeltaQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GET {}", self.path)?;
        if self.window {
            f.write_str(" (with startDateTime and endDateTime: a window of the calendar)")?;
        }
        Ok(())
    }
}

/// One row: a subscription path pattern and how its delta is formed.
struct Row {
    pattern: &'static str,
    form: Form,
    permissions: (&'static str, &'static str),
    source: &'static str,
}

enum Form {
    /// The resource's path with `/delta`.
    Append,
    /// The last segment replaced by `calendarView/delta`, with a window.
    CalendarView,
    /// The collection's delta narrowed to the one object (Graph's filter
    /// takes the object id).
    FilterById(&'static str),
    /// No delta query for this path, and why.
    Not(&'static str),
}

const MESSAGE: &str = "https://learn.microsoft.com/graph/api/message-delta";
const EVENT: &str = "https://learn.microsoft.com/graph/api/event-delta";
const DRIVE: &str = "https://learn.microsoft.com/graph/api/driveitem-delta";
const CHANNEL: &str = "https://learn.microsoft.com/graph/api/chatmessage-delta";
const USER: &str = "https://learn.microsoft.com/graph/api/user-delta";
const GROUP: &str = "https://learn.microsoft.com/graph/api/group-delta";
const NONE: (&str, &str) = ("", "");

const ROWS: &[Row] = &[
    Row {
        pattern: "users/{id}/mailFolders/{id}/messages",
        form: Form::Append,
        permissions: ("Mail.ReadBasic", "Mail.ReadBasic.All"),
        source: MESSAGE,
    },
    Row {
        pattern: "users/{id}/messages",
        form: Form::Not(
            "messages have a delta query per mail folder only: subscribe to \
             users/{id}/mailFolders('Inbox')/messages (or another folder) to resync by delta",
        ),
        permissions: NONE,
        source: MESSAGE,
    },
    Row {
        pattern: "users/{id}/events",
        form: Form::CalendarView,
        permissions: ("Calendars.Read", "Calendars.Read"),
        source: EVENT,
    },
    Row {
        pattern: "drives/{id}/root",
        form: Form::Append,
        permissions: ("Files.Read", "Files.Read.All"),
        source: DRIVE,
    },
    Row {
        pattern: "users/{id}/drive/root",
        form: Form::Append,
        permissions: ("Files.Read", "Files.Read.All"),
        source: DRIVE,
    },
    Row {
        pattern: "teams/{id}/channels/{id}/messages",
        form: Form::Append,
        permissions: ("ChannelMessage.Read.All", "ChannelMessage.Read.All"),
        source: CHANNEL,
    },
    Row {
        pattern: "users",
        form: Form::Append,
        permissions: ("User.Read.All", "User.Read.All"),
        source: USER,
    },
    Row {
        pattern: "users/{id}",
        form: Form::FilterById("users"),
        permissions: ("User.Read.All", "User.Read.All"),
        source: USER,
    },
    Row {
        pattern: "groups",
        form: Form::Append,
        permissions: ("GroupMember.Read.All", "GroupMember.Read.All"),
        source: GROUP,
    },
    Row {
        pattern: "groups/{id}",
        form: Form::FilterById("groups"),
        permissions: ("GroupMember.Read.All", "GroupMember.Read.All"),
        source: GROUP,
    },
];

/// The delta query a subscription's `resource` maps to, or why there is
/// none (the resync hook is then called as it is without delta).
pub fn delta(resource: &ResourcePath) -> Delta {
    let best = ROWS
        .iter()
        .filter_map(|row| {
            let literals = resource.matches(row.pattern)?;
            // Exactly the pattern: as many segments, no more.
            (resource.segments().len() == row.pattern.split('/').count()).then_some((literals, row))
        })
        .max_by_key(|(literals, _)| *literals);
    let Some((_, row)) = best else {
        return Delta::None("Graph has no delta query for this kind of resource");
    };
    let path = path_of(resource);
    let query = |path: String, window: bool| {
        Delta::Query(DeltaQuery {
            path,
            window,
            permissions: row.permissions,
            source: row.source,
        })
    };
    match row.form {
        Form::Append => query(format!("{path}/delta"), false),
        Form::CalendarView => {
            let parent = path.rsplit_once('/').map_or("", |(parent, _)| parent);
            query(format!("{parent}/calendarView/delta"), true)
        }
        Form::FilterById(collection) => {
            let id = resource.segments().last().copied().unwrap_or_default();
            query(
                format!(
                    "{collection}/delta?$filter=id eq '{}'",
                    id.replace('\'', "''")
                ),
                false,
            )
        }
        Form::Not(why) => Delta::None(why),
    }
}

/// The resource's path as written, without its query options.
fn path_of(resource: &ResourcePath) -> String {
    let text = resource.as_str().trim_start_matches('/');
    text.split_once('?')
        .map_or(text, |(path, _)| path)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(resource: &str) -> Delta {
        delta(&ResourcePath::parse(resource).unwrap())
    }

    fn path(resource: &str) -> String {
        match of(resource) {
            Delta::Query(q) => q.path,
            Delta::None(why) => panic!("{resource}: {why}"),
        }
    }

    #[test]
    fn subscription_resources_map_to_their_delta_queries() {
        assert_eq!(
            path("users/ada@contoso.com/mailFolders('Inbox')/messages"),
            "users/ada@contoso.com/mailFolders('Inbox')/messages/delta"
        );
        assert_eq!(
            path("/me/mailFolders/inbox/messages"),
            "me/mailFolders/inbox/messages/delta"
        );
        assert_eq!(path("users"), "users/delta");
        assert_eq!(path("groups"), "groups/delta");
        assert_eq!(path("users/ada/events"), "users/ada/calendarView/delta");
        assert!(matches!(of("users/ada/events"), Delta::Query(q) if q.window));
        assert_eq!(path("drives/b!x/root"), "drives/b!x/root/delta");
        assert_eq!(path("me/drive/root"), "me/drive/root/delta");
        assert_eq!(
            path("teams/t1/channels/19:c@thread.tacv2/messages"),
            "teams/t1/channels/19:c@thread.tacv2/messages/delta"
        );
        assert_eq!(
            path("users/48d31887-5fad-4d73-a9f5-3c356e68a038"),
            "users/delta?$filter=id eq '48d31887-5fad-4d73-a9f5-3c356e68a038'"
        );
        assert_eq!(path("groups/g-1"), "groups/delta?$filter=id eq 'g-1'");
        assert_eq!(
            path("users/ada/mailFolders('Inbox')/messages?$select=subject"),
            "users/ada/mailFolders('Inbox')/messages/delta"
        );
    }

    #[test]
    fn resources_without_a_delta_query_say_why() {
        let Delta::None(why) = of("users/ada/messages") else {
            panic!("messages outside a folder have no delta");
        };
        assert!(why.contains("mailFolders"), "{why}");
        for resource in [
            "communications/presences/abc",
            "chats/getAllMessages",
            "teams/getAllMessages",
            "security/alerts",
            "users/ada/mailFolders/inbox/messages/x/attachments",
        ] {
            assert!(matches!(of(resource), Delta::None(_)), "{resource}");
        }
    }
}

//! `event`: an Outlook calendar event.
//! <https://learn.microsoft.com/graph/api/resources/event>

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::common::{DateTimeTimeZone, ItemBody, Location, Recipient};
use crate::notification::item::lenient_rfc3339;

/// A calendar event (`#microsoft.graph.event`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Event {
    /// The event's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Preview of the body, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_preview: Option<String>,
    /// The body, text or HTML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<ItemBody>,
    /// Start, in a named time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTimeTimeZone>,
    /// End, in a named time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTimeTimeZone>,
    /// Where it takes place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// The organizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizer: Option<Recipient>,
    /// Attendees (`attendee`: address, `type`, response `status`), as received.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attendees: Vec<Value>,
    /// Whether it lasts all day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_all_day: Option<bool>,
    /// Whether it was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_cancelled: Option<bool>,
    /// Whether it is an online meeting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_online_meeting: Option<bool>,
    /// `free`, `tentative`, `busy`, `oof`, `workingElsewhere`, `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_as: Option<String>,
    /// `singleInstance`, `occurrence`, `exception` or `seriesMaster`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The series master's id, for occurrences and exceptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series_master_id: Option<String>,
    /// The iCalendar UID, shared across calendars.
    #[serde(rename = "iCalUId", default, skip_serializing_if = "Option::is_none")]
    pub ical_uid: Option<String>,
    /// When it was created.
    #[serde(
        default,
        with = "lenient_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_date_time: Option<OffsetDateTime>,
    /// When it last changed.
    #[serde(
        default,
        with = "lenient_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_modified_date_time: Option<OffsetDateTime>,
    /// Link to open it in Outlook on the web.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_link: Option<String>,
    /// Every other property (`recurrence`, `onlineMeeting`, `sensitivity`, …),
    /// as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}
super::redacted_debug!(Event { id, event_type });

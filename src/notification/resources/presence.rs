//! `presence`: a user's availability in Teams.
//! <https://learn.microsoft.com/graph/api/resources/presence>

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A user's presence (`#microsoft.graph.presence`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Presence {
    /// The user's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `Available`, `AvailableIdle`, `Away`, `BeRightBack`, `Busy`,
    /// `BusyIdle`, `DoNotDisturb`, `Offline`, `PresenceUnknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<String>,
    /// What the user is doing: `Available`, `Away`, `InACall`,
    /// `InAMeeting`, `Presenting`, `OutOfOffice`, … .
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<String>,
    /// Every other property (`statusMessage`, `outOfOfficeSettings`,
    /// `sequenceNumber`, …), as received.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}
super::redacted_debug!(Presence { id });

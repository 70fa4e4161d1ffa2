//! [`ResourceKind`]: which kind of Graph resource a notification is about.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! resource_kinds {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal $(| $alias:literal)* ,)+) => {
        /// The kind of resource a change notification is about.
        ///
        /// Covers every kind Graph accepts subscriptions for (the catalog in
        /// the rules of Microsoft Learn, "Create subscription", <https://learn.microsoft.com/graph/api/subscription-post-subscriptions> and the pages it links), plus [`Unknown`](Self::Unknown)
        /// for kinds added later. Derived from `resourceData`'s `@odata.type`
        /// (any casing) or, when that is missing, from the `resource` path.
        ///
        /// ```
        /// use msgraph_webhooks::ResourceKind;
        ///
        /// assert_eq!(ResourceKind::from_odata_type("#Microsoft.Graph.ChatMessage"), ResourceKind::ChatMessage);
        /// assert_eq!(ResourceKind::from_resource_path("Users/42/Messages/AAMk="), ResourceKind::Message);
        /// assert_eq!("chatMessage".parse::<ResourceKind>().unwrap(), ResourceKind::ChatMessage);
        /// ```
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ResourceKind {
            $( $(#[$doc])* $variant, )+
            /// A kind this version does not know, by its `@odata.type` name
            /// (without the `#microsoft.graph.` prefix) or an empty string
            /// when nothing identified it.
            Unknown(String),
        }

        impl ResourceKind {
            /// Every known kind, in catalog order.
            pub const ALL: &'static [ResourceKind] = &[$(ResourceKind::$variant,)+];

            /// The kind's name as Graph spells the resource type, e.g. `chatMessage`.
            pub fn as_str(&self) -> &str {
                match self {
                    $(ResourceKind::$variant => $name,)+
                    ResourceKind::Unknown(name) => name,
                }
            }

            /// Looks up a type name, ignoring ASCII case; `None` if unknown.
            fn known(name: &str) -> Option<Self> {
                $(
                    if name.eq_ignore_ascii_case($name) $(|| name.eq_ignore_ascii_case($alias))* {
                        return Some(ResourceKind::$variant);
                    }
                )+
                None
            }
        }
    };
}

resource_kinds! {
    /// Copilot `aiInteraction`.
    AiInteraction => "aiInteraction",
    /// Teams `callRecord`.
    CallRecord => "callRecord",
    /// Teams meeting `callRecording`.
    CallRecording => "callRecording",
    /// Teams meeting `callTranscript`.
    CallTranscript => "callTranscript",
    /// Teams `channel`.
    Channel => "channel",
    /// Teams `chat`.
    Chat => "chat",
    /// Teams `chatMessage` (channel or chat message).
    ChatMessage => "chatMessage",
    /// Outlook `contact`.
    Contact => "contact",
    /// Teams `conversationMember` (of a chat, team or channel).
    ConversationMember => "conversationMember" | "aadUserConversationMember" | "anonymousGuestConversationMember" | "microsoftAccountUserConversationMember" | "skypeForBusinessUserConversationMember" | "skypeUserConversationMember",
    /// OneDrive or SharePoint `driveItem`.
    DriveItem => "driveItem",
    /// Outlook calendar `event`.
    Event => "event",
    /// Entra ID `group`.
    Group => "group",
    /// Group `conversation`.
    GroupConversation => "conversation",
    /// SharePoint `list`.
    List => "list" | "listItem",
    /// Outlook `message`.
    Message => "message" | "eventMessage" | "eventMessageRequest" | "eventMessageResponse",
    /// Teams Shifts `offerShiftRequest`.
    OfferShiftRequest => "offerShiftRequest",
    /// Teams Shifts `openShiftChangeRequest`.
    OpenShiftChangeRequest => "openShiftChangeRequest",
    /// Teams `presence`.
    Presence => "presence",
    /// Universal Print jobs of a `printer`.
    Printer => "printer" | "printJob",
    /// Universal Print tasks of a `printTaskDefinition`.
    PrintTaskDefinition => "printTaskDefinition" | "printTask",
    /// Security `alert`.
    SecurityAlert => "alert" | "securityAlert",
    /// Teams Shifts `shift`.
    Shift => "shift",
    /// Teams Shifts `swapShiftsChangeRequest`.
    SwapShiftsChangeRequest => "swapShiftsChangeRequest",
    /// Teams `team`.
    Team => "team",
    /// Teams Shifts `timeOffRequest`.
    TimeOffRequest => "timeOffRequest",
    /// Microsoft To Do `todoTask`.
    TodoTask => "todoTask",
    /// Entra ID `user`.
    User => "user",
    /// Virtual event `virtualEventWebinar`.
    VirtualEventWebinar => "virtualEventWebinar",
    /// Virtual event `virtualEventTownhall`.
    VirtualEventTownhall => "virtualEventTownhall",
}

impl ResourceKind {
    /// The kind named by an `@odata.type` such as `#Microsoft.Graph.ChatMessage`.
    ///
    /// The `#` and the `microsoft.graph.` namespace are optional and matched in any case.
    pub fn from_odata_type(odata_type: &str) -> Self {
        let name = odata_type.strip_prefix('#').unwrap_or(odata_type);
        let name = match name.get(..16) {
            Some(prefix) if prefix.eq_ignore_ascii_case("microsoft.graph.") => &name[16..],
            _ => name,
        };
        Self::known(name).unwrap_or_else(|| ResourceKind::Unknown(name.to_owned()))
    }

    /// The kind a `resource` path points at, e.g. `teams('…')/channels('…')/messages('…')`.
    ///
    /// Paths come in several syntaxes (`Users/{id}/Messages/{id}`, key
    /// parentheses, `me/…`, query options); the last collection segment Graph
    /// uses for a kind decides, with its parents telling apart Outlook and Teams
    /// messages and To Do and print tasks.
    pub fn from_resource_path(path: &str) -> Self {
        let path = path.split('?').next().unwrap_or_default();
        let names: Vec<String> = path
            .split('/')
            .map(|segment| {
                segment
                    .split('(')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase()
            })
            .collect();
        let has = |name: &str| names.iter().any(|n| n == name);
        for (i, name) in names.iter().enumerate().rev() {
            let parents = &names[..i];
            let under = |name: &str| parents.iter().any(|n| n == name);
            let kind = match name.as_str() {
                "messages" | "replies" if under("chats") || under("channels") || under("teams") => {
                    ResourceKind::ChatMessage
                }
                "messages" => ResourceKind::Message,
                "getallmessages" => ResourceKind::ChatMessage,
                "events" => ResourceKind::Event,
                "contacts" => ResourceKind::Contact,
                "members" | "getallmembers" => ResourceKind::ConversationMember,
                "channels" | "getallchannels" => ResourceKind::Channel,
                "chats" | "installedtochats" => ResourceKind::Chat,
                "teams" => ResourceKind::Team,
                "presences" => ResourceKind::Presence,
                "root" | "items" if has("drive") || has("drives") => ResourceKind::DriveItem,
                "drive" | "drives" => ResourceKind::DriveItem,
                "lists" => ResourceKind::List,
                "users" => ResourceKind::User,
                "conversations" | "threads" if under("groups") => ResourceKind::GroupConversation,
                "groups" => ResourceKind::Group,
                "callrecords" => ResourceKind::CallRecord,
                "recordings" | "getallrecordings" => ResourceKind::CallRecording,
                "transcripts" | "getalltranscripts" => ResourceKind::CallTranscript,
                "alerts" | "alerts_v2" => ResourceKind::SecurityAlert,
                "shifts" => ResourceKind::Shift,
                "offershiftrequests" => ResourceKind::OfferShiftRequest,
                "openshiftchangerequests" => ResourceKind::OpenShiftChangeRequest,
                "swapshiftschangerequests" => ResourceKind::SwapShiftsChangeRequest,
                "timeoffrequests" => ResourceKind::TimeOffRequest,
                "tasks" if under("todo") => ResourceKind::TodoTask,
                "tasks" if under("taskdefinitions") => ResourceKind::PrintTaskDefinition,
                "jobs" if under("printers") => ResourceKind::Printer,
                "getallenterpriseinteractions" | "interactionhistory" => {
                    ResourceKind::AiInteraction
                }
                "webinars" => ResourceKind::VirtualEventWebinar,
                "townhalls" => ResourceKind::VirtualEventTownhall,
                _ => continue,
            };
            return kind;
        }
        ResourceKind::Unknown(String::new())
    }

    /// The kind of a notification: `@odata.type` when present, else the path.
    pub fn detect(odata_type: Option<&str>, resource_path: Option<&str>) -> Self {
        match odata_type.map(Self::from_odata_type) {
            Some(kind) if !matches!(kind, ResourceKind::Unknown(_)) => kind,
            from_type => match resource_path.map(Self::from_resource_path) {
                Some(ResourceKind::Unknown(_)) | None => {
                    from_type.unwrap_or_else(|| ResourceKind::Unknown(String::new()))
                }
                Some(kind) => kind,
            },
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResourceKind {
    type Err = std::convert::Infallible;

    /// Parses a type name (any case, `@odata.type` prefixes allowed); never fails.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::from_odata_type(s))
    }
}

impl Serialize for ResourceKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ResourceKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<str>::deserialize(deserializer)?;
        Ok(Self::from_odata_type(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_name_and_serde() {
        for kind in ResourceKind::ALL {
            assert_eq!(&kind.as_str().parse::<ResourceKind>().unwrap(), kind);
            assert_eq!(
                &ResourceKind::from_odata_type(&format!("#Microsoft.Graph.{}", kind.as_str())),
                kind
            );
            assert_eq!(
                &ResourceKind::from_odata_type(&format!(
                    "#microsoft.graph.{}",
                    kind.as_str().to_ascii_uppercase()
                )),
                kind
            );
            let json = serde_json::to_string(kind).unwrap();
            assert_eq!(&serde_json::from_str::<ResourceKind>(&json).unwrap(), kind);
        }
        let unknown = ResourceKind::from_odata_type("#microsoft.graph.somethingNew");
        assert_eq!(unknown, ResourceKind::Unknown("somethingNew".into()));
        assert_eq!(unknown.as_str().parse::<ResourceKind>().unwrap(), unknown);
    }

    #[test]
    fn kinds_from_notification_resource_paths() {
        let cases = [
            (
                "Users/622eaaff/Messages/AAMkAGUwNjQ4ZjIxAAA=",
                ResourceKind::Message,
            ),
            ("me/mailFolders('inbox')/messages", ResourceKind::Message),
            (
                "teams('d29828b8')/channels('19:f127@thread.tacv2')/messages('1565045424600')",
                ResourceKind::ChatMessage,
            ),
            (
                "chats('19:abc@unq.gbl.spaces')/messages('1612289765949')",
                ResourceKind::ChatMessage,
            ),
            ("chats/getAllMessages?model=B", ResourceKind::ChatMessage),
            ("Users/1/Events/AAMk", ResourceKind::Event),
            ("users/1/contacts", ResourceKind::Contact),
            (
                "chats('19:x')/members('MCMj')",
                ResourceKind::ConversationMember,
            ),
            ("teams('1')/channels('19:x')", ResourceKind::Channel),
            ("chats('19:x')", ResourceKind::Chat),
            ("teams('1')", ResourceKind::Team),
            (
                "communications/presences('66825e03')",
                ResourceKind::Presence,
            ),
            ("me/drive/root", ResourceKind::DriveItem),
            ("drives/b!x/root", ResourceKind::DriveItem),
            ("sites/s/lists/l", ResourceKind::List),
            ("Users/622eaaff-0683", ResourceKind::User),
            ("Groups/1", ResourceKind::Group),
            ("groups('1')/conversations", ResourceKind::GroupConversation),
            ("communications/callRecords/1", ResourceKind::CallRecord),
            (
                "communications/onlineMeetings/getAllRecordings",
                ResourceKind::CallRecording,
            ),
            (
                "users/1/onlineMeetings/getAllTranscripts",
                ResourceKind::CallTranscript,
            ),
            (
                "security/alerts?$filter=status eq 'New'",
                ResourceKind::SecurityAlert,
            ),
            ("teams/1/schedule/shifts", ResourceKind::Shift),
            (
                "teams/1/schedule/offerShiftRequests",
                ResourceKind::OfferShiftRequest,
            ),
            (
                "teams/1/schedule/openShiftChangeRequests",
                ResourceKind::OpenShiftChangeRequest,
            ),
            (
                "teams/1/schedule/swapShiftsChangeRequests",
                ResourceKind::SwapShiftsChangeRequest,
            ),
            (
                "teams/1/schedule/timeOffRequests",
                ResourceKind::TimeOffRequest,
            ),
            ("me/todo/lists/1/tasks", ResourceKind::TodoTask),
            (
                "print/taskDefinitions/1/tasks",
                ResourceKind::PrintTaskDefinition,
            ),
            ("print/printers/1/jobs", ResourceKind::Printer),
            (
                "copilot/interactionHistory/getAllEnterpriseInteractions",
                ResourceKind::AiInteraction,
            ),
            (
                "solutions/virtualEvents/webinars/1",
                ResourceKind::VirtualEventWebinar,
            ),
            (
                "solutions/virtualEvents/townhalls/1",
                ResourceKind::VirtualEventTownhall,
            ),
            ("", ResourceKind::Unknown(String::new())),
            ("something/else", ResourceKind::Unknown(String::new())),
        ];
        for (path, kind) in cases {
            assert_eq!(ResourceKind::from_resource_path(path), kind, "{path}");
        }
    }

    #[test]
    fn odata_type_wins_over_path_and_path_fills_in() {
        assert_eq!(
            ResourceKind::detect(Some("#Microsoft.Graph.Message"), Some("teams/1")),
            ResourceKind::Message
        );
        assert_eq!(
            ResourceKind::detect(
                Some("#microsoft.graph.brandNew"),
                Some("Users/1/Messages/2")
            ),
            ResourceKind::Message
        );
        assert_eq!(
            ResourceKind::detect(Some("#microsoft.graph.brandNew"), Some("x/y")),
            ResourceKind::Unknown("brandNew".into())
        );
        assert_eq!(
            ResourceKind::detect(None, None),
            ResourceKind::Unknown(String::new())
        );
    }
}

use time::macros::datetime;

use time::OffsetDateTime;

use super::*;
use crate::notification::{ChangeType, ResourceKind};

const NOW: OffsetDateTime = datetime!(2026-05-01 12:00 UTC);

/// A concrete path for a pattern: keys filled in, `{**}` one segment.
fn example(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|part| match part {
            "{**}" => "sessions",
            p if p.starts_with('{') => "k1",
            p => p,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_row_pattern_resolves_to_its_row() {
    for entry in entries() {
        for pattern in entry.paths {
            let resolved = resolve(&example(pattern)).unwrap();
            assert!(
                resolved.entries().iter().any(|e| std::ptr::eq(*e, entry)),
                "{pattern} resolves to {:?}",
                resolved.entries()
            );
            assert_eq!(resolved.kind(), &entry.kind, "{pattern}");
        }
    }
}

#[test]
fn every_row_supports_some_permission_type_and_least_privileged_is_listed() {
    for entry in entries() {
        let mut any = false;
        for t in PermissionType::ALL {
            let accepted = entry.permissions(t);
            any |= !accepted.is_empty();
        }
        assert!(any, "{:?} supports no permission type", entry.paths);
    }
    let chat = resolve("chats/19:x@thread.v2").unwrap();
    assert_eq!(
        chat.least_privileged(PermissionType::Application)
            .unwrap()
            .name,
        "Chat.ReadBasic.All",
        "resource-specific consent is not what a tenant-wide app should ask for"
    );
    assert_eq!(
        chat.least_privileged(PermissionType::DelegatedWork)
            .unwrap()
            .name,
        "Chat.ReadBasic"
    );
    assert!(
        chat.least_privileged(PermissionType::DelegatedPersonal)
            .is_none()
    );
    assert_eq!(
        chat.permissions(PermissionType::Application)[0].to_string(),
        "ChatSettings.Read.Chat*"
    );
}

#[test]
fn me_and_users_paths_and_key_syntaxes_are_equivalent() {
    for path in [
        "me/messages",
        "users/42/messages",
        "Users('42')/Messages",
        "/me/mailFolders('Inbox')/messages",
        "users/a@contoso.com/mailFolders/inbox/messages",
    ] {
        assert_eq!(
            resolve(path).unwrap().kind(),
            &ResourceKind::Message,
            "{path}"
        );
    }
    assert_eq!(
        resolve("groups('1')/conversations").unwrap().kind(),
        &ResourceKind::GroupConversation
    );
    assert_eq!(
        resolve("me/chats/getAllMessages?model=B").unwrap().kind(),
        &ResourceKind::ChatMessage
    );
}

#[test]
fn literal_segments_win_over_keys() {
    assert_eq!(
        resolve("teams/getAllMessages").unwrap().kind(),
        &ResourceKind::ChatMessage
    );
    assert_eq!(
        resolve("teams/getAllChannels").unwrap().kind(),
        &ResourceKind::Channel
    );
    assert_eq!(resolve("teams/abc").unwrap().kind(), &ResourceKind::Team);
    assert_eq!(
        resolve("chats/getAllMembers").unwrap().kind(),
        &ResourceKind::ConversationMember
    );
    assert_eq!(
        resolve("teams/getAllMembers").unwrap().kind(),
        &ResourceKind::ConversationMember
    );
}

#[test]
fn unsupported_and_malformed_resources() {
    assert_eq!(
        resolve("me/calendar/colour").unwrap_err().to_string(),
        "Resource 'me/calendar/colour' does not support subscriptions: it matches no supported resource. \
         Check the path against the list of supported resources (e.g. me/messages, chats/{id}/messages)."
    );
    assert!(matches!(
        resolve("chats('x"),
        Err(Violation::MalformedResource(PathError::Malformed))
    ));
    assert!(matches!(
        resolve(""),
        Err(Violation::MalformedResource(PathError::Empty))
    ));
}

#[test]
fn drive_root_matches_both_accounts_and_picks_by_permission_type() {
    let root = resolve("me/drive/root").unwrap();
    assert_eq!(root.entries().len(), 2);
    assert_eq!(
        root.entry_for(PermissionType::DelegatedPersonal)
            .unwrap()
            .variant,
        Some("personal OneDrive")
    );
    assert_eq!(
        root.entry_for(PermissionType::Application).unwrap().variant,
        Some("OneDrive for Business")
    );
    let folder = resolve("me/drive/items/01ABC").unwrap();
    let app = Caller::application(["Files.Read.All"]);
    let request = Request::new("updated", NOW + Duration::days(1), NOW).caller(&app);
    assert_eq!(
        folder.check(&request).unwrap_err(),
        [Violation::DriveRootOnly]
    );
    let personal = Caller::delegated(
        PermissionType::DelegatedPersonal,
        ["Files.Read"],
        "u1",
        "u1@outlook.com",
    );
    let request = Request::new("updated", NOW + Duration::days(1), NOW).caller(&personal);
    assert!(folder.check(&request).is_ok());
}

#[test]
fn change_types_per_kind() {
    let cases = [
        ("me/drive/root", "updated", true),
        ("me/drive/root", "created", false),
        ("sites/s/lists/l", "updated", true),
        ("sites/s/lists/l", "deleted", false),
        ("users", "updated,deleted", true),
        ("users", "created", false),
        ("groups", "deleted", true),
        ("me/messages", "created,updated,deleted", true),
    ];
    for (path, change, ok) in cases {
        let resolved = resolve(path).unwrap();
        let request = Request::new(change, NOW + Duration::hours(2), NOW);
        assert_eq!(resolved.check(&request).is_ok(), ok, "{path} {change}");
    }
    assert_eq!(
        parse_change_types(" Created ,updated,created").unwrap(),
        [ChangeType::Created, ChangeType::Updated]
    );
    assert_eq!(
        parse_change_types("created,").unwrap_err(),
        Violation::InvalidChangeType {
            value: String::new()
        }
    );
    let drive = resolve("me/drive/root").unwrap();
    let request = Request::new("created", NOW + Duration::hours(2), NOW);
    assert_eq!(
        drive.check(&request).unwrap_err()[0].to_string(),
        "changeType 'created' is not supported for driveItem subscriptions: use updated."
    );
}

#[test]
fn lifetimes_floor_and_maximum() {
    let cases: &[(&str, bool, i64)] = &[
        ("security/alerts?$filter=status eq 'New'", false, 43_200),
        ("me/drive/root", false, 42_300),
        ("sites/s/lists/l", false, 42_300),
        ("users", false, 41_760),
        ("groups", false, 41_760),
        ("me/messages", false, 10_080),
        ("me/messages?$select=subject", true, 1_440),
        ("me/events", false, 10_080),
        ("me/contacts", false, 10_080),
        ("communications/callRecords", false, 4_230),
        ("groups/1/conversations", false, 4_230),
        ("print/printers/1/jobs", false, 4_230),
        ("print/taskDefinitions/1/tasks", false, 4_230),
        ("me/todo/lists/1/tasks", false, 4_230),
        (
            "copilot/interactionHistory/getAllEnterpriseInteractions",
            false,
            4_320,
        ),
        ("chats/1/messages", false, 4_320),
        ("teams/1/schedule/shifts", false, 360),
        ("communications/presences/1", true, 60),
    ];
    for (path, rich, max) in cases {
        let resolved = resolve(path).unwrap();
        let rules = resolved.rules();
        assert_eq!(rules.max_lifetime(*rich).whole_minutes(), *max, "{path}");
        let at_max = Request::new("updated", NOW + Duration::minutes(*max), NOW)
            .resource_data(*rich, true, true)
            .lifecycle_url(true);
        let accepted = resolved.check(&at_max).unwrap();
        assert_eq!(accepted.expiration, NOW + Duration::minutes(*max));
        let over = Request::new("updated", NOW + Duration::minutes(*max + 1), NOW)
            .resource_data(*rich, true, true)
            .lifecycle_url(true);
        assert_eq!(
            resolved.check(&over).unwrap_err(),
            [Violation::ExpirationTooFar { max_minutes: *max }],
            "{path}"
        );
    }
    let resolved = resolve("users").unwrap();
    for requested in [NOW - Duration::days(1), NOW, NOW + Duration::minutes(44)] {
        let accepted = resolved
            .check(&Request::new("updated", requested, NOW))
            .unwrap();
        assert_eq!(accepted.expiration, NOW + MIN_LIFETIME);
    }
}

#[test]
fn teams_lifecycle_url_rule() {
    let resolved = resolve("chats/1/messages").unwrap();
    let within = Request::new("created", NOW + Duration::minutes(60), NOW);
    assert!(resolved.check(&within).is_ok());
    let beyond = Request::new("created", NOW + Duration::minutes(61), NOW);
    assert_eq!(
        resolved.check(&beyond).unwrap_err(),
        [Violation::LifecycleUrlRequired {
            kind: ResourceKind::ChatMessage
        }]
    );
    assert!(resolved.check(&beyond.lifecycle_url(true)).is_ok());
    // Outlook has no such rule.
    let mail = resolve("me/messages").unwrap();
    assert!(
        mail.check(&Request::new("created", NOW + Duration::days(3), NOW))
            .is_ok()
    );
}

#[test]
fn payment_models() {
    let cases = [
        ("teams/getAllMessages?model=A", true),
        ("teams/getAllMessages?model=B", true),
        ("teams/getAllMessages", true),
        ("chats/getAllMessages?model=A", true),
        ("me/chats/getAllMessages?model=A", false),
        ("users/1/chats/getAllMessages?model=B", true),
        (
            "appCatalogs/teamsApps/1/installedToChats/getAllMessages?model=A",
            false,
        ),
        ("chats/getAllMembers?model=A", true),
        (
            "appCatalogs/teamsApps/1/installedToChats/getAllMembers?model=A",
            false,
        ),
        ("appCatalogs/teamsApps/1/installedToChats?model=A", false),
        ("appCatalogs/teamsApps/1/installedToChats?model=B", true),
        ("chats/getAllMessages?model=C", false),
        ("chats/1/messages?model=A", false),
    ];
    for (path, ok) in cases {
        assert_eq!(resolve(path).unwrap().payment_model().is_ok(), ok, "{path}");
    }
}

#[test]
fn presence_filter() {
    let ok = [
        "communications/presences?$filter=id in ('a')",
        "communications/presences?$filter=id in ('a','b', 'c')",
    ];
    for path in ok {
        let request = Request::new("updated", NOW + Duration::minutes(50), NOW)
            .resource_data(true, true, true);
        assert!(resolve(path).unwrap().check(&request).is_ok(), "{path}");
    }
    let many = (0..651)
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(",");
    let too_many = format!("communications/presences?$filter=id in ({many})");
    for path in [
        "communications/presences",
        "communications/presences?$filter=id in ()",
        "communications/presences?$filter=displayName eq 'x'",
        "communications/presences?$filter=id in (a)",
        too_many.as_str(),
    ] {
        let request = Request::new("updated", NOW + Duration::minutes(50), NOW)
            .resource_data(true, true, true);
        assert_eq!(
            resolve(path).unwrap().check(&request).unwrap_err(),
            [Violation::PresenceFilterRequired],
            "{path}"
        );
    }
}

#[test]
fn forbidden_violations_are_the_permission_ones() {
    assert!(Violation::DriveRootOnly.to_string().contains("root folder"));
    assert!(
        Violation::CopilotLicenseRequired { user: None }.is_forbidden()
            && !Violation::PaymentModelImmutable.is_forbidden()
    );
}

proptest::proptest! {
    /// Whatever `resource` and `changeType` a caller sends, checking them
    /// gives an answer, never a panic.
    #[test]
    fn resolve_and_check_never_panic(
        resource in "(/?(me|users|chats|teams|communications|drives|copilot|sites|solutions)(/[a-zA-Z0-9:@('\",=.{}*-]{0,12}){0,6}(\\?[$a-zA-Z=' (),]{0,40})?)|\\PC{0,60}",
        change in "\\PC{0,24}",
        minutes in -100_000i64..100_000,
        rich in proptest::bool::ANY,
    ) {
        if let Ok(resolved) = resolve(&resource) {
            let caller = Caller::delegated(PermissionType::DelegatedWork, ["Mail.Read"], "u", "u@x");
            let request = Request::new(&change, NOW + Duration::minutes(minutes), NOW)
                .resource_data(rich, rich, rich)
                .caller(&caller);
            let _ = resolved.check(&request);
            let _ = resolved.payment_model();
            for t in PermissionType::ALL {
                let _ = resolved.least_privileged(t);
            }
        }
    }
}

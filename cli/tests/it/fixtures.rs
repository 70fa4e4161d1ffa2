//! The payload shapes of reference §3 parse into the right typed fields.

use msgraph_webhooks::notification::{
    ChangeType, Envelope, LifecycleEventType, Notification, ResourceKind, ValidationTokens,
};

fn items(name: &str) -> (Vec<Notification>, ValidationTokens) {
    let path = format!("{}/tests/data/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let body = std::fs::read(path).unwrap();
    let envelope = Envelope::parse(&body).unwrap();
    let items = envelope
        .items
        .iter()
        .map(|raw| Notification::from_json(raw.get()).unwrap())
        .collect();
    (items, envelope.validation_tokens)
}

#[test]
fn outlook_message() {
    let (items, tokens) = items("outlook-message.json");
    assert_eq!(tokens, ValidationTokens::Absent);
    let Notification::Change(change) = &items[0] else {
        panic!("a change item")
    };
    assert_eq!(change.id.as_deref(), Some("lsgTZMr9KwAAA"));
    assert_eq!(
        change.subscription_id,
        "7f105c7d-2dc5-4530-97cd-4e7ae6534c07"
    );
    assert_eq!(change.change_type, ChangeType::Created);
    assert_eq!(change.resource_kind(), ResourceKind::Message);
    assert_eq!(
        change.tenant_id.as_deref(),
        Some("84bd8158-6d4d-4958-8b9f-9d6445542f95")
    );
    assert!(
        change
            .client_state
            .as_ref()
            .unwrap()
            .matches("secretClientValue")
    );
    let expiration = change.subscription_expiration.unwrap();
    assert_eq!(
        (expiration.unix_timestamp(), expiration.millisecond()),
        (1_773_958_269, 952)
    );
    let data = change.resource_data.as_ref().unwrap();
    assert_eq!(data.id.as_deref(), Some("AAMkAGUwNjQ4ZjIxAAA="));
    assert_eq!(
        data.odata_etag.as_deref(),
        Some("W/\"CQAAABYAAACQ2fKdhq8oSKEDSVrdi3lRAAGDUUXn\"")
    );
    assert!(change.encrypted_content.is_none());
}

#[test]
fn teams_chat_message_with_encrypted_content() {
    let (items, tokens) = items("teams-chat-message-rich.json");
    assert!(matches!(tokens, ValidationTokens::Tokens(t) if t.len() == 1));
    let Notification::Change(change) = &items[0] else {
        panic!("a change item")
    };
    assert_eq!(
        change.change_type,
        ChangeType::Created,
        "\"Created\" parses case-insensitively"
    );
    assert_eq!(change.resource_kind(), ResourceKind::ChatMessage);
    assert_eq!(
        change.subscription_expiration.unwrap().nanosecond(),
        225_776_800,
        "seven fraction digits"
    );
    let content = change.encrypted_content.as_ref().unwrap();
    assert_eq!(
        content.encryption_certificate_id,
        "MySelfSignedCert/DDC9651A-D7BC-4D74-86BC-A8923584B0AB"
    );
    assert_eq!(
        content.encryption_certificate_thumbprint,
        "07293748CC064953A3052FB978C735FB89E61C3D"
    );
    assert!(!content.data.is_empty() && !content.data_key.is_empty());
}

#[test]
fn onedrive_with_null_resource_data() {
    let (items, _) = items("onedrive-null-resource-data.json");
    let Notification::Change(change) = &items[0] else {
        panic!("a change item")
    };
    assert!(change.resource_data.is_none());
    assert_eq!(change.change_type, ChangeType::Updated);
    assert_eq!(change.resource_kind(), ResourceKind::DriveItem);
    let expiration = change.subscription_expiration.unwrap();
    assert_eq!(expiration.offset().whole_hours(), -8);
}

#[test]
fn lifecycle_items() {
    let (items, _) = items("lifecycle.json");
    let events: Vec<_> = items
        .iter()
        .map(|item| match item {
            Notification::Lifecycle(l) => l.lifecycle_event.clone(),
            _ => panic!("lifecycle items only"),
        })
        .collect();
    assert_eq!(
        events,
        [
            LifecycleEventType::ReauthorizationRequired,
            LifecycleEventType::SubscriptionRemoved,
            LifecycleEventType::Missed
        ]
    );
    let Notification::Lifecycle(first) = &items[0] else {
        unreachable!()
    };
    assert_eq!(
        first.subscription_id,
        "e3898f08-5cd0-4a6a-80fc-6addbfb73b7b"
    );
    assert!(first.resource.is_none());
    assert!(first.subscription_expiration.is_some());
}

#[test]
fn unknown_fields_and_values_are_kept() {
    let item = r#"{"subscriptionId":"s","changeType":"unknownFutureValue","resource":"x/y",
        "newProperty":{"a":1},"resourceData":{"id":"1","extra":true},
        "subscriptionExpirationDateTime":"not a date"}"#;
    let Notification::Change(change) = Notification::from_json(item).unwrap() else {
        panic!("a change item")
    };
    assert_eq!(
        change.change_type,
        ChangeType::Unknown("unknownFutureValue".into())
    );
    assert_eq!(change.other["newProperty"]["a"], 1);
    assert_eq!(change.resource_data.unwrap().other["extra"], true);
    assert!(change.subscription_expiration.is_none());
    let round_trip = serde_json::to_value(
        Notification::from_json(item)
            .map(|n| match n {
                Notification::Change(c) => c,
                _ => unreachable!(),
            })
            .unwrap(),
    )
    .unwrap();
    assert_eq!(round_trip["newProperty"]["a"], 1);
    assert_eq!(round_trip["changeType"], "unknownFutureValue");
}

#[test]
fn items_that_are_not_notifications() {
    for item in [
        r#"{"subscriptionId":"s"}"#,
        r#"{"subscriptionId":"s","changeType":"created","lifecycleEvent":"missed"}"#,
        r#"{"changeType":"created"}"#,
        r#"{"subscriptionId":5,"changeType":"created"}"#,
        r#"[]"#,
        r#"17"#,
    ] {
        assert!(Notification::from_json(item).is_err(), "{item}");
    }
}

//! What the emulator sends, compared with Microsoft's pages (issue 16,
//! point 8): who hears of a change, the strings of the items, and the
//! handshake's content type. Every check reads what a real endpoint on
//! 127.0.0.1 received.

use std::collections::BTreeMap;
use std::time::Duration;

use msgraph_webhooks::ChangeType;
use msgraph_webhooks::emulator::{Change, Emulator};
use serde_json::{Value, json};

use crate::support::graph::{APP, Answering, Cert, Graph, Hook};

/// Subscribes to `resource` with notifications to `hook?s=name`.
async fn subscribe(graph: &Graph, hook: &Hook, token: &str, name: &str, body: Value) -> String {
    let mut body = body;
    body["notificationUrl"] = json!(hook.url(&format!("/n?s={name}")));
    let answer = graph.create(token, &body).await;
    assert_eq!(answer.status, 201, "{name}: {:#}", answer.json);
    answer.json["id"].as_str().unwrap().to_owned()
}

/// The items each subscription name received, from the hook's capture.
fn received(hook: &Hook) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for captured in hook.captured().iter().filter(|c| !c.is_validation()) {
        let name = captured
            .query
            .as_deref()
            .and_then(|q| q.strip_prefix("s="))
            .unwrap_or_default()
            .to_owned();
        let items = captured.json()["value"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        out.entry(name).or_default().extend(items);
    }
    out
}

/// A `users` subscription never hears of an event, `teams` never of a
/// channel, `teams/getAllChannels` never of a channel message; the legit
/// ones still do: an item of the collection, what a getAll… function
/// covers, a mailbox's folders, `me/` for any user, a drive root's whole
/// hierarchy, a presence `$filter`.
#[tokio::test]
async fn a_subscription_hears_only_changes_of_its_own_kind() {
    let graph = Graph::start(Emulator::builder()).await;
    let hook = Hook::start(Answering::After(Duration::ZERO)).await;
    let token = graph.app_token();
    let mut ids: BTreeMap<&str, String> = BTreeMap::new();
    for (name, resource) in [
        ("users", "users"),
        ("teams", "teams"),
        ("team", "teams/t1"),
        ("channels", "teams/getAllChannels"),
        ("channelMessages", "teams/getAllMessages"),
        ("mailbox", "users/u1/messages"),
        ("inbox", "users/u1/mailFolders('Inbox')/messages"),
        ("drive", "drives/d1/root"),
        ("chat", "chats('19:c1@thread.v2')"),
    ] {
        let body = graph.subscription(resource, "updated", "");
        ids.insert(name, subscribe(&graph, &hook, &token, name, body).await);
    }
    // Presence is delegated only, and always carries resource data.
    let user = graph.emulator.user_token(
        graph.emulator.tenant_id(),
        APP,
        "ada@contoso.com",
        &["Presence.Read.All"],
    );
    let cert = Cert::new(2048);
    let mut presence = graph.subscription(
        "communications/presences?$filter=id in ('u1','u2')",
        "updated",
        "",
    );
    presence["includeResourceData"] = json!(true);
    presence["encryptionCertificate"] = json!(cert.base64());
    presence["encryptionCertificateId"] = json!("presence-cert");
    ids.insert(
        "presence",
        subscribe(&graph, &hook, &user, "presence", presence).await,
    );

    let cases: &[(&str, &[&str])] = &[
        ("users/u1/events/e1", &[]),
        ("users/u2", &["users"]),
        ("teams/t1/channels/c1", &["channels"]),
        ("teams/t1/channels/c1/messages/m1", &["channelMessages"]),
        (
            "teams('t1')/channels('19:c1@thread.v2')/messages('m1')/replies('r1')",
            &["channelMessages"],
        ),
        ("teams/t1", &["team", "teams"]),
        ("teams/t2/members/x", &[]),
        (
            "users/u1/mailFolders('Inbox')/messages/m2",
            &["inbox", "mailbox"],
        ),
        ("users/u1/mailFolders('Archive')/messages/m3", &["mailbox"]),
        ("users/u1/messages/m4", &["mailbox"]),
        ("me/messages/m5", &["mailbox"]),
        ("users/u2/messages/m6", &[]),
        ("drives/d1/root", &["drive"]),
        ("drives/d1/items/file1", &["drive"]),
        ("drives/d2/root", &[]),
        ("chats('19:c1@thread.v2')", &["chat"]),
        ("chats('19:c1@thread.v2')/messages('m7')", &[]),
        ("communications/presences/u1", &["presence"]),
        ("communications/presences/u3", &[]),
    ];
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for (resource, names) in cases {
        let fired = graph
            .emulator
            .fire(&Change::new(*resource, ChangeType::Updated))
            .unwrap();
        let mut got = fired.subscription_ids.clone();
        got.sort();
        let mut want: Vec<String> = names.iter().map(|n| ids[n].clone()).collect();
        want.sort();
        assert_eq!(got, want, "{resource} should reach {names:?}");
        for name in *names {
            *expected.entry((*name).to_owned()).or_default() += 1;
        }
    }

    // What arrived is what was decided: one item per change, per subscription.
    let total: usize = expected.values().sum();
    hook.wait_items(total).await;
    let received = received(&hook);
    let counts: BTreeMap<String, usize> = received
        .iter()
        .map(|(name, items)| (name.clone(), items.len()))
        .collect();
    assert_eq!(counts, expected);
    for (name, items) in &received {
        for item in items {
            assert_eq!(item["subscriptionId"], json!(ids[name.as_str()]), "{name}");
        }
    }
    // The drive root subscription is named for changes anywhere below it.
    for item in &received["drive"] {
        assert_eq!(item["resource"], "drives/d1/root");
    }
}

/// An endpoint that echoes the validation token with this content type.
async fn echoing(content_type: &'static str) -> (String, tokio::task::JoinHandle<()>) {
    use axum::extract::RawQuery;
    let app = axum::Router::new().fallback(move |RawQuery(query): RawQuery| async move {
        let token = reqwest::Url::parse(&format!("http://x/?{}", query.unwrap_or_default()))
            .ok()
            .and_then(|u| {
                u.query_pairs()
                    .find(|(k, _)| k == "validationToken")
                    .map(|(_, v)| v.into_owned())
            })
            .unwrap_or_default();
        ([("content-type", content_type)], token)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/n", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

/// Graph requires the validation answer to be `text/plain` (a charset
/// parameter is fine: Graph's own request has one); the right token as
/// `text/html` fails the validation and no subscription is made.
#[tokio::test]
async fn the_handshake_answer_must_be_text_plain() {
    let graph = Graph::start(Emulator::builder()).await;
    let token = graph.app_token();
    for (i, (content_type, created)) in [
        ("text/plain; charset=utf-8", true),
        ("text/plain", true),
        ("text/html", false),
        ("text/html; charset=utf-8", false),
        ("application/json", false),
    ]
    .into_iter()
    .enumerate()
    {
        let (url, task) = echoing(content_type).await;
        let resource = format!("users/u{i}/messages");
        let answer = graph
            .create(&token, &graph.subscription(&resource, "created", &url))
            .await;
        task.abort();
        if created {
            assert_eq!(answer.status, 201, "{content_type}: {:#}", answer.json);
        } else {
            assert_eq!(answer.status, 400, "{content_type}: {:#}", answer.json);
            assert_eq!(
                answer.message(),
                "Subscription validation request failed. Response must have a content type of text/plain."
            );
        }
    }
    let validations: Vec<_> = graph
        .emulator
        .deliveries()
        .into_iter()
        .filter(|d| d.kind == msgraph_webhooks::emulator::DeliveryKind::Validation)
        .map(|d| (d.status, d.outcome))
        .collect();
    use msgraph_webhooks::emulator::Outcome::{Delivered, Mismatch};
    assert_eq!(
        validations,
        [
            (Some(200), Delivered),
            (Some(200), Delivered),
            (Some(200), Mismatch),
            (Some(200), Mismatch),
            (Some(200), Mismatch),
        ]
    );
}

/// The fraction digits and the offset of a date-time string.
fn time_shape(text: &str) -> (usize, String) {
    let (_, rest) = text.split_once('.').unwrap_or((text, ""));
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    (digits, rest[digits..].to_owned())
}

/// Strings as Graph's pages show them, read from the captured bodies and
/// then through this crate's own parser (it must take every form).
#[tokio::test]
async fn items_carry_the_strings_graph_writes() {
    let graph = Graph::start(Emulator::builder()).await;
    let hook = Hook::start(Answering::After(Duration::ZERO)).await;
    let token = graph.app_token();
    let cert = Cert::new(2048);
    let rich = |mut body: Value, id: &str| {
        body["includeResourceData"] = json!(true);
        body["encryptionCertificate"] = json!(cert.base64());
        body["encryptionCertificateId"] = json!(id);
        body
    };
    let mut ids: BTreeMap<String, &str> = BTreeMap::new();
    for (name, body) in [
        (
            "basicMail",
            graph.subscription("users/u1/messages", "created", ""),
        ),
        (
            "richMail",
            rich(
                graph.subscription("users/u2/messages?$select=subject", "created", ""),
                "mail",
            ),
        ),
        (
            "channelMessages",
            graph.subscription("teams/getAllMessages", "created", ""),
        ),
        (
            "callRecords",
            graph.subscription("communications/callRecords", "created", ""),
        ),
    ] {
        ids.insert(subscribe(&graph, &hook, &token, name, body).await, name);
    }
    let user = graph.emulator.user_token(
        graph.emulator.tenant_id(),
        APP,
        "ada@contoso.com",
        &["Presence.Read.All"],
    );
    let presence = rich(
        graph.subscription(
            "communications/presences?$filter=id in ('u1')",
            "updated",
            "",
        ),
        "presence",
    );
    ids.insert(
        subscribe(&graph, &hook, &user, "presence", presence).await,
        "presence",
    );

    let created = |resource: &str| Change::new(resource, ChangeType::Created);
    for change in [
        created("users/u1/messages/m1"),
        created("users/u2/messages").data(json!({"id": "m2", "subject": "Hi"})),
        // The same channel message fired in two spellings.
        created("Teams/T1/Channels/19:c1@thread.tacv2/Messages/M1"),
        created("teams('T1')/channels('19:c1@thread.tacv2')/messages('M1')"),
        created("communications/callRecords/r1"),
        Change::new("communications/presences/u1", ChangeType::Updated)
            .data(json!({"availability": "Busy", "activity": "InACall"})),
    ] {
        assert_eq!(graph.emulator.fire(&change).unwrap().items, 1, "{change:?}");
    }
    hook.wait_items(6).await;
    let mut seen: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for item in hook.items() {
        let name = ids[item["subscriptionId"].as_str().unwrap()];
        seen.entry(name).or_default().push(item);
    }
    let one = |name: &str| seen[name][0].clone();
    let tenant = graph.emulator.tenant_id();

    let basic = one("basicMail");
    assert_eq!(basic["resource"], "Users/u1/Messages/m1");
    assert_eq!(
        basic["resourceData"]["@odata.type"],
        "#Microsoft.Graph.Message"
    );
    assert_eq!(basic["resourceData"]["@odata.id"], "Users/u1/Messages/m1");

    let mail = one("richMail");
    assert_eq!(mail["resource"], "Users('u2')/messages('m2')");
    assert_eq!(
        mail["resourceData"]["@odata.type"],
        "#microsoft.graph.message"
    );
    assert_eq!(
        mail["resourceData"]["@odata.id"],
        "Users('u2')/messages('m2')"
    );
    assert_eq!(cert.decrypt(&mail["encryptedContent"])["subject"], "Hi");
    for item in [&basic, &mail] {
        let shape = time_shape(item["subscriptionExpirationDateTime"].as_str().unwrap());
        assert_eq!(shape, (7, "+05:30".to_owned()), "Outlook: {item:#}");
    }

    let messages = &seen["channelMessages"];
    assert_eq!(messages.len(), 2);
    for item in messages {
        assert_eq!(
            item["resource"],
            "teams('T1')/channels('19:c1@thread.tacv2')/messages('M1')"
        );
        assert_eq!(
            item["resourceData"]["@odata.type"],
            "#Microsoft.Graph.chatMessage"
        );
        let shape = time_shape(item["subscriptionExpirationDateTime"].as_str().unwrap());
        assert_eq!(shape, (7, "-08:00".to_owned()));
    }

    let call = one("callRecords");
    assert_eq!(call["resource"], "communications/callRecords/r1");
    assert_eq!(
        call["resourceData"]["@odata.type"],
        "#Microsoft.Graph.callrecord"
    );
    assert_eq!(
        call["resourceData"]["@odata.id"],
        "communications/callRecords/r1"
    );
    let shape = time_shape(call["subscriptionExpirationDateTime"].as_str().unwrap());
    assert_eq!(shape, (3, "+00:00".to_owned()));

    let presence = one("presence");
    assert_eq!(presence["resource"], "communications/presences/u1");
    assert_eq!(presence["resourceData"]["@odata.id"], "users/u1/presence");
    assert_eq!(
        presence["resourceData"]["@odata.type"],
        "#microsoft.graph.presence"
    );
    assert_eq!(presence["organizationId"], json!(tenant));
    let shape = time_shape(presence["subscriptionExpirationDateTime"].as_str().unwrap());
    assert_eq!(shape, (7, "Z".to_owned()));
    let decrypted = cert.decrypt(&presence["encryptedContent"]);
    assert_eq!(decrypted["@odata.id"], "users/u1/presence");
    assert_eq!(decrypted["availability"], "Busy");

    // This crate's receiver knows every spelling of the types.
    use msgraph_webhooks::ResourceKind as K;
    for (name, kind) in [
        ("basicMail", K::Message),
        ("richMail", K::Message),
        ("channelMessages", K::ChatMessage),
        ("callRecords", K::CallRecord),
        ("presence", K::Presence),
    ] {
        let odata_type = one(name)["resourceData"]["@odata.type"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(K::from_odata_type(&odata_type), kind, "{odata_type}");
    }

    // Every form is one instant, the subscription's expiration, and this
    // crate's receiver reads each of them.
    let token = graph.app_token();
    for (subscription_id, _) in ids.iter().filter(|(_, n)| **n != "presence") {
        let answer = graph
            .call(
                "GET",
                &format!("/v1.0/subscriptions/{subscription_id}"),
                Some(&token),
                None,
                &[],
            )
            .await;
        let expected = time::OffsetDateTime::parse(
            answer.json["expirationDateTime"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        for item in hook
            .items()
            .iter()
            .filter(|i| i["subscriptionId"] == json!(subscription_id))
        {
            let parsed: msgraph_webhooks::notification::ChangeNotification =
                serde_json::from_value(item.clone()).unwrap();
            let got = parsed.subscription_expiration.expect("a date-time");
            assert!(
                (got - expected).abs() < time::Duration::milliseconds(1),
                "{item:#}"
            );
        }
    }
}

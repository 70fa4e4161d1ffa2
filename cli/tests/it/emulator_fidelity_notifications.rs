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
        let items = captured.json()["value"].as_array().cloned().unwrap_or_default();
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
        ("users/u1/mailFolders('Inbox')/messages/m2", &["inbox", "mailbox"]),
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

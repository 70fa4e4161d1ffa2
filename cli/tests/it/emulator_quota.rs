//! The catalog's subscription quotas as the emulator enforces them: a
//! create over one answers `403` with a message that names the limit, and
//! what it counts within (mailbox, app and tenant, chat, the organization's
//! Teams quota). Limits are lowered per scope so a test reaches them.

use msgraph_webhooks::catalog::QuotaScope;
use msgraph_webhooks::emulator::Emulator;
use serde_json::json;

use crate::support::graph::{Answering, Graph, Hook};

async fn graph(limits: &[(QuotaScope, u32)]) -> (Graph, Hook) {
    let mut builder = Emulator::builder();
    for (scope, limit) in limits {
        builder = builder.quota_limit(*scope, *limit);
    }
    (
        Graph::start(builder).await,
        Hook::start(Answering::Well).await,
    )
}

#[tokio::test]
async fn outlook_subscriptions_count_per_mailbox_across_resources() {
    let (graph, hook) = graph(&[(QuotaScope::Mailbox, 2)]).await;
    let token = graph.app_token();
    let url = hook.url("/");
    for (resource, change) in [
        ("users/ada/messages", "created"),
        ("users/ada/events", "created"),
    ] {
        let answer = graph
            .create(&token, &graph.subscription(resource, change, &url))
            .await;
        assert_eq!(answer.status, 201, "{:#}", answer.json);
    }
    let over = graph
        .create(
            &token,
            &graph.subscription("users/ada/contacts", "created", &url),
        )
        .await;
    assert_eq!(over.status, 403, "{:#}", over.json);
    assert_eq!(over.code(), "ExtensionError");
    assert!(
        over.message().contains("at most 2 per mailbox (all apps)"),
        "{}",
        over.message()
    );
    // Another mailbox has its own quota.
    let other = graph
        .create(
            &token,
            &graph.subscription("users/grace/messages", "created", &url),
        )
        .await;
    assert_eq!(other.status, 201, "{:#}", other.json);
}

#[tokio::test]
async fn a_deleted_subscription_frees_its_place() {
    let (graph, hook) = graph(&[(QuotaScope::AppAndTenant, 1)]).await;
    let token = graph.app_token();
    let url = hook.url("/");
    let first = graph
        .create(&token, &graph.subscription("users", "updated", &url))
        .await;
    assert_eq!(first.status, 201, "{:#}", first.json);
    let over = graph
        .create(&token, &graph.subscription("groups", "updated", &url))
        .await;
    assert_eq!(
        over.status, 403,
        "users and groups share the quota: {:#}",
        over.json
    );
    assert!(
        over.message().contains("1 per app and tenant"),
        "{}",
        over.message()
    );
    let id = first.json["id"].as_str().unwrap();
    let deleted = graph
        .call(
            "DELETE",
            &format!("/v1.0/subscriptions/{id}"),
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(deleted.status, 204);
    let again = graph
        .create(&token, &graph.subscription("groups", "updated", &url))
        .await;
    assert_eq!(again.status, 201, "{:#}", again.json);
}

#[tokio::test]
async fn teams_resources_share_the_organizations_quota_and_one_per_chat() {
    let (graph, hook) = graph(&[(QuotaScope::Organization, 2)]).await;
    let token = graph.app_token();
    let url = hook.url("/");
    let teams = |resource: &str, change: &str| {
        let mut body = graph.subscription(resource, change, &url);
        body["lifecycleNotificationUrl"] = json!(hook.url("/lifecycle"));
        body["expirationDateTime"] = json!(graph.expires_in(50));
        body
    };
    let chat = graph
        .create(&token, &teams("chats/19:a@thread.v2/messages", "created"))
        .await;
    assert_eq!(chat.status, 201, "{:#}", chat.json);
    // One per app and chat: the same chat with other change types is over.
    let same_chat = graph
        .create(&token, &teams("chats/19:a@thread.v2/messages", "updated"))
        .await;
    assert_eq!(same_chat.status, 403, "{:#}", same_chat.json);
    assert!(
        same_chat
            .message()
            .contains("1 per app and chat, channel or team"),
        "{}",
        same_chat.message()
    );
    let team = graph
        .create(&token, &teams("teams/t1/channels", "created"))
        .await;
    assert_eq!(team.status, 201, "{:#}", team.json);
    // The organization's 2 are used by a chat's messages and a team's channels.
    let third = graph
        .create(&token, &teams("chats/19:b@thread.v2/messages", "created"))
        .await;
    assert_eq!(third.status, 403, "{:#}", third.json);
    assert!(
        third.message().contains("shared by all Teams resources"),
        "{}",
        third.message()
    );
}

#[tokio::test]
async fn chat_messages_of_all_a_users_chats_count_per_user_in_the_tenant() {
    let (graph, hook) = graph(&[(QuotaScope::User, 1)]).await;
    let token = graph.app_token();
    let url = hook.url("/");
    let body = |resource: &str, change: &str| {
        let mut body = graph.subscription(resource, change, &url);
        body["lifecycleNotificationUrl"] = json!(hook.url("/lifecycle"));
        body["expirationDateTime"] = json!(graph.expires_in(50));
        body
    };
    let first = graph
        .create(&token, &body("users/u1/chats/getAllMessages", "created"))
        .await;
    assert_eq!(first.status, 201, "{:#}", first.json);
    let over = graph
        .create(&token, &body("users/u1/chats/getAllMessages", "updated"))
        .await;
    assert_eq!(over.status, 403, "{:#}", over.json);
    assert!(over.message().contains("1 per user"), "{}", over.message());
    let other = graph
        .create(&token, &body("users/u2/chats/getAllMessages", "created"))
        .await;
    assert_eq!(other.status, 201, "{:#}", other.json);
    // Organization-wide subscriptions are not a chat's: no per-chat quota.
    for change in ["created", "updated"] {
        let all = graph
            .create(&token, &body("chats/getAllMessages", change))
            .await;
        assert_eq!(all.status, 201, "{:#}", all.json);
    }
}

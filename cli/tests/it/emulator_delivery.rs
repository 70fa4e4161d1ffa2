//! The delivery engine end to end, over sockets, into this crate's receiver
//! (and into a recording endpoint where the bytes on the wire matter).

use std::sync::Arc;
use std::time::Duration;

use msgraph_webhooks::crypto::{KeyRing, generate_certificate};
use msgraph_webhooks::emulator::{
    Change, DeliveryKind, DeliveryPolicy, Emulator, EndpointState, Outcome, Throttling,
};
use msgraph_webhooks::handler::HandlerEvent;
use msgraph_webhooks::tokens::Jwks;
use msgraph_webhooks::tokens::{CHANGE_TRACKING_APP_ID, TokenVersion};
use msgraph_webhooks::{ChangeType, ClientState, LifecycleEventType, Receiver, ResourceKind};
use serde_json::{Value, json};

use crate::support::graph::{APP, Answering, Cert, Graph, Hook, verify_with_jwks};
use crate::support::receivers::{FlakyInbox, SlowReceiver};
use crate::support::{Recorder, TestServer};

const STATE: &str = "secretClientValue";
const WAIT: Duration = Duration::from_secs(20);

async fn subscribe(graph: &Graph, body: &Value) -> String {
    let answer = graph.create(&graph.app_token(), body).await;
    assert_eq!(answer.status, 201, "{:#}", answer.json);
    answer.json["id"].as_str().unwrap().to_owned()
}

fn changes(events: &[HandlerEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, HandlerEvent::Change(_)))
        .count()
}

#[tokio::test]
async fn basic_notifications_reach_the_receiver_batched_per_url() {
    let graph = Graph::start(Emulator::builder()).await;
    let receiver = SlowReceiver::start(STATE, None).await;
    // Two subscriptions on one resource (different change types) and one URL.
    let created_only = subscribe(
        &graph,
        &graph.subscription("users/u1/messages", "created", &receiver.url("/notify")),
    )
    .await;
    let all = subscribe(
        &graph,
        &graph.subscription(
            "users/u1/messages",
            "created,updated",
            &receiver.url("/notify"),
        ),
    )
    .await;

    let fired = graph
        .emulator
        .fire(
            &Change::new("users/u1/messages", ChangeType::Created).data(json!({
                "id": "AAMkAGI1",
                "@odata.etag": "W/\"CQAAABYAAAA\"",
                "subject": "Hello"
            })),
        )
        .unwrap();
    assert_eq!(fired.items, 2);
    let events = receiver
        .recorder
        .wait_until("two changes", WAIT, |e| changes(e) == 2)
        .await;
    let mut ids = Vec::new();
    for event in &events {
        let HandlerEvent::Change(change) = event else {
            panic!("{event:?}")
        };
        ids.push(change.subscription_id().to_owned());
        assert_eq!(change.resource(), "Users/u1/Messages/AAMkAGI1");
        assert_eq!(*change.resource_kind(), ResourceKind::Message);
        assert_eq!(*change.change_type(), ChangeType::Created);
        assert_eq!(change.tenant_id(), Some(graph.emulator.tenant_id()));
        let data = change.resource_data().unwrap();
        assert_eq!(data.id.as_deref(), Some("AAMkAGI1"));
        assert_eq!(data.odata_etag.as_deref(), Some("W/\"CQAAABYAAAA\""));
        assert_eq!(data.odata_type.as_deref(), Some("#Microsoft.Graph.Message"));
        assert!(
            change.data().is_none(),
            "basic notifications carry no resource"
        );
    }
    ids.sort();
    let mut expected = vec![created_only, all.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    let log = graph
        .emulator
        .wait_for_deliveries(WAIT, |d| {
            d.iter().any(|r| r.kind == DeliveryKind::Notification)
        })
        .await;
    let posts: Vec<_> = log
        .into_iter()
        .filter(|d| d.kind == DeliveryKind::Notification)
        .collect();
    assert_eq!(
        posts.len(),
        1,
        "items for one URL go in one POST: {posts:?}"
    );
    assert_eq!(posts[0].items, 2);
    assert_eq!(posts[0].outcome, Outcome::Delivered);
    assert_eq!(posts[0].status, Some(202));
    // The body is kept, exactly as POSTed, to look at or feed to `inspect`.
    assert!(posts[0].body_kept);
    let kept = graph.emulator.delivery_body(posts[0].sequence).unwrap();
    let kept: Value = serde_json::from_slice(&kept).unwrap();
    assert_eq!(kept["value"].as_array().unwrap().len(), 2);
    assert_eq!(kept["value"][0]["resourceData"]["id"], "AAMkAGI1");
    let served = graph
        .call(
            "GET",
            &format!("/emulator/deliveries/{}/body", posts[0].sequence),
            None,
            None,
            &[],
        )
        .await;
    assert_eq!(served.status, 200);
    assert_eq!(served.json, kept);
    let none = graph
        .call("GET", "/emulator/deliveries/999999/body", None, None, &[])
        .await;
    assert_eq!(none.status, 404);
    // Capture → inspect: basic items need no token flags; --client-state
    // checks each item's.
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("capture.json");
    std::fs::write(&capture, serde_json::to_vec(&kept).unwrap()).unwrap();
    let inspect = |extra: &[&str]| {
        std::process::Command::new(crate::support::cli::BIN)
            .arg("inspect")
            .arg(&capture)
            .args(extra)
            .env_remove("MSGRAPH_WEBHOOKS_CLIENT_STATE")
            .output()
            .unwrap()
    };
    let plain = inspect(&[]);
    assert!(plain.status.success(), "{plain:?}");
    assert_eq!(String::from_utf8_lossy(&plain.stdout).lines().count(), 2);
    assert!(inspect(&["--client-state", STATE]).status.success());
    let wrong = inspect(&["--client-state", "not-it"]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("item 0: rejected: client_state_mismatch"),
        "{wrong:?}"
    );

    // An update reaches only the subscription that asked for updates.
    let fired = graph
        .emulator
        .fire(&Change::new(
            "users/u1/messages/AAMkAGI1",
            ChangeType::Updated,
        ))
        .unwrap();
    assert_eq!(fired.subscription_ids, [all]);
    // Fired without data, the item is the one the path names.
    let events = receiver
        .recorder
        .wait_until("the update", WAIT, |e| changes(e) == 3)
        .await;
    let Some(HandlerEvent::Change(update)) = events
        .iter()
        .rfind(|e| matches!(e, HandlerEvent::Change(c) if *c.change_type() == ChangeType::Updated))
    else {
        panic!("{events:?}")
    };
    assert_eq!(
        update.resource_data().unwrap().id.as_deref(),
        Some("AAMkAGI1")
    );
    // Graph's Outlook spelling, whatever spelling the change was fired in.
    assert_eq!(update.resource(), "Users/u1/Messages/AAMkAGI1");
}

#[tokio::test]
async fn lifecycle_notifications_reach_the_lifecycle_url() {
    let graph = Graph::start(Emulator::builder()).await;
    let receiver = SlowReceiver::start(STATE, None).await;
    // Without a lifecycleNotificationUrl there is nowhere to send one: an
    // error that says so, not a lifecycle event that never arrives.
    let bare = subscribe(
        &graph,
        &graph.subscription("users/u2/messages", "created", &receiver.url("/notify")),
    )
    .await;
    let error = graph
        .emulator
        .lifecycle(&bare, &LifecycleEventType::SubscriptionRemoved)
        .unwrap_err();
    assert!(
        error.to_string().contains("no lifecycleNotificationUrl"),
        "{error}"
    );
    let still = graph
        .call(
            "GET",
            &format!("/v1.0/subscriptions/{bare}"),
            Some(&graph.app_token()),
            None,
            &[],
        )
        .await;
    assert_eq!(still.status, 200, "a refused event changes nothing");
    let answer = graph
        .control(
            "/emulator/lifecycle",
            &json!({"subscriptionId": bare, "lifecycleEvent": "missed"}),
        )
        .await;
    assert_eq!(answer.status, 400, "{:#}", answer.json);

    let mut body = graph.subscription("users/u1/messages", "created", &receiver.url("/notify"));
    body["lifecycleNotificationUrl"] = json!(receiver.url("/lifecycle"));
    let id = subscribe(&graph, &body).await;

    let answer = graph
        .control(
            "/emulator/lifecycle",
            &json!({"subscriptionId": id, "lifecycleEvent": "reauthorizationRequired"}),
        )
        .await;
    assert_eq!(answer.status, 202, "{:#}", answer.json);
    graph
        .emulator
        .lifecycle(&id, &LifecycleEventType::SubscriptionRemoved)
        .unwrap();
    let events = receiver
        .recorder
        .wait_until("two lifecycle events", WAIT, |e| e.len() == 2)
        .await;
    let kinds: Vec<LifecycleEventType> = events
        .iter()
        .map(|e| match e {
            HandlerEvent::Lifecycle(l) => {
                assert_eq!(l.subscription_id(), id);
                l.lifecycle_event().clone()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(kinds.contains(&LifecycleEventType::ReauthorizationRequired));
    assert!(kinds.contains(&LifecycleEventType::SubscriptionRemoved));
    let gone = graph
        .call(
            "GET",
            &format!("/v1.0/subscriptions/{id}"),
            Some(&graph.app_token()),
            None,
            &[],
        )
        .await;
    assert_eq!(gone.status, 404, "subscriptionRemoved removes it");

    // `missed` is for Outlook resources only (reference §8).
    let chat = subscribe(
        &graph,
        &graph.subscription(
            "chats/19:a@thread.v2/messages",
            "created",
            &receiver.url("/notify"),
        ),
    )
    .await;
    let answer = graph
        .control(
            "/emulator/lifecycle",
            &json!({"subscriptionId": chat, "lifecycleEvent": "missed"}),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.message(),
        "Graph does not send 'missed' for chatMessage subscriptions"
    );
}

#[tokio::test]
async fn rich_notifications_are_encrypted_and_carry_verifiable_tokens() {
    for version in [TokenVersion::V1, TokenVersion::V2] {
        let graph = Graph::start(Emulator::builder().token_version(version)).await;
        let hook = Hook::start(Answering::Well).await;
        let cert = Cert::new(2048);
        let mut body =
            graph.subscription("teams/t1/channels/c1/messages", "created", &hook.url("/n"));
        body["includeResourceData"] = json!(true);
        body["encryptionCertificate"] = json!(cert.base64());
        body["encryptionCertificateId"] = json!("demo-cert");
        let id = subscribe(&graph, &body).await;
        // A second app's rich subscription on the same URL: one token per (app, tenant).
        let other_app = "99999999-8888-7777-6666-555555555555";
        let mut other = body.clone();
        other["resource"] = json!("teams/t1/channels/c2/messages");
        let answer = graph
            .create(
                &graph.emulator.app_token_with(
                    graph.emulator.tenant_id(),
                    other_app,
                    &["ChannelMessage.Read.All"],
                ),
                &other,
            )
            .await;
        assert_eq!(answer.status, 201);

        let message = json!({
            "id": "1565045424600",
            "channelIdentity": {"teamId": "t1", "channelId": "c1"},
            "body": {"contentType": "text", "content": "Hello World"}
        });
        graph
            .emulator
            .fire(
                &Change::new("teams/t1/channels/c1/messages", ChangeType::Created)
                    .data(message.clone()),
            )
            .unwrap();
        let mut second = message.clone();
        second["channelIdentity"]["channelId"] = json!("c2");
        graph
            .emulator
            .fire(&Change::new("teams/t1/channels/c2/messages", ChangeType::Created).data(second))
            .unwrap();
        hook.wait_items(2).await;
        let tokens: Vec<String> = hook
            .notifications()
            .iter()
            .flat_map(|n| {
                n["validationTokens"]
                    .as_array()
                    .expect("rich deliveries carry validationTokens")
                    .iter()
                    .map(|t| t.as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut audiences = Vec::new();
        for token in &tokens {
            let aud = crate::support::graph::claims(token)["aud"]
                .as_str()
                .unwrap()
                .to_owned();
            let claims = verify_with_jwks(&graph.emulator.jwks_url(), token, &aud).await;
            let tenant = graph.emulator.tenant_id();
            match version {
                TokenVersion::V1 => {
                    assert_eq!(claims["appid"], CHANGE_TRACKING_APP_ID);
                    assert_eq!(claims["iss"], format!("https://sts.windows.net/{tenant}/"));
                    assert_eq!(claims["ver"], "1.0");
                }
                _ => {
                    assert_eq!(claims["azp"], CHANGE_TRACKING_APP_ID);
                    assert_eq!(
                        claims["iss"],
                        format!("https://login.microsoftonline.com/{tenant}/v2.0")
                    );
                    assert_eq!(claims["ver"], "2.0");
                }
            }
            assert_eq!(claims["tid"], tenant);
            audiences.push(aud);
        }
        audiences.sort();
        audiences.dedup();
        let mut expected = vec![APP.to_owned(), other_app.to_owned()];
        expected.sort();
        assert_eq!(audiences, expected, "one token per app");

        let item = hook
            .items()
            .into_iter()
            .find(|i| i["subscriptionId"] == id)
            .unwrap();
        assert_eq!(
            item["resource"],
            "teams('t1')/channels('c1')/messages('1565045424600')"
        );
        // The chatMessage page's spelling (teams-changenotifications-chatmessage).
        assert_eq!(
            item["resourceData"]["@odata.type"],
            "#Microsoft.Graph.chatMessage"
        );
        let content = &item["encryptedContent"];
        assert_eq!(content["encryptionCertificateId"], "demo-cert");
        assert_eq!(
            content["encryptionCertificateThumbprint"],
            msgraph_webhooks::emulator::thumbprint(&cert.x509).unwrap()
        );
        let data = cert.decrypt(content);
        assert_eq!(data["body"]["content"], "Hello World");
        assert_eq!(data["@odata.type"], "#microsoft.graph.chatMessage");
    }
}

#[tokio::test]
async fn notification_url_app_id_is_the_token_audience_and_misconfigured_tenants_get_null() {
    let graph = Graph::start(Emulator::builder().misconfigured_tenant("bad-tenant")).await;
    let hook = Hook::start(Answering::Well).await;
    let cert = Cert::new(2048);
    let mut body = graph.subscription("chats/19:a@thread.v2/messages", "created", &hook.url("/n"));
    body["includeResourceData"] = json!(true);
    body["encryptionCertificate"] = json!(cert.base64());
    body["encryptionCertificateId"] = json!("c");
    body["notificationUrlAppId"] = json!("aaaaaaaa-0000-0000-0000-000000000001");
    subscribe(&graph, &body).await;
    let bad = graph
        .emulator
        .app_token_with("bad-tenant", APP, &["Chat.Read.All"]);
    // The same URL: the misconfigured tenant's items must not take the
    // other tenant's token away, so they travel in a POST of their own.
    assert_eq!(graph.create(&bad, &body).await.status, 201);

    graph
        .emulator
        .fire(
            &Change::new("chats/19:a@thread.v2/messages", ChangeType::Created)
                .data(json!({"id": "m1"})),
        )
        .unwrap();
    hook.wait_items(2).await;
    assert_eq!(
        hook.notifications().len(),
        2,
        "one POST per token situation"
    );
    for collection in hook.notifications() {
        assert_eq!(collection["value"].as_array().unwrap().len(), 1);
        let tenant = collection["value"][0]["tenantId"]
            .as_str()
            .unwrap()
            .to_owned();
        if tenant == "bad-tenant" {
            assert_eq!(collection["validationTokens"], Value::Null);
            assert!(
                collection
                    .as_object()
                    .unwrap()
                    .contains_key("validationTokens")
            );
        } else {
            let token = collection["validationTokens"][0].as_str().unwrap();
            verify_with_jwks(
                &graph.emulator.jwks_url(),
                token,
                "aaaaaaaa-0000-0000-0000-000000000001",
            )
            .await;
        }
    }
}

#[tokio::test]
async fn a_receiver_answering_503_gets_the_items_later_by_retry() {
    // A minute of backoff is a tenth of a second.
    let graph = Graph::start(Emulator::builder().time_scale(600.0)).await;
    let inbox = Arc::new(FlakyInbox::new(2));
    let receiver = SlowReceiver::start(STATE, Some(inbox)).await;
    let mut body = graph.subscription("users/u1/events", "created", &receiver.url("/notify"));
    body["expirationDateTime"] = json!(graph.expires_in(10_000));
    let id = subscribe(&graph, &body).await;
    graph
        .emulator
        .fire(&Change::new("users/u1/events", ChangeType::Created).data(json!({"id": "ev1"})))
        .unwrap();
    let events = receiver
        .recorder
        .wait_until("the retried change", WAIT, |e| changes(e) >= 1)
        .await;
    let HandlerEvent::Change(change) = &events[0] else {
        panic!()
    };
    assert_eq!(change.subscription_id(), id);
    assert_eq!(change.resource(), "Users/u1/Events/ev1");
    let log: Vec<_> = graph
        .emulator
        .wait_for_deliveries(WAIT, |d| {
            d.iter()
                .any(|r| r.outcome == Outcome::Delivered && r.kind == DeliveryKind::Notification)
        })
        .await
        .into_iter()
        .filter(|d| d.kind == DeliveryKind::Notification)
        .collect();
    assert_eq!(
        log.iter()
            .map(|d| (d.attempt, d.status))
            .collect::<Vec<_>>(),
        [(1, Some(503)), (2, Some(503)), (3, Some(202))]
    );
    assert!(log.windows(2).all(|w| w[0].time < w[1].time));
}

#[tokio::test]
async fn retries_end_after_four_hours_and_expired_subscriptions_stop() {
    let graph = Graph::start(Emulator::builder()).await;
    let hook = Hook::start(Answering::Well).await;
    let a = subscribe(
        &graph,
        &graph.subscription("users/u1/messages", "created", &hook.url("/a")),
    )
    .await;
    let b = subscribe(
        &graph,
        &graph.subscription("users/u2/messages", "created", &hook.url("/b")),
    )
    .await;
    hook.answer(Answering::Status(500));
    for user in ["u1", "u2"] {
        graph
            .emulator
            .fire(&Change::new(
                format!("users/{user}/messages"),
                ChangeType::Created,
            ))
            .unwrap();
    }
    let failed = |d: &[msgraph_webhooks::emulator::DeliveryRecord]| {
        d.iter().filter(|r| r.outcome == Outcome::Failed).count() >= 2
    };
    graph.emulator.wait_for_deliveries(WAIT, failed).await;
    // Renew `a` for a day; let `b` lapse; jump five hours.
    let answer = graph
        .call(
            "PATCH",
            &format!("/v1.0/subscriptions/{a}"),
            Some(&graph.app_token()),
            Some(&json!({"expirationDateTime": graph.expires_in(24 * 60)})),
            &[],
        )
        .await;
    assert_eq!(answer.status, 200);
    graph
        .emulator
        .clock()
        .advance(msgraph_webhooks::time::Duration::hours(5));
    let log = graph
        .emulator
        .wait_for_deliveries(WAIT, |d| {
            d.iter().any(|r| r.outcome == Outcome::Expired)
                && d.iter().any(|r| r.outcome == Outcome::Discarded)
        })
        .await;
    let expired = log.iter().find(|r| r.outcome == Outcome::Expired).unwrap();
    assert_eq!(expired.subscription_ids, std::slice::from_ref(&a));
    assert!(expired.attempt >= 2, "it was retried first");
    let discarded = log
        .iter()
        .find(|r| r.outcome == Outcome::Discarded)
        .unwrap();
    assert_eq!(discarded.subscription_ids, std::slice::from_ref(&b));

    // The lapsed subscription is gone for good.
    let token = graph.app_token();
    let gone = graph
        .call(
            "GET",
            &format!("/v1.0/subscriptions/{b}"),
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(gone.status, 404);
    let fired = graph
        .emulator
        .fire(&Change::new("users/u2/messages", ChangeType::Created))
        .unwrap();
    assert!(fired.subscription_ids.is_empty());
}

#[tokio::test]
async fn reauthorization_required_ahead_of_expiry_until_renewed() {
    // Tokens outlasting the subscription: only the notice ahead of its
    // expiry is at stake here (the token's challenges are in
    // emulator_reauthorization.rs).
    let graph =
        Graph::start(Emulator::builder().access_token_lifetime(Duration::from_secs(7 * 24 * 3600)))
            .await;
    let receiver = SlowReceiver::start(STATE, None).await;
    let mut body = graph.subscription("users/u1/contacts", "created", &receiver.url("/notify"));
    body["lifecycleNotificationUrl"] = json!(receiver.url("/lifecycle"));
    body["expirationDateTime"] = json!(graph.expires_in(60));
    let id = subscribe(&graph, &body).await;

    // 50 minutes later the subscription is within the 15-minute notice.
    graph.emulator.clock().advance(time::Duration::minutes(50));
    let events = receiver
        .recorder
        .wait_until("reauthorizationRequired", WAIT, |e| !e.is_empty())
        .await;
    let HandlerEvent::Lifecycle(notice) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(
        *notice.lifecycle_event(),
        LifecycleEventType::ReauthorizationRequired
    );
    assert_eq!(notice.subscription_id(), id);

    // Renewing answers it; the next notice comes ahead of the new expiry.
    let token = graph.app_token();
    let path = format!("/v1.0/subscriptions/{id}");
    let renewed = graph
        .call(
            "PATCH",
            &path,
            Some(&token),
            Some(&json!({"expirationDateTime": graph.expires_in(120)})),
            &[],
        )
        .await;
    assert_eq!(renewed.status, 200);
    let reauthorized = graph
        .call(
            "POST",
            &format!("{path}/reauthorize"),
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(reauthorized.status, 204);
    // 110 minutes on, within the notice of the new expiry: reauthorized, so no notice.
    graph.emulator.clock().advance(time::Duration::minutes(110));
    graph
        .emulator
        .wait_for_deliveries(Duration::from_millis(300), |_| false)
        .await;
    assert_eq!(
        receiver.recorder.events().len(),
        1,
        "reauthorized: no notice for this expiry"
    );
    graph.emulator.clock().advance(time::Duration::minutes(20));
    let gone = graph.call("GET", &path, Some(&token), None, &[]).await;
    assert_eq!(gone.status, 404, "expired");
}

/// A slow receiver drives the throttling states: slow (first attempts over
/// 3 s), drop (retries over 10 s) with `missed` for the Outlook
/// subscription, then back to normal once it answers fast again.
#[tokio::test]
async fn a_slow_receiver_drives_the_throttling_states() {
    let mut throttling = Throttling::default();
    throttling.min_samples = 3;
    throttling.window = std::time::Duration::from_secs(3600);
    let mut delivery = DeliveryPolicy::default();
    delivery.max_in_flight = 2;
    // One item per POST, so every notification is a response counted.
    delivery.max_batch = 1;
    // 10 emulated minutes are a real second; Graph's 3 s / 10 s timeouts are 300 ms / 1 s.
    // Hours pass here: tokens outlast them, as the receiver never reauthorizes.
    let graph = Graph::start(
        Emulator::builder()
            .time_scale(600.0)
            .timeout_scale(10.0)
            .throttling(throttling)
            .delivery(delivery)
            .access_token_lifetime(Duration::from_secs(30 * 24 * 3600)),
    )
    .await;
    let receiver = SlowReceiver::start(STATE, None).await;
    let mut body = graph.subscription("users/u1/messages", "created", &receiver.url("/notify"));
    body["lifecycleNotificationUrl"] = json!(receiver.url("/lifecycle"));
    body["expirationDateTime"] = json!(graph.expires_in(10_000));
    let id = subscribe(&graph, &body).await;
    let url = receiver.url("/notify");
    let state_seen = |state: EndpointState| {
        let endpoints = graph.emulator.endpoints();
        endpoints
            .iter()
            .find(|e| e.url == url)
            .is_some_and(|e| e.history.iter().any(|h| h.state == state))
    };
    let fire = |n: usize| {
        for i in 0..n {
            graph
                .emulator
                .fire(
                    &Change::new("users/u1/messages", ChangeType::Created)
                        .data(json!({"id": format!("m{i}")})),
                )
                .unwrap();
        }
    };

    // Slow: every answer takes 600 ms, over the 300 ms of a first attempt.
    receiver.delay(Duration::from_millis(600));
    fire(4);
    wait(WAIT, || state_seen(EndpointState::Slow)).await;

    // Drop: no answer at all, so retries run past their second.
    receiver.delay(Duration::from_secs(3600));
    fire(4);
    wait(Duration::from_secs(40), || state_seen(EndpointState::Drop)).await;
    fire(3);
    let log = graph
        .emulator
        .wait_for_deliveries(WAIT, |d| d.iter().any(|r| r.outcome == Outcome::Dropped))
        .await;
    assert!(
        log.iter()
            .any(|r| r.outcome == Outcome::Dropped && r.subscription_ids == [id.clone()])
    );
    receiver
        .recorder
        .wait_until("missed", WAIT, |events| {
            events.iter().any(|e| matches!(e, HandlerEvent::Lifecycle(l) if *l.lifecycle_event() == LifecycleEventType::Missed))
        })
        .await;

    // Fast again: after the drop period new notifications probe the
    // endpoint, and a window of fast answers makes it normal.
    receiver.delay(Duration::ZERO);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let normal = graph
            .emulator
            .endpoints()
            .iter()
            .find(|e| e.url == url)
            .is_some_and(|e| e.state == EndpointState::Normal && e.history.len() > 1);
        if normal {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the endpoint recovers within 60 s"
        );
        fire(1);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let history: Vec<EndpointState> = graph
        .emulator
        .endpoints()
        .into_iter()
        .find(|e| e.url == url)
        .unwrap()
        .history
        .iter()
        .map(|h| h.state)
        .collect();
    let order = [
        EndpointState::Normal,
        EndpointState::Slow,
        EndpointState::Drop,
        EndpointState::Normal,
    ];
    let mut rest = history.iter();
    assert!(
        order.iter().all(|want| rest.any(|got| got == want)),
        "states in order: {history:?}"
    );
    let before = changes(&receiver.recorder.events());
    fire(1);
    receiver
        .recorder
        .wait_until("a change after recovery", Duration::from_secs(30), |e| {
            changes(e) > before
        })
        .await;
}

/// Polls `done` every 50 ms until it holds (panics after `within`).
async fn wait(within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rich notifications into this crate's receiver: decrypted with its key
/// ring, their validation tokens checked against the emulator's JWKS (v1 and
/// v2 claims). A misconfigured tenant's `null` tokens and another emulator's
/// signatures are refused behind the ack.
#[tokio::test]
async fn rich_notifications_reach_the_receiver_decrypted_and_verified() {
    const MISCONFIGURED: &str = "2f0c3b8e-1d1e-4a57-9f5e-3c2d1b0a9f8e";
    for version in [TokenVersion::V1, TokenVersion::V2] {
        let graph = Graph::start(
            Emulator::builder()
                .token_version(version)
                .misconfigured_tenant(MISCONFIGURED),
        )
        .await;
        let forger = Graph::start(Emulator::builder().token_version(version)).await;
        let certificate = generate_certificate("emulator tests", 2048, 1).unwrap();
        let mut keys = KeyRing::new();
        keys.insert("it-cert", certificate.key().clone()).unwrap();
        let recorder = Recorder::default();
        let server = TestServer::start(
            Receiver::builder(recorder.clone())
                .client_state(ClientState::new(STATE))
                .key_ring(keys)
                .app_ids([APP])
                .jwks(Jwks::from_url(&graph.emulator.jwks_url()).unwrap())
                .workers(2),
        )
        .await;

        let rich = |graph: &Graph, chat: &str| {
            let mut body = graph.subscription(
                &format!("chats/{chat}/messages"),
                "created",
                &server.url("/notify"),
            );
            body["includeResourceData"] = json!(true);
            body["encryptionCertificate"] = json!(certificate.encryption_certificate());
            body["encryptionCertificateId"] = json!("it-cert");
            body
        };
        let good = subscribe(&graph, &rich(&graph, "19:good@thread.v2")).await;
        let misconfigured = graph
            .emulator
            .app_token_with(MISCONFIGURED, APP, &["Chat.Read.All"]);
        assert_eq!(
            graph
                .create(&misconfigured, &rich(&graph, "19:null@thread.v2"))
                .await
                .status,
            201
        );
        assert_eq!(
            forger
                .create(&forger.app_token(), &rich(&forger, "19:forged@thread.v2"))
                .await
                .status,
            201
        );

        for (emulator, chat) in [
            (&graph, "19:good@thread.v2"),
            (&graph, "19:null@thread.v2"),
            (&forger, "19:forged@thread.v2"),
        ] {
            emulator
                .emulator
                .fire(
                    &Change::new(format!("chats/{chat}/messages"), ChangeType::Created).data(
                        json!({
                            "id": "1616990032035",
                            "chatId": chat,
                            "body": {"contentType": "text", "content": format!("Hello {chat}")}
                        }),
                    ),
                )
                .unwrap();
        }
        let events = recorder
            .wait_until("the decrypted message", WAIT, |e| changes(e) >= 1)
            .await;
        let HandlerEvent::Change(change) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(change.subscription_id(), good);
        assert_eq!(*change.resource_kind(), ResourceKind::ChatMessage);
        assert_eq!(
            change.resource(),
            "chats('19:good@thread.v2')/messages('1616990032035')"
        );
        let data = change.data().expect("decrypted resource data");
        assert_eq!(data["body"]["content"], "Hello 19:good@thread.v2");

        // The other two were acknowledged (202) and then refused: null
        // tokens, and a signature by a key the emulator's JWKS doesn't have.
        let deadline = tokio::time::Instant::now() + WAIT;
        while server.metrics.rejected_count("tokens_null") == 0
            || server.metrics.rejected_count("token_unknown_key") == 0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "both refusals counted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(changes(&recorder.events()), 1, "{version:?}");
        for emulator in [&graph, &forger] {
            let log = emulator.emulator.deliveries();
            assert!(
                log.iter()
                    .filter(|d| d.kind == DeliveryKind::Notification)
                    .all(|d| d.status == Some(202)),
                "{log:?}"
            );
        }
    }
}

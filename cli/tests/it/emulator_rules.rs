//! The catalog's rules as the emulator enforces them on `POST /subscriptions`:
//! one test per rule of the "Rules attached to kinds and paths" table, the
//! lifetime table, and each permission column allowed and refused. Every
//! refusal asserts the status and the message.

use msgraph_webhooks::ChangeType;
use msgraph_webhooks::emulator::{CONSUMER_TENANT_ID, Change, Emulator, user_object_id};
use serde_json::{Value, json};

use crate::support::graph::{APP, Answer, Answering, Cert, Graph, Hook};

async fn setup(builder: msgraph_webhooks::emulator::EmulatorBuilder) -> (Graph, Hook) {
    (
        Graph::start(builder).await,
        Hook::start(Answering::Well).await,
    )
}

/// A refused create: a `403` carries the reason in Graph's `ExtensionError`
/// form, the others the message itself.
fn refused(answer: &Answer, status: u16, message: &str) {
    assert_eq!(answer.status, status, "{:#}", answer.json);
    if status == 403 {
        assert_eq!(answer.code(), "ExtensionError");
        assert_eq!(
            answer.message(),
            format!("Operation: Create; Exception: [Status Code: Forbidden; Reason: {message}]")
        );
    } else {
        assert_eq!(answer.message(), message);
    }
    let inner = &answer.json["error"]["innerError"];
    assert!(inner["request-id"].is_string() && inner["date"].is_string());
}

fn created(answer: &Answer) -> &Value {
    assert_eq!(answer.status, 201, "{:#}", answer.json);
    &answer.json
}

fn work_token(graph: &Graph, user: &str, scopes: &[&str]) -> String {
    let tenant = graph.emulator.tenant_id().to_owned();
    graph.emulator.user_token(&tenant, APP, user, scopes)
}

fn personal_token(graph: &Graph, user: &str, scopes: &[&str]) -> String {
    graph
        .emulator
        .user_token(CONSUMER_TENANT_ID, APP, user, scopes)
}

fn rich(mut body: Value, cert: &Cert) -> Value {
    body["includeResourceData"] = json!(true);
    body["encryptionCertificate"] = json!(cert.base64());
    body["encryptionCertificateId"] = json!("cert-1");
    body
}

/// Rule: `includeResourceData: true` requires `encryptionCertificate` (+ id)
/// for chatMessage, conversationMember, team, channel, chat.
#[tokio::test]
async fn resource_data_needs_a_certificate_for_teams_kinds() {
    let (graph, hook) = setup(Emulator::builder()).await;
    let token = graph.app_token();
    let cert = Cert::new(2048);
    for (resource, kind) in [
        ("chats/19:a@thread.v2/messages", "chatMessage"),
        ("chats/19:a@thread.v2/members", "conversationMember"),
        ("teams/t1", "team"),
        ("teams/t1/channels", "channel"),
        ("chats/19:a@thread.v2", "chat"),
    ] {
        let message = format!(
            "includeResourceData requires encryptionCertificate and encryptionCertificateId for {kind} \
             subscriptions: add a base64 DER certificate and an id of your choosing."
        );
        let mut body = graph.subscription(resource, "created,updated", &hook.url("/n"));
        body["includeResourceData"] = json!(true);
        refused(&graph.create(&token, &body).await, 400, &message);
        body["encryptionCertificate"] = json!(cert.base64());
        refused(&graph.create(&token, &body).await, 400, &message);
        body["encryptionCertificateId"] = json!("cert-1");
        let sub = graph.create(&token, &body).await;
        let sub = created(&sub);
        assert_eq!(sub["includeResourceData"], true);
        assert_eq!(sub["encryptionCertificateId"], "cert-1");
        assert_eq!(sub["encryptionCertificate"], cert.base64(), "echoed");
    }
    // Certificates Graph can't use: not base64, not DER, a 1024-bit key.
    let small = Cert::new(1024);
    for bad in [
        "ssh-rsa AAAAB3NzaC1yc2E".to_owned(),
        "AAAA".to_owned(),
        small.base64(),
    ] {
        let mut body = rich(
            graph.subscription("chats/19:b@thread.v2/messages", "created", &hook.url("/n")),
            &cert,
        );
        body["encryptionCertificate"] = json!(bad);
        refused(
            &graph.create(&token, &body).await,
            400,
            "Certificate validation error: Cannot find the requested object.",
        );
    }
}

/// Rule: presence resource data is always encrypted; creation fails without a certificate.
#[tokio::test]
async fn presence_is_always_encrypted() {
    let (graph, hook) = setup(Emulator::builder()).await;
    let token = work_token(&graph, "ada@contoso.com", &["Presence.Read.All"]);
    let body = graph.subscription("communications/presences/u1", "updated", &hook.url("/n"));
    refused(
        &graph.create(&token, &body).await,
        400,
        "presence resource data is always encrypted: every presence subscription needs \
         encryptionCertificate and encryptionCertificateId.",
    );
    let cert = Cert::new(2048);
    let mut with_cert = body.clone();
    with_cert["encryptionCertificate"] = json!(cert.base64());
    with_cert["encryptionCertificateId"] = json!("presence-cert");
    created(&graph.create(&token, &with_cert).await);

    // Notifications are encrypted even without includeResourceData.
    let fired = graph
        .emulator
        .fire(
            &Change::new("communications/presences/u1", ChangeType::Updated)
                .data(json!({"id": "u1", "availability": "Busy"})),
        )
        .unwrap();
    assert_eq!(fired.items, 1);
    let item = hook.wait_items(1).await.remove(0);
    assert_eq!(
        cert.decrypt(&item["encryptedContent"])["availability"],
        "Busy"
    );

    // Several users need `$filter=id in (…)`.
    let mut collection = with_cert.clone();
    collection["resource"] = json!("communications/presences");
    refused(
        &graph.create(&token, &collection).await,
        400,
        "Presence subscriptions on communications/presences need $filter=id in ('{id}','{id}',…) \
         naming 1 to 650 users, or use communications/presences/{id} for one user.",
    );
    collection["resource"] = json!("communications/presences?$filter=id in ('u2','u3')");
    created(&graph.create(&token, &collection).await);
}

/// Rule: metered APIs take `?model=A` or `?model=B` per path; none is
/// evaluation mode; PATCH can't change the model.
#[tokio::test]
async fn payment_models() {
    let (graph, hook) = setup(Emulator::builder()).await;
    let token = graph.app_token();
    let url = hook.url("/n");
    for resource in [
        "chats/getAllMessages",
        "chats/getAllMessages?model=A",
        "teams/getAllMessages?model=B",
        "appCatalogs/teamsApps/app1/installedToChats/getAllMessages?model=B",
        "chats/getAllMembers?model=A",
        "teams/getAllMembers?model=B",
        "teams/getAllMembers",
        "appCatalogs/teamsApps/app1/installedToChats?model=B",
    ] {
        created(
            &graph
                .create(&token, &graph.subscription(resource, "created", &url))
                .await,
        );
    }
    for (resource, message) in [
        (
            "chats/getAllMessages?model=C",
            "Payment model 'model=C' is not supported: use model=A or model=B, or no model for evaluation mode.",
        ),
        (
            "users/u1/chats/getAllMessages?model=A",
            "Payment model 'model=A' is not supported: this resource supports only model=B (or no model for evaluation mode).",
        ),
        (
            "appCatalogs/teamsApps/app1/installedToChats/getAllMembers?model=A",
            "Payment model 'model=A' is not supported: this resource supports only model=B (or no model for evaluation mode).",
        ),
        (
            "chats/19:a@thread.v2/messages?model=A",
            "Payment model 'model=A' is not supported: the resource is not a metered API. Remove ?model= from the resource.",
        ),
    ] {
        refused(
            &graph
                .create(&token, &graph.subscription(resource, "created", &url))
                .await,
            400,
            message,
        );
    }
    let sub = graph
        .create(
            &token,
            &graph.subscription("teams/getAllMessages?model=A", "created", &url),
        )
        .await;
    let id = created(&sub)["id"].as_str().unwrap().to_owned();
    let patch = json!({
        "expirationDateTime": graph.expires_in(55),
        "resource": "teams/getAllMessages?model=B",
    });
    refused(
        &graph
            .call(
                "PATCH",
                &format!("/v1.0/subscriptions/{id}"),
                Some(&token),
                Some(&patch),
                &[],
            )
            .await,
        400,
        "The payment model of an existing subscription can't be changed: create a new subscription with the new model.",
    );
}

/// Rule: `notifyOnUserSpecificProperties=true` on `chats/{id}` or
/// `users/{id}/chats` sends two payloads, with and without user-specific properties.
#[tokio::test]
async fn user_specific_properties_send_two_payloads() {
    let (graph, hook) = setup(Emulator::builder()).await;
    let token = graph.app_token();
    let cert = Cert::new(2048);
    let body = rich(
        graph.subscription(
            "chats/19:a@thread.v2?notifyOnUserSpecificProperties=true",
            "updated",
            &hook.url("/n"),
        ),
        &cert,
    );
    created(&graph.create(&token, &body).await);
    refused(
        &graph
            .create(
                &token,
                &graph.subscription(
                    "chats/19:a@thread.v2/messages?notifyOnUserSpecificProperties=true",
                    "created",
                    &hook.url("/n"),
                ),
            )
            .await,
        400,
        "notifyOnUserSpecificProperties is supported only on chats/{id} and users/{id}/chats.",
    );
    graph
        .emulator
        .fire(
            &Change::new("chats/19:a@thread.v2", ChangeType::Updated).data(json!({
                "id": "19:a@thread.v2",
                "topic": "Launch",
                "viewpoint": {"isHidden": false, "lastMessageReadDateTime": "2026-05-01T10:00:00Z"}
            })),
        )
        .unwrap();
    let items = hook.wait_items(2).await;
    let payloads: Vec<Value> = items
        .iter()
        .map(|i| cert.decrypt(&i["encryptedContent"]))
        .collect();
    assert!(payloads.iter().all(|p| p["topic"] == "Launch"));
    assert_eq!(
        payloads
            .iter()
            .filter(|p| p.get("viewpoint").is_some())
            .count(),
        1,
        "one payload with the user-specific viewpoint, one without"
    );
    assert!(
        items
            .iter()
            .all(|i| i["resource"] == "chats('19:a@thread.v2')")
    );
}

/// Rule: `Prefer: include-unknown-enum-members` brings `systemEventMessage`
/// in `messageType`; without it the value is `unknownFutureValue`.
#[tokio::test]
async fn unknown_enum_members_only_when_preferred() {
    let (graph, hook) = setup(Emulator::builder()).await;
    let token = graph.app_token();
    let cert = Cert::new(2048);
    let with = rich(
        graph.subscription(
            "chats/19:with@thread.v2/messages",
            "created",
            &hook.url("/with"),
        ),
        &cert,
    );
    let without = rich(
        graph.subscription(
            "chats/19:without@thread.v2/messages",
            "created",
            &hook.url("/without"),
        ),
        &cert,
    );
    created(
        &graph
            .create_with(&token, &with, &[("Prefer", "include-unknown-enum-members")])
            .await,
    );
    created(&graph.create(&token, &without).await);
    for chat in ["19:with@thread.v2", "19:without@thread.v2"] {
        graph
            .emulator
            .fire(
                &Change::new(format!("chats/{chat}/messages"), ChangeType::Created).data(json!({
                    "id": format!("m-{chat}"),
                    "chatId": chat,
                    "messageType": "systemEventMessage",
                })),
            )
            .unwrap();
    }
    let items = hook.wait_items(2).await;
    for item in items {
        let data = cert.decrypt(&item["encryptedContent"]);
        let expected = if data["chatId"] == "19:with@thread.v2" {
            "systemEventMessage"
        } else {
            "unknownFutureValue"
        };
        assert_eq!(data["messageType"], expected);
        assert_eq!(
            item["resource"],
            format!(
                "chats('{}')/messages('{}')",
                data["chatId"].as_str().unwrap(),
                data["id"].as_str().unwrap()
            )
        );
    }
}

/// Rule: aiInteraction needs a Copilot licence for the user in the path, or the tenant.
#[tokio::test]
async fn copilot_licence() {
    let (graph, hook) = setup(
        Emulator::builder()
            .copilot_unlicensed_user("u2")
            .copilot_tenant_licensed(false),
    )
    .await;
    let token = graph.app_token();
    let url = hook.url("/n");
    created(
        &graph
            .create(
                &token,
                &graph.subscription(
                    "copilot/users/u1/interactionHistory/getAllEnterpriseInteractions",
                    "created",
                    &url,
                ),
            )
            .await,
    );
    refused(
        &graph
            .create(
                &token,
                &graph.subscription(
                    "copilot/users/u2/interactionHistory/getAllEnterpriseInteractions",
                    "created",
                    &url,
                ),
            )
            .await,
        403,
        "aiInteraction subscriptions need a valid Microsoft 365 Copilot licence (service plan \
         3f30311c-6b1e-48a4-ab79-725b469da960) for user 'u2'.",
    );
    refused(
        &graph
            .create(
                &token,
                &graph.subscription(
                    "copilot/interactionHistory/getAllEnterpriseInteractions",
                    "created",
                    &url,
                ),
            )
            .await,
        403,
        "aiInteraction subscriptions need a valid Microsoft 365 Copilot licence (service plan \
         3f30311c-6b1e-48a4-ab79-725b469da960) for the tenant.",
    );
}

/// Rule: driveItem: folders only; OneDrive for Business the root only;
/// personal OneDrive the root or any folder.
#[tokio::test]
async fn drive_items_are_folders_and_business_drives_root_only() {
    let (graph, hook) = setup(Emulator::builder().drive_file("file-1")).await;
    let url = hook.url("/n");
    let app = graph.app_token_with(&["Files.Read.All"]);
    created(
        &graph
            .create(&app, &graph.subscription("drives/d1/root", "updated", &url))
            .await,
    );
    let root_only = "OneDrive for Business and SharePoint take subscriptions on the root folder only: \
                     subscribe to me/drive/root or drives/{id}/root.";
    refused(
        &graph
            .create(
                &app,
                &graph.subscription("users/u1/drive/items/folder-1", "updated", &url),
            )
            .await,
        400,
        root_only,
    );
    let work = work_token(&graph, "ada@contoso.com", &["Files.Read.All"]);
    refused(
        &graph
            .create(
                &work,
                &graph.subscription("me/drive/items/folder-1", "updated", &url),
            )
            .await,
        400,
        root_only,
    );
    let personal = personal_token(&graph, "ada@outlook.com", &["Files.Read"]);
    created(
        &graph
            .create(
                &personal,
                &graph.subscription("me/drive/items/folder-1", "updated", &url),
            )
            .await,
    );
    refused(
        &graph
            .create(
                &personal,
                &graph.subscription("me/drive/items/file-1", "updated", &url),
            )
            .await,
        400,
        "'file-1' is a file: driveItem subscriptions take folders only. Subscribe to the folder that holds it.",
    );
}

/// Rule: `Prefer: includesecuritywebhooks` adds notifications of permission
/// changes on OneDrive for Business and SharePoint.
#[tokio::test]
async fn security_webhooks_only_when_preferred() {
    let (graph, hook) = setup(Emulator::builder()).await;
    let token = graph.app_token();
    created(
        &graph
            .create_with(
                &token,
                &graph.subscription("drives/d1/root", "updated", &hook.url("/d1")),
                &[("Prefer", "includesecuritywebhooks")],
            )
            .await,
    );
    created(
        &graph
            .create(
                &token,
                &graph.subscription("drives/d2/root", "updated", &hook.url("/d2")),
            )
            .await,
    );
    for drive in ["d1", "d2"] {
        let fired = graph
            .emulator
            .fire(
                &Change::new(format!("drives/{drive}/root"), ChangeType::Updated)
                    .permissions_changed(),
            )
            .unwrap();
        assert_eq!(fired.items, usize::from(drive == "d1"), "{drive}");
    }
    let fired = graph
        .emulator
        .fire(&Change::new("drives/d2/root", ChangeType::Updated))
        .unwrap();
    assert_eq!(fired.items, 1, "ordinary changes reach every subscription");
    let items = hook.wait_items(2).await;
    assert_eq!(items[0]["resource"], "drives/d1/root");
    assert_eq!(
        items[0]["resourceData"],
        Value::Null,
        "OneDrive sends no resourceData"
    );
}

/// Rule: delegated Outlook permissions reach only the signed-in user's
/// mailbox; `*.Shared` permissions don't work for subscriptions.
#[tokio::test]
async fn delegated_outlook_reaches_only_the_own_mailbox() {
    let (graph, hook) = setup(Emulator::builder()).await;
    let url = hook.url("/n");
    let ada = work_token(&graph, "ada@contoso.com", &["Mail.Read", "Calendars.Read"]);
    created(
        &graph
            .create(&ada, &graph.subscription("me/messages", "created", &url))
            .await,
    );
    created(
        &graph
            .create(
                &ada,
                &graph.subscription("users/ada@contoso.com/events", "created", &url),
            )
            .await,
    );
    // `me/messages` and `users/{ada's id}/messages` are one resource.
    let ada_id = user_object_id(graph.emulator.tenant_id(), "ada@contoso.com");
    let again = graph
        .create(
            &ada,
            &graph.subscription(&format!("users/{ada_id}/messages"), "created", &url),
        )
        .await;
    assert_eq!(again.status, 409);
    refused(
        &graph
            .create(
                &ada,
                &graph.subscription("users/bob@contoso.com/messages", "created", &url),
            )
            .await,
        403,
        "Delegated permissions reach only the signed-in user's mailbox: subscribe to message \
         items under me/ (or your own users/{id}/), or use application permissions for other mailboxes.",
    );
    let shared = work_token(&graph, "ada@contoso.com", &["Mail.Read.Shared"]);
    refused(
        &graph
            .create(
                &shared,
                &graph.subscription("me/mailFolders('Inbox')/messages", "created", &url),
            )
            .await,
        403,
        "Insufficient privileges: the token's delegated (work or school account) permissions include none of \
         Mail.ReadBasic or Mail.Read. Grant one of them (least privileged first). The Outlook *.Shared \
         permissions don't work for subscriptions: use the application permission for other users' mailboxes.",
    );
    let app = graph.app_token_with(&["Mail.Read"]);
    created(
        &graph
            .create(
                &app,
                &graph.subscription("users/bob@contoso.com/messages", "created", &url),
            )
            .await,
    );
}

/// Rule: virtual events have only basic notifications.
#[tokio::test]
async fn virtual_events_are_basic_only() {
    let (graph, hook) = setup(Emulator::builder()).await;
    let token = graph.app_token();
    let cert = Cert::new(2048);
    for (resource, kind) in [
        ("solutions/virtualEvents/webinars/w1", "virtualEventWebinar"),
        (
            "solutions/virtualEvents/townhalls/t1/sessions",
            "virtualEventTownhall",
        ),
    ] {
        let body = graph.subscription(resource, "created,updated", &hook.url("/n"));
        refused(
            &graph.create(&token, &rich(body.clone(), &cert)).await,
            400,
            &format!(
                "{kind} subscriptions support only basic notifications: remove includeResourceData."
            ),
        );
        created(&graph.create(&token, &body).await);
    }
}

/// Rule: the same `changeType` and `resource` as an existing subscription is `409 Conflict`.
#[tokio::test]
async fn duplicates_conflict() {
    let (graph, hook) = setup(Emulator::builder()).await;
    let token = graph.app_token();
    let url = hook.url("/n");
    let first = graph
        .create(
            &token,
            &graph.subscription("users/u1/messages", "created,updated", &url),
        )
        .await;
    let id = created(&first)["id"].as_str().unwrap().to_owned();
    for (resource, change_type) in [
        ("users/u1/messages", "created,updated"),
        ("Users('u1')/Messages", "updated,created"),
    ] {
        let answer = graph
            .create(
                &token,
                &graph.subscription(resource, change_type, &hook.url("/other")),
            )
            .await;
        refused(
            &answer,
            409,
            &format!("Subscription Id {id} already exists for the requested combination"),
        );
        assert_eq!(answer.code(), "Conflict");
    }
    created(
        &graph
            .create(
                &token,
                &graph.subscription("users/u1/messages", "deleted", &url),
            )
            .await,
    );
    // Another app may subscribe to the same resource.
    let other =
        graph
            .emulator
            .app_token_with(graph.emulator.tenant_id(), "another-app", &["Mail.Read"]);
    created(
        &graph
            .create(
                &other,
                &graph.subscription("users/u1/messages", "created,updated", &url),
            )
            .await,
    );
}

/// Rule: `clientState` and `latestSupportedTlsVersion` are optional; TLS
/// versions are v1_0 to v1_3, v1_2 by default.
#[tokio::test]
async fn optional_client_state_and_tls_versions() {
    let (graph, hook) = setup(Emulator::builder()).await;
    let token = graph.app_token();
    let mut body = graph.subscription("users/u1/messages", "created", &hook.url("/n"));
    body.as_object_mut().unwrap().remove("clientState");
    let answer = graph.create(&token, &body).await;
    let sub = created(&answer);
    assert_eq!(sub["clientState"], Value::Null);
    assert_eq!(sub["latestSupportedTlsVersion"], "v1_2");
    assert!(
        sub.get("notificationContentType").is_none(),
        "a beta property"
    );
    assert_eq!(sub["applicationId"], APP);
    assert_eq!(
        sub["@odata.context"],
        format!(
            "{}/v1.0/$metadata#subscriptions/$entity",
            graph.emulator.url()
        )
    );

    let mut tls = graph.subscription("users/u1/events", "created", &hook.url("/n"));
    tls["latestSupportedTlsVersion"] = json!("v1_3");
    assert_eq!(
        created(&graph.create(&token, &tls).await)["latestSupportedTlsVersion"],
        "v1_3"
    );
    tls["resource"] = json!("users/u1/contacts");
    tls["latestSupportedTlsVersion"] = json!("v2_0");
    refused(
        &graph.create(&token, &tls).await,
        400,
        "latestSupportedTlsVersion must be one of v1_0, v1_1, v1_2, v1_3.",
    );
    let mut long = graph.subscription("users/u1/contacts", "created", &hook.url("/n"));
    long["clientState"] = json!("x".repeat(129));
    refused(
        &graph.create(&token, &long).await,
        400,
        "clientState must be at most 128 characters.",
    );
}

/// The lifetime table: each kind's maximum accepted, one minute more
/// refused; closer than 45 minutes raised to now + 45 minutes.
#[tokio::test]
async fn lifetimes_per_kind_and_the_45_minute_floor() {
    let (graph, hook) = setup(Emulator::builder()).await;
    let app = graph.app_token();
    let presence = work_token(&graph, "ada@contoso.com", &["Presence.Read.All"]);
    let todo = work_token(&graph, "ada@contoso.com", &["Tasks.ReadWrite"]);
    let conversations = work_token(&graph, "ada@contoso.com", &["Group.Read.All"]);
    let cert = Cert::new(2048);
    let cases: &[(&str, &str, &str, i64, bool)] = &[
        (
            "security/alerts?$filter=status eq 'New'",
            "updated",
            &app,
            43_200,
            false,
        ),
        ("drives/d1/root", "updated", &app, 42_300, false),
        ("sites/s1/lists/l1", "updated", &app, 42_300, false),
        ("users", "updated", &app, 41_760, false),
        ("groups", "updated", &app, 41_760, false),
        ("users/u1/messages", "created", &app, 10_080, false),
        ("users/u1/events", "created", &app, 10_080, false),
        ("users/u1/contacts", "created", &app, 10_080, false),
        (
            "users/u2/messages?$select=subject",
            "created",
            &app,
            1_440,
            true,
        ),
        ("communications/callRecords", "created", &app, 4_230, false),
        (
            "groups/g1/conversations",
            "created",
            &conversations,
            4_230,
            false,
        ),
        ("print/printers/p1/jobs", "created", &app, 4_230, false),
        (
            "print/taskDefinitions/t1/tasks",
            "created",
            &app,
            4_230,
            false,
        ),
        ("me/todo/lists/l1/tasks", "created", &todo, 4_230, false),
        (
            "copilot/interactionHistory/getAllEnterpriseInteractions",
            "created",
            &app,
            4_320,
            false,
        ),
        (
            "communications/onlineMeetings/getAllRecordings",
            "created",
            &app,
            4_320,
            false,
        ),
        (
            "communications/onlineMeetings/getAllTranscripts",
            "created",
            &app,
            4_320,
            false,
        ),
        ("teams/getAllChannels", "created", &app, 4_320, false),
        ("chats", "created", &app, 4_320, false),
        ("chats/getAllMessages", "created", &app, 4_320, false),
        ("chats/getAllMembers", "created", &app, 4_320, false),
        ("teams", "created", &app, 4_320, false),
        ("teams/t1/schedule/shifts", "created", &app, 360, false),
        (
            "teams/t1/schedule/offerShiftRequests",
            "created",
            &app,
            360,
            false,
        ),
        (
            "teams/t1/schedule/openShiftChangeRequests",
            "created",
            &app,
            360,
            false,
        ),
        (
            "teams/t1/schedule/swapShiftsChangeRequests",
            "created",
            &app,
            360,
            false,
        ),
        (
            "teams/t1/schedule/timeOffRequests",
            "created",
            &app,
            360,
            false,
        ),
        (
            "communications/presences/u1",
            "updated",
            &presence,
            60,
            true,
        ),
    ];
    for (resource, change_type, token, max, with_data) in cases {
        let mut body = graph.subscription(resource, change_type, &hook.url("/n"));
        body["lifecycleNotificationUrl"] = json!(hook.url("/lifecycle"));
        if *with_data {
            body = rich(body, &cert);
        }
        body["expirationDateTime"] = json!(graph.expires_in(*max + 1));
        let answer = graph.create(token, &body).await;
        refused(
            &answer,
            400,
            &format!("Subscription expiration can only be {max} minutes in the future."),
        );
        assert_eq!(answer.code(), "ExtensionError");
        let asked = graph.expires_in(*max - 1);
        body["expirationDateTime"] = json!(asked);
        let answer = graph.create(token, &body).await;
        let expiration = created(&answer)["expirationDateTime"].as_str().unwrap();
        let parse = |s: &str| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
        };
        // Graph keeps seven fraction digits.
        let kept = parse(expiration) - parse(&asked);
        assert!(
            kept.abs() < time::Duration::microseconds(1),
            "{resource}: {kept}"
        );
    }

    let before = graph.emulator.clock().now();
    let mut soon = graph.subscription("users/u9/messages", "created", &hook.url("/n"));
    soon["expirationDateTime"] = json!(graph.expires_in(5));
    let answer = graph.create(&app, &soon).await;
    let after = graph.emulator.clock().now();
    let expiration = time::OffsetDateTime::parse(
        created(&answer)["expirationDateTime"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let floor = time::Duration::minutes(45);
    assert!(expiration >= before + floor && expiration <= after + floor);
}

/// Teams resources expiring more than 1 hour ahead need a lifecycleNotificationUrl.
#[tokio::test]
async fn teams_subscriptions_over_an_hour_need_a_lifecycle_url() {
    let (graph, hook) = setup(Emulator::builder()).await;
    let token = graph.app_token();
    let mut body = graph.subscription("teams/t1/channels/c1/messages", "created", &hook.url("/n"));
    body["expirationDateTime"] = json!(graph.expires_in(61));
    refused(
        &graph.create(&token, &body).await,
        400,
        "lifecycleNotificationUrl is required for chatMessage subscriptions that expire more than 1 hour \
         from now: add one, or expire within the hour.",
    );
    body["lifecycleNotificationUrl"] = json!(hook.url("/lifecycle"));
    let answer = graph.create(&token, &body).await;
    assert_eq!(
        created(&answer)["lifecycleNotificationUrl"],
        hook.url("/lifecycle")
    );
    assert_eq!(
        hook.captured().iter().filter(|c| c.is_validation()).count(),
        2,
        "both URLs are validated"
    );
}

/// Change types per kind (drive items and lists `updated` only; users and
/// groups `updated` and `deleted`), and unknown ones.
#[tokio::test]
async fn change_types_per_kind() {
    let (graph, hook) = setup(Emulator::builder()).await;
    let token = graph.app_token();
    let url = hook.url("/n");
    for (resource, change_type, message) in [
        (
            "drives/d1/root",
            "created",
            "changeType 'created' is not supported for driveItem subscriptions: use updated.",
        ),
        (
            "sites/s/lists/l",
            "updated,deleted",
            "changeType 'deleted' is not supported for list subscriptions: use updated.",
        ),
        (
            "users",
            "created",
            "changeType 'created' is not supported for user subscriptions: use updated or deleted.",
        ),
        (
            "users/u1/messages",
            "created,moved",
            "'moved' is not a change type: changeType is a comma-separated list of created, updated and deleted.",
        ),
    ] {
        refused(
            &graph
                .create(&token, &graph.subscription(resource, change_type, &url))
                .await,
            400,
            message,
        );
    }
    let answer = graph
        .create(
            &token,
            &graph.subscription("groups", "Updated, deleted", &url),
        )
        .await;
    assert_eq!(created(&answer)["changeType"], "updated,deleted");
}

#[tokio::test]
async fn unsupported_resources_and_me_without_a_user() {
    let (graph, hook) = setup(Emulator::builder()).await;
    let token = graph.app_token();
    let url = hook.url("/n");
    refused(
        &graph
            .create(
                &token,
                &graph.subscription("me/calendar/colour", "updated", &url),
            )
            .await,
        400,
        "Resource 'me/calendar/colour' does not support subscriptions: it matches no supported resource. \
         Check the path against the list of supported resources (e.g. me/messages, chats/{id}/messages).",
    );
    refused(
        &graph
            .create(
                &token,
                &graph.subscription("chats('19:x/messages", "created", &url),
            )
            .await,
        400,
        "Invalid resource: the resource is not a well-formed path. Write a path relative to the Graph root, e.g. me/messages.",
    );
    refused(
        &graph
            .create(&token, &graph.subscription("me/messages", "created", &url))
            .await,
        400,
        "/me request is only valid with delegated authentication flow.",
    );
}

/// Each permission column, allowed and refused.
#[tokio::test]
async fn permission_columns() {
    let (graph, hook) = setup(Emulator::builder()).await;
    let url = hook.url("/n");

    // Application.
    let app = graph.app_token_with(&["Chat.Read.All"]);
    created(
        &graph
            .create(
                &app,
                &graph.subscription("chats/getAllMessages", "created", &url),
            )
            .await,
    );
    let rsc = graph.app_token_with(&["Chat.Manage.Chat"]);
    created(
        &graph
            .create(
                &rsc,
                &graph.subscription("chats/19:r@thread.v2", "updated", &url),
            )
            .await,
    );
    let write_only = graph.app_token_with(&["Mail.ReadWrite"]);
    refused(
        &graph
            .create(
                &write_only,
                &graph.subscription("users/u1/messages", "created", &url),
            )
            .await,
        403,
        "Insufficient privileges: the token's application permissions include none of Mail.Read. \
         Grant one of them (least privileged first).",
    );
    refused(
        &graph
            .create(
                &graph.app_token(),
                &graph.subscription("groups/g1/conversations", "created", &url),
            )
            .await,
        403,
        "application permissions are not supported for this conversation resource: use delegated \
         (work or school account) permissions.",
    );

    // Delegated, work or school account.
    let basic = work_token(&graph, "ada@contoso.com", &["Mail.ReadBasic"]);
    created(
        &graph
            .create(&basic, &graph.subscription("me/messages", "created", &url))
            .await,
    );
    let calendars = work_token(&graph, "bob@contoso.com", &["Calendars.Read"]);
    refused(
        &graph
            .create(
                &calendars,
                &graph.subscription("me/messages", "created", &url),
            )
            .await,
        403,
        "Insufficient privileges: the token's delegated (work or school account) permissions include none of \
         Mail.ReadBasic or Mail.Read. Grant one of them (least privileged first).",
    );
    let work_chat = work_token(&graph, "ada@contoso.com", &["Chat.Read.All"]);
    refused(
        &graph
            .create(
                &work_chat,
                // `updated`: the app's `created` one above would be a duplicate,
                // refused (409) before the caller is looked at.
                &graph.subscription("chats/getAllMessages", "updated", &url),
            )
            .await,
        403,
        "delegated (work or school account) permissions are not supported for this chatMessage resource: \
         use application permissions.",
    );

    // Delegated, personal Microsoft account.
    let contacts = personal_token(&graph, "ada@outlook.com", &["Contacts.Read"]);
    created(
        &graph
            .create(
                &contacts,
                &graph.subscription("me/contacts", "created", &url),
            )
            .await,
    );
    let wrong = personal_token(&graph, "ada@outlook.com", &["Mail.Read"]);
    refused(
        &graph
            .create(&wrong, &graph.subscription("me/events", "created", &url))
            .await,
        403,
        "Insufficient privileges: the token's delegated (personal Microsoft account) permissions include \
         none of Calendars.Read. Grant one of them (least privileged first).",
    );
    let personal_chat = personal_token(&graph, "ada@outlook.com", &["Chat.Read"]);
    refused(
        &graph
            .create(
                &personal_chat,
                &graph.subscription("chats/19:p@thread.v2/messages", "created", &url),
            )
            .await,
        403,
        "delegated (personal Microsoft account) permissions are not supported for this chatMessage resource: \
         use delegated (work or school account) or application permissions.",
    );
}

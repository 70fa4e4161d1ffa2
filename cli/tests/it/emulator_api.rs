//! The rest of the subscriptions API (list, get, update, delete,
//! reauthorize), authentication, the error envelope, the identity
//! endpoints and the control API — including what hostile callers send.

use std::time::Duration;

use msgraph_webhooks::emulator::{
    CONSUMER_TENANT_ID, Config, Emulator, service_principal_id, user_object_id,
};
use serde_json::{Value, json};

use crate::support::graph::{APP, Answering, Graph, Hook, claims, verify_with_jwks};

async fn setup() -> (Graph, Hook) {
    (
        Graph::start(Emulator::builder()).await,
        Hook::start(Answering::Well).await,
    )
}

async fn create(graph: &Graph, token: &str, body: &Value) -> String {
    let answer = graph.create(token, body).await;
    assert_eq!(answer.status, 201, "{:#}", answer.json);
    answer.json["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn list_get_update_delete_reauthorize() {
    let (graph, hook) = setup().await;
    let token = graph.app_token();
    let id = create(
        &graph,
        &token,
        &graph.subscription("users/u1/messages", "created", &hook.url("/n")),
    )
    .await;
    let path = format!("/v1.0/subscriptions/{id}");

    let read = graph.call("GET", &path, Some(&token), None, &[]).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json["id"], id);
    assert_eq!(
        read.json["clientState"],
        Value::Null,
        "reads never show clientState"
    );
    assert_eq!(
        read.json["creatorId"],
        service_principal_id(graph.emulator.tenant_id(), APP)
    );

    let list = graph
        .call("GET", "/v1.0/subscriptions", Some(&token), None, &[])
        .await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json["value"].as_array().unwrap().len(), 1);
    assert_eq!(list.json["value"][0]["clientState"], Value::Null);
    assert_eq!(
        list.json["@odata.context"],
        format!("{}/v1.0/$metadata#subscriptions", graph.emulator.url())
    );

    let renewed = graph
        .call(
            "PATCH",
            &path,
            Some(&token),
            Some(&json!({"expirationDateTime": graph.expires_in(600)})),
            &[],
        )
        .await;
    assert_eq!(renewed.status, 200, "{:#}", renewed.json);
    assert_eq!(renewed.json["id"], id);
    let missing = graph
        .call(
            "PATCH",
            &path,
            Some(&token),
            Some(&json!({"clientState": "x"})),
            &[],
        )
        .await;
    assert_eq!(missing.status, 400);
    assert_eq!(
        missing.message(),
        "Subscription must contain either the 'expirationDateTime' or 'notificationUrl' property and its value."
    );
    for (body, message) in [
        (
            json!({"expirationDateTime": graph.expires_in(60), "clientState": "x"}),
            "Only expirationDateTime, notificationUrl, encryptionCertificate and encryptionCertificateId can be updated.",
        ),
        (
            json!({"expirationDateTime": graph.expires_in(60), "lifecycleNotificationUrl": hook.url("/l")}),
            "lifecycleNotificationUrl can't be added or changed by an update: create a new subscription with it.",
        ),
        (
            json!({"expirationDateTime": graph.expires_in(20_000)}),
            "Subscription expiration can only be 10080 minutes in the future.",
        ),
        (
            json!({"expirationDateTime": "next week"}),
            "expirationDateTime must be a date-time such as 2026-01-01T11:00:00Z.",
        ),
    ] {
        let answer = graph
            .call("PATCH", &path, Some(&token), Some(&body), &[])
            .await;
        assert_eq!(answer.status, 400, "{body}");
        assert_eq!(answer.message(), message);
    }

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

    // Reauthorizing with a token that lost the permission is refused.
    let weaker = graph.app_token_with(&["Calendars.Read"]);
    let refused = graph
        .call(
            "POST",
            &format!("{path}/reauthorize"),
            Some(&weaker),
            None,
            &[],
        )
        .await;
    assert_eq!(refused.status, 403);

    let deleted = graph.call("DELETE", &path, Some(&token), None, &[]).await;
    assert_eq!(deleted.status, 204);
    for (method, suffix) in [("GET", ""), ("DELETE", ""), ("POST", "/reauthorize")] {
        let gone = graph
            .call(method, &format!("{path}{suffix}"), Some(&token), None, &[])
            .await;
        assert_eq!(gone.status, 404, "{method} {suffix}");
        assert_eq!(gone.code(), "ResourceNotFound");
    }
    let gone = graph
        .call(
            "PATCH",
            &path,
            Some(&token),
            Some(&json!({"expirationDateTime": graph.expires_in(60)})),
            &[],
        )
        .await;
    assert_eq!(gone.status, 404);
}

#[tokio::test]
async fn apps_and_users_see_only_their_own_subscriptions() {
    let (graph, hook) = setup().await;
    let tenant = graph.emulator.tenant_id().to_owned();
    let app = graph.app_token();
    let ada = graph
        .emulator
        .user_token(&tenant, APP, "ada@contoso.com", &["Mail.Read"]);
    let bob = graph
        .emulator
        .user_token(&tenant, APP, "bob@contoso.com", &["Mail.Read"]);
    let other_app = graph
        .emulator
        .app_token_with(&tenant, "other-app", &["Mail.Read"]);

    let app_sub = create(
        &graph,
        &app,
        &graph.subscription("users/u1/messages", "created", &hook.url("/n")),
    )
    .await;
    let ada_sub = create(
        &graph,
        &ada,
        &graph.subscription("me/messages", "created", &hook.url("/n")),
    )
    .await;
    let ada_read = graph
        .call(
            "GET",
            &format!("/v1.0/subscriptions/{ada_sub}"),
            Some(&ada),
            None,
            &[],
        )
        .await;
    assert_eq!(
        ada_read.json["creatorId"],
        user_object_id(&tenant, "ada@contoso.com"),
        "delegated: the signed-in user"
    );

    let ids = |answer: &crate::support::graph::Answer| -> Vec<String> {
        answer.json["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut all = vec![app_sub.clone(), ada_sub.clone()];
    all.sort();
    let mut seen = ids(&graph
        .call("GET", "/v1.0/subscriptions", Some(&app), None, &[])
        .await);
    seen.sort();
    assert_eq!(seen, all, "app-only: the app's subscriptions for any user");
    assert_eq!(
        ids(&graph
            .call("GET", "/v1.0/subscriptions", Some(&ada), None, &[])
            .await),
        std::slice::from_ref(&ada_sub)
    );
    assert!(
        ids(&graph
            .call("GET", "/v1.0/subscriptions", Some(&bob), None, &[])
            .await)
        .is_empty()
    );
    assert!(
        ids(&graph
            .call("GET", "/v1.0/subscriptions", Some(&other_app), None, &[])
            .await)
        .is_empty()
    );
    for (token, id) in [(&bob, &ada_sub), (&other_app, &app_sub)] {
        let answer = graph
            .call(
                "DELETE",
                &format!("/v1.0/subscriptions/{id}"),
                Some(token),
                None,
                &[],
            )
            .await;
        assert_eq!(answer.status, 404);
    }
}

#[tokio::test]
async fn lists_are_paged_and_beta_works_alike() {
    let mut config = Config::default();
    config.page_size = 2;
    let graph = Graph::start(Emulator::builder().config(config)).await;
    let hook = Hook::start(Answering::Well).await;
    let token = graph.app_token();
    for user in ["u1", "u2", "u3"] {
        let answer = graph
            .call(
                "POST",
                "/beta/subscriptions",
                Some(&token),
                Some(&graph.subscription(
                    &format!("users/{user}/messages"),
                    "created",
                    &hook.url("/n"),
                )),
                &[],
            )
            .await;
        assert_eq!(answer.status, 201);
        assert_eq!(
            answer.json["@odata.context"],
            format!(
                "{}/beta/$metadata#subscriptions/$entity",
                graph.emulator.url()
            )
        );
    }
    let first = graph
        .call("GET", "/v1.0/subscriptions", Some(&token), None, &[])
        .await;
    assert_eq!(first.json["value"].as_array().unwrap().len(), 2);
    let next = first.json["@odata.nextLink"].as_str().unwrap();
    let path = next.strip_prefix(graph.emulator.url()).unwrap();
    let second = graph.call("GET", path, Some(&token), None, &[]).await;
    assert_eq!(second.json["value"].as_array().unwrap().len(), 1);
    assert!(second.json.get("@odata.nextLink").is_none());
    let bad = graph
        .call(
            "GET",
            "/v1.0/subscriptions?$skiptoken=x",
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn bearer_tokens_are_required_and_checked() {
    let (graph, hook) = setup().await;
    let body = graph.subscription("users/u1/messages", "created", &hook.url("/n"));
    let other = Emulator::start().await.unwrap();
    let foreign = other.app_token(APP);
    let forged = {
        let token = graph.app_token();
        let mut parts: Vec<&str> = token.split('.').collect();
        let payload =
            base64_url(&json!({"aud": "https://graph.microsoft.com", "roles": ["Mail.Read"]}));
        parts[1] = &payload;
        parts.join(".")
    };
    for (header, message) in [
        (None, "Access token is empty."),
        (Some("Bearer "), "Access token is empty."),
        (Some("Basic dXNlcjpwYXNz"), "Access token is empty."),
        (Some("Bearer not-a-jwt"), "Access token validation failure."),
        (
            Some(format!("Bearer {foreign}").as_str()),
            "Access token validation failure.",
        ),
        (
            Some(format!("Bearer {forged}").as_str()),
            "Access token validation failure.",
        ),
    ] {
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("authorization", *h)).collect();
        let answer = graph
            .call("POST", "/v1.0/subscriptions", None, Some(&body), &headers)
            .await;
        assert_eq!(answer.status, 401, "{header:?}");
        assert_eq!(answer.code(), "InvalidAuthenticationToken");
        assert_eq!(answer.message(), message);
    }
    assert!(graph.emulator.subscription_ids().is_empty());
    assert!(
        hook.captured().is_empty(),
        "no handshake for unauthenticated calls"
    );
}

fn base64_url(value: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn the_error_envelope_carries_the_request_ids() {
    let (graph, _hook) = setup().await;
    let answer = graph
        .call(
            "GET",
            "/v1.0/subscriptions/nope",
            Some(&graph.app_token()),
            None,
            &[("client-request-id", "my-request-42")],
        )
        .await;
    assert_eq!(answer.status, 404);
    let inner = &answer.json["error"]["innerError"];
    assert_eq!(inner["client-request-id"], "my-request-42");
    let request_id = inner["request-id"].as_str().unwrap();
    assert_eq!(answer.headers["request-id"], request_id);
    assert_eq!(answer.headers["client-request-id"], "my-request-42");
    let date = inner["date"].as_str().unwrap();
    assert!(
        time::PrimitiveDateTime::parse(
            date,
            time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]")
        )
        .is_ok(),
        "{date}"
    );
    // A hostile client-request-id is not echoed.
    let answer = graph
        .call(
            "GET",
            "/v1.0/subscriptions/nope",
            None,
            None,
            &[("client-request-id", &"x".repeat(500))],
        )
        .await;
    assert_eq!(
        answer.json["error"]["innerError"]["client-request-id"],
        answer.json["error"]["innerError"]["request-id"]
    );
    let unknown = graph
        .call("GET", "/v1.0/me/messages", None, None, &[])
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.code(), "NotFound");
}

#[tokio::test]
async fn malformed_and_hostile_subscription_bodies() {
    let (graph, hook) = setup().await;
    let token = graph.app_token();
    let payload = "Could not process subscription creation payload. Are all property names spelled and camelCased properly?";
    let url = hook.url("/n");
    let mut misspelled = graph.subscription("users/u1/messages", "created", &url);
    misspelled["changetype"] = json!("created");
    let mut wrong_type = graph.subscription("users/u1/messages", "created", &url);
    wrong_type["includeResourceData"] = json!("yes");
    let mut missing = graph.subscription("users/u1/messages", "created", &url);
    missing.as_object_mut().unwrap().remove("resource");
    let mut web_push = graph.subscription("users/u1/messages", "created", &url);
    web_push["vapidPublicKey"] = json!("BOr...");
    let mut long_resource = graph.subscription("users/u1/messages", "created", &url);
    long_resource["resource"] = json!(format!("users/{}/messages", "a".repeat(5000)));
    for (body, status, message) in [
        (misspelled, 400, payload),
        (wrong_type, 400, payload),
        (json!([1, 2, 3]), 400, payload),
        (json!("created"), 400, payload),
        (
            missing,
            400,
            "The subscription property 'resource' is required and must not be empty.",
        ),
        (
            web_push,
            400,
            "Web Push properties (vapidPublicKey, webPushEncryptionP256dhPublicKey, webPushEncryptionSecret) \
             are not allowed on webhook subscriptions.",
        ),
        (
            long_resource,
            400,
            "Invalid resource: the resource is not a well-formed path. Write a path relative to the Graph root, e.g. me/messages.",
        ),
    ] {
        let answer = graph.create(&token, &body).await;
        assert_eq!(answer.status, status, "{body}");
        assert_eq!(answer.message(), message, "{body}");
    }
    // Not JSON at all, and a body over the limit.
    let client = reqwest::Client::new();
    let not_json = client
        .post(format!("{}/v1.0/subscriptions", graph.emulator.url()))
        .bearer_auth(&token)
        .body("{\"changeType\": \"created\",")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let huge = client
        .post(format!("{}/v1.0/subscriptions", graph.emulator.url()))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(vec![b' '; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    assert!(hook.captured().is_empty());
    // The emulator still serves.
    let list = graph
        .call("GET", "/v1.0/subscriptions", Some(&token), None, &[])
        .await;
    assert_eq!(list.status, 200);
}

async fn form(graph: &Graph, tenant: &str, fields: &[(&str, &str)]) -> (u16, Value) {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| {
            let encode = |s: &str| {
                percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            };
            format!("{}={}", encode(k), encode(v))
        })
        .collect();
    let response = reqwest::Client::new()
        .post(graph.emulator.token_url(tenant))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.join("&"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn token_endpoint_client_credentials_and_password_grants() {
    let graph =
        Graph::start(Emulator::builder().app_permissions(["Mail.Read", "Chat.Read.All"])).await;
    let hook = Hook::start(Answering::Well).await;
    let tenant = graph.emulator.tenant_id().to_owned();

    let (status, answer) = form(
        &graph,
        "contoso.onmicrosoft.com",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_secret", "s3cret"),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 3599);
    let token = answer["access_token"].as_str().unwrap();
    let app = verify_with_jwks(
        &graph.emulator.jwks_url(),
        token,
        "https://graph.microsoft.com",
    )
    .await;
    assert_eq!(
        app["roles"],
        json!(["Mail.Read", "Chat.Read.All"]),
        "narrowed by app_permissions"
    );
    assert_eq!(app["appid"], APP);
    assert_eq!(app["tid"], tenant);
    assert_eq!(app["iss"], format!("https://sts.windows.net/{tenant}/"));
    // The token works on the API, within its permissions.
    let ok = graph
        .create(
            token,
            &graph.subscription("users/u1/messages", "created", &hook.url("/n")),
        )
        .await;
    assert_eq!(ok.status, 201);
    let refused = graph
        .create(
            token,
            &graph.subscription("users/u1/events", "created", &hook.url("/n")),
        )
        .await;
    assert_eq!(refused.status, 403);

    // Delegated: the password grant, scopes with or without the Graph prefix.
    let (status, answer) = form(
        &graph,
        "common",
        &[
            ("grant_type", "password"),
            ("client_id", APP),
            ("username", "ada@contoso.com"),
            ("password", "pw"),
            (
                "scope",
                "openid offline_access https://graph.microsoft.com/Mail.Read Calendars.Read",
            ),
        ],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["scope"], "Mail.Read Calendars.Read");
    let user = claims(answer["access_token"].as_str().unwrap());
    assert_eq!(user["scp"], "Mail.Read Calendars.Read");
    assert_eq!(user["oid"], user_object_id(&tenant, "ada@contoso.com"));
    assert_eq!(user["upn"], "ada@contoso.com");

    // Personal accounts come from `consumers`; `.default` is every delegated permission they have.
    let (status, answer) = form(
        &graph,
        "consumers",
        &[
            ("grant_type", "password"),
            ("client_id", APP),
            ("username", "ada@outlook.com"),
            ("password", "pw"),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let personal = claims(answer["access_token"].as_str().unwrap());
    assert_eq!(personal["tid"], CONSUMER_TENANT_ID);
    let scopes = personal["scp"].as_str().unwrap();
    assert!(
        scopes.contains("Files.Read") && !scopes.contains("Chat.Read"),
        "{scopes}"
    );
}

#[tokio::test]
async fn token_endpoint_errors() {
    let (graph, _hook) = setup().await;
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, &'a str);
    let cases: &[Case<'_>] = &[
        (
            "common",
            &[("client_id", APP)],
            400,
            "unsupported_grant_type",
        ),
        (
            "common",
            &[("grant_type", "client_credentials")],
            400,
            "invalid_request",
        ),
        (
            "common",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", APP),
                ("scope", "https://graph.microsoft.com/.default"),
            ],
            401,
            "invalid_client",
        ),
        (
            "common",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", APP),
                ("client_secret", "s"),
                ("scope", "Mail.Read"),
            ],
            400,
            "invalid_scope",
        ),
        (
            "consumers",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", APP),
                ("client_secret", "s"),
                ("scope", "https://graph.microsoft.com/.default"),
            ],
            400,
            "unauthorized_client",
        ),
        (
            "common",
            &[
                ("grant_type", "password"),
                ("client_id", APP),
                ("username", "a"),
            ],
            400,
            "invalid_request",
        ),
        (
            "common",
            &[
                ("grant_type", "password"),
                ("client_id", APP),
                ("username", "a"),
                ("password", "p"),
                ("scope", "openid"),
            ],
            400,
            "invalid_scope",
        ),
        (
            "bad tenant!",
            &[("grant_type", "password")],
            400,
            "invalid_tenant",
        ),
    ];
    for (tenant, fields, status, error) in cases {
        let (got, answer) = form(&graph, &tenant.replace(' ', "%20"), fields).await;
        assert_eq!(
            (got, answer["error"].as_str().unwrap()),
            (*status, *error),
            "{fields:?}"
        );
        assert!(answer["error_description"].is_string());
    }
    // A JSON body is not a form.
    let response = reqwest::Client::new()
        .post(graph.emulator.token_url("common"))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn openid_configuration_and_keys() {
    let (graph, _hook) = setup().await;
    let config: Value = reqwest::get(graph.emulator.openid_configuration_url("common"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        config["issuer"],
        "https://login.microsoftonline.com/{tenantid}/v2.0"
    );
    assert_eq!(config["jwks_uri"], graph.emulator.jwks_url());
    let tenant = graph.emulator.tenant_id();
    let v1: Value = reqwest::get(format!(
        "{}/{tenant}/.well-known/openid-configuration",
        graph.emulator.url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(v1["issuer"], format!("https://sts.windows.net/{tenant}/"));
    for path in [
        "/common/discovery/keys",
        "/common/discovery/v2.0/keys",
        &format!("/{tenant}/discovery/v2.0/keys"),
    ] {
        let keys: Value = reqwest::get(format!("{}{path}", graph.emulator.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let key = &keys["keys"][0];
        assert_eq!(
            (key["kty"].as_str(), key["use"].as_str()),
            (Some("RSA"), Some("sig")),
            "{path}"
        );
        assert!(key["kid"].is_string() && key["n"].is_string() && key["e"] == "AQAB");
    }
}

#[tokio::test]
async fn the_control_api() {
    let (graph, hook) = setup().await;
    let info = graph.call("GET", "/emulator", None, None, &[]).await;
    assert_eq!(info.json["graph"], graph.emulator.graph_url());
    assert_eq!(info.json["jwks"], graph.emulator.jwks_url());
    let id = create(
        &graph,
        &graph.app_token(),
        &graph.subscription("users/u1/messages", "created", &hook.url("/n")),
    )
    .await;

    let fired = graph
        .control(
            "/emulator/changes",
            &json!({"resource": "users/u1/messages", "changeType": "created", "data": {"id": "AAMk1"}}),
        )
        .await;
    assert_eq!(fired.status, 202);
    assert_eq!(fired.json, json!({"subscriptionIds": [id], "items": 1}));
    let item = hook.wait_items(1).await.remove(0);
    assert_eq!(item["resource"], "Users/u1/Messages/AAMk1");
    assert_eq!(item["clientState"], "secretClientValue");

    let deliveries = graph
        .emulator
        .wait_for_deliveries(Duration::from_secs(10), |d| d.len() >= 2)
        .await;
    assert_eq!(deliveries.len(), 2, "the validation and the notification");
    let listed = graph
        .call("GET", "/emulator/deliveries", None, None, &[])
        .await;
    let last = &listed.json["value"][1];
    assert_eq!(last["kind"], "notification");
    assert_eq!(last["outcome"], "delivered");
    assert_eq!(last["status"], 202);
    assert_eq!(last["items"], 1);
    assert!(last["latencyMs"].as_f64().unwrap() >= 0.0);
    assert_eq!(last["endpointState"], "normal");
    let endpoints = graph
        .call("GET", "/emulator/endpoints", None, None, &[])
        .await;
    assert_eq!(endpoints.json["value"][0]["state"], "normal");
    let subscriptions = graph
        .call("GET", "/emulator/subscriptions", None, None, &[])
        .await;
    assert_eq!(subscriptions.json["value"][0]["id"], id);

    for (path, body, status, message) in [
        (
            "/emulator/changes",
            json!({"resource": "users/u1/messages", "changeType": "moved"}),
            400,
            "'moved' is not a change type: use created, updated or deleted",
        ),
        (
            "/emulator/changes",
            json!({"resource": "users//messages", "changeType": "created"}),
            400,
            "invalid resource: the resource is not a well-formed path",
        ),
        (
            "/emulator/lifecycle",
            json!({"subscriptionId": "nope", "lifecycleEvent": "missed"}),
            404,
            "no subscription has the id 'nope'",
        ),
        (
            "/emulator/lifecycle",
            json!({"subscriptionId": id, "lifecycleEvent": "exploded"}),
            400,
            "'exploded' is not a lifecycle event: use reauthorizationRequired, subscriptionRemoved or missed",
        ),
        (
            "/emulator/clock",
            json!({"advanceSeconds": -5}),
            400,
            "advanceSeconds must be a number of seconds from 0 to 1e9.",
        ),
    ] {
        let answer = graph.control(path, &body).await;
        assert_eq!(
            (answer.status, answer.message()),
            (status, message),
            "{path} {body}"
        );
    }
    let nothing = graph
        .control(
            "/emulator/changes",
            &json!({"resource": "users/u2/messages", "changeType": "created"}),
        )
        .await;
    assert_eq!(nothing.json["items"], 0);

    // Moving the clock past the expiry ends the subscription.
    let before = graph.emulator.clock().now();
    let moved = graph
        .control("/emulator/clock", &json!({"advanceSeconds": 3600}))
        .await;
    assert_eq!(moved.status, 200);
    assert!(graph.emulator.clock().now() - before >= time::Duration::hours(1));
    let gone = graph
        .call(
            "GET",
            &format!("/v1.0/subscriptions/{id}"),
            Some(&graph.app_token()),
            None,
            &[],
        )
        .await;
    assert_eq!(gone.status, 404);
}

//! The subscription resource as Graph returns it: each of Microsoft's
//! documented examples (`tests/data/graph-docs/subscriptions/`, with their
//! source pages) sent to the emulator over a socket and its answer compared
//! key by key; which kinds take `includeResourceData`, in the emulator and in
//! pre-flight alike; and the order of checks (the validation request before
//! permissions) with Graph's error envelopes.

use msgraph_webhooks::catalog::{self, Entry, PermissionType};
use msgraph_webhooks::emulator::{CONSUMER_TENANT_ID, Emulator};
use msgraph_webhooks::subscriptions::NewSubscription;
use msgraph_webhooks::subscriptions::preflight::{self, LifetimePolicy, Problem};
use msgraph_webhooks::{ChangeType, catalog::Violation};
use serde_json::{Value, json};

use crate::support::graph::{APP, Answer, Answering, Cert, Graph, Hook};

/// Graph's `Content-Type` for JSON answers, as captures of Graph show it.
const ODATA_JSON: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/data/graph-docs/subscriptions/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Replaces the placeholders of a fixture's request.
fn fill(value: &Value, graph: &Graph, hook: &Hook, cert: &Cert, id: &str) -> Value {
    match value {
        Value::String(s) => json!(match s.as_str() {
            "{hook}" => hook.url("/n"),
            "{expires}" => graph.expires_in(50),
            "{certificate}" => cert.base64(),
            other => other.replace("{id}", id),
        }),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill(v, graph, hook, cert, id)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn token(graph: &Graph, caller: &str) -> String {
    match caller {
        "delegated" => graph.emulator.user_token(
            graph.emulator.tenant_id(),
            APP,
            "ada@contoso.com",
            &["Mail.Read", "User.Read.All"],
        ),
        _ => graph.app_token(),
    }
}

fn is_guid(value: &Value) -> bool {
    value.as_str().is_some_and(|s| {
        s.len() == 36
            && s.char_indices().all(|(i, c)| {
                if [8, 13, 18, 23].contains(&i) {
                    c == '-'
                } else {
                    c.is_ascii_hexdigit()
                }
            })
    })
}

/// Compares one subscription object of the emulator with the documented one.
fn compare_subscription(
    name: &str,
    documented: &Value,
    actual: &Value,
    fixture: &Value,
    given: &Value,
    origin: &str,
) {
    let doc = documented.as_object().unwrap();
    let got = actual
        .as_object()
        .unwrap_or_else(|| panic!("{name}: {actual:#}"));
    let deviation = |key: &str| {
        fixture["deviations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["key"] == key)
            .map(|d| d["emulator"].as_str().unwrap().to_owned())
    };
    let echoed: Vec<&str> = fixture["echoed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();

    let mut expected_keys: Vec<&str> = Vec::new();
    for (key, value) in doc {
        match deviation(key).as_deref() {
            Some("absent") => {
                assert!(!got.contains_key(key), "{name}: {key} must be absent");
                continue;
            }
            Some("null") => assert_eq!(got.get(key), Some(&Value::Null), "{name}: {key}"),
            Some(other) => panic!("{name}: unknown deviation {other}"),
            None => {
                let mine = got
                    .get(key)
                    .unwrap_or_else(|| panic!("{name}: {key} missing in {actual:#}"));
                let same_shape = match value {
                    Value::Null => mine.is_null(),
                    Value::Bool(_) => mine.is_boolean(),
                    Value::String(_) => mine.is_string(),
                    _ => mine == value,
                };
                assert!(same_shape, "{name}: {key}: documented {value}, got {mine}");
            }
        }
        expected_keys.push(key);
        match key.as_str() {
            "@odata.context" => {
                let expected = value
                    .as_str()
                    .unwrap()
                    .replace("https://graph.microsoft.com", origin);
                assert_eq!(got[key], json!(expected), "{name}");
            }
            "id" | "applicationId" | "creatorId" => {
                assert!(is_guid(&got[key]), "{name}: {key} {}", got[key]);
            }
            "expirationDateTime" => {
                let text = got[key].as_str().unwrap();
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|e| panic!("{name}: {text}: {e}"));
            }
            "encryptionCertificate" if echoed.contains(&"encryptionCertificate") => {
                assert_eq!(got[key], given[key], "{name}: {key} is echoed");
            }
            _ if echoed.contains(&key.as_str()) && deviation(key).is_none() => {
                assert_eq!(got[key], *value, "{name}: {key}");
            }
            _ => {}
        }
    }
    // A complete answer fixes the keys and their order. The shortened
    // examples are written by hand and list some keys elsewhere
    // (`includeResourceData`, `notificationContentType` last) than Graph's
    // complete answers do, so only their keys count.
    if fixture["complete"] == true {
        let all: Vec<&str> = got.keys().map(String::as_str).collect();
        assert_eq!(all, expected_keys, "{name}: keys and order");
    }
}

/// Runs one documented example and compares the answer.
async fn documented_example(name: &str) -> Answer {
    let fixture = fixture(name);
    let graph = Graph::start(Emulator::builder()).await;
    let hook = Hook::start(Answering::Well).await;
    let cert = Cert::new(2048);
    let token = token(&graph, fixture["caller"].as_str().unwrap());
    let request = &fixture["request"];
    let version = request["path"].as_str().unwrap().split('/').nth(1).unwrap();
    let mut id = String::new();
    if fixture.get("setup").is_some() {
        let body = fill(&fixture["setup"], &graph, &hook, &cert, "");
        let created = graph
            .call(
                "POST",
                &format!("/{version}/subscriptions"),
                Some(&token),
                Some(&body),
                &[],
            )
            .await;
        assert_eq!(created.status, 201, "{name}: {:#}", created.json);
        id = created.json["id"].as_str().unwrap().to_owned();
    }
    let path = request["path"].as_str().unwrap().replace("{id}", &id);
    let body = request
        .get("body")
        .map(|b| fill(b, &graph, &hook, &cert, &id));
    // What the subscription was given: the setup's body, then the request's.
    let mut given = fill(&fixture["setup"], &graph, &hook, &cert, &id);
    if let (Some(given), Some(Value::Object(body))) = (given.as_object_mut(), &body) {
        given.extend(body.clone());
    } else if let Some(body) = &body {
        given = body.clone();
    }
    let answer = graph
        .call(
            request["method"].as_str().unwrap(),
            &path,
            Some(&token),
            body.as_ref(),
            &[],
        )
        .await;
    let documented = &fixture["response"];
    assert_eq!(
        u64::from(answer.status),
        documented["status"].as_u64().unwrap(),
        "{name}: {:#}",
        answer.json
    );
    assert_eq!(
        answer.headers["content-type"], ODATA_JSON,
        "{name}: Graph's OData content type"
    );
    let origin = graph.emulator.url().trim_end_matches('/').to_owned();
    let documented = &documented["body"];
    if let Some(items) = documented.get("value") {
        assert_eq!(
            answer.json["@odata.context"],
            json!(
                documented["@odata.context"]
                    .as_str()
                    .unwrap()
                    .replace("https://graph.microsoft.com", &origin)
            ),
            "{name}"
        );
        let keys: Vec<&String> = answer.json.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["@odata.context", "value"], "{name}: one page");
        let got = answer.json["value"].as_array().unwrap();
        assert_eq!(got.len(), items.as_array().unwrap().len(), "{name}");
        for (doc, mine) in items.as_array().unwrap().iter().zip(got) {
            assert!(
                mine.get("@odata.context").is_none(),
                "{name}: items have none"
            );
            compare_subscription(name, doc, mine, &fixture, &given, &origin);
        }
    } else {
        compare_subscription(name, documented, &answer.json, &fixture, &given, &origin);
    }
    answer
}

#[tokio::test]
async fn create_as_documented_v1() {
    let answer = documented_example("create-v1.json").await;
    assert!(answer.json.get("notificationContentType").is_none());
}

#[tokio::test]
async fn create_as_documented_beta() {
    let answer = documented_example("create-beta.json").await;
    assert_eq!(answer.json["notificationContentType"], Value::Null);
}

#[tokio::test]
async fn create_beta_complete_answer() {
    documented_example("beta-create-complete.json").await;
}

#[tokio::test]
async fn create_with_resource_data_complete_answer() {
    documented_example("create-rich-complete.json").await;
}

#[tokio::test]
async fn get_as_documented() {
    documented_example("get-v1.json").await;
}

#[tokio::test]
async fn list_as_documented() {
    documented_example("list-v1.json").await;
}

#[tokio::test]
async fn update_as_documented() {
    documented_example("update-v1.json").await;
}

#[tokio::test]
async fn update_complete_answer() {
    documented_example("update-complete.json").await;
}

/// A beta read of a subscription shows the beta shape, whichever version
/// created it; `notificationContentType` is echoed where given.
#[tokio::test]
async fn the_version_read_under_decides_the_shape() {
    let graph = Graph::start(Emulator::builder()).await;
    let hook = Hook::start(Answering::Well).await;
    let token = graph.app_token();
    let mut body = graph.subscription("users/u1/messages", "created", &hook.url("/n"));
    body["notificationContentType"] = json!("application/json");
    let created = graph.create(&token, &body).await;
    assert_eq!(created.status, 201, "{:#}", created.json);
    assert!(created.json.get("notificationContentType").is_none());
    let id = created.json["id"].as_str().unwrap();
    let beta = graph
        .call(
            "GET",
            &format!("/beta/subscriptions/{id}"),
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(beta.status, 200);
    assert_eq!(beta.json["notificationContentType"], "application/json");
    assert_eq!(
        beta.json["@odata.context"],
        format!(
            "{}/beta/$metadata#subscriptions/$entity",
            graph.emulator.url()
        )
    );
}

/// The paths of Microsoft's list of rich notifications (Microsoft Learn,
/// "Set up Microsoft Graph change notifications with resource data",
/// supported resources, the v1.0 rows), as catalog patterns.
const RICH_PATHS: &[&str] = &[
    "copilot/users/{userId}/interactionHistory/getAllEnterpriseInteractions",
    "copilot/interactionHistory/getAllEnterpriseInteractions",
    "users/{id}/events",
    "users/{id}/messages",
    "users/{id}/mailFolders/{id}/messages",
    "users/{id}/contacts",
    "communications/onlineMeetings/getAllRecordings",
    "communications/onlineMeetings/{onlineMeetingId}/recordings",
    "users/{userId}/onlineMeetings/getAllRecordings",
    "communications/onlineMeetings/getAllTranscripts",
    "communications/onlineMeetings/{onlineMeetingId}/transcripts",
    "users/{userId}/onlineMeetings/getAllTranscripts",
    "teams/getAllChannels",
    "teams/{id}/channels",
    "chats",
    "chats/{id}",
    "teams/getAllMessages",
    "teams/{id}/channels/{id}/messages",
    "chats/getAllMessages",
    "chats/{id}/messages",
    "users/{id}/chats/getAllMessages",
    "teams/{id}/members",
    "teams/getAllMembers",
    "teams/{id}/channels/getAllMembers",
    "chats/{id}/members",
    "chats/getAllMembers",
    "communications/presences/{id}",
    "communications/presences",
    "teams",
    "teams/{id}",
];

/// A concrete resource for a catalog pattern, as the caller writes it.
fn concrete(pattern: &str, delegated: bool, outlook: bool) -> String {
    let mut out: Vec<String> = Vec::new();
    for (i, segment) in pattern.split('/').enumerate() {
        out.push(if segment == "{**}" {
            "sessions".to_owned()
        } else if segment.starts_with('{') {
            format!("x{i}")
        } else {
            segment.to_owned()
        });
    }
    let mut path = out.join("/");
    if delegated && let Some(rest) = path.strip_prefix("users/x1/") {
        path = format!("me/{rest}");
    }
    if pattern == "communications/presences" {
        path.push_str("?$filter=id in ('u1')");
    }
    if outlook {
        path.push_str("?$select=subject");
    }
    path
}

/// The caller an entry accepts, with its least-privileged permission.
fn caller_for(graph: &Graph, entry: &Entry) -> (String, bool) {
    let first = |perms: &[catalog::Permission]| perms.first().map(|p| p.name);
    if let Some(p) = first(entry.permissions(PermissionType::Application)) {
        (graph.app_token_with(&[p]), false)
    } else if let Some(p) = first(entry.permissions(PermissionType::DelegatedWork)) {
        let tenant = graph.emulator.tenant_id().to_owned();
        (
            graph
                .emulator
                .user_token(&tenant, APP, "ada@contoso.com", &[p]),
            true,
        )
    } else {
        let p = first(entry.permissions(PermissionType::DelegatedPersonal)).unwrap();
        (
            graph
                .emulator
                .user_token(CONSUMER_TENANT_ID, APP, "ada@outlook.com", &[p]),
            true,
        )
    }
}

/// Every catalog row: `includeResourceData` is accepted where Microsoft
/// lists rich notifications and refused elsewhere, by the emulator and by
/// pre-flight with the same rule.
#[tokio::test]
async fn resource_data_only_where_microsoft_lists_it() {
    let graph = Graph::start(Emulator::builder()).await;
    let hook = Hook::start(Answering::Well).await;
    let cert = Cert::new(2048);
    let now = graph.emulator.clock().now();
    let mut refused = 0;
    let mut accepted = 0;
    for entry in catalog::entries() {
        let pattern = entry.paths[0];
        let listed = RICH_PATHS.contains(&pattern);
        let rules = entry.rules();
        let (token, delegated) = caller_for(&graph, entry);
        let resource = concrete(pattern, delegated, rules.outlook && listed);
        let change = rules.change_types[0].as_str();
        let mut body = graph.subscription(&resource, change, &hook.url("/n"));
        body["includeResourceData"] = json!(true);
        body["encryptionCertificate"] = json!(cert.base64());
        body["encryptionCertificateId"] = json!("cert-1");
        let answer = graph.create(&token, &body).await;

        let certificate =
            msgraph_webhooks::subscriptions::EncryptionCertificate::new("cert-1", cert.base64());
        let new = NewSubscription::new(
            resource.clone(),
            [ChangeType::parse(change)],
            hook.url("/n"),
            now + time::Duration::minutes(50),
        )
        .rich(&certificate);
        let checked = preflight::check(&new, now, LifetimePolicy::Reject);
        if listed {
            assert_eq!(answer.status, 201, "{resource}: {:#}", answer.json);
            assert!(checked.is_ok(), "{resource}: {checked:?}");
            accepted += 1;
        } else {
            assert_eq!(answer.status, 400, "{resource}: {:#}", answer.json);
            assert_eq!(answer.code(), "InvalidRequest", "{resource}");
            assert_eq!(
                answer.message(),
                format!(
                    "{} subscriptions support only basic notifications: remove includeResourceData.",
                    entry.kind
                ),
                "{resource}"
            );
            let error = checked.expect_err(&resource);
            let problems = error.problems();
            assert!(
                problems.iter().any(|p| matches!(
                    p,
                    Problem::Catalog(Violation::ResourceDataNotSupported { .. })
                )),
                "{resource}: {problems:?}"
            );
            refused += 1;
        }
    }
    assert!(accepted >= 25 && refused >= 20, "{accepted} / {refused}");
}

/// The validation request comes before the permission check: a request
/// that fails both gets the validation error, and the endpoint saw the
/// validation request; with a good endpoint the same token gets Graph's
/// `403 ExtensionError`.
#[tokio::test]
async fn validation_before_permissions() {
    let graph = Graph::start(Emulator::builder()).await;
    let broken = Hook::start(Answering::Status(500)).await;
    let weak = graph.app_token_with(&["Calendars.Read"]);
    let body = graph.subscription("users/u1/messages", "created", &broken.url("/n"));
    let answer = graph.create(&weak, &body).await;
    assert_eq!(answer.status, 400, "{:#}", answer.json);
    assert_eq!(answer.code(), "InvalidRequest");
    assert_eq!(
        answer.message(),
        "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request."
    );
    assert_eq!(broken.captured().len(), 1, "the endpoint was asked");

    let well = Hook::start(Answering::Well).await;
    let body = graph.subscription("users/u1/messages", "created", &well.url("/n"));
    let answer = graph.create(&weak, &body).await;
    assert_eq!(answer.status, 403, "{:#}", answer.json);
    assert_eq!(answer.code(), "ExtensionError");
    assert_eq!(
        answer.message(),
        "Operation: Create; Exception: [Status Code: Forbidden; Reason: Insufficient privileges: \
         the token's application permissions include none of Mail.Read. Grant one of them \
         (least privileged first).]"
    );
    assert!(answer.json["error"]["innerError"]["request-id"].is_string());

    // A broken body is refused before anything is sent.
    let before = well.captured().len();
    let mut bad = graph.subscription("users/u1/messages", "created", &well.url("/n"));
    bad["expirationDateTime"] = json!(graph.expires_in(20_000));
    let answer = graph.create(&weak, &bad).await;
    assert_eq!(answer.status, 400, "{:#}", answer.json);
    assert_eq!(
        answer.message(),
        "Subscription expiration can only be 10080 minutes in the future."
    );
    assert_eq!(well.captured().len(), before, "no validation request");
}

/// Update follows the same order: a new `notificationUrl` is validated
/// before the caller's permissions are looked at.
#[tokio::test]
async fn update_validates_before_permissions() {
    let graph = Graph::start(Emulator::builder()).await;
    let well = Hook::start(Answering::Well).await;
    let broken = Hook::start(Answering::Status(404)).await;
    let created = graph
        .create(
            &graph.app_token(),
            &graph.subscription("users/u1/messages", "created", &well.url("/n")),
        )
        .await;
    assert_eq!(created.status, 201, "{:#}", created.json);
    let path = format!(
        "/v1.0/subscriptions/{}",
        created.json["id"].as_str().unwrap()
    );
    let weak = graph.app_token_with(&["Calendars.Read"]);
    let moved = json!({"notificationUrl": broken.url("/n")});
    let answer = graph
        .call("PATCH", &path, Some(&weak), Some(&moved), &[])
        .await;
    assert_eq!(answer.status, 400, "{:#}", answer.json);
    assert!(
        answer
            .message()
            .starts_with("Subscription validation request failed.")
    );
    let renew = json!({"expirationDateTime": graph.expires_in(100)});
    let answer = graph
        .call("PATCH", &path, Some(&weak), Some(&renew), &[])
        .await;
    assert_eq!(answer.status, 403, "{:#}", answer.json);
    assert_eq!(answer.code(), "ExtensionError");
    assert!(
        answer
            .message()
            .starts_with("Operation: Update; Exception: [Status Code: Forbidden; Reason: "),
        "{}",
        answer.message()
    );
}

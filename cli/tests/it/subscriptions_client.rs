//! The Graph client, the token provider and the pre-flight checks: against
//! the emulator, and against scripted servers on loopback for the failures
//! the emulator does not produce (429, 5xx, odd answers).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use msgraph_webhooks::ChangeType;
use msgraph_webhooks::emulator::Emulator;
use msgraph_webhooks::retry::RetryPolicy;
use msgraph_webhooks::subscriptions::preflight::{self, LifetimePolicy, Problem};
use msgraph_webhooks::subscriptions::{
    AuthError, ClientCredentials, ClientError, GraphClient, NewSubscription, StaticToken,
    SubscriptionUpdate, TokenProvider,
};
use serde_json::json;
use time::{Duration as Span, OffsetDateTime};

use crate::support::graph::{APP, Answering, Hook};
use crate::support::relay::Relay;

/// One request a scripted server saw.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    method: Method,
    path: String,
    authorization: Option<String>,
    body: Bytes,
}

/// A scripted answer: status, headers, body.
type Scripted = (u16, Vec<(&'static str, String)>, String);

#[derive(Clone, Default)]
struct Script {
    answers: Arc<Mutex<VecDeque<Scripted>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn scripted(
    State(script): State<Script>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    script.seen.lock().unwrap().push(Seen {
        at: Instant::now(),
        method,
        path: uri.path_and_query().unwrap().to_string(),
        authorization: headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
        body,
    });
    let next = script.answers.lock().unwrap().pop_front();
    let Some((status, headers, body)) = next else {
        return (StatusCode::IM_A_TEAPOT, "the script ran out").into_response();
    };
    let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
    for (name, value) in headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

impl Script {
    async fn start(answers: Vec<Scripted>) -> (Self, String) {
        let script = Script {
            answers: Arc::new(Mutex::new(answers.into())),
            seen: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(scripted)
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (script, format!("http://{addr}"))
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn json_ct() -> Vec<(&'static str, String)> {
    vec![("content-type", "application/json".to_owned())]
}

fn subscription_json(id: &str) -> String {
    json!({
        "id": id,
        "resource": "users",
        "changeType": "updated",
        "notificationUrl": "https://example.com/",
        "expirationDateTime": "2030-01-01T00:00:00.1234567Z",
        "clientState": null,
    })
    .to_string()
}

#[tokio::test]
async fn crud_and_paging_against_the_emulator() {
    let mut config = msgraph_webhooks::emulator::Config::default();
    config.page_size = 2;
    let emulator = Emulator::builder().config(config).start().await.unwrap();
    let spy = Relay::start(emulator.url()).await;
    let hook = Hook::start(Answering::After(Duration::ZERO)).await;
    let tokens = ClientCredentials::new(emulator.tenant_id(), APP, "a secret")
        .token_url(emulator.token_url(emulator.tenant_id()));
    let client = GraphClient::new(tokens)
        .base_url(spy.url("/v1.0"))
        .clock(Arc::new(emulator.clock().clone()));

    let now = emulator.clock().now();
    let mut ids = Vec::new();
    for n in 0..5 {
        let created = client
            .create(
                &NewSubscription::new(
                    format!("users/user{n}/messages"),
                    [ChangeType::Created],
                    hook.url("/"),
                    now + Span::hours(2),
                )
                .client_state(msgraph_webhooks::ClientState::new("s3cret")),
            )
            .await
            .unwrap();
        assert_eq!(created.client_state.as_ref().unwrap().expose(), "s3cret");
        ids.push(created.id);
    }

    // Through the spy, the emulator's next link points at another origin:
    // the client refuses to send its token there.
    let error = client.list().await.unwrap_err();
    assert!(error.to_string().contains("origin"), "{error}");
    // Directly, five subscriptions on pages of two: every id once.
    let direct =
        GraphClient::new(StaticToken::new(emulator.app_token(APP))).base_url(emulator.graph_url());
    let mut listed: Vec<String> = direct
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    listed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected);

    let one = client.get(&ids[0]).await.unwrap();
    assert_eq!(one.resource, "users/user0/messages");
    assert!(
        one.client_state.is_none(),
        "Graph hides clientState on reads"
    );

    let renewed = client
        .update(&ids[0], &SubscriptionUpdate::renew(now + Span::hours(20)))
        .await
        .unwrap();
    assert!(renewed.expiration > one.expiration + Span::hours(17));

    client.reauthorize(&ids[0]).await.unwrap();
    assert_eq!(
        spy.count(&format!("POST /v1.0/subscriptions/{}/reauthorize", ids[0])),
        1
    );

    client.delete(&ids[0]).await.unwrap();
    let gone = client.get(&ids[0]).await.unwrap_err();
    let error = gone.graph().expect("a Graph error");
    assert_eq!(error.status, 404);
    assert_eq!(error.code, "ResourceNotFound");
    assert!(error.request_id.is_some(), "{error:?}");
    assert!(gone.is_not_found());
    let patched = client
        .update(&ids[0], &SubscriptionUpdate::renew(now + Span::hours(3)))
        .await
        .unwrap_err();
    assert!(patched.is_not_found());

    // A duplicate is a typed 409 naming the existing subscription.
    let duplicate = client
        .create(&NewSubscription::new(
            "users/user1/messages",
            [ChangeType::Created],
            hook.url("/"),
            now + Span::hours(2),
        ))
        .await
        .unwrap_err();
    let error = duplicate.graph().unwrap();
    assert!(error.is_conflict());
    assert_eq!(error.conflicting_id(), Some(ids[1].as_str()));

    // A failed handshake is a typed 400 the manager knows to retry.
    hook.answer(Answering::Status(403));
    let refused = client
        .create(&NewSubscription::new(
            "users/someone/messages",
            [ChangeType::Created],
            hook.url("/"),
            now + Span::hours(2),
        ))
        .await
        .unwrap_err();
    assert!(refused.graph().unwrap().is_handshake_failure(), "{refused}");
}

#[tokio::test]
async fn retries_honour_retry_after_and_stop_at_client_errors() {
    let envelope = json!({"error": {"code": "InvalidRequest", "message": "Bad thing.",
        "innerError": {"date": "2026-01-01T00:00:00", "request-id": "req-42", "client-request-id": "c-1"}}})
    .to_string();
    let (script, url) = Script::start(vec![
        (429, vec![("retry-after", "1".to_owned())], String::new()),
        (503, vec![], "<html>unavailable</html>".to_owned()),
        (200, json_ct(), subscription_json("sub-1")),
        (400, json_ct(), envelope),
    ])
    .await;
    let client = GraphClient::new(StaticToken::new("tok"))
        .base_url(format!("{url}/v1.0"))
        .retry(RetryPolicy::new(4, Duration::from_millis(20)));

    let got = client.get("sub-1").await.unwrap();
    assert_eq!(got.id, "sub-1");
    let seen = script.seen();
    assert_eq!(seen.len(), 3, "429, 503, then 200");
    assert!(
        seen[1].at - seen[0].at >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    assert!(
        seen.iter()
            .all(|s| s.authorization.as_deref() == Some("Bearer tok"))
    );
    assert_eq!(seen[0].path, "/v1.0/subscriptions/sub-1");

    let error = client.get("sub-2").await.unwrap_err();
    let graph = error.graph().unwrap();
    assert_eq!(
        (graph.status, graph.code.as_str(), graph.message.as_str()),
        (400, "InvalidRequest", "Bad thing.")
    );
    assert_eq!(graph.request_id.as_deref(), Some("req-42"));
    assert_eq!(script.seen().len(), 4, "a 400 is not retried");

    // Out of retries: the last answer is the error.
    let (script, url) = Script::start(vec![
        (500, vec![], String::new()),
        (500, vec![], String::new()),
    ])
    .await;
    let client = GraphClient::new(StaticToken::new("tok"))
        .base_url(format!("{url}/v1.0"))
        .retry(RetryPolicy::new(2, Duration::from_millis(10)));
    let error = client.delete("x").await.unwrap_err();
    assert_eq!(error.graph().unwrap().status, 500);
    assert_eq!(script.seen().len(), 2);
    assert_eq!(script.seen()[0].method, Method::DELETE);
}

#[tokio::test]
async fn hostile_answers_are_errors_not_panics() {
    let huge = "x".repeat(5 * 1024 * 1024);
    let (_, url) = Script::start(vec![
        (200, json_ct(), "{not json".to_owned()),
        (200, json_ct(), json!({"id": 5}).to_string()),
        (200, json_ct(), huge),
        (
            200,
            json_ct(),
            json!({"value": [], "@odata.nextLink": "http://evil.example/v1.0/subscriptions"})
                .to_string(),
        ),
        (
            500,
            json_ct(),
            json!({"error": "not an object"}).to_string(),
        ),
    ])
    .await;
    let client = GraphClient::new(StaticToken::new("tok"))
        .base_url(format!("{url}/v1.0"))
        .retry(RetryPolicy::none());
    assert!(matches!(
        client.get("a").await,
        Err(ClientError::InvalidResponse(_))
    ));
    assert!(matches!(
        client.get("a").await,
        Err(ClientError::InvalidResponse(_))
    ));
    assert!(matches!(
        client.get("a").await,
        Err(ClientError::Transport(_))
    ));
    // The token is never sent to another origin.
    let error = client.list().await.unwrap_err();
    assert!(error.to_string().contains("origin"), "{error}");
    let error = client.get("a").await.unwrap_err();
    assert_eq!(error.graph().unwrap().status, 500);
    assert!(
        error
            .graph()
            .unwrap()
            .message
            .contains("no Graph error envelope")
    );

    // A token endpoint that answers nonsense.
    let (_, url) = Script::start(vec![
        (
            503,
            json_ct(),
            json!({"error": "temporarily_unavailable", "error_description": "down"}).to_string(),
        ),
        (200, json_ct(), "[1,2,3]".to_owned()),
        (200, json_ct(), json!({"access_token": ""}).to_string()),
        (400, vec![], "<html>no</html>".to_owned()),
        (
            200,
            json_ct(),
            json!({"access_token": "t", "expires_in": "soon"}).to_string(),
        ),
    ])
    .await;
    let tokens = ClientCredentials::new("t", "c", "s")
        .token_url(format!("{url}/token"))
        .retry(RetryPolicy::none());
    // An outage is said to be one, not blamed on the credentials.
    let outage = tokens.token().await.unwrap_err();
    assert!(
        matches!(outage, AuthError::Unavailable { status: 503, .. }),
        "{outage:?}"
    );
    assert!(!outage.to_string().contains("--client-secret"), "{outage}");
    assert!(
        outage.to_string().contains("not your credentials"),
        "{outage}"
    );
    assert!(matches!(
        tokens.token().await,
        Err(AuthError::InvalidResponse(_))
    ));
    assert!(matches!(
        tokens.token().await,
        Err(AuthError::InvalidResponse(_))
    ));
    assert!(matches!(
        tokens.token().await,
        Err(AuthError::Rejected { status: 400, .. })
    ));
    assert_eq!(
        tokens.token().await.unwrap().secret(),
        "t",
        "an odd expires_in is an hour"
    );
}

#[tokio::test]
async fn next_links_are_followed_on_the_same_origin() {
    let (script, url) = Script::start(vec![]).await;
    let page = |ids: &[&str], next: Option<String>| {
        let mut body = json!({"value": ids.iter().map(|id| serde_json::from_str::<serde_json::Value>(&subscription_json(id)).unwrap()).collect::<Vec<_>>()});
        if let Some(next) = next {
            body["@odata.nextLink"] = json!(next);
        }
        (200, json_ct(), body.to_string())
    };
    script.answers.lock().unwrap().extend([
        page(
            &["a", "b"],
            Some(format!("{url}/v1.0/subscriptions?$skiptoken=X")),
        ),
        page(&["c"], None),
    ]);
    let client = GraphClient::new(StaticToken::new("tok")).base_url(format!("{url}/v1.0"));
    let ids: Vec<String> = client
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(script.seen()[1].path, "/v1.0/subscriptions?$skiptoken=X");
}

#[tokio::test]
async fn tokens_are_cached_until_shortly_before_expiry() {
    let token = |expires_in: u64, value: &str| {
        (
            200,
            json_ct(),
            json!({"token_type": "Bearer", "expires_in": expires_in, "access_token": value})
                .to_string(),
        )
    };
    let (script, url) = Script::start(vec![
        token(3599, "long-1"),
        token(60, "short-1"),
        token(60, "short-2"),
    ])
    .await;
    let tokens = ClientCredentials::new("tenant", "client", "very-secret")
        .token_url(format!("{url}/tenant/oauth2/v2.0/token"));
    assert!(!format!("{tokens:?}").contains("very-secret"));
    let first = tokens.token().await.unwrap();
    let second = tokens.token().await.unwrap();
    assert_eq!((first.secret(), second.secret()), ("long-1", "long-1"));
    assert!(!format!("{first:?}").contains("long-1"));
    assert_eq!(script.seen().len(), 1, "cached");
    let form = String::from_utf8(script.seen()[0].body.to_vec()).unwrap();
    for field in [
        "grant_type=client_credentials",
        "client_id=client",
        "client_secret=very-secret",
        "scope=https%3A%2F%2Fgraph.microsoft.com%2F.default",
    ] {
        assert!(form.contains(field), "{form}");
    }

    // Invalidated (Graph said 401): fetched again. A token that expires
    // within the refresh margin (5 minutes) is not kept.
    tokens.invalidate();
    assert_eq!(tokens.token().await.unwrap().secret(), "short-1");
    assert_eq!(tokens.token().await.unwrap().secret(), "short-2");
    assert_eq!(script.seen().len(), 3);
}

#[tokio::test]
async fn token_endpoint_refusals_are_explained() {
    let (_, url) = Script::start(vec![(
        401,
        json_ct(),
        json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}).to_string(),
    )])
    .await;
    let tokens = ClientCredentials::new("t", "c", "wrong").token_url(format!("{url}/t/token"));
    let client = GraphClient::new(tokens).base_url(format!("{url}/v1.0"));
    match client.get("x").await {
        Err(ClientError::Token(AuthError::Rejected {
            status,
            error,
            description,
        })) => {
            assert_eq!((status, error.as_str()), (401, "invalid_client"));
            assert!(description.contains("AADSTS7000215"));
        }
        other => panic!("expected a token refusal, got {other:?}"),
    }

    // Against the emulator's token endpoint: the real flow, and Graph accepts the token.
    let emulator = Emulator::start().await.unwrap();
    let tokens = ClientCredentials::new(emulator.tenant_id(), APP, "s")
        .token_url(emulator.token_url(emulator.tenant_id()));
    let client = GraphClient::new(tokens).base_url(emulator.graph_url());
    assert!(client.list().await.unwrap().is_empty());
    let no_secret = ClientCredentials::new(emulator.tenant_id(), APP, "")
        .token_url(emulator.token_url(emulator.tenant_id()));
    let error = no_secret.token().await.unwrap_err();
    assert!(
        matches!(error, AuthError::Rejected { status: 401, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_refused_token_is_replaced_once() {
    let (script, url) = Script::start(vec![
        (
            200,
            json_ct(),
            json!({"access_token": "old", "expires_in": 3599}).to_string(),
        ),
        (
            401,
            json_ct(),
            json!({"error": {"code": "InvalidAuthenticationToken", "message": "expired"}})
                .to_string(),
        ),
        (
            200,
            json_ct(),
            json!({"access_token": "new", "expires_in": 3599}).to_string(),
        ),
        (200, json_ct(), subscription_json("s")),
    ])
    .await;
    let tokens = ClientCredentials::new("t", "c", "s").token_url(format!("{url}/t/token"));
    let client = GraphClient::new(tokens).base_url(format!("{url}/v1.0"));
    assert_eq!(client.get("s").await.unwrap().id, "s");
    let seen = script.seen();
    assert_eq!(seen[1].authorization.as_deref(), Some("Bearer old"));
    assert_eq!(seen[3].authorization.as_deref(), Some("Bearer new"));
}

/// Every catalog rule the issue names, refused with its message before any
/// request: the Graph URL points at a server that records whatever reaches it.
#[tokio::test]
async fn preflight_rejects_each_violation_without_a_request() {
    let (tripwire, url) = Script::start(vec![]).await;
    let client = GraphClient::new(StaticToken::new("tok"))
        .base_url(format!("{url}/v1.0"))
        .retry(RetryPolicy::none());
    let now = OffsetDateTime::now_utc();
    let https = "https://example.com/notify";
    let cases: Vec<(&str, NewSubscription, &[&str])> = vec![
        (
            "unknown resource path",
            NewSubscription::new(
                "me/favouriteColours",
                [ChangeType::Created],
                https,
                now + Span::hours(1),
            ),
            &[
                "[supported resource paths]",
                "does not support subscriptions",
                "e.g. me/messages",
            ],
        ),
        (
            "change type not allowed",
            NewSubscription::new("users", [ChangeType::Created], https, now + Span::hours(1)),
            &[
                "[change types of the resource]",
                "'created' is not supported for user",
                "use updated or deleted",
            ],
        ),
        (
            "rich data without a certificate",
            NewSubscription::new(
                "chats/getAllMessages",
                [ChangeType::Created],
                https,
                now + Span::minutes(50),
            )
            .include_resource_data(true),
            &[
                "[resource data and encryption]",
                "requires encryptionCertificate",
                "add a base64 DER certificate",
            ],
        ),
        (
            "presence always encrypted",
            NewSubscription::new(
                "communications/presences/u1",
                [ChangeType::Updated],
                https,
                now + Span::minutes(50),
            ),
            &["[resource data and encryption]", "always encrypted"],
        ),
        (
            "lifetime over the maximum",
            NewSubscription::new(
                "users/ada/messages",
                [ChangeType::Created],
                https,
                now + Span::days(8),
            ),
            &["[maximum lifetime]", "10080 minutes", "clamp the lifetime"],
        ),
        (
            "missing lifecycle URL for a long Teams subscription",
            NewSubscription::new(
                "chats/getAllMessages",
                [ChangeType::Created],
                https,
                now + Span::hours(3),
            ),
            &[
                "[lifecycle URL of Teams subscriptions]",
                "lifecycleNotificationUrl is required",
                "add one",
            ],
        ),
        (
            "unsupported payment model",
            NewSubscription::new(
                "me/chats/getAllMessages?model=A",
                [ChangeType::Created],
                https,
                now + Span::minutes(50),
            ),
            &["[payment models of metered APIs]", "supports only model=B"],
        ),
        (
            "plain http to the internet",
            NewSubscription::new(
                "users",
                [ChangeType::Updated],
                "http://example.com/",
                now + Span::hours(1),
            ),
            &["[notification URLs]", "https://"],
        ),
    ];
    for (what, request, needles) in cases {
        let error = client.create(&request).await.unwrap_err();
        let ClientError::Preflight(preflight) = &error else {
            panic!("{what}: expected a pre-flight error, got {error:?}");
        };
        let message = error.to_string();
        assert!(message.contains("not sent"), "{what}: {message}");
        for needle in needles {
            assert!(
                message.contains(needle),
                "{what}: {needle:?} missing from {message}"
            );
        }
        assert!(!preflight.problems().is_empty());
    }
    assert!(
        tripwire.seen().is_empty(),
        "no request reached Graph: {:?}",
        tripwire.seen()
    );

    // Clamping instead of refusing the lifetime.
    let long = NewSubscription::new(
        "users/ada/messages",
        [ChangeType::Created],
        https,
        now + Span::days(30),
    );
    let clamped = preflight::check(&long, now, LifetimePolicy::Clamp).unwrap();
    assert!(clamped.expiration <= now + Span::minutes(10_080));
    assert!(clamped.expiration >= now + Span::minutes(10_070));
    let rich = long
        .clone()
        .rich(&msgraph_webhooks::subscriptions::EncryptionCertificate::new("c", "Y2VydA=="));
    let clamped = preflight::check(&rich, now, LifetimePolicy::Clamp).unwrap_err();
    assert!(
        clamped
            .problems()
            .iter()
            .any(|p| matches!(p, Problem::Catalog(_))),
        "rich Outlook needs $select: not a lifetime problem, still refused"
    );
}

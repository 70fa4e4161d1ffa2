//! Rich notifications end to end: encrypted items and validation tokens
//! through a real receiver on 127.0.0.1, the CLI's `listen`, `inspect` and
//! `cert new`, and a JWKS served over HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use msgraph_webhooks::crypto::{DecryptionKey, KeyRing};
use msgraph_webhooks::notification::EncryptedContent;
use msgraph_webhooks::notification::resources::Resource;
use msgraph_webhooks::tokens::{Jwks, TokenError, TokenValidator};
use msgraph_webhooks::{ClientState, Receiver, ResourceKind};
use openssl::rsa::Padding;
use serde_json::{Value, json};

use crate::support::cli::{BIN, Process};
use crate::support::http::{post_json, request};
use crate::support::rich::*;
use crate::support::{Recorder, TestServer};

/// A receiver with the given keys, trusting `signer`'s JWKS, for `APP_ID`.
async fn server(keys: KeyRing, signer: &TokenSigner, tenants: &[&str]) -> (TestServer, Recorder) {
    let recorder = Recorder::default();
    let builder = Receiver::builder(recorder.clone())
        .client_state(ClientState::new(CLIENT_STATE))
        .key_ring(keys)
        .app_ids([APP_ID])
        .tenant_ids(tenants.iter().copied())
        .jwks(Jwks::from_json(jwks(&[signer]).as_bytes()).unwrap())
        .workers(1);
    (TestServer::start(builder).await, recorder)
}

/// Waits until `reason` was counted `n` times (panics after 10 s).
async fn wait_rejected(server: &TestServer, reason: &'static str, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.metrics.rejected_count(reason) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{reason} not counted {n} times within 10 s (now {})",
            server.metrics.rejected_count(reason)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn dotnet_sdk_vector_decrypts_through_the_receiver() {
    let (p12, content) = dotnet_vector();
    let mut keys = KeyRing::new();
    keys.insert(
        content.encryption_certificate_id.clone(),
        DecryptionKey::from_bytes(&p12, Some("rich")).unwrap(),
    )
    .unwrap();
    let signer = TokenSigner::new("k1");
    let (server, recorder) = server(keys, &signer, &[]).await;
    let body = rich_envelope(
        vec![rich_item(TENANT, "1625126194597", &content)],
        Some(json!([signer.sign(&v1_claims(TENANT))])),
    );
    assert_eq!(post_json(&server.url("/"), body).await.status, 202);
    let change = &recorder.changes_after(1).await[0];
    let data = change.data().unwrap();
    assert_eq!(data["body"]["content"], "Hello World");
    assert_eq!(data["etag"], "1625126194597");
    assert_eq!(change.resource_kind(), &ResourceKind::ChatMessage);
    match change.resource_typed().unwrap() {
        Resource::ChatMessage(message) => {
            assert_eq!(
                message.body.unwrap().content.as_deref(),
                Some("Hello World")
            );
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn v1_and_v2_tokens_and_two_certificates_in_one_batch() {
    let old = AppCert::new("cert/2025");
    let new = AppCert::new("cert/2026");
    let signer = TokenSigner::new("k1");
    let (server, recorder) = server(ring(&[&old, &new]), &signer, &[]).await;
    let body = rich_envelope(
        vec![
            rich_item(
                TENANT,
                "1",
                &old.encrypt(&chat_message("1", "from the old key")),
            ),
            rich_item(
                TENANT_2,
                "2",
                &new.encrypt(&chat_message("2", "from the new key")),
            ),
            message_item_basic(),
        ],
        Some(json!([
            signer.sign(&v1_claims(TENANT)),
            signer.sign(&v2_claims(TENANT_2))
        ])),
    );
    assert_eq!(post_json(&server.url("/"), body).await.status, 202);
    let changes = recorder.changes_after(3).await;
    let mut texts: Vec<Option<String>> = changes
        .iter()
        .map(|c| {
            c.data()
                .map(|d| d["body"]["content"].as_str().unwrap().to_owned())
        })
        .collect();
    texts.sort();
    assert_eq!(
        texts,
        [
            None,
            Some("from the new key".to_owned()),
            Some("from the old key".to_owned())
        ],
        "both rich items decrypted; the basic item passes through without data"
    );
    server.stop().await;
}

/// A basic (unencrypted) item in a rich batch.
fn message_item_basic() -> Value {
    crate::support::message_item(SUBSCRIPTION, CLIENT_STATE, 1)
}

/// Every way a rich item can be wrong, each sent to a running receiver: the
/// delivery still gets 202, the item never reaches the handler, and its
/// reason is counted.
#[tokio::test]
async fn the_negative_list_through_the_receiver() {
    let cert = AppCert::new("cert-1");
    let stranger = AppCert::new("cert-1");
    let other_id = AppCert::new("cert-unknown");
    let signer = TokenSigner::new("k1");
    let rogue = TokenSigner::new("k-rogue");
    let (server, recorder) = server(ring(&[&cert]), &signer, &[TENANT, TENANT_2]).await;

    let good_token = || json!([signer.sign(&v1_claims(TENANT))]);
    let message = chat_message("1", "secret text");
    let good = || cert.encrypt(&message);
    let edit = |f: &dyn Fn(&mut EncryptedContent)| {
        let mut content = good();
        f(&mut content);
        content
    };
    let flip = |b64: &str, at: usize| {
        let mut bytes = STANDARD.decode(b64).unwrap();
        bytes[at] ^= 0x01;
        STANDARD.encode(bytes)
    };
    let third_tenant = "00000000-1111-2222-3333-444444444444";
    let third = with(
        with(v1_claims(third_tenant), "tid", json!(third_tenant)),
        "iss",
        json!(format!("https://sts.windows.net/{third_tenant}/")),
    );

    let cases: Vec<(&str, EncryptedContent, &str, Option<Value>, &'static str)> = vec![
        (
            "tampered signature",
            edit(&|c| c.data_signature = flip(&c.data_signature, 0)),
            TENANT,
            Some(good_token()),
            "signature_mismatch",
        ),
        (
            "tampered ciphertext",
            edit(&|c| c.data = flip(&c.data, 5)),
            TENANT,
            Some(good_token()),
            "signature_mismatch",
        ),
        (
            "truncated ciphertext",
            edit(&|c| {
                let bytes = STANDARD.decode(&c.data).unwrap();
                c.data = STANDARD.encode(&bytes[..bytes.len() - 3]);
            }),
            TENANT,
            Some(good_token()),
            "truncated_ciphertext",
        ),
        (
            "bad padding",
            cert.seal(message.to_string().as_bytes(), false, Padding::PKCS1_OAEP),
            TENANT,
            Some(good_token()),
            "bad_padding",
        ),
        (
            "wrong key for a known id",
            {
                let mut c = stranger.encrypt(&message);
                c.encryption_certificate_thumbprint = cert.generated.thumbprint().to_owned();
                c
            },
            TENANT,
            Some(good_token()),
            "key_unwrap_failed",
        ),
        (
            "unknown id",
            other_id.encrypt(&message),
            TENANT,
            Some(good_token()),
            "unknown_certificate_id",
        ),
        (
            "thumbprint mismatch",
            edit(&|c| {
                c.encryption_certificate_thumbprint = stranger.generated.thumbprint().to_owned()
            }),
            TENANT,
            Some(good_token()),
            "thumbprint_mismatch",
        ),
        (
            "PKCS#1 v1.5 wrapped key",
            cert.seal(message.to_string().as_bytes(), true, Padding::PKCS1),
            TENANT,
            Some(good_token()),
            "key_unwrap_failed",
        ),
        (
            "invalid base64",
            edit(&|c| c.data_key.insert(3, '*')),
            TENANT,
            Some(good_token()),
            "invalid_base64",
        ),
        (
            "token with wrong aud",
            good(),
            TENANT,
            Some(json!([signer.sign(&with(
                v1_claims(TENANT),
                "aud",
                json!("another-app")
            ))])),
            "token_audience",
        ),
        (
            "token with wrong publisher",
            good(),
            TENANT,
            Some(json!([signer.sign(&with(
                v1_claims(TENANT),
                "appid",
                json!(APP_ID)
            ))])),
            "token_publisher",
        ),
        (
            "expired token",
            good(),
            TENANT,
            Some(json!([signer.sign(&with(
                v1_claims(TENANT),
                "exp",
                json!(now() - 3600)
            ))])),
            "token_expired",
        ),
        (
            "token not yet valid",
            good(),
            TENANT,
            Some(json!([signer.sign(&with(
                v1_claims(TENANT),
                "nbf",
                json!(now() + 3600)
            ))])),
            "token_not_yet_valid",
        ),
        (
            "unknown signing key",
            good(),
            TENANT,
            Some(json!([rogue.sign(&v1_claims(TENANT))])),
            "token_unknown_key",
        ),
        (
            "alg none",
            good(),
            TENANT,
            Some(json!([signer.unsigned(&v1_claims(TENANT))])),
            "token_algorithm",
        ),
        (
            "HS256 signed with the public key",
            good(),
            TENANT,
            Some(json!([
                signer.sign_hs256_with_public_key(&v1_claims(TENANT))
            ])),
            "token_algorithm",
        ),
        (
            "garbage token",
            good(),
            TENANT,
            Some(json!(["eyJhbGciOi.garbage"])),
            "token_malformed",
        ),
        ("tokens missing", good(), TENANT, None, "tokens_missing"),
        (
            "tokens null",
            good(),
            TENANT,
            Some(Value::Null),
            "tokens_null",
        ),
        (
            "tokens not a list of strings",
            good(),
            TENANT,
            Some(json!([1, 2])),
            "tokens_malformed",
        ),
        (
            "one bad among good ones",
            good(),
            TENANT,
            Some(json!([
                signer.sign(&v1_claims(TENANT)),
                signer.sign(&with(v2_claims(TENANT_2), "exp", json!(now() - 3600))),
            ])),
            "token_expired",
        ),
        (
            "tenant not allowed",
            good(),
            third_tenant,
            Some(json!([signer.sign(&third)])),
            "token_tenant_not_allowed",
        ),
        (
            "no token for the item's tenant",
            good(),
            TENANT_2,
            Some(good_token()),
            "token_not_covering_item",
        ),
    ];

    let mut expected: std::collections::HashMap<&str, u64> = Default::default();
    for (name, content, tenant, tokens, reason) in cases {
        let body = rich_envelope(vec![rich_item(tenant, "1", &content)], tokens);
        let reply = post_json(&server.url("/"), body).await;
        assert_eq!(reply.status, 202, "{name}: Graph always gets 202");
        assert!(reply.body.is_empty(), "{name}: the answer says nothing");
        let count = expected.entry(reason).or_default();
        *count += 1;
        wait_rejected(&server, reason, *count).await;
    }

    // Nothing reached the handler; a valid item afterwards does.
    let body = rich_envelope(vec![rich_item(TENANT, "1", &good())], Some(good_token()));
    assert_eq!(post_json(&server.url("/"), body).await.status, 202);
    let changes = recorder.changes_after(1).await;
    assert_eq!(changes.len(), 1, "only the valid item was handled");
    assert_eq!(changes[0].data().unwrap()["body"]["content"], "secret text");
    server.stop().await;
}

#[tokio::test]
async fn without_keys_encrypted_items_are_rejected() {
    let cert = AppCert::new("cert-1");
    let recorder = Recorder::default();
    let server = TestServer::start(
        Receiver::builder(recorder.clone()).client_state(ClientState::new(CLIENT_STATE)),
    )
    .await;
    let body = rich_envelope(
        vec![rich_item(
            TENANT,
            "1",
            &cert.encrypt(&chat_message("1", "x")),
        )],
        None,
    );
    assert_eq!(post_json(&server.url("/"), body).await.status, 202);
    wait_rejected(&server, "no_decryption_keys", 1).await;
    assert!(recorder.events().is_empty());
    server.stop().await;

    let error = Receiver::builder(Recorder::default())
        .client_state(ClientState::new(CLIENT_STATE))
        .key_ring(ring(&[&cert]))
        .build()
        .unwrap_err();
    assert!(matches!(
        error,
        msgraph_webhooks::ReceiverBuildError::NoAppIds
    ));
}

/// A JWKS served over HTTP on 127.0.0.1 whose document can be swapped and
/// whose hits are counted.
struct JwksServer {
    url: String,
    document: Arc<std::sync::Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(document: String) -> Self {
        let state = Arc::new(std::sync::Mutex::new((200u16, document)));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (state.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/keys",
            axum::routing::get(move || {
                let (s, h) = (s.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = s.lock().unwrap().clone();
                    (axum::http::StatusCode::from_u16(status).unwrap(), body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/keys", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            document: state,
            hits,
            task,
        }
    }

    fn serve(&self, status: u16, document: String) {
        *self.document.lock().unwrap() = (status, document);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn jwks_url_is_cached_and_refetched_on_unknown_kid_with_a_rate_limit() {
    let a = TokenSigner::new("a");
    let b = TokenSigner::new("b");
    let c = TokenSigner::new("c");
    let jwks_server = JwksServer::start(jwks(&[&a])).await;
    let token_a = a.sign(&v1_claims(TENANT));
    let token_b = b.sign(&v2_claims(TENANT));

    // Refetch allowed at once: a rotated key is picked up.
    let eager = TokenValidator::new(
        Jwks::from_url(&jwks_server.url)
            .unwrap()
            .min_refresh_interval(Duration::ZERO),
        [APP_ID],
    );
    assert!(eager.verify(&token_a).await.is_ok());
    assert!(eager.verify(&a.sign(&v2_claims(TENANT))).await.is_ok());
    assert_eq!(
        jwks_server.hits(),
        1,
        "the second token used the cached keys"
    );
    jwks_server.serve(200, jwks(&[&b]));
    assert!(
        eager.verify(&token_b).await.is_ok(),
        "unknown kid → refetch"
    );
    assert_eq!(jwks_server.hits(), 2);
    assert!(
        eager.verify(&token_a).await.is_ok(),
        "a verified token stays valid until it expires, even after its key rotated out"
    );
    assert_eq!(jwks_server.hits(), 2);

    // Rate-limited: forged kids cannot make the receiver hammer the endpoint.
    jwks_server.serve(200, jwks(&[&a]));
    let patient = TokenValidator::new(Jwks::from_url(&jwks_server.url).unwrap(), [APP_ID]);
    assert!(patient.verify(&token_a).await.is_ok());
    assert_eq!(jwks_server.hits(), 3);
    for _ in 0..5 {
        assert_eq!(
            patient.verify(&c.sign(&v1_claims(TENANT))).await,
            Err(TokenError::UnknownKey)
        );
    }
    assert_eq!(jwks_server.hits(), 3, "no refetch within the interval");

    // Unreachable keys are a transient failure, not a verdict.
    jwks_server.serve(500, String::new());
    let cold = TokenValidator::new(Jwks::from_url(&jwks_server.url).unwrap(), [APP_ID]);
    let error = cold.verify(&token_a).await.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert_eq!(error.reason(), "jwks_unavailable");
}

#[tokio::test]
async fn transient_jwks_failures_are_retried_then_succeed() {
    let cert = AppCert::new("cert-1");
    let signer = TokenSigner::new("k1");
    let jwks_server = JwksServer::start(String::new()).await;
    jwks_server.serve(503, String::new());
    let recorder = Recorder::default();
    let builder = Receiver::builder(recorder.clone())
        .client_state(ClientState::new(CLIENT_STATE))
        .key_ring(ring(&[&cert]))
        .app_ids([APP_ID])
        .jwks(
            Jwks::from_url(&jwks_server.url)
                .unwrap()
                .min_refresh_interval(Duration::ZERO),
        )
        .retry(msgraph_webhooks::retry::RetryPolicy::new(
            10,
            Duration::from_millis(20),
        ))
        .workers(1);
    let server = TestServer::start(builder).await;
    let body = rich_envelope(
        vec![rich_item(
            TENANT,
            "1",
            &cert.encrypt(&chat_message("1", "late")),
        )],
        Some(json!([signer.sign(&v1_claims(TENANT))])),
    );
    assert_eq!(post_json(&server.url("/"), body).await.status, 202);
    // Let at least one attempt fail, then bring the keys back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while jwks_server.hits() == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    jwks_server.serve(200, jwks(&[&signer]));
    let changes = recorder.changes_after(1).await;
    assert_eq!(changes[0].data().unwrap()["body"]["content"], "late");
    assert!(changes[0].attempt() >= 1, "the first attempt failed");
    assert_eq!(server.metrics.rejected_count("jwks_unavailable"), 0);
    server.stop().await;
}

fn run_cli(args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(BIN);
    command.args(args).env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("MSGRAPH_WEBHOOKS_") {
            command.env_remove(key);
        }
    }
    command.output().unwrap()
}

#[test]
fn inspect_decrypts_the_dotnet_vector_with_the_skip_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (p12, content) = dotnet_vector();
    let key = dir.path().join("dotnet.pfx");
    std::fs::write(&key, p12).unwrap();
    let body = dir.path().join("capture.json");
    // Microsoft's vector comes without tokens: only the skip flag decrypts it.
    std::fs::write(
        &body,
        rich_envelope(vec![rich_item(TENANT, "1625126194597", &content)], None),
    )
    .unwrap();
    let key_arg = format!("custom-id-for-testing={}", key.display());
    let body_arg = body.to_str().unwrap();

    let output = run_cli(&[
        "inspect",
        body_arg,
        "--key",
        &key_arg,
        "--key-password",
        "rich",
        "--insecure-skip-token-validation",
    ]);
    assert!(output.status.success(), "{output:?}");
    let line: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(line["kind"], "change");
    assert_eq!(line["data"]["body"]["content"], "Hello World");
    assert_eq!(line["resourceKind"], "chatMessage");

    let output = run_cli(&[
        "inspect",
        body_arg,
        "--key",
        &key_arg,
        "--key-password",
        "rich",
        "--app-id",
        APP_ID,
        "--jwks",
        body_arg,
    ]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let output = run_cli(&[
        "inspect",
        body_arg,
        "--key",
        &key_arg,
        "--key-password",
        "rich",
        "--app-id",
        APP_ID,
        "--jwks",
        &write_jwks(dir.path(), &TokenSigner::new("k1")),
    ]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "item 0: rejected: tokens_missing"
    );
}

fn write_jwks(dir: &std::path::Path, signer: &TokenSigner) -> String {
    let path = dir.join(format!("jwks-{}.json", signer.kid));
    std::fs::write(&path, jwks(&[signer])).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn inspect_verifies_tokens_and_reports_each_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let cert = AppCert::new("cert-1");
    let signer = TokenSigner::new("k1");
    let key = cert.write_pem(dir.path());
    let jwks_file = write_jwks(dir.path(), &signer);
    let mut tampered = cert.encrypt(&chat_message("2", "tampered"));
    tampered.data_signature = STANDARD.encode([0u8; 32]);
    let body = dir.path().join("capture.json");
    std::fs::write(
        &body,
        rich_envelope(
            vec![
                rich_item(TENANT, "1", &cert.encrypt(&chat_message("1", "fine"))),
                rich_item(TENANT, "2", &tampered),
                json!({"no": "notification"}),
                json!({"subscriptionId": SUBSCRIPTION, "lifecycleEvent": "reauthorizationRequired", "tenantId": TENANT}),
            ],
            Some(json!([signer.sign(&v2_claims(TENANT))])),
        ),
    )
    .unwrap();
    let key_arg = format!("cert-1={}", key.display());
    let output = run_cli(&[
        "inspect",
        body.to_str().unwrap(),
        "--key",
        &key_arg,
        "--app-id",
        APP_ID,
        "--jwks",
        &jwks_file,
    ]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["data"]["body"]["content"], "fine");
    assert_eq!(lines[1]["lifecycleEvent"], "reauthorizationRequired");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            "item 1: rejected: signature_mismatch",
            "item 2: rejected: malformed_item"
        ]
    );

    // All accepted → exit 0.
    std::fs::write(
        &body,
        rich_envelope(
            vec![rich_item(
                TENANT,
                "1",
                &cert.encrypt(&chat_message("1", "fine")),
            )],
            Some(json!([signer.sign(&v1_claims(TENANT))])),
        ),
    )
    .unwrap();
    let output = run_cli(&[
        "inspect",
        body.to_str().unwrap(),
        "--key",
        &key_arg,
        "--app-id",
        APP_ID,
        "--jwks",
        &jwks_file,
    ]);
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn cert_new_writes_a_usable_key_and_prints_the_subscription_values() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let output = run_cli(&[
        "cert",
        "new",
        "--out",
        out.to_str().unwrap(),
        "--cn",
        "contoso-rich",
        "--bits",
        "3072",
    ]);
    assert!(output.status.success(), "{output:?}");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let der = STANDARD
        .decode(summary["encryptionCertificate"].as_str().unwrap())
        .unwrap();
    let cert = openssl::x509::X509::from_der(&der).unwrap();
    assert_eq!(cert.public_key().unwrap().bits(), 3072);
    let key = DecryptionKey::from_file(&out.join("key.pem"), None).unwrap();
    assert_eq!(key.thumbprint(), summary["thumbprint"].as_str().unwrap());
    // The key alone, as other runtimes (Node's privateDecrypt) want it.
    let alone = std::fs::read_to_string(out.join("private-key.pem")).unwrap();
    assert!(alone.contains("PRIVATE KEY") && !alone.contains("CERTIFICATE"));
    let private = openssl::pkey::PKey::private_key_from_pem(alone.as_bytes()).unwrap();
    assert!(private.public_eq(&cert.public_key().unwrap()));
    assert_eq!(
        summary["privateKey"],
        out.join("private-key.pem").to_str().unwrap()
    );
    assert_eq!(
        msgraph_webhooks::emulator::thumbprint(&cert).unwrap(),
        key.thumbprint()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for file in ["key.pem", "private-key.pem"] {
            let mode = std::fs::metadata(out.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{file} is the owner's only");
        }
    }

    let again = run_cli(&["cert", "new", "--out", out.to_str().unwrap()]);
    assert!(!again.status.success(), "existing keys are not overwritten");
    let bad = run_cli(&[
        "cert",
        "new",
        "--out",
        dir.path().join("x").to_str().unwrap(),
        "--bits",
        "1024",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("2048 to 4096"));
}

/// The CLI as a user runs it: `listen --key … --jwks FILE --app-id …`.
#[tokio::test]
async fn listen_prints_decrypted_data_and_drops_tampered_items() {
    let dir = tempfile::tempdir().unwrap();
    let cert = AppCert::new("cert-1");
    let signer = TokenSigner::new("k1");
    let key_arg = format!("cert-1={}", cert.write_pem(dir.path()).display());
    let jwks_file = write_jwks(dir.path(), &signer);
    let data_dir = dir.path().join("store");
    let mut process = Process::spawn(
        &[
            "listen",
            "--addr",
            "127.0.0.1:0",
            "--key",
            &key_arg,
            "--jwks",
            &jwks_file,
            "--app-id",
            APP_ID,
            "--workers",
            "1",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        &[("MSGRAPH_WEBHOOKS_CLIENT_STATE", CLIENT_STATE)],
    );
    let addr = process.listening_addr().await;
    let admin = process.admin_addr().await;
    let url = format!("http://{addr}/");
    let tokens = json!([signer.sign(&v1_claims(TENANT))]);

    let body = rich_envelope(
        vec![rich_item(
            TENANT,
            "1",
            &cert.encrypt(&chat_message("1", "Hello from Graph")),
        )],
        Some(tokens.clone()),
    );
    assert_eq!(post_json(&url, body).await.status, 202);
    let line: Value =
        serde_json::from_str(&process.next_stdout(Duration::from_secs(20)).await).unwrap();
    assert_eq!(line["data"]["body"]["content"], "Hello from Graph");
    assert_eq!(line["resourceKind"], "chatMessage");
    assert_eq!(line["tenantId"], TENANT);

    let mut tampered = cert.encrypt(&chat_message("2", "tampered"));
    let mut bytes = STANDARD.decode(&tampered.data).unwrap();
    bytes[0] ^= 1;
    tampered.data = STANDARD.encode(bytes);
    let body = rich_envelope(
        vec![rich_item(TENANT, "2", &tampered)],
        Some(tokens.clone()),
    );
    assert_eq!(post_json(&url, body).await.status, 202);

    // One worker takes items in order: the next line is the item sent after
    // the tampered one, so the tampered one printed nothing.
    let body = rich_envelope(
        vec![rich_item(
            TENANT,
            "3",
            &cert.encrypt(&chat_message("3", "after")),
        )],
        Some(tokens),
    );
    assert_eq!(post_json(&url, body).await.status, 202);
    let line: Value =
        serde_json::from_str(&process.next_stdout(Duration::from_secs(20)).await).unwrap();
    assert_eq!(line["data"]["body"]["content"], "after");

    let metrics = request("GET", &format!("http://{admin}/metrics"), None, "")
        .await
        .text();
    assert!(
        metrics.contains("msgraph_webhooks_items_rejected_total{reason=\"signature_mismatch\"} 1"),
        "{metrics}"
    );
    process.terminate();
    let status = tokio::time::timeout(Duration::from_secs(20), process.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[test]
fn the_committed_dev_key_matches_its_readme() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../certs");
    let key = DecryptionKey::from_file(&root.join("dev.pem"), None).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains(key.thumbprint()),
        "README names the thumbprint"
    );
    assert!(readme.contains("local use only"));
    let b64 = std::fs::read_to_string(root.join("dev-cert.b64")).unwrap();
    assert_eq!(
        STANDARD.decode(b64.trim()).unwrap(),
        key.certificate().to_der().unwrap()
    );
    let pem = std::fs::read(root.join("dev-cert.pem")).unwrap();
    assert_eq!(
        openssl::x509::X509::from_pem(&pem)
            .unwrap()
            .to_der()
            .unwrap(),
        key.certificate().to_der().unwrap()
    );
}

//! The emulator over HTTPS, as Microsoft's SDKs reach it: a local CA made
//! once and reused, a server certificate for the loopback names, h2 by
//! ALPN, Microsoft's metadata documents, the v1 token endpoint, instance
//! discovery and JWKS certificates.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use msgraph_webhooks::ChangeType;
use msgraph_webhooks::emulator::{Change, Emulator};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::support::cli::Process;
use crate::support::receivers::SlowReceiver;

const FORM: &str = "application/x-www-form-urlencoded";

async fn https(dir: &std::path::Path) -> Emulator {
    Emulator::builder().https(dir).start().await.unwrap()
}

/// A client trusting the emulator's CA (and nothing it was not told).
fn client(emulator: &Emulator) -> reqwest::Client {
    client_with(emulator, reqwest::Client::builder())
}

fn client_with(emulator: &Emulator, builder: reqwest::ClientBuilder) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(emulator.ca_pem().unwrap()).unwrap();
    builder
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn emulator_https_ca_is_made_once_and_reused_and_the_certificate_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let first = https(dir.path()).await;
    assert!(
        first.url().starts_with("https://127.0.0.1:"),
        "{}",
        first.url()
    );
    assert!(first.graph_url().starts_with("https://"));
    assert_eq!(first.ca_path().unwrap(), dir.path().join("ca.pem"));
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    assert_eq!(first.ca_pem().unwrap(), ca.as_slice());
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let second = https(dir.path()).await;
    assert_eq!(second.ca_pem().unwrap(), ca.as_slice(), "the CA is reused");
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);

    // 127.0.0.1, and localhost, both verified against the CA alone.
    let client = client(&second);
    let info = get_json(&client, &format!("{}/emulator", second.url())).await;
    assert_eq!(info["graph"], second.graph_url());
    let port = second.addr().port();
    let by_name = client_with(
        &second,
        reqwest::Client::builder().resolve("localhost", second.addr()),
    );
    let info = get_json(&by_name, &format!("https://localhost:{port}/emulator")).await;
    assert_eq!(
        info["graph"],
        format!("https://localhost:{port}/v1.0"),
        "URLs follow the Host"
    );

    // A client without the CA refuses the certificate.
    let untrusting = reqwest::Client::builder().build().unwrap();
    assert!(untrusting.get(second.url()).send().await.is_err());

    // ::1, where the machine has IPv6 loopback.
    match tokio::net::TcpListener::bind("[::1]:0").await {
        Ok(listener) => {
            let v6 = Emulator::builder()
                .https(dir.path())
                .start_on(listener)
                .unwrap();
            assert!(v6.url().starts_with("https://[::1]:"), "{}", v6.url());
            let info = get_json(&client, &format!("{}/emulator", v6.url())).await;
            assert!(
                info["graph"]
                    .as_str()
                    .unwrap()
                    .starts_with("https://[::1]:")
            );
        }
        Err(e) => eprintln!("skipping ::1: no IPv6 loopback here ({e})"),
    }

    // A corrupt CA file is an error that names it.
    std::fs::write(dir.path().join("ca.pem"), b"not a certificate").unwrap();
    let error = Emulator::builder()
        .https(dir.path())
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("ca.pem"), "{error}");
}

#[tokio::test]
async fn emulator_https_speaks_h2_by_alpn_and_survives_plain_http_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = https(dir.path()).await;
    let client = client(&emulator);
    let response = client
        .get(format!("{}/emulator", emulator.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    // HTTP/2 has no Host header: links follow `:authority`.
    let info: Value = response.json().await.unwrap();
    assert_eq!(info["graph"], emulator.graph_url());
    let h1 = client_with(&emulator, reqwest::Client::builder().http1_only());
    let response = h1
        .get(format!("{}/emulator", emulator.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);

    // Plain HTTP to the TLS port fails, promptly.
    let plain = format!("http://{}/emulator", emulator.addr());
    let refused = tokio::time::timeout(Duration::from_secs(15), reqwest::get(&plain)).await;
    assert!(matches!(refused, Ok(Err(_))), "{refused:?}");
    // Garbage, and a client that says nothing, do not stop it.
    let mut junk = tokio::net::TcpStream::connect(emulator.addr())
        .await
        .unwrap();
    junk.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3])
        .await
        .unwrap();
    let _silent = tokio::net::TcpStream::connect(emulator.addr())
        .await
        .unwrap();
    let info = get_json(&client, &format!("{}/emulator", emulator.url())).await;
    assert_eq!(info["graph"], emulator.graph_url());
}

#[tokio::test]
async fn emulator_https_metadata_is_microsofts_with_https_urls() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = https(dir.path()).await;
    let client = client(&emulator);
    let base = emulator.url();
    let tenant = emulator.tenant_id();

    let v2 = get_json(&client, &emulator.openid_configuration_url(tenant)).await;
    for (field, path) in [
        ("authorization_endpoint", "oauth2/v2.0/authorize"),
        ("token_endpoint", "oauth2/v2.0/token"),
        ("device_authorization_endpoint", "oauth2/v2.0/devicecode"),
        ("end_session_endpoint", "oauth2/v2.0/logout"),
        ("jwks_uri", "discovery/v2.0/keys"),
    ] {
        assert_eq!(v2[field], format!("{base}/{tenant}/{path}"), "{field}");
    }
    assert_eq!(
        v2["issuer"],
        format!("https://login.microsoftonline.com/{tenant}/v2.0")
    );
    for field in [
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
        "scopes_supported",
        "token_endpoint_auth_methods_supported",
    ] {
        assert!(v2[field].is_array(), "{field}: {v2:#}");
    }
    assert_eq!(v2["tenant_region_scope"], "EU");
    assert_eq!(v2["cloud_instance_name"], "microsoftonline.com");
    assert_eq!(v2["msgraph_host"], emulator.addr().to_string());
    let common = get_json(&client, &emulator.openid_configuration_url("common")).await;
    assert_eq!(
        common["issuer"],
        "https://login.microsoftonline.com/{tenantid}/v2.0"
    );
    assert_eq!(common["tenant_region_scope"], Value::Null);

    let v1 = get_json(
        &client,
        &format!("{base}/{tenant}/.well-known/openid-configuration"),
    )
    .await;
    for (field, path) in [
        ("authorization_endpoint", "oauth2/authorize"),
        ("token_endpoint", "oauth2/token"),
        ("device_authorization_endpoint", "oauth2/devicecode"),
        ("jwks_uri", "discovery/keys"),
    ] {
        assert_eq!(v1[field], format!("{base}/{tenant}/{path}"), "{field}");
    }
    assert_eq!(v1["issuer"], format!("https://sts.windows.net/{tenant}/"));

    // Every URL it advertises answers (but the interactive ones it does not serve).
    let keys = client
        .get(v1["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(keys.status(), 200);

    // A hostile Host falls back to the emulator's own address.
    let odd = client
        .get(emulator.openid_configuration_url("common"))
        .header("host", "evil.example/path?x")
        .send()
        .await
        .unwrap();
    let odd: Value = odd.json().await.unwrap();
    assert!(
        odd["token_endpoint"]
            .as_str()
            .unwrap()
            .starts_with(emulator.url()),
        "{odd:#}"
    );
}

#[tokio::test]
async fn emulator_https_v1_token_grant_is_accepted_by_the_subscriptions_api() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = https(dir.path()).await;
    let client = client(&emulator);
    let tenant = emulator.tenant_id();
    let url = format!("{}/{tenant}/oauth2/token", emulator.url());
    let response = client
        .post(&url)
        .header("content-type", FORM)
        .body("grant_type=client_credentials&client_id=v1-app&client_secret=s&resource=https%3A%2F%2Fgraph.microsoft.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], "3599");
    assert!(
        answer["expires_on"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .is_ok()
    );
    assert_eq!(answer["resource"], "https://graph.microsoft.com");
    let token = answer["access_token"].as_str().unwrap();
    let listed = client
        .get(format!("{}/subscriptions", emulator.graph_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);

    for (body, error) in [
        (
            "grant_type=client_credentials&client_id=a&client_secret=s",
            "invalid_request",
        ),
        (
            "grant_type=client_credentials&client_id=a&client_secret=s&resource=https%3A%2F%2Fexample.com",
            "invalid_resource",
        ),
        (
            "grant_type=client_credentials&client_id=a&resource=https%3A%2F%2Fgraph.microsoft.com",
            "invalid_client",
        ),
        (
            "grant_type=password&client_id=a&username=u&password=p",
            "unsupported_grant_type",
        ),
        ("%%%", "invalid_request"),
    ] {
        let refused: Value = client
            .post(&url)
            .header("content-type", FORM)
            .body(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(refused["error"], error, "{body}: {refused}");
    }
}

#[tokio::test]
async fn emulator_https_instance_discovery_answers_as_msal_expects() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = https(dir.path()).await;
    let client = client(&emulator);
    let base = emulator.url();
    let host = emulator.addr().to_string();
    let authorize = format!("{base}/contoso.onmicrosoft.com/oauth2/v2.0/authorize");
    let discovery: Value = client
        .get(format!(
            "{base}/common/discovery/instance?api-version=1.1&authorization_endpoint={}",
            percent_encoding::utf8_percent_encode(&authorize, percent_encoding::NON_ALPHANUMERIC)
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        discovery,
        json!({
            "tenant_discovery_endpoint": format!("{base}/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration"),
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        })
    );
    let endpoint = discovery["tenant_discovery_endpoint"].as_str().unwrap();
    let config = get_json(&client, endpoint).await;
    assert!(config["authorization_endpoint"].is_string());

    let tenant = emulator.tenant_id();
    let by_path = get_json(
        &client,
        &format!("{base}/{tenant}/discovery/instance?api-version=1.1"),
    )
    .await;
    assert_eq!(
        by_path["tenant_discovery_endpoint"],
        format!("{base}/{tenant}/v2.0/.well-known/openid-configuration")
    );
    let bad = client
        .get(format!(
            "{base}/common/discovery/instance?authorization_endpoint=not%20a%20url"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"],
        "invalid_instance"
    );
}

#[tokio::test]
async fn emulator_https_jwks_certificates_match_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = https(dir.path()).await;
    let client = client(&emulator);
    let keys = get_json(&client, &emulator.jwks_url()).await;
    let key = &keys["keys"][0];
    let der = STANDARD.decode(key["x5c"][0].as_str().unwrap()).unwrap();
    let certificate = openssl::x509::X509::from_der(&der).unwrap();
    let rsa = certificate.public_key().unwrap().rsa().unwrap();
    assert_eq!(
        URL_SAFE_NO_PAD.encode(rsa.n().to_vec()),
        key["n"].as_str().unwrap()
    );
    assert_eq!(
        URL_SAFE_NO_PAD.encode(rsa.e().to_vec()),
        key["e"].as_str().unwrap()
    );
    let thumbprint = URL_SAFE_NO_PAD.encode(openssl::sha::sha1(&der));
    assert_eq!(key["x5t"], thumbprint);
    assert_eq!(key["kid"], thumbprint);
    // A PEM built from x5c[0] verifies the emulator's tokens.
    let pem = certificate.to_pem().unwrap();
    let decoding = jsonwebtoken::DecodingKey::from_rsa_pem(&pem).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["https://graph.microsoft.com"]);
    let token = emulator.app_token("jwks-app");
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(thumbprint.as_str()));
    jsonwebtoken::decode::<Value>(&token, &decoding, &validation).unwrap();
}

#[tokio::test]
async fn emulator_https_subscription_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = https(dir.path()).await;
    let client = client(&emulator);
    let receiver = SlowReceiver::start("secretClientValue", None).await;
    let token: Value = client
        .post(emulator.token_url("common"))
        .header("content-type", FORM)
        .body("grant_type=client_credentials&client_id=https-app&client_secret=s&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let created = client
        .post(format!("{}/subscriptions", emulator.graph_url()))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .json(&json!({
            "changeType": "created",
            "notificationUrl": receiver.url("/notify"),
            "resource": "users/u1/messages",
            "expirationDateTime": expires,
            "clientState": "secretClientValue",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert!(
        created["@odata.context"]
            .as_str()
            .unwrap()
            .starts_with("https://"),
        "{created:#}"
    );
    emulator
        .fire(&Change::new("users/u1/messages", ChangeType::Created))
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.recorder.changes().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no notification arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn emulator_https_emulate_prints_the_ca_path() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let tls_arg = tls.display().to_string();
    let mut process = Process::spawn(
        &[
            "emulate",
            "--addr",
            "127.0.0.1:0",
            "--https",
            "--tls-dir",
            &tls_arg,
        ],
        &[],
    );
    let addr: SocketAddr = process.listening_addr().await;
    let ca_line = process.wait_for_log("trust it once").await;
    let ca = tls.join("ca.pem");
    assert!(ca_line.contains(&ca.display().to_string()), "{ca_line}");
    let hints = process.wait_for_log("NODE_EXTRA_CA_CERTS").await;
    for hint in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "update-ca-certificates",
        "security add-trusted-cert",
    ] {
        assert!(hints.contains(hint), "{hint} in {hints}");
    }
    let pem = std::fs::read(&ca).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .build()
        .unwrap();
    let info: Value = client
        .get(format!("https://{addr}/emulator"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["graph"], format!("https://{addr}/v1.0"));
    process.terminate();
    let status = tokio::time::timeout(Duration::from_secs(20), process.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

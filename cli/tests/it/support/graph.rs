//! Talking to the emulator as an app talks to Graph, plus a programmable
//! notification endpoint and test-side checks of rich notifications.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use msgraph_webhooks::emulator::{Emulator, EmulatorBuilder};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// The app id tests subscribe as.
pub const APP: &str = "11111111-2222-3333-4444-555555555555";

/// An answer of the emulator, read in full.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

impl Answer {
    /// The error message of a Graph error envelope.
    pub fn message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap_or_default()
    }

    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or_default()
    }
}

/// An emulator and a client for it.
pub struct Graph {
    pub emulator: Emulator,
    client: reqwest::Client,
}

impl Graph {
    pub async fn start(builder: EmulatorBuilder) -> Self {
        Self {
            emulator: builder.start().await.expect("the emulator starts"),
            client: reqwest::Client::new(),
        }
    }

    /// A token with every application permission.
    pub fn app_token(&self) -> String {
        self.emulator.app_token(APP)
    }

    /// A token with exactly these application permissions.
    pub fn app_token_with(&self, roles: &[&str]) -> String {
        self.emulator
            .app_token_with(self.emulator.tenant_id(), APP, roles)
    }

    /// Sends a request to a path of the emulator.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.emulator.url()))
            .timeout(Duration::from_secs(30));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the emulator answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            json,
        }
    }

    /// `POST /v1.0/subscriptions`.
    pub async fn create(&self, token: &str, body: &Value) -> Answer {
        self.create_with(token, body, &[]).await
    }

    pub async fn create_with(&self, token: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
        self.call(
            "POST",
            "/v1.0/subscriptions",
            Some(token),
            Some(body),
            headers,
        )
        .await
    }

    /// `expirationDateTime` `minutes` ahead of the emulator's clock.
    pub fn expires_in(&self, minutes: i64) -> String {
        let t = self.emulator.clock().now() + time::Duration::minutes(minutes);
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    }

    /// A subscription body expiring in 50 minutes.
    pub fn subscription(&self, resource: &str, change_type: &str, url: &str) -> Value {
        json!({
            "changeType": change_type,
            "notificationUrl": url,
            "resource": resource,
            "expirationDateTime": self.expires_in(50),
            "clientState": "secretClientValue",
        })
    }

    /// POSTs to the control API.
    pub async fn control(&self, path: &str, body: &Value) -> Answer {
        self.call("POST", path, None, Some(body), &[]).await
    }
}

/// A key pair and self-signed certificate for rich subscriptions.
pub struct Cert {
    pub key: PKey<Private>,
    pub x509: X509,
}

impl Cert {
    pub fn new(bits: u32) -> Self {
        let key = PKey::from_rsa(openssl::rsa::Rsa::generate(bits).unwrap()).unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "msgraph-webhooks tests")
            .unwrap();
        let name = name.build();
        let mut builder = X509::builder().unwrap();
        builder.set_version(2).unwrap();
        builder.set_subject_name(&name).unwrap();
        builder.set_issuer_name(&name).unwrap();
        builder.set_pubkey(&key).unwrap();
        builder
            .set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        builder
            .set_not_after(&openssl::asn1::Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        builder.sign(&key, MessageDigest::sha256()).unwrap();
        Self {
            key,
            x509: builder.build(),
        }
    }

    /// `encryptionCertificate`: base64 DER.
    pub fn base64(&self) -> String {
        STANDARD.encode(self.x509.to_der().unwrap())
    }

    /// Decrypts an `encryptedContent` the way reference §6.3 says a
    /// receiver must: RSA-OAEP-SHA1 key, HMAC-SHA256 over the ciphertext,
    /// AES-256-CBC with IV = key[..16]. Panics on any mismatch.
    pub fn decrypt(&self, content: &Value) -> Value {
        let field = |name: &str| STANDARD.decode(content[name].as_str().unwrap()).unwrap();
        let mut decrypter = openssl::encrypt::Decrypter::new(&self.key).unwrap();
        decrypter
            .set_rsa_padding(openssl::rsa::Padding::PKCS1_OAEP)
            .unwrap();
        decrypter.set_rsa_oaep_md(MessageDigest::sha1()).unwrap();
        decrypter.set_rsa_mgf1_md(MessageDigest::sha1()).unwrap();
        let wrapped = field("dataKey");
        let mut key = vec![0; decrypter.decrypt_len(&wrapped).unwrap()];
        let n = decrypter.decrypt(&wrapped, &mut key).unwrap();
        key.truncate(n);
        assert_eq!(key.len(), 32);
        let data = field("data");
        let hmac = PKey::hmac(&key).unwrap();
        let mut signer = openssl::sign::Signer::new(MessageDigest::sha256(), &hmac).unwrap();
        signer.update(&data).unwrap();
        assert_eq!(signer.sign_to_vec().unwrap(), field("dataSignature"));
        let plain = openssl::symm::decrypt(
            openssl::symm::Cipher::aes_256_cbc(),
            &key,
            Some(&key[..16]),
            &data,
        )
        .unwrap();
        serde_json::from_slice(&plain).unwrap()
    }
}

/// The claims of a JWT, after checking its RS256 signature with the
/// emulator's JWKS (fetched over HTTP), `aud` and `exp`.
pub async fn verify_with_jwks(jwks_url: &str, token: &str, audience: &str) -> Value {
    msgraph_webhooks::tokens::install_jwt_provider();
    let jwks: jsonwebtoken::jwk::JwkSet =
        reqwest::get(jwks_url).await.unwrap().json().await.unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("the kid is in the JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[audience]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("the token verifies against the JWKS")
        .claims
}

/// The unverified claims of a JWT (for asserting on forged ones).
pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// How a [`Hook`] answers.
#[derive(Clone, Debug)]
pub enum Answering {
    /// Like a good receiver: echo validation tokens, 202 to notifications.
    Well,
    /// This status (and an empty body) to everything.
    Status(u16),
    /// 200 with this body to validation requests.
    Body(&'static str),
    /// Wait this long, then answer well.
    After(Duration),
}

/// One request a [`Hook`] received.
#[derive(Clone, Debug)]
pub struct Captured {
    pub query: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Captured {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn is_validation(&self) -> bool {
        self.query
            .as_deref()
            .is_some_and(|q| q.contains("validationToken="))
    }
}

#[derive(Clone)]
struct HookState {
    answering: Arc<Mutex<Answering>>,
    captured: Arc<Mutex<Vec<Captured>>>,
    arrived: Arc<Notify>,
}

/// A notification endpoint whose answers a test controls, recording what it gets.
pub struct Hook {
    pub addr: SocketAddr,
    state: HookState,
    task: tokio::task::JoinHandle<()>,
}

async fn hook(
    State(state): State<HookState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let captured = Captured {
        query: query.clone(),
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body,
    };
    let validation = captured.is_validation();
    state.captured.lock().unwrap().push(captured);
    state.arrived.notify_waiters();
    let answering = state.answering.lock().unwrap().clone();
    let token = query.as_deref().and_then(|q| {
        reqwest::Url::parse(&format!("http://hook/?{q}"))
            .ok()?
            .query_pairs()
            .find(|(k, _)| k == "validationToken")
            .map(|(_, v)| v.into_owned())
    });
    match answering {
        Answering::Status(status) => StatusCode::from_u16(status).unwrap().into_response(),
        Answering::Body(body) if validation => (StatusCode::OK, body).into_response(),
        Answering::After(wait) => {
            tokio::time::sleep(wait).await;
            well(validation, token)
        }
        _ => well(validation, token),
    }
}

fn well(validation: bool, token: Option<String>) -> Response {
    if validation {
        (
            StatusCode::OK,
            [("content-type", "text/plain")],
            token.unwrap_or_default(),
        )
            .into_response()
    } else {
        StatusCode::ACCEPTED.into_response()
    }
}

impl Hook {
    pub async fn start(answering: Answering) -> Self {
        let state = HookState {
            answering: Arc::new(Mutex::new(answering)),
            captured: Arc::default(),
            arrived: Arc::default(),
        };
        let app = axum::Router::new().fallback(hook).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn answer(&self, answering: Answering) {
        *self.state.answering.lock().unwrap() = answering;
    }

    pub fn captured(&self) -> Vec<Captured> {
        self.state.captured.lock().unwrap().clone()
    }

    /// The notification collections received (validation requests left out).
    pub fn notifications(&self) -> Vec<Value> {
        self.captured()
            .iter()
            .filter(|c| !c.is_validation())
            .map(Captured::json)
            .collect()
    }

    /// Every notification item received, in order.
    pub fn items(&self) -> Vec<Value> {
        self.notifications()
            .iter()
            .flat_map(|n| n["value"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits until at least `n` notification items arrived (panics after 20 s).
    pub async fn wait_items(&self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let arrived = self.state.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let items = self.items();
            if items.len() >= n {
                return items;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("expected {n} items within 20 s, got {}", self.items().len());
            }
        }
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An app token for `app` from the token endpoint of the emulator at
/// `base`, as a client of a running `emulate` process gets one.
pub async fn client_token(client: &reqwest::Client, base: &str, app: &str) -> String {
    let answer: Value = client
        .post(format!("{base}/common/oauth2/v2.0/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_id={app}&client_secret=s&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["access_token"].as_str().unwrap().to_owned()
}

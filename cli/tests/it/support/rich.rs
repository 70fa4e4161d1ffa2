//! Rich-notification fixtures: certificates, a test JWKS, minted validation
//! tokens, and an encryptor written from reference §6.4 whose every part a
//! test can choose (to craft the negative variants).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use msgraph_webhooks::crypto::{
    DecryptionKey, GeneratedCertificate, KeyRing, generate_certificate,
};
use msgraph_webhooks::notification::EncryptedContent;
use msgraph_webhooks::tokens::CHANGE_TRACKING_APP_ID;
use openssl::encrypt::Encrypter;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::Signer;
use openssl::symm::{Cipher, Crypter, Mode};
use serde_json::{Value, json};

pub const APP_ID: &str = "5a2b0e6c-6f41-4b0a-9d61-1f1c5c1e0a11";
pub const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
pub const TENANT_2: &str = "2f0c3b8e-1d1e-4a57-9f5e-3c2d1b0a9f8e";
pub const CLIENT_STATE: &str = "secretClientValue";
pub const SUBSCRIPTION: &str = "76222963-cc7b-42d2-882d-8aaa69cb2ba3";

/// The .NET SDK vector: its key (PKCS#12, password `rich`) and content.
pub fn dotnet_vector() -> (Vec<u8>, EncryptedContent) {
    let vector: Value = serde_json::from_str(include_str!(
        "../../../../testdata/dotnet-sdk-rich-notification.json"
    ))
    .unwrap();
    let p12 = STANDARD
        .decode(vector["pkcs12_base64"].as_str().unwrap())
        .unwrap();
    let content = serde_json::from_value(vector["encryptedContent"].clone()).unwrap();
    (p12, content)
}

/// A JWKS signing key, as Entra ID would hold one.
pub struct TokenSigner {
    pub rsa: Rsa<Private>,
    pub kid: String,
}

impl TokenSigner {
    pub fn new(kid: &str) -> Self {
        Self {
            rsa: Rsa::generate(2048).unwrap(),
            kid: kid.to_owned(),
        }
    }

    pub fn jwk(&self) -> Value {
        json!({
            "kty": "RSA", "use": "sig", "kid": self.kid, "x5t": self.kid,
            "n": URL_SAFE_NO_PAD.encode(self.rsa.n().to_vec()),
            "e": URL_SAFE_NO_PAD.encode(self.rsa.e().to_vec()),
        })
    }

    pub fn sign(&self, claims: &Value) -> String {
        msgraph_webhooks::tokens::install_jwt_provider();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        let key = EncodingKey::from_rsa_der(&self.rsa.private_key_to_der().unwrap());
        encode(&header, claims, &key).unwrap()
    }

    /// HS256, keyed with this signer's public key: the classic confusion attack.
    pub fn sign_hs256_with_public_key(&self, claims: &Value) -> String {
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": self.kid});
        let body = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let key = PKey::hmac(&self.rsa.public_key_to_pem().unwrap()).unwrap();
        let mut mac = Signer::new(MessageDigest::sha256(), &key).unwrap();
        let signature = mac.sign_oneshot_to_vec(body.as_bytes()).unwrap();
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// `alg: none`, no signature.
    pub fn unsigned(&self, claims: &Value) -> String {
        let header = json!({"alg": "none", "typ": "JWT", "kid": self.kid});
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// v1 claims as Graph's tokens carry them (reference §7).
pub fn v1_claims(tenant: &str) -> Value {
    let now = now();
    json!({
        "aud": APP_ID, "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": now - 60, "nbf": now - 60, "exp": now + 29_100,
        "aio": "E2ZgYJ", "appid": CHANGE_TRACKING_APP_ID, "appidacr": "2",
        "idp": format!("https://sts.windows.net/{tenant}/"), "tid": tenant, "uti": "x", "ver": "1.0",
    })
}

/// v2 claims.
pub fn v2_claims(tenant: &str) -> Value {
    let now = now();
    json!({
        "aud": APP_ID, "iss": format!("https://login.microsoftonline.com/{tenant}/v2.0"),
        "iat": now - 60, "nbf": now - 60, "exp": now + 86_700,
        "aio": "E2ZgYJ", "azp": CHANGE_TRACKING_APP_ID, "azpacr": "2", "oid": "o", "rh": "r",
        "sub": "s", "tid": tenant, "uti": "x", "ver": "2.0",
    })
}

/// `claims` with `key` set to `value` (or removed, for `null`).
pub fn with(mut claims: Value, key: &str, value: Value) -> Value {
    if value.is_null() {
        claims.as_object_mut().unwrap().remove(key);
    } else {
        claims[key] = value;
    }
    claims
}

/// An app certificate and its id, as used in a subscription.
pub struct AppCert {
    pub id: String,
    pub generated: GeneratedCertificate,
}

impl AppCert {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            generated: generate_certificate("rich-test", 2048, 2).unwrap(),
        }
    }

    pub fn key(&self) -> DecryptionKey {
        self.generated.key().clone()
    }

    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.pem", self.id.replace('/', "_")));
        std::fs::write(&path, self.generated.key_and_certificate_pem().as_slice()).unwrap();
        path
    }

    /// Graph's encryption of `data` (the crate's emulator, reference §6.4).
    pub fn encrypt(&self, data: &Value) -> EncryptedContent {
        msgraph_webhooks::emulator::encrypt_resource(
            self.generated.key().certificate(),
            &self.id,
            data.to_string().as_bytes(),
        )
        .unwrap()
    }

    /// §6.4 with the parts chosen by the test: the symmetric key, whether
    /// PKCS#7 padding is applied correctly, and how the key is wrapped.
    pub fn seal(&self, data: &[u8], good_padding: bool, wrap: Padding) -> EncryptedContent {
        let mut key = [0u8; 32];
        openssl::rand::rand_bytes(&mut key).unwrap();
        let mut plaintext = data.to_vec();
        let pad = 16 - plaintext.len() % 16;
        plaintext.extend(std::iter::repeat_n(u8::try_from(pad).unwrap(), pad));
        if !good_padding {
            let last = plaintext.len() - 1;
            plaintext[last] = 0x42;
        }
        let mut crypter =
            Crypter::new(Cipher::aes_256_cbc(), Mode::Encrypt, &key, Some(&key[..16])).unwrap();
        crypter.pad(false);
        let mut ciphertext = vec![0u8; plaintext.len() + 16];
        let mut n = crypter.update(&plaintext, &mut ciphertext).unwrap();
        n += crypter.finalize(&mut ciphertext[n..]).unwrap();
        ciphertext.truncate(n);

        let hmac = PKey::hmac(&key).unwrap();
        let signature = Signer::new(MessageDigest::sha256(), &hmac)
            .unwrap()
            .sign_oneshot_to_vec(&ciphertext)
            .unwrap();

        let public = self.generated.key().certificate().public_key().unwrap();
        let mut encrypter = Encrypter::new(&public).unwrap();
        encrypter.set_rsa_padding(wrap).unwrap();
        if wrap == Padding::PKCS1_OAEP {
            encrypter.set_rsa_oaep_md(MessageDigest::sha1()).unwrap();
            encrypter.set_rsa_mgf1_md(MessageDigest::sha1()).unwrap();
        }
        let mut wrapped = vec![0u8; encrypter.encrypt_len(&key).unwrap()];
        let n = encrypter.encrypt(&key, &mut wrapped).unwrap();
        wrapped.truncate(n);

        let mut content = EncryptedContent::default();
        content.data = STANDARD.encode(&ciphertext);
        content.data_key = STANDARD.encode(&wrapped);
        content.data_signature = STANDARD.encode(&signature);
        content.encryption_certificate_id = self.id.clone();
        content.encryption_certificate_thumbprint = self.generated.thumbprint().to_owned();
        content
    }
}

/// A key ring of the given certificates.
pub fn ring(certs: &[&AppCert]) -> KeyRing {
    let mut ring = KeyRing::new();
    for cert in certs {
        ring.insert(cert.id.clone(), cert.key()).unwrap();
    }
    ring
}

/// A JWKS document of the given signers.
pub fn jwks(signers: &[&TokenSigner]) -> String {
    json!({ "keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>() }).to_string()
}

/// A Teams chat message, as Graph would encrypt it.
pub fn chat_message(id: &str, text: &str) -> Value {
    json!({
        "@odata.type": "#Microsoft.Graph.chatMessage",
        "id": id, "etag": id, "messageType": "message",
        "createdDateTime": "2026-07-01T07:56:34.597Z",
        "body": {"contentType": "text", "content": text},
        "from": {"user": {"id": "a660dbf8-1ebf-4be9-be48-19c602bf5194", "displayName": "MOD Administrator"}},
    })
}

/// A rich change item carrying `content` (reference §3.5).
pub fn rich_item(tenant: &str, message_id: &str, content: &EncryptedContent) -> Value {
    let resource = format!("chats('19:abc@thread.v2')/messages('{message_id}')");
    json!({
        "subscriptionId": SUBSCRIPTION,
        "subscriptionExpirationDateTime": "2026-01-02T03:12:18.2257768+00:00",
        "changeType": "created",
        "clientState": CLIENT_STATE,
        "tenantId": tenant,
        "resource": resource,
        "resourceData": {"id": message_id, "@odata.type": "#Microsoft.Graph.ChatMessage", "@odata.id": resource},
        "encryptedContent": content,
    })
}

/// A collection with `validationTokens` set to `tokens` (any JSON: absent
/// when `None`).
pub fn rich_envelope(items: Vec<Value>, tokens: Option<Value>) -> String {
    let mut body = json!({ "value": items });
    if let Some(tokens) = tokens {
        body["validationTokens"] = tokens;
    }
    body.to_string()
}

//! The checks of Microsoft Learn, "Set up change notifications that include resource data", <https://learn.microsoft.com/graph/change-notifications-with-resource-data>, each failure with its own reason.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::jwks::{Jwks, Lookup};
use crate::clock::{Clock, SystemClock};
use crate::notification::ValidationTokens;

/// The app id of "Microsoft Graph Change Tracking", the publisher of every
/// genuine validation token: `appid` (v1 tokens) or `azp` (v2) must be it.
pub const CHANGE_TRACKING_APP_ID: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";

/// Longest token looked at; Entra tokens are a few kilobytes.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Verified tokens kept at most.
const CACHE_CAPACITY: usize = 10_000;

/// Why the validation tokens of a delivery do not vouch for an item.
///
/// Every variant but [`Unavailable`](Self::Unavailable) is final: the item
/// is rejected. Each has a stable label ([`reason`](Self::reason)) used for
/// the `items_rejected{reason}` metric and by `msgraph-webhooks inspect`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// The delivery has encrypted items but no `validationTokens` (or an
    /// empty list).
    Missing,
    /// `validationTokens` is `null` (Graph could not mint tokens: the
    /// tenant's set-up of Microsoft Learn, "Set up change notifications that include resource data", <https://learn.microsoft.com/graph/change-notifications-with-resource-data> is missing).
    Null,
    /// `validationTokens` is not an array of strings.
    MalformedList,
    /// A token is not a JWT (three base64url parts, JSON header and claims),
    /// lacks `exp`, or has a `crit` header: RFC 7515 §4.1.11 has a
    /// recipient reject extensions it does not understand, and none is
    /// understood here (Graph uses none).
    Malformed,
    /// A token's `alg` is not `RS256` (`none`, `HS256`, …).
    Algorithm,
    /// No key in the JWKS has the token's `kid` (even after a refetch).
    UnknownKey,
    /// The signature does not verify with the key named by `kid`.
    Signature,
    /// `exp` has passed (beyond the allowed clock skew).
    Expired,
    /// `nbf` is in the future (beyond the allowed clock skew).
    NotYetValid,
    /// `aud` is none of the configured app ids.
    Audience,
    /// `iss` is neither `https://sts.windows.net/{tid}/` (v1) nor
    /// `https://login.microsoftonline.com/{tid}/v2.0` (v2) for the token's
    /// own `tid`, or does not fit its `ver`.
    Issuer,
    /// The token's tenant is not among the configured tenant ids.
    TenantNotAllowed,
    /// `appid` (v1) or `azp` (v2) is not Microsoft Graph Change Tracking.
    Publisher,
    /// Every token is valid, but none is for the item's tenant.
    NotCovered,
    /// The signing keys could not be fetched; the item is retried later.
    Unavailable(String),
}

impl TokenError {
    /// The reason as a stable snake_case label, e.g. `token_expired`.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "tokens_missing",
            TokenError::Null => "tokens_null",
            TokenError::MalformedList => "tokens_malformed",
            TokenError::Malformed => "token_malformed",
            TokenError::Algorithm => "token_algorithm",
            TokenError::UnknownKey => "token_unknown_key",
            TokenError::Signature => "token_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::Audience => "token_audience",
            TokenError::Issuer => "token_issuer",
            TokenError::TenantNotAllowed => "token_tenant_not_allowed",
            TokenError::Publisher => "token_publisher",
            TokenError::NotCovered => "token_not_covering_item",
            TokenError::Unavailable(_) => "jwks_unavailable",
        }
    }

    /// Whether trying again later may succeed (the JWKS could not be fetched).
    pub fn is_transient(&self) -> bool {
        matches!(self, TokenError::Unavailable(_))
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Unavailable(why) => write!(f, "signing keys unavailable: {why}"),
            other => write!(f, "validation tokens rejected: {}", other.reason()),
        }
    }
}

impl std::error::Error for TokenError {}

/// Which claim set a token uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenVersion {
    /// `ver` 1.0: issuer `https://sts.windows.net/{tid}/`, publisher in `appid`.
    V1,
    /// `ver` 2.0: issuer `https://login.microsoftonline.com/{tid}/v2.0`,
    /// publisher in `azp`.
    V2,
}

/// What a valid token vouches for: notifications of its tenant, for its app.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedToken {
    /// The app (`aud`) the token was issued to: one of the configured ids.
    pub app_id: String,
    /// The tenant (`tid`).
    pub tenant_id: String,
    /// The claim set.
    pub version: TokenVersion,
    /// `nbf`, seconds since the epoch, if the token has one.
    pub not_before: Option<i64>,
    /// `exp`, seconds since the epoch.
    pub expires_at: i64,
}

impl VerifiedToken {
    /// Whether the token vouches for items of `tenant_id`.
    pub fn covers(&self, tenant_id: &str) -> bool {
        self.tenant_id.eq_ignore_ascii_case(tenant_id)
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    /// Present at all (even `[]`, which RFC 7515 forbids) is a rejection.
    crit: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    aud: Option<Audience>,
    iss: Option<String>,
    tid: Option<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
    appid: Option<String>,
    azp: Option<String>,
    ver: Option<String>,
}

/// Checks the `validationTokens` of rich notifications (Microsoft Learn, "Set up change notifications that include resource data", <https://learn.microsoft.com/graph/change-notifications-with-resource-data>), and
/// fails closed.
///
/// A token is valid when it is an RS256 JWT signed by a key of the [`Jwks`];
/// `exp` and `nbf` hold (with a clock skew, default 5 minutes); `aud` is one
/// of the app ids; `iss` is the v1 or v2 issuer of the token's own tenant
/// `tid`, restricted to the configured tenant ids when there are any; and
/// the publisher (`appid` for v1, `azp` for v2) is
/// [`CHANGE_TRACKING_APP_ID`]. Valid tokens are cached until they expire:
/// Graph reuses a token across deliveries.
///
/// ```
/// use msgraph_webhooks::tokens::{Jwks, TokenValidator};
///
/// let validator = TokenValidator::new(Jwks::microsoft(), ["11111111-2222-3333-4444-555555555555"])
///     .tenant_ids(["84bd8158-6d4d-4958-8b9f-9d6445542f95"]);
/// # let _ = validator;
/// ```
pub struct TokenValidator {
    jwks: Jwks,
    app_ids: Vec<String>,
    tenant_ids: Vec<String>,
    leeway: i64,
    clock: Arc<dyn Clock>,
    cache: Mutex<HashMap<[u8; 32], VerifiedToken>>,
}

impl fmt::Debug for TokenValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenValidator")
            .field("jwks", &self.jwks)
            .field("app_ids", &self.app_ids)
            .field("tenant_ids", &self.tenant_ids)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl TokenValidator {
    /// Accepts tokens signed by `jwks` for any of `app_ids`, from any tenant.
    pub fn new<I, S>(jwks: Jwks, app_ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        super::install_jwt_provider();
        Self {
            jwks,
            app_ids: app_ids.into_iter().map(Into::into).collect(),
            tenant_ids: Vec::new(),
            leeway: 300,
            clock: Arc::new(SystemClock),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Only tokens of these tenants are accepted (default: any tenant).
    #[must_use]
    pub fn tenant_ids<I, S>(mut self, tenant_ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tenant_ids = tenant_ids.into_iter().map(Into::into).collect();
        self
    }

    /// The clock skew allowed on `exp` and `nbf` (default 5 minutes).
    #[must_use]
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX);
        self
    }

    /// The clock (default: the system's).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The configured app ids.
    pub fn app_ids(&self) -> &[String] {
        &self.app_ids
    }

    /// Checks every token of a delivery; all must be valid.
    ///
    /// # Errors
    ///
    /// The first [`TokenError`] found.
    pub async fn verify_all(
        &self,
        tokens: &ValidationTokens,
    ) -> Result<Vec<VerifiedToken>, TokenError> {
        let tokens = match tokens {
            ValidationTokens::Absent => return Err(TokenError::Missing),
            ValidationTokens::Null => return Err(TokenError::Null),
            ValidationTokens::Malformed => return Err(TokenError::MalformedList),
            ValidationTokens::Tokens(tokens) if tokens.is_empty() => {
                return Err(TokenError::Missing);
            }
            ValidationTokens::Tokens(tokens) => tokens,
        };
        let mut verified = Vec::with_capacity(tokens.len());
        for token in tokens.iter() {
            verified.push(self.verify(token).await?);
        }
        Ok(verified)
    }

    /// Checks that the delivery's tokens are all valid and one of them is
    /// for `tenant_id` (an item's `tenantId`).
    ///
    /// # Errors
    ///
    /// The first [`TokenError`] found; [`TokenError::NotCovered`] when no
    /// token is for the tenant (or the item names none).
    pub async fn vouch(
        &self,
        tokens: &ValidationTokens,
        tenant_id: Option<&str>,
    ) -> Result<VerifiedToken, TokenError> {
        let verified = self.verify_all(tokens).await?;
        let tenant_id = tenant_id.ok_or(TokenError::NotCovered)?;
        verified
            .into_iter()
            .find(|t| t.covers(tenant_id))
            .ok_or(TokenError::NotCovered)
    }

    /// Checks one token.
    ///
    /// # Errors
    ///
    /// [`TokenError`] naming the first check that failed.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        let now = self.clock.now().unix_timestamp();
        let digest = openssl::sha::sha256(token.as_bytes());
        if let Some(cached) = self.cached(&digest) {
            self.check_lifetime(cached.not_before, cached.expires_at, now)?;
            return Ok(cached);
        }
        let header = parse_header(token)?;
        if header.alg != "RS256" {
            return Err(TokenError::Algorithm);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let keys = match self.jwks.lookup(&kid).await {
            Lookup::Found(keys) => keys,
            Lookup::Unknown => return Err(TokenError::UnknownKey),
            Lookup::Unavailable(why) => return Err(TokenError::Unavailable(why)),
        };
        let key = keys.get(&kid).ok_or(TokenError::UnknownKey)?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &signature_only())
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidRsaKey(_)
                | ErrorKind::Provider(_) => TokenError::Signature,
                ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
                    TokenError::Algorithm
                }
                _ => TokenError::Malformed,
            })?
            .claims;
        let verified = self.check_claims(claims, now)?;
        self.remember(digest, &verified, now);
        Ok(verified)
    }

    fn check_lifetime(&self, nbf: Option<i64>, exp: i64, now: i64) -> Result<(), TokenError> {
        if now.saturating_sub(self.leeway) >= exp {
            return Err(TokenError::Expired);
        }
        if nbf.is_some_and(|nbf| now.saturating_add(self.leeway) < nbf) {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }

    fn check_claims(&self, claims: Claims, now: i64) -> Result<VerifiedToken, TokenError> {
        let expires_at = claims.exp.ok_or(TokenError::Malformed)?;
        self.check_lifetime(claims.nbf, expires_at, now)?;

        let audiences = match claims.aud {
            Some(Audience::One(aud)) => vec![aud],
            Some(Audience::Many(auds)) => auds,
            None => Vec::new(),
        };
        let app_id = audiences
            .into_iter()
            .find(|aud| self.app_ids.iter().any(|id| id.eq_ignore_ascii_case(aud)))
            .ok_or(TokenError::Audience)?;

        let tenant_id = claims
            .tid
            .filter(|t| !t.is_empty())
            .ok_or(TokenError::Issuer)?;
        let iss = claims.iss.ok_or(TokenError::Issuer)?;
        let v1 = iss == format!("https://sts.windows.net/{tenant_id}/");
        let v2 = iss == format!("https://login.microsoftonline.com/{tenant_id}/v2.0");
        let version = match (claims.ver.as_deref(), v1, v2) {
            (Some("1.0") | None, true, _) => TokenVersion::V1,
            (Some("2.0") | None, _, true) => TokenVersion::V2,
            _ => return Err(TokenError::Issuer),
        };

        if !self.tenant_ids.is_empty()
            && !self
                .tenant_ids
                .iter()
                .any(|t| t.eq_ignore_ascii_case(&tenant_id))
        {
            return Err(TokenError::TenantNotAllowed);
        }

        let publisher = match version {
            TokenVersion::V1 => claims.appid,
            TokenVersion::V2 => claims.azp,
        };
        if !publisher.is_some_and(|p| p.eq_ignore_ascii_case(CHANGE_TRACKING_APP_ID)) {
            return Err(TokenError::Publisher);
        }
        Ok(VerifiedToken {
            app_id,
            tenant_id,
            version,
            not_before: claims.nbf,
            expires_at,
        })
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<VerifiedToken> {
        self.cache.lock().ok()?.get(digest).cloned()
    }

    fn remember(&self, digest: [u8; 32], token: &VerifiedToken, now: i64) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_CAPACITY {
            let leeway = self.leeway;
            cache.retain(|_, t| now.saturating_sub(leeway) < t.expires_at);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(digest, token.clone());
    }
}

/// jsonwebtoken checks the signature (RS256 only); the claims are checked
/// here, against the injected clock.
fn signature_only() -> Validation {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation
}

/// Reads the JOSE header without trusting anything in it but `alg` and `kid`.
fn parse_header(token: &str) -> Result<Header, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    let header: Header = serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;
    if header.crit.is_some() {
        return Err(TokenError::Malformed);
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use jsonwebtoken::{EncodingKey, Header as JwtHeader, encode};
    use openssl::rsa::Rsa;
    use serde_json::{Value, json};

    use super::*;

    const APP: &str = "5a2b0e6c-6f41-4b0a-9d61-1f1c5c1e0a11";
    const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
    const NOW: i64 = 1_800_000_000;

    struct FixedClock(AtomicI64);
    impl Clock for FixedClock {
        fn now(&self) -> time::OffsetDateTime {
            time::OffsetDateTime::from_unix_timestamp(self.0.load(Ordering::SeqCst))
                .expect("the test's times are in range")
        }
    }

    struct Signer {
        rsa: Rsa<openssl::pkey::Private>,
        kid: &'static str,
    }

    impl Signer {
        fn new(kid: &'static str) -> Self {
            Self {
                rsa: Rsa::generate(2048).unwrap(),
                kid,
            }
        }

        fn jwk(&self) -> Value {
            json!({
                "kty": "RSA", "use": "sig", "kid": self.kid,
                "n": URL_SAFE_NO_PAD.encode(self.rsa.n().to_vec()),
                "e": URL_SAFE_NO_PAD.encode(self.rsa.e().to_vec()),
            })
        }

        /// Signs `claims` under a header of our own making.
        fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
            let body = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let key = openssl::pkey::PKey::from_rsa(self.rsa.clone()).unwrap();
            let mut signer =
                openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
            let sig = signer.sign_oneshot_to_vec(body.as_bytes()).unwrap();
            format!("{body}.{}", URL_SAFE_NO_PAD.encode(sig))
        }

        fn sign(&self, claims: &Value) -> String {
            super::super::install_jwt_provider();
            let mut header = JwtHeader::new(Algorithm::RS256);
            header.kid = Some(self.kid.to_owned());
            let key = EncodingKey::from_rsa_der(&self.rsa.private_key_to_der().unwrap());
            encode(&header, claims, &key).unwrap()
        }
    }

    fn v1_claims() -> Value {
        json!({
            "aud": APP, "iss": format!("https://sts.windows.net/{TENANT}/"),
            "iat": NOW - 60, "nbf": NOW - 60, "exp": NOW + 29_000,
            "appid": CHANGE_TRACKING_APP_ID, "appidacr": "2", "tid": TENANT, "ver": "1.0",
        })
    }

    fn v2_claims() -> Value {
        json!({
            "aud": APP, "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
            "iat": NOW - 60, "nbf": NOW - 60, "exp": NOW + 86_000,
            "azp": CHANGE_TRACKING_APP_ID, "azpacr": "2", "tid": TENANT, "ver": "2.0",
        })
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = value;
        }
        claims
    }

    fn setup(signer: &Signer) -> (TokenValidator, Arc<FixedClock>) {
        let jwks = json!({ "keys": [signer.jwk()] }).to_string();
        let clock = Arc::new(FixedClock(AtomicI64::new(NOW)));
        let validator = TokenValidator::new(Jwks::from_json(jwks.as_bytes()).unwrap(), [APP])
            .clock(clock.clone());
        (validator, clock)
    }

    fn unsigned(header: &Value, claims: &Value, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    #[tokio::test]
    async fn v1_and_v2_tokens_are_accepted() {
        let signer = Signer::new("k1");
        let (validator, _) = setup(&signer);
        let v1 = validator.verify(&signer.sign(&v1_claims())).await.unwrap();
        assert_eq!(v1.version, TokenVersion::V1);
        assert_eq!(v1.tenant_id, TENANT);
        assert_eq!(v1.app_id, APP);
        let v2 = validator.verify(&signer.sign(&v2_claims())).await.unwrap();
        assert_eq!(v2.version, TokenVersion::V2);
        // The audience may be a list, and GUIDs may differ in case.
        let listed = with(v2_claims(), "aud", json!(["other", APP.to_uppercase()]));
        assert!(validator.verify(&signer.sign(&listed)).await.is_ok());
        // Within the clock skew.
        let skewed = with(v1_claims(), "exp", json!(NOW - 200));
        assert!(validator.verify(&signer.sign(&skewed)).await.is_ok());
    }

    #[tokio::test]
    async fn the_negative_list() {
        let signer = Signer::new("k1");
        let (validator, _) = setup(&signer);
        let pinned = |tenants: &[&str]| {
            let jwks = json!({ "keys": [signer.jwk()] }).to_string();
            TokenValidator::new(Jwks::from_json(jwks.as_bytes()).unwrap(), [APP])
                .clock(Arc::new(FixedClock(AtomicI64::new(NOW))))
                .tenant_ids(tenants.iter().copied())
        };
        let stranger = Signer::new("k1");
        let unknown_kid = Signer {
            rsa: Rsa::generate(2048).unwrap(),
            kid: "k9",
        };
        let public_pem = signer.rsa.public_key_to_pem().unwrap();
        let hs256 = {
            let header = json!({"alg": "HS256", "typ": "JWT", "kid": "k1"});
            let body = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(v1_claims().to_string())
            );
            let key = openssl::pkey::PKey::hmac(&public_pem).unwrap();
            let mut mac =
                openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
            let sig = mac.sign_oneshot_to_vec(body.as_bytes()).unwrap();
            format!("{body}.{}", URL_SAFE_NO_PAD.encode(sig))
        };
        let mut tampered = signer.sign(&v1_claims()).into_bytes();
        let at = tampered.len() - 10;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        let forged_claims = {
            // A genuine header and signature, with the claims swapped.
            let genuine = signer.sign(&v1_claims());
            let parts: Vec<&str> = genuine.split('.').collect();
            let other = with(v1_claims(), "aud", json!("attacker-app"));
            format!(
                "{}.{}.{}",
                parts[0],
                URL_SAFE_NO_PAD.encode(other.to_string()),
                parts[2]
            )
        };

        let cases: Vec<(&str, String, TokenError)> = vec![
            (
                "wrong aud",
                signer.sign(&with(v1_claims(), "aud", json!("another-app"))),
                TokenError::Audience,
            ),
            (
                "no aud",
                signer.sign(&with(v1_claims(), "aud", Value::Null)),
                TokenError::Audience,
            ),
            (
                "wrong v1 publisher",
                signer.sign(&with(v1_claims(), "appid", json!(APP))),
                TokenError::Publisher,
            ),
            (
                "wrong v2 publisher",
                signer.sign(&with(v2_claims(), "azp", json!(APP))),
                TokenError::Publisher,
            ),
            (
                "v1 publisher in azp only",
                signer.sign(&with(
                    with(v1_claims(), "appid", Value::Null),
                    "azp",
                    json!(CHANGE_TRACKING_APP_ID),
                )),
                TokenError::Publisher,
            ),
            (
                "expired",
                signer.sign(&with(v1_claims(), "exp", json!(NOW - 3600))),
                TokenError::Expired,
            ),
            (
                "no exp",
                signer.sign(&with(v1_claims(), "exp", Value::Null)),
                TokenError::Malformed,
            ),
            (
                "not yet valid",
                signer.sign(&with(v1_claims(), "nbf", json!(NOW + 3600))),
                TokenError::NotYetValid,
            ),
            (
                "issuer of another tenant",
                signer.sign(&with(
                    v1_claims(),
                    "iss",
                    json!("https://sts.windows.net/00000000-0000-0000-0000-000000000000/"),
                )),
                TokenError::Issuer,
            ),
            (
                "issuer of another authority",
                signer.sign(&with(
                    v1_claims(),
                    "iss",
                    json!(format!("https://evil.example/{TENANT}/")),
                )),
                TokenError::Issuer,
            ),
            (
                "v2 issuer on a v1 token",
                signer.sign(&with(
                    v1_claims(),
                    "iss",
                    json!(format!("https://login.microsoftonline.com/{TENANT}/v2.0")),
                )),
                TokenError::Issuer,
            ),
            (
                "no tid",
                signer.sign(&with(v1_claims(), "tid", Value::Null)),
                TokenError::Issuer,
            ),
            (
                "signed by a stranger's key with our kid",
                stranger.sign(&v1_claims()),
                TokenError::Signature,
            ),
            (
                "unknown signing key",
                unknown_kid.sign(&v1_claims()),
                TokenError::UnknownKey,
            ),
            (
                "no kid",
                unsigned(&json!({"alg": "RS256"}), &v1_claims(), b"sig"),
                TokenError::UnknownKey,
            ),
            ("tampered signature", tampered, TokenError::Signature),
            ("tampered claims", forged_claims, TokenError::Signature),
            (
                "alg none",
                unsigned(&json!({"alg": "none", "kid": "k1"}), &v1_claims(), b""),
                TokenError::Algorithm,
            ),
            (
                "alg None",
                unsigned(&json!({"alg": "None", "kid": "k1"}), &v1_claims(), b""),
                TokenError::Algorithm,
            ),
            (
                "HS256 signed with the public key",
                hs256,
                TokenError::Algorithm,
            ),
            (
                "RS512",
                unsigned(&json!({"alg": "RS512", "kid": "k1"}), &v1_claims(), b"sig"),
                TokenError::Algorithm,
            ),
            (
                "PS256",
                unsigned(&json!({"alg": "PS256", "kid": "k1"}), &v1_claims(), b"sig"),
                TokenError::Algorithm,
            ),
            ("garbage", "garbage".into(), TokenError::Malformed),
            ("empty", String::new(), TokenError::Malformed),
            ("two parts", "a.b".into(), TokenError::Malformed),
            ("four parts", "a.b.c.d".into(), TokenError::Malformed),
            ("header not base64", "!!.b.c".into(), TokenError::Malformed),
            (
                "header not JSON",
                format!("{}.b.c", URL_SAFE_NO_PAD.encode("nope")),
                TokenError::Malformed,
            ),
            ("huge", "a".repeat(MAX_TOKEN_LEN + 1), TokenError::Malformed),
            (
                "validly signed, with a critical extension nobody here understands",
                signer.sign_with_header(
                    &json!({"alg": "RS256", "kid": "k1", "crit": ["exp-by-moon"], "exp-by-moon": 1}),
                    &v1_claims(),
                ),
                TokenError::Malformed,
            ),
            (
                "validly signed, with an empty crit list",
                signer.sign_with_header(
                    &json!({"alg": "RS256", "kid": "k1", "crit": []}),
                    &v1_claims(),
                ),
                TokenError::Malformed,
            ),
        ];
        // The same hand-made signing without `crit` passes: the cases above
        // fail for `crit` alone.
        let plain = signer.sign_with_header(&json!({"alg": "RS256", "kid": "k1"}), &v1_claims());
        assert!(validator.verify(&plain).await.is_ok());
        for (name, token, expected) in cases {
            assert_eq!(validator.verify(&token).await, Err(expected), "{name}");
        }

        let token = signer.sign(&v1_claims());
        assert_eq!(
            pinned(&["00000000-0000-0000-0000-000000000000"])
                .verify(&token)
                .await,
            Err(TokenError::TenantNotAllowed)
        );
        assert!(
            pinned(&[&TENANT.to_uppercase()])
                .verify(&token)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn deliveries_fail_closed() {
        let signer = Signer::new("k1");
        let (validator, _) = setup(&signer);
        let good = signer.sign(&v1_claims());
        let other_tenant = "11111111-1111-1111-1111-111111111111";
        let good_other = signer.sign(&with(
            with(v2_claims(), "tid", json!(other_tenant)),
            "iss",
            json!(format!(
                "https://login.microsoftonline.com/{other_tenant}/v2.0"
            )),
        ));
        let expired = signer.sign(&with(v1_claims(), "exp", json!(NOW - 3600)));
        let tokens = |t: &[&String]| {
            ValidationTokens::Tokens(t.iter().map(|s| (*s).clone()).collect::<Vec<_>>().into())
        };

        assert_eq!(
            validator
                .vouch(&ValidationTokens::Absent, Some(TENANT))
                .await,
            Err(TokenError::Missing)
        );
        assert_eq!(
            validator.vouch(&tokens(&[]), Some(TENANT)).await,
            Err(TokenError::Missing)
        );
        assert_eq!(
            validator.vouch(&ValidationTokens::Null, Some(TENANT)).await,
            Err(TokenError::Null)
        );
        assert_eq!(
            validator
                .vouch(&ValidationTokens::Malformed, Some(TENANT))
                .await,
            Err(TokenError::MalformedList)
        );
        let both = tokens(&[&good, &good_other]);
        assert_eq!(
            validator
                .vouch(&both, Some(TENANT))
                .await
                .unwrap()
                .tenant_id,
            TENANT
        );
        assert_eq!(
            validator
                .vouch(&both, Some(other_tenant))
                .await
                .unwrap()
                .tenant_id,
            other_tenant
        );
        assert_eq!(
            validator.vouch(&tokens(&[&good]), Some(other_tenant)).await,
            Err(TokenError::NotCovered)
        );
        assert_eq!(
            validator.vouch(&tokens(&[&good]), None).await,
            Err(TokenError::NotCovered)
        );
        assert_eq!(
            validator
                .vouch(&tokens(&[&good, &expired, &good_other]), Some(TENANT))
                .await,
            Err(TokenError::Expired),
            "one bad token among good ones rejects the delivery"
        );
    }

    #[tokio::test]
    async fn cached_tokens_still_expire() {
        let signer = Signer::new("k1");
        let (validator, clock) = setup(&signer);
        let token = signer.sign(&v1_claims());
        assert!(validator.verify(&token).await.is_ok());
        assert!(validator.verify(&token).await.is_ok());
        clock.0.store(NOW + 29_000 + 301, Ordering::SeqCst);
        assert_eq!(validator.verify(&token).await, Err(TokenError::Expired));
    }

    #[test]
    fn reasons_are_distinct() {
        let all = [
            TokenError::Missing,
            TokenError::Null,
            TokenError::MalformedList,
            TokenError::Malformed,
            TokenError::Algorithm,
            TokenError::UnknownKey,
            TokenError::Signature,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::Audience,
            TokenError::Issuer,
            TokenError::TenantNotAllowed,
            TokenError::Publisher,
            TokenError::NotCovered,
            TokenError::Unavailable(String::new()),
        ];
        let reasons: std::collections::HashSet<_> = all.iter().map(TokenError::reason).collect();
        assert_eq!(reasons.len(), all.len());
        assert!(all.iter().filter(|e| e.is_transient()).count() == 1);
    }
}

//! The emulator's Microsoft identity platform: access tokens for its
//! subscriptions API (client credentials for apps, the password grant for
//! delegated users), the validation tokens of rich notifications, and the
//! OpenID configuration and JWKS that publish its signing key.
//!
//! Tokens are RS256 JWTs signed with a key generated at start. Their time
//! claims use the real clock, not the emulated one: they are checked by
//! real-world code (a receiver's token validation), which knows no time scale.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::catalog::{self, Caller, PermissionType};
use crate::crypto::{GenerateError, generate_certificate};
use crate::tokens::{CHANGE_TRACKING_APP_ID, TokenVersion};

/// The tenant id of personal Microsoft accounts: delegated tokens with this
/// `tid` are checked against the catalog's personal-account column.
pub const CONSUMER_TENANT_ID: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

/// Microsoft Graph's own app id, an accepted audience of access tokens.
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

/// The audience of access tokens for Graph.
pub const GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";

/// Lifetime of access tokens, as Entra's `expires_in`.
const ACCESS_TOKEN_SECONDS: i64 = 3599;

/// How long validation tokens live: the exp − iat of Microsoft's examples.
fn validation_token_seconds(version: TokenVersion) -> i64 {
    match version {
        TokenVersion::V1 => 29_100,
        TokenVersion::V2 => 86_700,
    }
}

/// The issuer of tokens of `version` for `tenant`.
pub(crate) fn issuer(version: TokenVersion, tenant: &str) -> String {
    match version {
        TokenVersion::V1 => format!("https://sts.windows.net/{tenant}/"),
        TokenVersion::V2 => format!("https://login.microsoftonline.com/{tenant}/v2.0"),
    }
}

/// A stable id derived from a name, so the same user or app gets the same
/// object id in every run.
pub(crate) fn derived_id(namespace: &str, parts: &[&str]) -> String {
    let mut input = namespace.to_owned();
    for part in parts {
        input.push('\u{1f}');
        input.push_str(&part.to_lowercase());
    }
    let digest = openssl::sha::sha1(input.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The object id of the user `username` signs in as in `tenant`.
pub fn user_object_id(tenant: &str, username: &str) -> String {
    derived_id("user", &[tenant, username])
}

/// The service principal id of app `app_id` in `tenant` (an app-only
/// subscription's `creatorId`).
pub fn service_principal_id(tenant: &str, app_id: &str) -> String {
    derived_id("servicePrincipal", &[tenant, app_id])
}

/// What the subscriptions API learns from a valid bearer token.
#[derive(Clone, Debug)]
pub(crate) struct TokenInfo {
    pub(crate) app_id: String,
    pub(crate) tenant_id: String,
    pub(crate) caller: Caller,
    /// The object id of the user (delegated) or service principal (app-only).
    pub(crate) object_id: String,
}

impl TokenInfo {
    pub(crate) fn delegated_user(&self) -> Option<&str> {
        self.caller.user_id.as_deref()
    }
}

#[derive(Deserialize)]
struct AccessClaims {
    appid: String,
    tid: String,
    oid: String,
    iss: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scp: Option<String>,
    #[serde(default)]
    upn: Option<String>,
}

/// The signing key, the tokens minted with it, and their cache.
pub(crate) struct Identity {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    jwk: Value,
    version: TokenVersion,
    cache: Mutex<HashMap<(String, String), (String, i64)>>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("kid", &self.kid)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Generates a signing key (RSA 2048) and a self-signed certificate for
    /// it (five years), published as `x5c`. Its `kid` and `x5t` are the
    /// base64url SHA-1 of the certificate's DER, as Entra's keys have.
    pub(crate) fn generate(version: TokenVersion) -> Result<Self, GenerateError> {
        crate::tokens::install_jwt_provider();
        let generated =
            generate_certificate("msgraph-webhooks emulator token signing", 2048, 1826)?;
        let rsa = generated.key().private_key().rsa()?;
        let (n, e) = (rsa.n().to_vec(), rsa.e().to_vec());
        let der = Zeroizing::new(rsa.private_key_to_der()?);
        let certificate = generated.key().certificate().to_der()?;
        let kid = URL_SAFE_NO_PAD.encode(openssl::sha::sha1(&certificate));
        let jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "kid": kid,
            "x5t": kid,
            "n": URL_SAFE_NO_PAD.encode(&n),
            "e": URL_SAFE_NO_PAD.encode(&e),
            "x5c": [STANDARD.encode(&certificate)],
            "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0",
        });
        Ok(Self {
            encoding: EncodingKey::from_rsa_der(&der),
            decoding: DecodingKey::from_rsa_raw_components(&n, &e),
            kid,
            jwk,
            version,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        // Invariant: the key is a valid RSA key this process generated and the
        // claims are a JSON object; signing cannot fail but for OpenSSL faults.
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing with our own key")
    }

    /// The JWKS document.
    pub(crate) fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }

    /// An app-only access token for Graph (`roles`).
    pub(crate) fn app_token(&self, tenant: &str, app_id: &str, roles: &[String]) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let sp = service_principal_id(tenant, app_id);
        self.sign(&json!({
            "aud": GRAPH_AUDIENCE,
            "iss": issuer(TokenVersion::V1, tenant),
            "iat": now, "nbf": now, "exp": now + ACCESS_TOKEN_SECONDS,
            "appid": app_id,
            "appidacr": "1",
            "idtyp": "app",
            "oid": sp,
            "sub": sp,
            "roles": roles,
            "tid": tenant,
            "uti": crate::random::uuid(),
            "ver": "1.0",
        }))
    }

    /// A delegated access token for Graph (`scp`) for `username`.
    pub(crate) fn user_token(
        &self,
        tenant: &str,
        app_id: &str,
        username: &str,
        scopes: &[String],
    ) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let oid = user_object_id(tenant, username);
        self.sign(&json!({
            "aud": GRAPH_AUDIENCE,
            "iss": issuer(TokenVersion::V1, tenant),
            "iat": now, "nbf": now, "exp": now + ACCESS_TOKEN_SECONDS,
            "appid": app_id,
            "appidacr": "0",
            "idtyp": "user",
            "oid": oid,
            "sub": oid,
            "scp": scopes.join(" "),
            "tid": tenant,
            "upn": username,
            "unique_name": username,
            "uti": crate::random::uuid(),
            "ver": "1.0",
        }))
    }

    /// Checks a bearer token of the subscriptions API. `None` for anything
    /// that is not a current token this emulator issued for Graph.
    pub(crate) fn verify(&self, token: &str) -> Option<TokenInfo> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[GRAPH_AUDIENCE, "https://graph.microsoft.com/", GRAPH_APP_ID]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &validation)
            .ok()?
            .claims;
        if claims.iss != issuer(TokenVersion::V1, &claims.tid) {
            return None;
        }
        let caller = match claims.scp {
            Some(scp) => {
                let permission_type = if claims.tid.eq_ignore_ascii_case(CONSUMER_TENANT_ID) {
                    PermissionType::DelegatedPersonal
                } else {
                    PermissionType::DelegatedWork
                };
                Caller::delegated(
                    permission_type,
                    scp.split_whitespace(),
                    claims.oid.clone(),
                    claims.upn.unwrap_or_default(),
                )
            }
            None => Caller::application(claims.roles),
        };
        Some(TokenInfo {
            app_id: claims.appid,
            tenant_id: claims.tid,
            caller,
            object_id: claims.oid,
        })
    }

    /// The validation token for notifications to `audience` (the app) about
    /// resources of `tenant`, reused while more than an hour of it is left
    /// (Graph's tokens are reused across deliveries, Microsoft Learn, "Set up change notifications that include resource data", <https://learn.microsoft.com/graph/change-notifications-with-resource-data>).
    pub(crate) fn validation_token(&self, audience: &str, tenant: &str) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let key = (audience.to_owned(), tenant.to_owned());
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((token, exp)) = cache.get(&key)
            && *exp - now > 3600
        {
            return token.clone();
        }
        let exp = now + validation_token_seconds(self.version);
        let claims = match self.version {
            TokenVersion::V1 => json!({
                "aud": audience,
                "iss": issuer(TokenVersion::V1, tenant),
                "iat": now, "nbf": now, "exp": exp,
                "aio": crate::random::uuid(),
                "appid": CHANGE_TRACKING_APP_ID,
                "appidacr": "2",
                "idp": issuer(TokenVersion::V1, tenant),
                "tid": tenant,
                "uti": crate::random::uuid(),
                "ver": "1.0",
            }),
            TokenVersion::V2 => {
                let oid = service_principal_id(tenant, CHANGE_TRACKING_APP_ID);
                json!({
                    "aud": audience,
                    "iss": issuer(TokenVersion::V2, tenant),
                    "iat": now, "nbf": now, "exp": exp,
                    "aio": crate::random::uuid(),
                    "azp": CHANGE_TRACKING_APP_ID,
                    "azpacr": "2",
                    "oid": oid,
                    "rh": crate::random::uuid(),
                    "sub": oid,
                    "tid": tenant,
                    "uti": crate::random::uuid(),
                    "ver": "2.0",
                })
            }
        };
        let token = self.sign(&claims);
        cache.insert(key, (token.clone(), exp));
        token
    }
}

/// Every application permission of the catalog: what a client gets by default.
pub(crate) fn all_application_permissions() -> Vec<String> {
    permissions_of(PermissionType::Application)
}

/// Every permission of one column of the catalog, without duplicates.
pub(crate) fn permissions_of(permission_type: PermissionType) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for entry in catalog::entries() {
        for p in entry.permissions(permission_type) {
            if !out.iter().any(|o| o == p.name) {
                out.push(p.name.to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_forgeries_do_not() {
        let identity = Identity::generate(TokenVersion::V1).unwrap();
        let app = identity.app_token("t1", "app-1", &["Mail.Read".to_owned()]);
        let info = identity.verify(&app).unwrap();
        assert_eq!(info.app_id, "app-1");
        assert_eq!(info.tenant_id, "t1");
        assert_eq!(info.caller.permission_type, PermissionType::Application);
        assert_eq!(info.caller.permissions, ["Mail.Read"]);

        let user = identity.user_token(
            CONSUMER_TENANT_ID,
            "app-1",
            "ada@outlook.com",
            &["Mail.Read".to_owned(), "Files.Read".to_owned()],
        );
        let info = identity.verify(&user).unwrap();
        assert_eq!(
            info.caller.permission_type,
            PermissionType::DelegatedPersonal
        );
        assert_eq!(
            info.delegated_user(),
            Some(user_object_id(CONSUMER_TENANT_ID, "ada@outlook.com").as_str())
        );

        // Another emulator's key, a tampered payload, garbage: all refused.
        let other = Identity::generate(TokenVersion::V1).unwrap();
        assert!(
            identity
                .verify(&other.app_token("t1", "app-1", &[]))
                .is_none()
        );
        let mut parts: Vec<String> = app.split('.').map(str::to_owned).collect();
        let mut payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        payload["roles"] = json!(["Chat.Read.All"]);
        parts[1] = URL_SAFE_NO_PAD.encode(payload.to_string());
        assert!(identity.verify(&parts.join(".")).is_none());
        for junk in ["", "a.b.c", "eyJ", &"x".repeat(10_000)] {
            assert!(identity.verify(junk).is_none());
        }
        // A validation token is not an access token (wrong audience).
        assert!(
            identity
                .verify(&identity.validation_token("app-1", "t1"))
                .is_none()
        );
    }

    #[test]
    fn validation_tokens_carry_the_claims_of_their_version_and_are_reused() {
        for (version, publisher, iss) in [
            (TokenVersion::V1, "appid", "https://sts.windows.net/t1/"),
            (
                TokenVersion::V2,
                "azp",
                "https://login.microsoftonline.com/t1/v2.0",
            ),
        ] {
            let identity = Identity::generate(version).unwrap();
            let token = identity.validation_token("app-1", "t1");
            assert_eq!(token, identity.validation_token("app-1", "t1"));
            assert_ne!(token, identity.validation_token("app-2", "t1"));
            let payload: Value = serde_json::from_slice(
                &URL_SAFE_NO_PAD
                    .decode(token.split('.').nth(1).unwrap())
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(payload[publisher], CHANGE_TRACKING_APP_ID);
            assert_eq!(payload["iss"], iss);
            assert_eq!(payload["aud"], "app-1");
            assert_eq!(payload["tid"], "t1");
            let lifetime = payload["exp"].as_i64().unwrap() - payload["iat"].as_i64().unwrap();
            assert_eq!(lifetime, validation_token_seconds(version));
        }
    }

    #[test]
    fn derived_ids_are_stable_uuids() {
        let a = user_object_id("T", "Ada@Contoso.com");
        assert_eq!(a, user_object_id("t", "ada@contoso.com"));
        assert_ne!(a, user_object_id("t", "bob@contoso.com"));
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 5);
        assert_ne!(crate::random::uuid(), crate::random::uuid());
    }
}

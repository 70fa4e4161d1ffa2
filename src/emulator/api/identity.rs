//! The identity endpoints: the token endpoint, OpenID configuration, JWKS.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::catalog::PermissionType;
use crate::emulator::Core;
use crate::emulator::identity::{CONSUMER_TENANT_ID, issuer, permissions_of};
use crate::tokens::TokenVersion;

/// The form of `POST /{tenant}/oauth2/v2.0/token`.
#[derive(Debug, Deserialize)]
pub(super) struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_assertion: Option<String>,
    scope: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// An OAuth error answer (`{"error","error_description"}`), as Entra gives.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// The tenant a path segment names, and whether it is personal accounts'.
fn tenant(core: &Core, segment: &str) -> Option<(String, bool)> {
    if segment.eq_ignore_ascii_case("consumers") || segment.eq_ignore_ascii_case(CONSUMER_TENANT_ID)
    {
        return Some((CONSUMER_TENANT_ID.to_owned(), true));
    }
    if ["common", "organizations"]
        .iter()
        .any(|t| segment.eq_ignore_ascii_case(t))
    {
        return Some((core.config.tenant_id.clone(), false));
    }
    if let Ok(id) = uuid::Uuid::parse_str(segment) {
        return Some((id.hyphenated().to_string(), false));
    }
    // A verified domain of the tenant, e.g. contoso.onmicrosoft.com.
    (segment.contains('.')
        && segment.len() <= 253
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
    .then(|| (core.config.tenant_id.clone(), false))
}

fn graph_default_scope(scope: &str) -> bool {
    scope.split_whitespace().any(|s| {
        s.eq_ignore_ascii_case("https://graph.microsoft.com/.default")
            || s.eq_ignore_ascii_case("00000003-0000-0000-c000-000000000000/.default")
    })
}

/// Client credentials for apps (every application permission of the
/// catalog unless narrowed); the password grant for users, whose scopes
/// (`Mail.Read`, `https://graph.microsoft.com/Mail.Read`, `.default`) become `scp`.
pub(super) async fn token(
    State(core): State<Arc<Core>>,
    Path(segment): Path<String>,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request body must be application/x-www-form-urlencoded.",
        );
    };
    let Some((tenant_id, personal)) = tenant(&core, &segment) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            "The tenant is not a tenant id, a domain, common, organizations or consumers.",
        );
    };
    let Some(client_id) = form.client_id.as_deref().filter(|c| !c.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    let scope = form.scope.as_deref().unwrap_or_default();
    match form.grant_type.as_deref() {
        Some("client_credentials") => {
            if personal {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unauthorized_client",
                    "Personal Microsoft accounts have no app-only access: use a tenant id, common or organizations.",
                );
            }
            let has_secret = form.client_secret.as_deref().is_some_and(|s| !s.is_empty())
                || form
                    .client_assertion
                    .as_deref()
                    .is_some_and(|s| !s.is_empty());
            if !has_secret {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "The request body must contain 'client_secret' or 'client_assertion'.",
                );
            }
            if !graph_default_scope(scope) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "The scope of the client credentials flow must be https://graph.microsoft.com/.default.",
                );
            }
            let token = core
                .identity
                .app_token(&tenant_id, client_id, &core.granted_roles());
            Json(json!({
                "token_type": "Bearer",
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": token,
            }))
            .into_response()
        }
        Some("password") => {
            let (Some(username), Some(_)) = (
                form.username.as_deref().filter(|u| !u.is_empty()),
                form.password.as_deref().filter(|p| !p.is_empty()),
            ) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "The password grant needs 'username' and 'password'.",
                );
            };
            let column = if personal {
                PermissionType::DelegatedPersonal
            } else {
                PermissionType::DelegatedWork
            };
            let mut scopes: Vec<String> = Vec::new();
            for s in scope.split_whitespace() {
                let name = s
                    .get(..28)
                    .filter(|p| p.eq_ignore_ascii_case("https://graph.microsoft.com/"))
                    .map_or(s, |_| &s[28..]);
                if ["openid", "profile", "offline_access", "email"]
                    .iter()
                    .any(|o| name.eq_ignore_ascii_case(o))
                {
                    continue;
                }
                let names = if name == ".default" {
                    permissions_of(column)
                } else {
                    vec![name.to_owned()]
                };
                for n in names {
                    if !scopes.contains(&n) {
                        scopes.push(n);
                    }
                }
            }
            if scopes.is_empty() {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "Ask for at least one Graph permission, e.g. scope=Mail.Read, or .default.",
                );
            }
            let token = core
                .identity
                .user_token(&tenant_id, client_id, username, &scopes);
            Json(json!({
                "token_type": "Bearer",
                "scope": scopes.join(" "),
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": token,
            }))
            .into_response()
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials or password.",
        ),
    }
}

fn openid_configuration(core: &Core, segment: &str, version: TokenVersion) -> Response {
    let Some((tenant_id, _)) = tenant(core, segment) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            "The tenant is not a tenant id, a domain, common, organizations or consumers.",
        );
    };
    let base = &core.base_url;
    let issued_for = if ["common", "organizations"]
        .iter()
        .any(|t| segment.eq_ignore_ascii_case(t))
    {
        "{tenantid}".to_owned()
    } else {
        tenant_id
    };
    let (jwks, token) = match version {
        TokenVersion::V1 => (
            format!("{base}/{segment}/discovery/keys"),
            format!("{base}/{segment}/oauth2/token"),
        ),
        TokenVersion::V2 => (
            format!("{base}/{segment}/discovery/v2.0/keys"),
            format!("{base}/{segment}/oauth2/v2.0/token"),
        ),
    };
    Json(json!({
        "issuer": issuer(version, &issued_for),
        "jwks_uri": jwks,
        "token_endpoint": token,
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "tenant_region_scope": "EU",
    }))
    .into_response()
}

pub(super) async fn openid_configuration_v2(
    State(core): State<Arc<Core>>,
    Path(segment): Path<String>,
) -> Response {
    openid_configuration(&core, &segment, TokenVersion::V2)
}

pub(super) async fn openid_configuration_v1(
    State(core): State<Arc<Core>>,
    Path(segment): Path<String>,
) -> Response {
    openid_configuration(&core, &segment, TokenVersion::V1)
}

pub(super) async fn keys(State(core): State<Arc<Core>>) -> Json<Value> {
    Json(core.identity.jwks())
}

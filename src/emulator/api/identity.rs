//! The identity endpoints: the v2 and v1 token endpoints, OpenID
//! configuration (v2 and v1), instance discovery, JWKS.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::catalog::PermissionType;
use crate::emulator::Core;
use crate::emulator::identity::{
    CONSUMER_TENANT_ID, GRAPH_APP_ID, GRAPH_AUDIENCE, issuer, permissions_of,
};
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
    /// The v1 endpoint's audience, instead of `scope`.
    resource: Option<String>,
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

/// What both token endpoints read first: the form, the tenant (and whether
/// it is the consumers' one), a client id; or the OAuth error for it.
fn token_request(
    core: &Core,
    segment: &str,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Result<(TokenForm, String, bool), Box<Response>> {
    let Ok(Form(form)) = form else {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request body must be application/x-www-form-urlencoded.",
        )));
    };
    let Some((tenant_id, personal)) = tenant(core, segment) else {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            "The tenant is not a tenant id, a domain, common, organizations or consumers.",
        )));
    };
    if form.client_id.as_deref().is_none_or(str::is_empty) {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request body must contain the following parameter: 'client_id'.",
        )));
    }
    Ok((form, tenant_id, personal))
}

/// Client credentials for apps (every application permission of the
/// catalog unless narrowed); the password grant for users, whose scopes
/// (`Mail.Read`, `https://graph.microsoft.com/Mail.Read`, `.default`) become `scp`.
pub(super) async fn token(
    State(core): State<Arc<Core>>,
    Path(segment): Path<String>,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let (form, tenant_id, personal) = match token_request(&core, &segment, form) {
        Ok(request) => request,
        Err(refused) => return *refused,
    };
    let client_id = form.client_id.as_deref().unwrap_or_default();
    let scope = form.scope.as_deref().unwrap_or_default();
    match form.grant_type.as_deref() {
        Some("client_credentials") => {
            if let Err(refused) = client_credentials_allowed(personal, &form) {
                return refused;
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

/// Refuses app-only tokens for personal accounts, and clients without a
/// secret or assertion.
#[allow(clippy::result_large_err)]
fn client_credentials_allowed(personal: bool, form: &TokenForm) -> Result<(), Response> {
    if personal {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "Personal Microsoft accounts have no app-only access: use a tenant id, common or organizations.",
        ));
    }
    let has_secret = form.client_secret.as_deref().is_some_and(|s| !s.is_empty())
        || form
            .client_assertion
            .as_deref()
            .is_some_and(|s| !s.is_empty());
    if has_secret {
        Ok(())
    } else {
        Err(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The request body must contain 'client_secret' or 'client_assertion'.",
        ))
    }
}

/// Graph as a v1 `resource`.
fn graph_resource(resource: &str) -> bool {
    let resource = resource.trim_end_matches('/');
    resource.eq_ignore_ascii_case(GRAPH_AUDIENCE) || resource.eq_ignore_ascii_case(GRAPH_APP_ID)
}

/// `POST /{tenant}/oauth2/token`, the v1 endpoint: client credentials with
/// `resource=https://graph.microsoft.com`, answered in v1's shape (numbers
/// as strings, `expires_on`, `resource`) with the v2 endpoint's token.
pub(super) async fn token_v1(
    State(core): State<Arc<Core>>,
    Path(segment): Path<String>,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let (form, tenant_id, personal) = match token_request(&core, &segment, form) {
        Ok(request) => request,
        Err(refused) => return *refused,
    };
    let client_id = form.client_id.as_deref().unwrap_or_default();
    if form.grant_type.as_deref() != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "The v1 endpoint takes grant_type=client_credentials; use /oauth2/v2.0/token for the password grant.",
        );
    }
    if let Err(refused) = client_credentials_allowed(personal, &form) {
        return refused;
    }
    let Some(resource) = form.resource.as_deref().filter(|r| !r.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request body must contain the following parameter: 'resource'.",
        );
    };
    if !graph_resource(resource) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            "The emulator issues tokens for https://graph.microsoft.com only.",
        );
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = core
        .identity
        .app_token(&tenant_id, client_id, &core.granted_roles());
    Json(json!({
        "token_type": "Bearer",
        "expires_in": "3599",
        "ext_expires_in": "3599",
        "expires_on": (now + 3599).to_string(),
        "not_before": now.to_string(),
        "resource": resource,
        "access_token": token,
    }))
    .into_response()
}

/// `common`, `organizations` or `consumers`: no one tenant.
fn multi_tenant(segment: &str) -> bool {
    ["common", "organizations", "consumers"]
        .iter()
        .any(|t| segment.eq_ignore_ascii_case(t))
}

/// The host (and port) of an origin.
fn host_of(origin: &str) -> &str {
    origin.split_once("://").map_or(origin, |(_, host)| host)
}

/// The OpenID configuration with Microsoft's field set, its URLs on the
/// emulator as it was reached. The authorize, device-code and logout
/// endpoints are advertised (MSAL needs them) but not served.
fn openid_configuration(
    core: &Core,
    origin: &str,
    segment: &str,
    version: TokenVersion,
) -> Response {
    let Some((tenant_id, _)) = tenant(core, segment) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            "The tenant is not a tenant id, a domain, common, organizations or consumers.",
        );
    };
    let issued_for = if ["common", "organizations"]
        .iter()
        .any(|t| segment.eq_ignore_ascii_case(t))
    {
        "{tenantid}".to_owned()
    } else {
        tenant_id
    };
    let region = if multi_tenant(segment) {
        Value::Null
    } else {
        json!("EU")
    };
    let host = host_of(origin);
    let base = format!("{origin}/{segment}");
    let document = match version {
        TokenVersion::V2 => json!({
            "token_endpoint": format!("{base}/oauth2/v2.0/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{base}/discovery/v2.0/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": issuer(version, &issued_for),
            "request_uri_parameter_supported": false,
            "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
            "tenant_region_scope": region,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": host,
        }),
        TokenVersion::V1 => json!({
            "token_endpoint": format!("{base}/oauth2/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{base}/discovery/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "scopes_supported": ["openid"],
            "issuer": issuer(version, &issued_for),
            "microsoft_multi_refresh_token": true,
            "authorization_endpoint": format!("{base}/oauth2/authorize"),
            "device_authorization_endpoint": format!("{base}/oauth2/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{base}/oauth2/logout"),
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "amr", "nonce", "email", "given_name", "family_name", "nickname"],
            "tenant_region_scope": region,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": host,
        }),
    };
    Json(document).into_response()
}

pub(super) async fn openid_configuration_v2(
    State(core): State<Arc<Core>>,
    Path(segment): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let origin = super::origin(&core, &uri, &headers);
    openid_configuration(&core, &origin, &segment, TokenVersion::V2)
}

pub(super) async fn openid_configuration_v1(
    State(core): State<Arc<Core>>,
    Path(segment): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let origin = super::origin(&core, &uri, &headers);
    openid_configuration(&core, &origin, &segment, TokenVersion::V1)
}

/// The query of instance discovery.
#[derive(Debug, Deserialize)]
pub(super) struct DiscoveryQuery {
    authorization_endpoint: Option<String>,
}

/// `GET /{tenant}/discovery/instance`: where the OpenID configuration of
/// the `authorization_endpoint`'s tenant is (else the path's), and the
/// emulator's host as the one alias of its cloud, as MSAL reads it.
pub(super) async fn instance_discovery(
    State(core): State<Arc<Core>>,
    Path(segment): Path<String>,
    query: Result<Query<DiscoveryQuery>, QueryRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let invalid =
        |description: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_instance", description);
    let Ok(Query(query)) = query else {
        return invalid("The query string could not be read.");
    };
    let tenant_segment = match query.authorization_endpoint.as_deref() {
        Some(endpoint) => {
            let Some(first) = url::Url::parse(endpoint).ok().and_then(|url| {
                url.path_segments()
                    .and_then(|mut segments| segments.next().map(str::to_owned))
            }) else {
                return invalid(
                    "authorization_endpoint must be https://HOST/{tenant}/oauth2/v2.0/authorize.",
                );
            };
            first
        }
        None => segment,
    };
    if tenant(&core, &tenant_segment).is_none() {
        return invalid(
            "The tenant is not a tenant id, a domain, common, organizations or consumers.",
        );
    }
    let origin = super::origin(&core, &uri, &headers);
    let host = host_of(&origin);
    Json(json!({
        "tenant_discovery_endpoint": format!("{origin}/{tenant_segment}/v2.0/.well-known/openid-configuration"),
        "api-version": "1.1",
        "metadata": [{
            "preferred_network": host,
            "preferred_cache": host,
            "aliases": [host],
        }],
    }))
    .into_response()
}

pub(super) async fn keys(State(core): State<Arc<Core>>) -> Json<Value> {
    Json(core.identity.jwks())
}

//! `/v1.0/subscriptions` (and `/beta/…`): create, list, get, update, delete,
//! reauthorize, with the catalog's rules and the handshake inside the call.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use openssl::x509::X509;
use reqwest::Url;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiVersion, GraphError, authenticate};
use crate::ClientState;
use crate::catalog::{
    self, Destination, EndpointError, PermissionType, Request, Resolved, Violation,
    check_destination,
};
use crate::emulator::Core;
use crate::emulator::delivery::{DeliveryKind, DeliveryRecord, EndpointState, Outcome};
use crate::emulator::handshake::{self, HandshakeError};
use crate::emulator::identity::TokenInfo;
use crate::emulator::store::{Certificate, Echo, Subscription, parse_time};
use crate::notification::ResourceKind;

/// A subscription as the request body gives it (create and update).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Body {
    #[serde(rename = "@odata.type")]
    odata_type: Option<String>,
    change_type: Option<String>,
    notification_url: Option<String>,
    resource: Option<String>,
    expiration_date_time: Option<String>,
    client_state: Option<String>,
    latest_supported_tls_version: Option<String>,
    lifecycle_notification_url: Option<String>,
    include_resource_data: Option<bool>,
    encryption_certificate: Option<String>,
    encryption_certificate_id: Option<String>,
    notification_query_options: Option<String>,
    notification_url_app_id: Option<String>,
    notification_content_type: Option<String>,
    vapid_public_key: Option<Value>,
    web_push_encryption_p256dh_public_key: Option<Value>,
    web_push_encryption_secret: Option<Value>,
}

impl Body {
    fn parse(bytes: &[u8]) -> Result<Self, GraphError> {
        let body: Self = serde_json::from_slice(bytes).map_err(|_| GraphError::payload())?;
        if body.vapid_public_key.is_some()
            || body.web_push_encryption_p256dh_public_key.is_some()
            || body.web_push_encryption_secret.is_some()
        {
            return Err(GraphError::invalid(
                "Web Push properties (vapidPublicKey, webPushEncryptionP256dhPublicKey, webPushEncryptionSecret) \
                 are not allowed on webhook subscriptions.",
            ));
        }
        if let Some(t) = &body.odata_type
            && !t.eq_ignore_ascii_case("#microsoft.graph.subscription")
        {
            return Err(GraphError::payload());
        }
        if let Some(ct) = &body.notification_content_type
            && !ct.eq_ignore_ascii_case("application/json")
        {
            return Err(GraphError::invalid(
                "notificationContentType must be application/json.",
            ));
        }
        Ok(body)
    }
}

fn required<'a>(value: Option<&'a String>, name: &str) -> Result<&'a str, GraphError> {
    value
        .map(String::as_str)
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| {
            GraphError::invalid(format!(
                "The subscription property '{name}' is required and must not be empty."
            ))
        })
}

/// A notification or lifecycle URL by the catalog's
/// [destination rule](crate::catalog::check_destination), in Graph's words.
///
/// `EventGrid:` URLs are delivered to the emulator's partner-topic endpoint
/// (`event_grid_endpoint`). `EventHub:` URLs pass the rule and are then
/// refused with `400`: Event Hubs delivery is not emulated (future work),
/// and a subscription accepted but never delivered would hide that.
fn endpoint_url(core: &Core, value: &str, field: &str) -> Result<Url, GraphError> {
    let destination = check_destination(value, core.config.allow_http).map_err(|e| match e {
        EndpointError::EventGridParameter(name) => GraphError::invalid(format!(
            "{field}: the EventGrid: URL is missing the '{name}' query parameter."
        )),
        EndpointError::EventHubUrl => GraphError::invalid(format!(
            "{field}: an EventHub: URL must be followed by an https:// URL."
        )),
        EndpointError::Scheme(_) => GraphError::invalid(format!(
            "{field} must be an https:// URL (http:// is accepted for loopback addresses)."
        )),
        _ => GraphError::invalid(format!("{field} '{value}' is not a valid absolute URL.")),
    })?;
    match destination {
        Destination::EventHub(_) => Err(GraphError::invalid(format!(
            "{field}: Event Hubs delivery is not emulated; use an https:// URL (http:// for loopback) or an EventGrid: URL."
        ))),
        Destination::EventGrid(_) if core.config.event_grid_endpoint.is_none() => {
            Err(GraphError::invalid(format!(
                "{field}: EventGrid: delivery needs the emulator's partner-topic endpoint (emulate --event-grid-endpoint URL)."
            )))
        }
        Destination::Webhook(url) | Destination::EventGrid(url) => Ok(url),
    }
}

/// Whether `url` is an Event Grid partner topic: Graph sends it no
/// validation request (Event Grid validates its own event subscriptions'
/// webhooks, with the CloudEvents handshake, when it delivers).
pub(crate) fn is_event_grid(url: &Url) -> bool {
    url.scheme() == "eventgrid"
}

/// `encryptionCertificate`: base64 DER of an X.509 certificate with an RSA
/// key of 2048 to 4096 bits.
fn certificate(value: &str) -> Result<X509, GraphError> {
    let bad =
        || GraphError::invalid("Certificate validation error: Cannot find the requested object.");
    let der = STANDARD.decode(value.trim()).map_err(|_| bad())?;
    let x509 = X509::from_der(&der).map_err(|_| bad())?;
    let bits = x509
        .public_key()
        .ok()
        .and_then(|k| k.rsa().ok())
        .map(|rsa| rsa.size() * 8)
        .ok_or_else(bad)?;
    if !(2048..=4096).contains(&bits) {
        return Err(bad());
    }
    Ok(x509)
}

fn check_length(value: Option<&String>, name: &str) -> Result<(), GraphError> {
    match value {
        Some(v) if v.chars().count() > 128 => Err(GraphError::invalid(format!(
            "{name} must be at most 128 characters."
        ))),
        _ => Ok(()),
    }
}

fn prefers(headers: &HeaderMap, preference: &str) -> bool {
    headers.get_all("prefer").iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case(preference))
        })
    })
}

/// The catalog's rules that depend on the emulated tenant's data: Copilot
/// licences and which drive items are files.
fn tenant_rules(core: &Core, resolved: &Resolved) -> Result<(), Violation> {
    let segments = resolved.path().segments();
    match resolved.kind() {
        ResourceKind::AiInteraction => {
            let user = match segments.as_slice() {
                [_, users, user, ..] if users.eq_ignore_ascii_case("users") => Some(*user),
                _ => None,
            };
            let unlicensed = match user {
                Some(user) => core
                    .config
                    .copilot_unlicensed_users
                    .iter()
                    .any(|u| u.eq_ignore_ascii_case(user)),
                None => !core.config.copilot_tenant_licensed,
            };
            if unlicensed {
                return Err(Violation::CopilotLicenseRequired {
                    user: user.map(str::to_owned),
                });
            }
        }
        ResourceKind::DriveItem => {
            if let [.., items, item] = segments.as_slice()
                && items.eq_ignore_ascii_case("items")
                && core
                    .config
                    .drive_files
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(item))
            {
                return Err(Violation::NotAFolder {
                    item: (*item).to_owned(),
                });
            }
        }
        _ => {}
    }
    Ok(())
}

/// Runs the validation handshake and logs it like a delivery.
async fn handshake(core: &Core, url: &Url, subscription_id: &str) -> Result<(), GraphError> {
    if is_event_grid(url) {
        return Ok(());
    }
    let limit = core.config.real_timeout(core.config.handshake_timeout);
    let attempt = handshake::validate(&core.client, url, limit).await;
    core.log.push(DeliveryRecord {
        sequence: 0,
        time: core.clock.now(),
        url: url.to_string(),
        kind: DeliveryKind::Validation,
        items: 0,
        subscription_ids: vec![subscription_id.to_owned()],
        attempt: 1,
        status: attempt.status,
        outcome: match attempt.result {
            Ok(()) => Outcome::Delivered,
            Err(HandshakeError::TimedOut) => Outcome::TimedOut,
            Err(HandshakeError::Mismatch | HandshakeError::NotPlainText) => Outcome::Mismatch,
            Err(HandshakeError::NotOk) if attempt.status.is_some() => Outcome::Failed,
            Err(HandshakeError::NotOk) => Outcome::Unreachable,
        },
        latency_ms: Some(attempt.latency.as_secs_f64() * 1000.0),
        endpoint_state: EndpointState::Normal,
        body_kept: false,
    });
    attempt
        .result
        .map_err(|e| GraphError::invalid(e.to_string()))
}

/// `Content-Type` of Graph's successful JSON answers, as captures of Graph's
/// answers show it: OData minimal metadata, streaming, numbers as JSON
/// numbers (the parameters of OData JSON Format 4.01, section 3).
pub(super) const ODATA_JSON: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// A JSON answer with Graph's OData content type.
fn odata(status: StatusCode, json: &Value) -> Response {
    let mut response = (status, Json(json)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ODATA_JSON));
    response
}

/// The error for a broken rule in `operation` (`Create`, `Update`):
/// permission and licence refusals come from the workload behind the
/// subscription, as `403 ExtensionError`; the others are `400`.
fn refusal(operation: &str, violation: Violation) -> GraphError {
    if violation.is_forbidden() {
        GraphError::extension(StatusCode::FORBIDDEN, operation, violation)
    } else {
        violation.into()
    }
}

fn first(operation: &str, violations: Vec<Violation>) -> GraphError {
    violations
        .into_iter()
        .next()
        .map_or_else(GraphError::payload, |v| refusal(operation, v))
}

/// Whether the caller may see and manage `subscription`.
fn visible(token: &TokenInfo, subscription: &Subscription) -> bool {
    subscription
        .application_id
        .eq_ignore_ascii_case(&token.app_id)
        && subscription
            .tenant_id
            .eq_ignore_ascii_case(&token.tenant_id)
        && match token.delegated_user() {
            Some(user) => subscription.user_id.as_deref() == Some(user),
            None => true,
        }
}

fn find(core: &Core, token: &TokenInfo, id: &str) -> Result<Subscription, GraphError> {
    core.store
        .get(id)
        .filter(|s| visible(token, s) && s.expiration > core.clock.now())
        .ok_or_else(|| GraphError::subscription_not_found(id))
}

/// `POST /subscriptions`.
///
/// The checks run in the order Graph is observed to run them, so a request
/// with several faults gets the error Graph would give:
///
/// 1. the bearer token (`401`);
/// 2. the body: JSON, property names, required properties, URLs, the
///    expiration's form, lengths, the TLS version, the certificate (`400`);
/// 3. the catalog's rules that don't depend on the caller: resource, change
///    types, query options, resource data, lifetime, the Teams lifecycle
///    URL (`400`);
/// 4. the validation requests to `notificationUrl` and then
///    `lifecycleNotificationUrl` (`400 InvalidRequest` "Subscription
///    validation request failed. …"): Graph validates the endpoint before it
///    asks the workload, so a request that also lacks a permission gets the
///    validation error;
/// 5. the caller: permission type, permissions, the signed-in user's
///    mailbox, then the tenant's licences and drive items (`403
///    ExtensionError` "Operation: Create; Exception: [Status Code:
///    Forbidden; Reason: …]");
/// 6. quotas (`403 ExtensionError`).
///
/// Duplicates (`409`) are refused between 3 and 4, before any validation
/// request; where Graph looks for them is not documented.
///
/// The validation-before-permissions order is what apps report seeing
/// (a validation that passes, then an `ExtensionError`); Microsoft's pages
/// don't state an order.
pub(super) async fn create(
    State(core): State<Arc<Core>>,
    Extension(ApiVersion(version)): Extension<ApiVersion>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, GraphError> {
    let token = authenticate(&core, &headers)?;
    let origin = super::origin(&core, &uri, &headers);
    let body = Body::parse(&body)?;
    let change_type = required(body.change_type.as_ref(), "changeType")?;
    let notification_url = required(body.notification_url.as_ref(), "notificationUrl")?;
    let resource = required(body.resource.as_ref(), "resource")?;
    let expiration = required(body.expiration_date_time.as_ref(), "expirationDateTime")?;

    let notification_url = endpoint_url(&core, notification_url, "notificationUrl")?;
    let lifecycle_url = body
        .lifecycle_notification_url
        .as_deref()
        .map(|u| endpoint_url(&core, u, "lifecycleNotificationUrl"))
        .transpose()?;
    let expiration = parse_time(expiration).ok_or_else(|| {
        GraphError::invalid("expirationDateTime must be a date-time such as 2026-01-01T11:00:00Z.")
    })?;
    check_length(body.client_state.as_ref(), "clientState")?;
    check_length(
        body.encryption_certificate_id.as_ref(),
        "encryptionCertificateId",
    )?;
    let tls_version = body
        .latest_supported_tls_version
        .clone()
        .unwrap_or_else(|| "v1_2".to_owned());
    if !["v1_0", "v1_1", "v1_2", "v1_3"].contains(&tls_version.as_str()) {
        return Err(GraphError::invalid(
            "latestSupportedTlsVersion must be one of v1_0, v1_1, v1_2, v1_3.",
        ));
    }
    let x509 = body
        .encryption_certificate
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(certificate)
        .transpose()?;
    let certificate_id = body
        .encryption_certificate_id
        .clone()
        .filter(|id| !id.is_empty());
    let include_resource_data = body.include_resource_data.unwrap_or(false);

    let resolved = catalog::resolve(resource)?;
    if resolved.path().user() == Some("me") && token.delegated_user().is_none() {
        return Err(GraphError::invalid(
            "/me request is only valid with delegated authentication flow.",
        ));
    }
    let now = core.clock.now();
    let request = Request::new(change_type, expiration, now)
        .resource_data(
            include_resource_data,
            x509.is_some(),
            certificate_id.is_some(),
        )
        .lifecycle_url(lifecycle_url.is_some());
    let accepted = resolved.check(&request).map_err(|v| first("Create", v))?;

    let mut subscription = Subscription {
        id: crate::random::uuid(),
        resource: resource.trim().to_owned(),
        path: resolved.path().clone(),
        entry: accepted.entry,
        change_types: accepted.change_types,
        notification_url,
        lifecycle_url,
        expiration: accepted.expiration,
        client_state: body.client_state.clone().map(ClientState::new),
        include_resource_data,
        certificate: x509
            .zip(certificate_id)
            .map(|(x509, id)| Certificate { x509, id }),
        tls_version,
        notification_query_options: body.notification_query_options.clone(),
        notification_url_app_id: body.notification_url_app_id.clone(),
        application_id: token.app_id.clone(),
        creator_id: token.object_id.clone(),
        tenant_id: token.tenant_id.clone(),
        user_id: token.delegated_user().map(str::to_owned),
        payment_model: accepted.payment_model,
        unknown_enum_members: accepted.entry.unknown_enum_members
            && prefers(&headers, "include-unknown-enum-members"),
        security_webhooks: accepted.entry.security_webhooks
            && token.caller.permission_type != PermissionType::DelegatedPersonal
            && prefers(&headers, "includesecuritywebhooks"),
        reauthorization_done_for: None,
        authorization: core.authorization(),
        api_version: version,
        echo: Echo {
            include_resource_data: body.include_resource_data,
            notification_content_type: body.notification_content_type.clone(),
        },
    };
    if let Some(existing) = core.store.duplicate_of(&subscription) {
        return Err(duplicate(&existing));
    }
    handshake(&core, &subscription.notification_url, &subscription.id).await?;
    if let Some(url) = &subscription.lifecycle_url {
        handshake(&core, url, &subscription.id).await?;
    }
    // The row can differ by permission type (a drive's root).
    let accepted = resolved
        .check(&request.caller(&token.caller))
        .map_err(|v| first("Create", v))?;
    tenant_rules(&core, &resolved).map_err(|v| refusal("Create", v))?;
    subscription.entry = accepted.entry;
    subscription.unknown_enum_members =
        accepted.entry.unknown_enum_members && prefers(&headers, "include-unknown-enum-members");
    subscription.security_webhooks = accepted.entry.security_webhooks
        && token.caller.permission_type != PermissionType::DelegatedPersonal
        && prefers(&headers, "includesecuritywebhooks");
    if let Some(message) = super::super::quota::exceeded(
        &core.store.all(),
        &subscription,
        &core.config.quota_limits,
        core.clock.now(),
    ) {
        return Err(GraphError::extension(
            StatusCode::FORBIDDEN,
            "Create",
            message,
        ));
    }
    let json = subscription.to_json_as(&origin, version, true);
    core.store
        .insert_unique(subscription)
        .map_err(|existing| duplicate(&existing))?;
    core.changed.notify_one();
    Ok(odata(StatusCode::CREATED, &json))
}

fn duplicate(existing: &str) -> GraphError {
    GraphError::new(
        StatusCode::CONFLICT,
        "Conflict",
        format!("Subscription Id {existing} already exists for the requested combination"),
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    #[serde(rename = "$skiptoken")]
    skip_token: Option<String>,
}

pub(super) async fn list(
    State(core): State<Arc<Core>>,
    Extension(ApiVersion(version)): Extension<ApiVersion>,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Response, GraphError> {
    let token = authenticate(&core, &headers)?;
    let origin = super::origin(&core, &uri, &headers);
    let any_app = token.delegated_user().is_some()
        && token
            .caller
            .permissions
            .iter()
            .any(|p| p.eq_ignore_ascii_case("Subscription.Read.All"));
    let now = core.clock.now();
    let mine: Vec<Subscription> = core
        .store
        .all()
        .into_iter()
        .filter(|s| s.expiration > now)
        .filter(|s| {
            visible(&token, s)
                || (any_app
                    && s.tenant_id.eq_ignore_ascii_case(&token.tenant_id)
                    && s.user_id.as_deref() == token.delegated_user())
        })
        .collect();
    let skip = match query.skip_token.as_deref() {
        None => 0,
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| GraphError::invalid("The $skiptoken is not valid."))?,
    };
    let page = core.config.page_size.max(1);
    let value: Vec<Value> = mine
        .iter()
        .skip(skip)
        .take(page)
        .map(|s| {
            let mut json = s.to_json_as(&origin, version, false);
            if let Some(map) = json.as_object_mut() {
                map.remove("@odata.context");
            }
            json
        })
        .collect();
    let mut out = json!({
        "@odata.context": format!("{origin}/{version}/$metadata#subscriptions"),
        "value": value,
    });
    if skip + page < mine.len() {
        out["@odata.nextLink"] = json!(format!(
            "{origin}/{version}/subscriptions?$skiptoken={}",
            skip + page
        ));
    }
    Ok(odata(StatusCode::OK, &out))
}

pub(super) async fn get(
    State(core): State<Arc<Core>>,
    Extension(ApiVersion(version)): Extension<ApiVersion>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, GraphError> {
    let token = authenticate(&core, &headers)?;
    let origin = super::origin(&core, &uri, &headers);
    let subscription = find(&core, &token, &id)?;
    Ok(odata(
        StatusCode::OK,
        &subscription.to_json_as(&origin, version, false),
    ))
}

/// The properties PATCH may carry besides the updatable ones, which must
/// then equal the subscription's.
fn unchanged_only(body: &Body, subscription: &Subscription) -> Result<(), GraphError> {
    let fixed = [
        body.change_type.is_some(),
        body.client_state.is_some(),
        body.include_resource_data.is_some(),
        body.latest_supported_tls_version.is_some(),
        body.notification_query_options.is_some(),
        body.notification_url_app_id.is_some(),
    ];
    if fixed.iter().any(|set| *set) {
        return Err(GraphError::invalid(
            "Only expirationDateTime, notificationUrl, encryptionCertificate and encryptionCertificateId can be updated.",
        ));
    }
    if let Some(url) = &body.lifecycle_notification_url
        && subscription.lifecycle_url.as_ref().map(Url::as_str)
            != Url::parse(url).ok().as_ref().map(Url::as_str)
    {
        return Err(GraphError::invalid(
            "lifecycleNotificationUrl can't be added or changed by an update: create a new subscription with it.",
        ));
    }
    if let Some(resource) = &body.resource {
        let asked = catalog::resolve(resource)?;
        if asked.path().canonical(subscription.me())
            != subscription.path.canonical(subscription.me())
        {
            return Err(GraphError::invalid(
                "resource can't be changed by an update: create a new subscription.",
            ));
        }
        if asked.payment_model()? != subscription.payment_model {
            return Err(Violation::PaymentModelImmutable.into());
        }
    }
    Ok(())
}

/// `PATCH /subscriptions/{id}`: the same order of checks as
/// [`create`], the validation request (for a new `notificationUrl`) before
/// the caller's permissions. The answer is the subscription with
/// `clientState` `null`, as Graph's is.
pub(super) async fn update(
    State(core): State<Arc<Core>>,
    Extension(ApiVersion(version)): Extension<ApiVersion>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, GraphError> {
    let token = authenticate(&core, &headers)?;
    let origin = super::origin(&core, &uri, &headers);
    let body = Body::parse(&body)?;
    let mut subscription = find(&core, &token, &id)?;
    if body.expiration_date_time.is_none() && body.notification_url.is_none() {
        return Err(GraphError::invalid(
            "Subscription must contain either the 'expirationDateTime' or 'notificationUrl' property and its value.",
        ));
    }
    unchanged_only(&body, &subscription)?;
    let expiration = body
        .expiration_date_time
        .as_deref()
        .map(|e| {
            parse_time(e).ok_or_else(|| {
                GraphError::invalid(
                    "expirationDateTime must be a date-time such as 2026-01-01T11:00:00Z.",
                )
            })
        })
        .transpose()?;
    let notification_url = body
        .notification_url
        .as_deref()
        .map(|u| endpoint_url(&core, u, "notificationUrl"))
        .transpose()?;
    check_length(
        body.encryption_certificate_id.as_ref(),
        "encryptionCertificateId",
    )?;
    let x509 = body
        .encryption_certificate
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(certificate)
        .transpose()?;
    let certificate = match (x509, body.encryption_certificate_id.clone()) {
        (Some(x509), Some(id)) => Some(Certificate { x509, id }),
        (Some(x509), None) => subscription
            .certificate
            .clone()
            .map(|c| Certificate { x509, id: c.id }),
        (None, Some(id)) => subscription
            .certificate
            .clone()
            .map(|c| Certificate { x509: c.x509, id }),
        (None, None) => subscription.certificate.clone(),
    };

    let resolved = catalog::resolve(&subscription.resource)?;
    let now = core.clock.now();
    let change_types = subscription.change_type_text();
    let request = Request::new(
        &change_types,
        expiration.unwrap_or(subscription.expiration),
        now,
    )
    .resource_data(
        subscription.include_resource_data,
        certificate.is_some(),
        certificate.is_some(),
    )
    .lifecycle_url(subscription.lifecycle_url.is_some());
    resolved.check(&request).map_err(|v| first("Update", v))?;
    if let Some(url) = &notification_url
        && *url != subscription.notification_url
    {
        handshake(&core, url, &subscription.id).await?;
    }
    let accepted = resolved
        .check(&request.caller(&token.caller))
        .map_err(|v| first("Update", v))?;

    if expiration.is_some() {
        if accepted.expiration != subscription.expiration {
            subscription.reauthorization_done_for = None;
        }
        subscription.authorization = core.authorization();
        subscription.expiration = accepted.expiration;
    }
    if let Some(url) = notification_url {
        subscription.notification_url = url;
    }
    subscription.certificate = certificate;
    let json = subscription.to_json_as(&origin, version, false);
    if !core.store.replace(subscription) {
        return Err(GraphError::subscription_not_found(&id));
    }
    core.changed.notify_one();
    Ok(odata(StatusCode::OK, &json))
}

pub(super) async fn delete(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, GraphError> {
    let token = authenticate(&core, &headers)?;
    find(&core, &token, &id)?;
    core.store.remove(&id);
    core.changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn reauthorize(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, GraphError> {
    let token = authenticate(&core, &headers)?;
    let subscription = find(&core, &token, &id)?;
    let resolved = catalog::resolve(&subscription.resource)?;
    let change_types = subscription.change_type_text();
    let certificate = subscription.certificate.is_some();
    let request = Request::new(&change_types, subscription.expiration, core.clock.now())
        .resource_data(subscription.include_resource_data, certificate, certificate)
        .lifecycle_url(subscription.lifecycle_url.is_some())
        .caller(&token.caller);
    // Only who may hold the subscription matters here; the lifetime was checked before.
    if let Err(violations) = resolved.check(&request)
        && let Some(v) = violations.into_iter().find(Violation::is_forbidden)
    {
        return Err(v.into());
    }
    core.reauthorized(&id);
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any body, any certificate: an answer, never a panic.
        #[test]
        fn hostile_bodies_and_certificates_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512), text in "\\PC{0,200}") {
            let _ = Body::parse(&bytes);
            let _ = Body::parse(text.as_bytes());
            let _ = certificate(&text);
            let _ = certificate(&base64::Engine::encode(&STANDARD, &bytes));
            let _ = parse_time(&text);
        }
    }

    #[test]
    fn json_shaped_hostile_bodies() {
        for body in [
            r#"{"changeType": null}"#,
            r#"{"includeResourceData": "true"}"#,
            r##"{"@odata.type": "#microsoft.graph.user"}"##,
            r#"{"resource": {"nested": true}}"#,
            r#"{"notificationContentType": "text/xml"}"#,
            "[]",
            "null",
            "\u{feff}{}",
        ] {
            let parsed = Body::parse(body.as_bytes());
            assert!(
                parsed.is_err() || body == r#"{"changeType": null}"#,
                "{body}"
            );
        }
    }
}

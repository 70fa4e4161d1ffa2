//! `/emulator/…`: make things happen, see what happened, move time.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::GraphError;
use crate::emulator::notify::Change;
use crate::emulator::store::graph_time;
use crate::emulator::{ControlError, Core};
use crate::notification::LifecycleEventType;

impl From<ControlError> for GraphError {
    fn from(error: ControlError) -> Self {
        let status = match error {
            ControlError::UnknownSubscription(_) => StatusCode::NOT_FOUND,
            ControlError::Encryption(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        GraphError::new(status, "InvalidRequest", error.to_string())
    }
}

fn json_body<'a, T: Deserialize<'a>>(bytes: &'a [u8], shape: &str) -> Result<T, GraphError> {
    serde_json::from_slice(bytes)
        .map_err(|e| GraphError::invalid(format!("The body must be {shape}: {e}")))
}

pub(super) async fn info(
    State(core): State<Arc<Core>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Json<Value> {
    let base = &super::origin(&core, &uri, &headers);
    Json(json!({
        "graph": format!("{base}/v1.0"),
        "tokenEndpoint": format!("{base}/common/oauth2/v2.0/token"),
        "jwks": format!("{base}/common/discovery/v2.0/keys"),
        "openidConfiguration": format!("{base}/common/v2.0/.well-known/openid-configuration"),
        "tenantId": core.config.tenant_id,
        "now": graph_time(core.clock.now()),
        "timeScale": core.clock.scale(),
    }))
}

/// One change, or a JSON array of changes applied in order (one answer).
pub(super) async fn changes(
    State(core): State<Arc<Core>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), GraphError> {
    const SHAPE: &str = r#"{"resource": <a resource or an item beneath it>, "changeType": "created"|"updated"|"deleted", "data": {…}, "notify": true|false}, or an array of those"#;
    let array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let fired = if array {
        let changes: Vec<Change> = json_body(&body, SHAPE)?;
        core.fire_all(&changes)?
    } else {
        let change: Change = json_body(&body, SHAPE)?;
        core.fire(&change)?
    };
    Ok((StatusCode::ACCEPTED, Json(json!(fired))))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ResetBody {
    resource: Option<String>,
}

/// `{"resource": "users/delta"}` (or no body: every delta query): the
/// tokens issued so far answer a sync reset.
pub(super) async fn delta_reset(
    State(core): State<Arc<Core>>,
    body: Bytes,
) -> Result<Json<Value>, GraphError> {
    let body: ResetBody = if body.iter().all(u8::is_ascii_whitespace) {
        ResetBody::default()
    } else {
        json_body(
            &body,
            r#"{"resource": "<a delta query path, e.g. users/delta>"} or nothing"#,
        )?
    };
    let key = core.reset_delta(body.resource.as_deref())?;
    Ok(Json(
        json!({ "reset": key.unwrap_or_else(|| "all".to_owned()) }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ThrottleBody {
    requests: u32,
    retry_after: u64,
}

/// `{"requests": N, "retryAfter": S}`: the next N delta queries answer `429`.
pub(super) async fn throttle(
    State(core): State<Arc<Core>>,
    body: Bytes,
) -> Result<Json<Value>, GraphError> {
    let ThrottleBody {
        requests,
        retry_after,
    } = json_body(&body, r#"{"requests": <count>, "retryAfter": <seconds>}"#)?;
    if retry_after > 86_400 {
        return Err(GraphError::invalid(
            "retryAfter must be at most 86400 seconds.",
        ));
    }
    core.delta.throttle(requests, retry_after);
    Ok(Json(
        json!({ "requests": requests, "retryAfter": retry_after }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LifecycleBody {
    subscription_id: String,
    lifecycle_event: LifecycleEventType,
}

pub(super) async fn lifecycle(
    State(core): State<Arc<Core>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), GraphError> {
    let body: LifecycleBody = json_body(
        &body,
        r#"{"subscriptionId": "…", "lifecycleEvent": "reauthorizationRequired"|"subscriptionRemoved"|"missed"}"#,
    )?;
    if let LifecycleEventType::Unknown(event) = &body.lifecycle_event {
        return Err(GraphError::invalid(format!(
            "'{event}' is not a lifecycle event: use reauthorizationRequired, subscriptionRemoved or missed"
        )));
    }
    let fired = core.lifecycle(&body.subscription_id, &body.lifecycle_event)?;
    Ok((StatusCode::ACCEPTED, Json(json!(fired))))
}

pub(super) async fn deliveries(State(core): State<Arc<Core>>) -> Json<Value> {
    Json(json!({ "value": core.log.all() }))
}

/// The body a delivery POSTed, exactly as sent (for `inspect`), while the
/// emulator still keeps it.
pub(super) async fn delivery_body(
    State(core): State<Arc<Core>>,
    axum::extract::Path(sequence): axum::extract::Path<String>,
) -> Result<axum::response::Response, GraphError> {
    use axum::response::IntoResponse as _;
    let body = sequence
        .parse::<u64>()
        .ok()
        .and_then(|n| core.log.body(n))
        .ok_or_else(|| {
            GraphError::new(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                format!(
                    "No body is kept for delivery '{sequence}': only POSTs of notifications, the newest 200."
                ),
            )
        })?;
    Ok((
        [(
            http::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

pub(super) async fn endpoints(State(core): State<Arc<Core>>) -> Json<Value> {
    Json(json!({ "value": core.engine.statuses() }))
}

pub(super) async fn subscriptions(State(core): State<Arc<Core>>) -> Json<Value> {
    let value: Vec<Value> = core
        .store
        .all()
        .iter()
        .map(|s| s.to_json(&core.base_url, false))
        .collect();
    Json(json!({ "value": value }))
}

/// How full each subscription quota in use is.
pub(super) async fn quotas(State(core): State<Arc<Core>>) -> Json<Value> {
    let all = core.store.all();
    let value = crate::emulator::quota::usage(&all, &core.config.quota_limits, core.clock.now());
    Json(json!({ "value": value }))
}

pub(super) async fn clock(State(core): State<Arc<Core>>) -> Json<Value> {
    Json(json!({ "now": graph_time(core.clock.now()), "timeScale": core.clock.scale() }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Advance {
    advance_seconds: f64,
}

/// `{"advanceSeconds": 3600}` moves emulated time forward an hour.
pub(super) async fn advance(
    State(core): State<Arc<Core>>,
    body: Bytes,
) -> Result<Json<Value>, GraphError> {
    let Advance { advance_seconds } = json_body(&body, r#"{"advanceSeconds": <seconds>}"#)?;
    if !(advance_seconds.is_finite() && (0.0..=1e9).contains(&advance_seconds)) {
        return Err(GraphError::invalid(
            "advanceSeconds must be a number of seconds from 0 to 1e9.",
        ));
    }
    core.clock
        .advance(time::Duration::seconds_f64(advance_seconds));
    Ok(Json(json!({ "now": graph_time(core.clock.now()) })))
}

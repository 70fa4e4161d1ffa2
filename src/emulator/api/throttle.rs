//! Throttling of `/subscriptions` as Graph answers it: `429 Too Many
//! Requests`, `Retry-After` in seconds and the error envelope, before the
//! handler runs. The counting is [`rate`](crate::emulator::rate)'s.
//!
//! Microsoft Learn, "Microsoft Graph throttling guidance"
//! (<https://learn.microsoft.com/graph/throttling>): throttled requests get
//! `429 Too Many Requests` and fail, with a suggested wait in the response
//! header; "writes are throttled but reads are still permitted" when only
//! the write limit is reached. The message
//! follows the one Graph's subscription service was seen sending, "Too many
//! requests from Identifier:… under category:throttle.aad.ags.subscriptionservice….
//! Please try again later." (Microsoft Q&A,
//! <https://learn.microsoft.com/answers/questions/1138873>).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use tokio::time::Instant;

use super::{GraphError, authenticate};
use crate::emulator::Core;
use crate::emulator::rate::Kind;

/// Counts an authenticated request against the limits, or answers `429`.
/// Requests without a valid token go on to the handler's `401`.
pub(super) async fn limit(State(core): State<Arc<Core>>, request: Request, next: Next) -> Response {
    // The handler verifies the token again: a signature check is cheap, and
    // the handlers (another module's) stay as they are.
    let Ok(token) = authenticate(&core, request.headers()) else {
        return next.run(request).await;
    };
    let kind = match *request.method() {
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE => Kind::Write,
        _ => Kind::Read,
    };
    let admitted = core.rate.admit(
        &core.config.api_limits,
        kind,
        &token.tenant_id,
        &token.app_id,
        Instant::now(),
    );
    let Err(refusal) = admitted else {
        return next.run(request).await;
    };
    tracing::info!(
        method = %request.method(),
        path = %request.uri().path(),
        limit = %format!("{} per {}", refusal.row, refusal.scope),
        identifier = %refusal.identifier,
        retry_after = refusal.retry_after,
        "throttled: 429"
    );
    GraphError::throttled(
        format!(
            "Too many requests from Identifier:{} under category:throttle.aad.ags.subscriptionservice.{}. Please try again later.",
            refusal.identifier, refusal.row
        ),
        refusal.retry_after,
    )
}

//! `/emulator/`: a page over the control API, for a person watching what
//! the emulator does — subscriptions with their expiry and quota use, each
//! notification URL's throttling state over time, the deliveries with their
//! bodies — and forms to fire a change, send a lifecycle event and advance
//! the clock. Plain HTML, CSS and script embedded in the binary; everything
//! it shows comes from the JSON routes it documents beside it.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("../page/index.html");
const SCRIPT: &str = include_str!("../page/app.js");
/// The inspector's style sheet, shared, and the emulator's few additions.
const STYLE: &str = include_str!("../../inspector/page/app.css");
const EXTRA_STYLE: &str = include_str!("../page/emulator.css");

/// The policy of every asset: the page runs its own script only.
const POLICY: &str =
    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'";

fn asset(body: &'static str, kind: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

pub(super) async fn index() -> impl IntoResponse {
    asset(PAGE, "text/html; charset=utf-8")
}

pub(super) async fn script() -> impl IntoResponse {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

pub(super) async fn style() -> impl IntoResponse {
    asset(STYLE, "text/css; charset=utf-8")
}

pub(super) async fn extra_style() -> impl IntoResponse {
    asset(EXTRA_STYLE, "text/css; charset=utf-8")
}

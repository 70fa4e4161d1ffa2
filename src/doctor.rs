//! `doctor`: probe a notification endpoint the way Graph will, and explain
//! every failure with its fix.
//!
//! Graph's handshake failures are the most common complaint about change
//! notifications, and Graph's own error ("Subscription validation request
//! failed") says little. The doctor sends what Graph sends — the validation
//! request with a real-looking token, then a notification POST — and
//! checks what Graph checks: status, body, content type and time, naming
//! the usual culprits (an ngrok browser-warning page, an auth wall, a
//! redirect, TLS, a cold start) and what to do about each. For an
//! `https` URL it also shakes hands itself, to report the TLS version and
//! whether the chain is publicly trusted, as Graph requires.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

mod tls;

/// What Graph allows for the handshake answer.
pub const HANDSHAKE_BUDGET: Duration = Duration::from_secs(10);
/// What Graph allows for a notification answer before it counts as slow.
pub const ACK_BUDGET: Duration = Duration::from_secs(3);

/// How the doctor probes.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// Time allowed for the handshake (Graph: 10 s).
    pub handshake_budget: Duration,
    /// Time allowed for a notification answer (Graph: 3 s).
    pub ack_budget: Duration,
    /// The `clientState` put in the probe notification.
    pub client_state: crate::ClientState,
    /// Accept TLS certificates that are not trusted (for local endpoints
    /// with a self-signed certificate; Graph would not). The `tls` check
    /// still fails such a certificate: it says what Graph will do.
    pub accept_invalid_certs: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            handshake_budget: HANDSHAKE_BUDGET,
            ack_budget: ACK_BUDGET,
            client_state: crate::ClientState::new("msgraph-webhooks-doctor"),
            accept_invalid_certs: false,
        }
    }
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// As Graph needs it.
    Pass,
    /// Works, but risky.
    Warn,
    /// Graph would fail here.
    Fail,
}

/// One finding.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Finding {
    /// What was checked: `url`, `tls` (https URLs), `handshake`, `notification`.
    pub check: &'static str,
    /// The outcome.
    pub verdict: Verdict,
    /// A stable name of the diagnosis, e.g. `ngrok_interstitial`.
    pub diagnosis: &'static str,
    /// What happened.
    pub detail: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// How long the endpoint took, when it answered.
    #[serde(skip_serializing_if = "Option::is_none", rename = "latencyMs")]
    pub latency_ms: Option<u64>,
}

/// Everything the doctor found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The findings, in the order the checks ran.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether Graph would accept the endpoint (no finding is a failure).
    pub fn healthy(&self) -> bool {
        self.findings.iter().all(|f| f.verdict != Verdict::Fail)
    }

    /// The finding of `check`, if it ran.
    pub fn finding(&self, check: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.check == check)
    }

    fn push(&mut self, finding: Finding) {
        self.findings.push(finding);
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            let mark = match finding.verdict {
                Verdict::Pass => "ok  ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            write!(f, "[{mark}] {}: {}", finding.check, finding.detail)?;
            if let Some(ms) = finding.latency_ms {
                write!(f, " ({ms} ms)")?;
            }
            writeln!(f)?;
            if let Some(fix) = &finding.fix {
                writeln!(f, "       fix: {fix}")?;
            }
        }
        if self.healthy() {
            writeln!(f, "Graph would accept this endpoint.")
        } else {
            writeln!(f, "Graph would not accept this endpoint as it is.")
        }
    }
}

fn finding(
    check: &'static str,
    verdict: Verdict,
    diagnosis: &'static str,
    detail: impl Into<String>,
    fix: Option<&str>,
    latency: Option<Duration>,
) -> Finding {
    Finding {
        check,
        verdict,
        diagnosis,
        detail: detail.into(),
        fix: fix.map(str::to_owned),
        latency_ms: latency.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// The token Graph sends, in Graph's words, with a fresh request id.
pub fn validation_token() -> String {
    format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        crate::random::uuid()
    )
}

/// `url` with `validationToken` appended as Graph does (form-encoded,
/// after any query the URL already has).
pub fn handshake_url(url: &url::Url, token: &str) -> url::Url {
    let mut url = url.clone();
    url.query_pairs_mut().append_pair("validationToken", token);
    url
}

/// Probes `url` as Graph would.
///
/// # Errors
///
/// Only when `url` is not an absolute http(s) URL; every endpoint failure
/// is a finding in the report.
pub async fn diagnose(url: &str, options: &Options) -> Result<Report, String> {
    let url = http_url(url)?;
    let mut report = Report::default();
    check_url(&url, &mut report);
    if let Some(finding) = tls::probe_tls(&url, options.handshake_budget).await {
        report.push(finding);
    }
    let client = probe_client(options)?;
    let finding = probe_handshake(&client, &url, options).await;
    let handshake_ok = finding.verdict != Verdict::Fail;
    report.push(finding);
    if handshake_ok {
        report.push(probe_notification(&client, &url, options).await);
    }
    Ok(report)
}

/// Runs only the validation handshake against `url`, as Graph would before
/// creating or moving a subscription there: the finding of the
/// `handshake` check.
///
/// # Errors
///
/// Only when `url` is not an absolute http(s) URL.
pub async fn handshake(url: &str, options: &Options) -> Result<Finding, String> {
    let url = http_url(url)?;
    Ok(probe_handshake(&probe_client(options)?, &url, options).await)
}

fn http_url(url: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("not an http(s) URL: {url}"));
    }
    Ok(url)
}

fn probe_client(options: &Options) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
        .danger_accept_invalid_certs(options.accept_invalid_certs)
        .no_proxy()
        .user_agent("msgraph-webhooks-doctor")
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))
}

async fn probe_handshake(client: &reqwest::Client, url: &url::Url, options: &Options) -> Finding {
    let token = validation_token();
    let started = Instant::now();
    let answer = tokio::time::timeout(
        options.handshake_budget,
        client
            .post(handshake_url(url, &token))
            .header("content-type", "text/plain; charset=utf-8")
            .body("")
            .send(),
    )
    .await;
    match answer {
        Err(_) => finding(
            "handshake",
            Verdict::Fail,
            "timeout",
            format!(
                "no answer within {}: Graph would fail with \"Subscription validation request timed out\"",
                rounded(options.handshake_budget)
            ),
            Some(
                "answer the handshake without waiting on anything slow; if the endpoint sleeps when idle (serverless, free dynos), keep it warm or move off a cold-starting host",
            ),
            None,
        ),
        Ok(Err(e)) => transport_failure("handshake", &e, url),
        Ok(Ok(response)) => judge_handshake(response, &token, started.elapsed(), options).await,
    }
}

/// A duration as a person reads it: `850 ms`, `4.0 s`, `10 s`.
fn rounded(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn check_url(url: &url::Url, report: &mut Report) {
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_unspecified(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified(),
        None => false,
    };
    if loopback {
        let port = url.port_or_known_default().unwrap_or(80);
        report.push(finding(
            "url",
            Verdict::Warn,
            "not_public",
            format!("{} is not reachable from Microsoft's cloud", url.host_str().unwrap_or_default()),
            Some(&format!("expose the port with a tunnel (ngrok http {port}) and give Graph the public https URL; the CLI's `--public-url ngrok`, or `tunnel::NgrokAgent` in a Rust app, finds it for you")),
            None,
        ));
    } else if url.scheme() == "http" {
        report.push(finding(
            "url",
            Verdict::Fail,
            "not_https",
            "Graph only calls https:// notification URLs",
            Some("serve the endpoint over HTTPS (TLS 1.2 or later), e.g. behind a reverse proxy or a tunnel"),
            None,
        ));
    } else {
        report.push(finding(
            "url",
            Verdict::Pass,
            "ok",
            format!("{url} is a public https URL"),
            None,
            None,
        ));
    }
}

async fn judge_handshake(
    response: reqwest::Response,
    token: &str,
    elapsed: Duration,
    options: &Options,
) -> Finding {
    let status = response.status();
    let location = header(&response, "location");
    let content_type = header(&response, "content-type").unwrap_or_default();
    let body = read_capped(response).await;
    let latency = Some(elapsed);
    if let Some(finding) = common_failures(
        "handshake",
        status,
        location.as_deref(),
        &content_type,
        &body,
        latency,
    ) {
        return finding;
    }
    if status != reqwest::StatusCode::OK {
        return finding(
            "handshake",
            Verdict::Fail,
            "wrong_status",
            format!(
                "answered {status}; Graph needs 200 OK (\"Notification endpoint must respond with 200 OK to validation request\")"
            ),
            Some("answer a request with ?validationToken=… with 200, whatever the method and path"),
            latency,
        );
    }
    if body != token.as_bytes() {
        let text = String::from_utf8_lossy(&body);
        let encoded: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
        let (diagnosis, detail, fix) = if text == encoded || text == encoded.replace("%3A", "%3a") {
            (
                "token_not_decoded",
                "echoed the token still URL-encoded",
                "decode the query parameter with form rules (%xx and '+' → space) before echoing it",
            )
        } else if text.trim() == token {
            (
                "token_whitespace",
                "echoed the token with extra whitespace around it",
                "answer with the token exactly: no newline, no padding",
            )
        } else if text.trim_matches('"') == token {
            (
                "token_quoted",
                "echoed the token as a JSON string",
                "answer with the raw token as text/plain, not JSON",
            )
        } else {
            (
                "wrong_body",
                "the body is not the token (\"Response must exactly match validationToken query parameter\")",
                "answer with exactly the decoded validationToken",
            )
        };
        return finding(
            "handshake",
            Verdict::Fail,
            diagnosis,
            detail,
            Some(fix),
            latency,
        );
    }
    if !content_type.to_ascii_lowercase().starts_with("text/plain") {
        return finding(
            "handshake",
            Verdict::Warn,
            "content_type",
            format!(
                "echoed the token with Content-Type {content_type:?}; Graph's docs require text/plain"
            ),
            Some("set Content-Type: text/plain; charset=utf-8 on the handshake answer"),
            latency,
        );
    }
    if elapsed > options.handshake_budget / 2 {
        return finding(
            "handshake",
            Verdict::Warn,
            "slow",
            format!(
                "took {}, more than half of Graph's {}",
                rounded(elapsed),
                rounded(options.handshake_budget)
            ),
            Some(
                "a cold start this slow will sometimes miss Graph's deadline; keep the endpoint warm",
            ),
            latency,
        );
    }
    finding(
        "handshake",
        Verdict::Pass,
        "ok",
        "echoed the token as Graph requires",
        None,
        latency,
    )
}

/// Failures that look the same for the handshake and a notification.
fn common_failures(
    check: &'static str,
    status: reqwest::StatusCode,
    location: Option<&str>,
    content_type: &str,
    body: &[u8],
    latency: Option<Duration>,
) -> Option<Finding> {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    if text.contains("ngrok") && (content_type.contains("html") || text.contains("<html")) {
        return Some(finding(
            check,
            Verdict::Fail,
            "ngrok_interstitial",
            format!(
                "answered {status} with an ngrok HTML page (browser warning or account error), not your app"
            ),
            Some(
                "Graph gets the same page: make sure the agent forwards to your app's port (ngrok http PORT), that your ngrok account/authtoken is set up, and use a domain without the browser warning",
            ),
            latency,
        ));
    }
    if status.is_redirection() {
        return Some(finding(
            check,
            Verdict::Fail,
            "redirect",
            format!(
                "answered {status} to {}: Graph does not follow redirects",
                location.unwrap_or("?")
            ),
            Some(
                "give Graph the final URL (often https:// instead of http://, or with/without a trailing slash)",
            ),
            latency,
        ));
    }
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Some(finding(
            check,
            Verdict::Fail,
            "auth_wall",
            format!(
                "answered {status}: something in front of the endpoint wants credentials Graph never sends"
            ),
            Some(
                "exempt the notification path from authentication (Easy Auth, an API gateway, middleware); clientState and validation tokens authenticate Graph instead",
            ),
            latency,
        ));
    }
    if content_type.contains("html")
        || text.trim_start().starts_with("<!doctype html")
        || text.trim_start().starts_with("<html")
    {
        return Some(finding(
            check,
            Verdict::Fail,
            "html_page",
            format!(
                "answered {status} with an HTML page: a proxy, a login or error page is answering instead of your app"
            ),
            Some("point the URL at the endpoint itself and check what sits in front of it"),
            latency,
        ));
    }
    None
}

async fn probe_notification(
    client: &reqwest::Client,
    url: &url::Url,
    options: &Options,
) -> Finding {
    let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let body = serde_json::json!({"value": [{
        "subscriptionId": "00000000-0000-0000-0000-000000000000",
        "subscriptionExpirationDateTime": expires
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "clientState": options.client_state.expose(),
        "changeType": "updated",
        "resource": "doctor/probe",
        "tenantId": "00000000-0000-0000-0000-000000000000",
        "resourceData": {"id": "probe"}
    }]});
    let started = Instant::now();
    let answer = tokio::time::timeout(
        options.handshake_budget,
        client
            .post(url.clone())
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_string())
            .send(),
    )
    .await;
    let response = match answer {
        Err(_) => {
            return finding(
                "notification",
                Verdict::Fail,
                "timeout",
                format!("no answer within {}", rounded(options.handshake_budget)),
                Some(
                    "answer 202 as soon as the notification is stored; do the work after answering",
                ),
                None,
            );
        }
        Ok(Err(e)) => return transport_failure("notification", &e, url),
        Ok(Ok(response)) => response,
    };
    let elapsed = started.elapsed();
    let latency = Some(elapsed);
    let status = response.status();
    let location = header(&response, "location");
    let content_type = header(&response, "content-type").unwrap_or_default();
    let body = read_capped(response).await;
    if let Some(finding) = common_failures(
        "notification",
        status,
        location.as_deref(),
        &content_type,
        &body,
        latency,
    ) {
        return finding;
    }
    if status.is_client_error() {
        return finding(
            "notification",
            Verdict::Fail,
            "rejects_unknown_items",
            format!("answered {status} to a notification it does not recognise"),
            Some(
                "answer 202 and drop items you don't recognise: a 4xx makes Graph retry and back off (a silent outage), and tells a forger what you check",
            ),
            latency,
        );
    }
    if !status.is_success() {
        return finding(
            "notification",
            Verdict::Fail,
            "wrong_status",
            format!("answered {status}; Graph retries anything but 2xx for up to 4 hours"),
            Some("answer 202 once the notification is stored, 503 only when it could not be"),
            latency,
        );
    }
    if elapsed > options.ack_budget {
        return finding(
            "notification",
            Verdict::Fail,
            "slow_ack",
            format!(
                "took {}; Graph counts answers over {} as failed and throttles slow endpoints",
                rounded(elapsed),
                rounded(options.ack_budget)
            ),
            Some("store the notification, answer 202, and process it afterwards"),
            latency,
        );
    }
    finding(
        "notification",
        Verdict::Pass,
        "ok",
        format!("answered {status} in time"),
        None,
        latency,
    )
}

fn transport_failure(check: &'static str, error: &reqwest::Error, url: &url::Url) -> Finding {
    let chain = error_chain(error);
    let lower = chain.to_ascii_lowercase();
    let (diagnosis, detail, fix) = if lower.contains("certificate")
        || lower.contains("self-signed")
        || lower.contains("self signed")
    {
        (
            "tls_certificate",
            format!("the TLS certificate is not trusted: {chain}"),
            "use a certificate from a public CA covering this host name (Let's Encrypt, or the tunnel's)",
        )
    } else if lower.contains("ssl")
        || lower.contains("tls")
        || lower.contains("wrong version number")
        || lower.contains("handshake")
    {
        (
            "tls_handshake",
            format!("TLS failed: {chain}"),
            "serve TLS 1.2 or later on this port (an https URL pointing at a plain-HTTP port fails like this)",
        )
    } else if lower.contains("dns")
        || lower.contains("resolve")
        || lower.contains("name or service not known")
        || lower.contains("failed to lookup")
    {
        (
            "dns",
            format!(
                "{} does not resolve: {chain}",
                url.host_str().unwrap_or_default()
            ),
            "check the host name; a stopped tunnel's address stops resolving",
        )
    } else if lower.contains("refused") {
        (
            "connection_refused",
            format!("nothing accepts connections at {url}: {chain}"),
            "start the receiver, or point the tunnel at the port it listens on",
        )
    } else {
        (
            "unreachable",
            format!("the request failed: {chain}"),
            "check that the endpoint is up and reachable from the internet",
        )
    };
    finding(check, Verdict::Fail, diagnosis, detail, Some(fix), None)
}

pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Reads at most 64 KiB of a body: enough to judge it, never a memory risk.
async fn read_capped(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > 64 * 1024 {
            body.truncate(64 * 1024);
            break;
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_http_urls_fail_and_local_ones_warn() {
        let judge = |url: &str| {
            let mut report = Report::default();
            check_url(&url::Url::parse(url).unwrap(), &mut report);
            (report.findings[0].verdict, report.findings[0].diagnosis)
        };
        assert_eq!(
            judge("http://receiver.example.com/notify"),
            (Verdict::Fail, "not_https")
        );
        assert_eq!(
            judge("https://receiver.example.com/notify"),
            (Verdict::Pass, "ok")
        );
        assert_eq!(
            judge("http://127.0.0.1:8080/"),
            (Verdict::Warn, "not_public")
        );
        assert_eq!(
            judge("http://localhost:8080/"),
            (Verdict::Warn, "not_public")
        );
        assert_eq!(judge("https://[::1]:8443/"), (Verdict::Warn, "not_public"));
    }

    #[test]
    fn tokens_and_urls_look_like_graphs() {
        let token = validation_token();
        let prefix =
            "Validation: Testing client application reachability for subscription Request-Id: ";
        assert!(token.starts_with(prefix));
        assert_eq!(token.len(), prefix.len() + 36);
        let url = url::Url::parse("https://example.com/notify?tenant=contoso").unwrap();
        let with = handshake_url(&url, "Validation: a b");
        assert_eq!(
            with.as_str(),
            "https://example.com/notify?tenant=contoso&validationToken=Validation%3A+a+b"
        );
    }
}

//! The inspector on the admin address: a page, and the JSON it reads, which
//! is an API of its own for scripts.
//!
//! | request | answer |
//! |---|---|
//! | `GET /inspector/` | the page (HTML, CSS and script embedded in the binary) |
//! | `GET /inspector/api/deliveries?since=V&subscription=ID&state=S&limit=N&wait=SECS` | a [`Page`]: deliveries newest first; with `wait`, held until something newer than `since` happens (at most 25 s) |
//! | `GET /inspector/api/deliveries/{seq}` | one [`Delivery`] |
//! | `GET /inspector/api/health` | inbox depth and oldest age, the throttle-risk watch with its 10-second slots, quiet subscriptions |
//! | `GET /inspector/api/subscriptions` | the subscription records (never their `clientState`) with what arrived for each |
//! | `GET /inspector/api/dead-letters?limit=N` | dead letters: id, reason, attempts, the item's fields |
//! | `POST /inspector/api/dead-letters/replay?id=ID` | moves one dead letter back into the inbox (header `x-inspector-action: replay` required) |
//!
//! Every answer is JSON with `cache-control: no-store`. The replay needs a
//! header a cross-site form can't send, so a web page the developer visits
//! can't replay through their browser; without a bearer token the API
//! answers only requests whose `Host` is an IP address or `localhost`, so a
//! rebinding DNS name can't read it either.
//!
//! [`Page`]: super::Page
//! [`Delivery`]: super::Delivery

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode, Uri};
use http_body_util::Full;
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{Filter, Inspector, item_of};
use crate::metrics::Metrics;
use crate::store::{DeadLetters, EntryId, Inbox, RecordStore};

/// The longest a `wait` holds a request.
const MAX_WAIT: Duration = Duration::from_secs(25);
/// The most dead letters one answer lists.
const MAX_DEAD_LETTERS: usize = 500;

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/app.css");

/// What the inspector's routes read: the inspector, and the stores of the
/// receiver it watches.
#[derive(Clone)]
pub struct InspectorApi {
    inspector: Arc<Inspector>,
    dead_letters: Option<Arc<dyn DeadLetters>>,
    records: Option<Arc<dyn RecordStore>>,
}

impl std::fmt::Debug for InspectorApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InspectorApi")
            .field("inspector", &self.inspector)
            .field("dead_letters", &self.dead_letters.is_some())
            .field("records", &self.records.is_some())
            .finish()
    }
}

impl InspectorApi {
    /// The routes of `inspector`.
    pub fn new(inspector: Arc<Inspector>) -> Self {
        Self {
            inspector,
            dead_letters: None,
            records: None,
        }
    }

    /// Lists (and replays) these dead letters.
    pub fn dead_letters(mut self, dead_letters: Arc<dyn DeadLetters>) -> Self {
        self.dead_letters = Some(dead_letters);
        self
    }

    /// Shows these subscription records.
    pub fn records(mut self, records: Arc<dyn RecordStore>) -> Self {
        self.records = Some(records);
        self
    }

    /// The inspector.
    pub fn inspector(&self) -> &Arc<Inspector> {
        &self.inspector
    }

    /// Answers a request under `/inspector`; `None` for other paths.
    pub(crate) async fn handle(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        inbox: Option<&Arc<dyn Inbox>>,
        metrics: &Metrics,
        authenticated: bool,
    ) -> Option<Response<Full<Bytes>>> {
        let path = uri.path();
        let rest = path.strip_prefix("/inspector")?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        if let Some(asset) = asset(rest) {
            return Some(if *method == Method::GET {
                asset
            } else {
                status(StatusCode::METHOD_NOT_ALLOWED)
            });
        }
        let api = rest.strip_prefix("/api/")?;
        if !authenticated && !local_host(headers) {
            return Some(status(StatusCode::FORBIDDEN));
        }
        let query = Query::parse(uri.query());
        Some(match (method, api) {
            (&Method::GET, "deliveries") => {
                let filter = Filter {
                    since: query.number("since").unwrap_or(0),
                    subscription_id: query.text("subscription"),
                    state: query.text("state"),
                    limit: query.number("limit").map(|n| n as usize),
                };
                let wait = query
                    .number("wait")
                    .map_or(Duration::ZERO, Duration::from_secs)
                    .min(MAX_WAIT);
                let page = if wait.is_zero() {
                    self.inspector.deliveries(&filter)
                } else {
                    self.inspector.wait_for(&filter, wait).await
                };
                json_response(StatusCode::OK, &page)
            }
            (&Method::GET, "health") => self.health(inbox, metrics).await,
            (&Method::GET, "subscriptions") => self.subscriptions().await,
            (&Method::GET, "dead-letters") => self.list_dead_letters(&query).await,
            (&Method::POST, "dead-letters/replay") => self.replay(headers, &query).await,
            (&Method::GET, one) if one.starts_with("deliveries/") => {
                match one["deliveries/".len()..]
                    .parse()
                    .ok()
                    .and_then(|seq| self.inspector.delivery(seq))
                {
                    Some(delivery) => json_response(StatusCode::OK, &delivery),
                    None => status(StatusCode::NOT_FOUND),
                }
            }
            (_, "deliveries" | "health" | "subscriptions" | "dead-letters")
            | (_, "dead-letters/replay") => status(StatusCode::METHOD_NOT_ALLOWED),
            _ => status(StatusCode::NOT_FOUND),
        })
    }

    async fn health(
        &self,
        inbox: Option<&Arc<dyn Inbox>>,
        metrics: &Metrics,
    ) -> Response<Full<Bytes>> {
        let inbox = match inbox {
            Some(inbox) => match inbox.stats().await {
                Ok(stats) => json!({
                    "depth": stats.depth,
                    "oldestAgeSecs": stats.oldest_age.map(|age| age.as_secs_f64()),
                }),
                Err(e) => json!({"error": e.to_string()}),
            },
            None => Value::Null,
        };
        let dead_letters = match &self.dead_letters {
            Some(store) => match store.list(MAX_DEAD_LETTERS).await {
                Ok(list) => json!(list.len()),
                Err(e) => json!({"error": e.to_string()}),
            },
            None => Value::Null,
        };
        let watch = metrics.watch();
        let now = Instant::now();
        json_response(
            StatusCode::OK,
            &json!({
                "inbox": inbox,
                "deadLetters": dead_letters,
                "deadLettersCountedUpTo": MAX_DEAD_LETTERS,
                "throttle": watch.risk_at(now),
                "throttleSlots": watch.slots_at(now),
                "quiet": self.inspector.quiet_at(OffsetDateTime::now_utc()),
                "showsSecrets": self.inspector.shows_secrets(),
                "capacity": self.inspector.capacity(),
            }),
        )
    }

    async fn subscriptions(&self) -> Response<Full<Bytes>> {
        let traffic = self.inspector.traffic();
        let resyncs = self.inspector.resyncs();
        let records = match &self.records {
            Some(store) => match store.all().await {
                Ok(records) => records,
                Err(e) => {
                    return json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"error": e.to_string()}),
                    );
                }
            },
            None => Vec::new(),
        };
        let now = OffsetDateTime::now_utc();
        let mut seen = std::collections::HashSet::new();
        let mut rows: Vec<Value> = records
            .into_iter()
            .filter(|r| !r.id.starts_with("pending:"))
            .map(|record| {
                seen.insert(record.id.clone());
                let kept = |name: &str| record.owner.get(name).cloned().unwrap_or(Value::Null);
                let resource = kept("resource");
                let resync = resource
                    .as_str()
                    .and_then(|r| resyncs.get(r))
                    .map(|(reason, at)| json!({"reason": reason, "at": rfc3339(*at)}));
                json!({
                    "id": record.id,
                    "key": kept("key"),
                    "resource": resource,
                    "changeType": kept("changeType"),
                    "rich": record.certificate_id.is_some(),
                    "expiresAt": record.expires_at.map(rfc3339),
                    "expiresInSecs": record.expires_at.map(|at| (at - now).as_seconds_f64()),
                    "renewAt": kept("renewAt"),
                    "renewedAt": kept("renewedAt"),
                    "reauthorizedAt": kept("reauthorizedAt"),
                    "notificationUrl": kept("notificationUrl"),
                    "traffic": traffic.get(&record.id),
                    "lastResync": resync,
                })
            })
            .collect();
        // Subscriptions items arrived for without a record (one clientState for all).
        let mut others: Vec<(&String, _)> = traffic
            .iter()
            .filter(|(id, _)| !seen.contains(*id))
            .collect();
        others.sort_by(|a, b| a.0.cmp(b.0));
        rows.extend(
            others
                .into_iter()
                .map(|(id, traffic)| json!({"id": id, "traffic": traffic})),
        );
        json_response(StatusCode::OK, &json!({"subscriptions": rows}))
    }

    async fn list_dead_letters(&self, query: &Query) -> Response<Full<Bytes>> {
        let Some(store) = &self.dead_letters else {
            return json_response(StatusCode::OK, &json!({"deadLetters": [], "kept": false}));
        };
        let limit = query
            .number("limit")
            .map_or(100, |n| n as usize)
            .min(MAX_DEAD_LETTERS);
        match store.list(limit).await {
            Ok(list) => {
                let rows: Vec<Value> = list
                    .into_iter()
                    .map(|letter| {
                        let item = item_of(
                            &letter.item.raw,
                            super::Fate::DeadLettered {
                                reason: letter.reason.clone(),
                            },
                        );
                        json!({
                            "id": letter.id.as_str(),
                            "reason": letter.reason,
                            "attempts": letter.attempts,
                            "deadAt": OffsetDateTime::from_unix_timestamp_nanos(
                                i128::from(letter.dead_at_ms) * 1_000_000
                            ).ok().map(rfc3339),
                            "item": item,
                        })
                    })
                    .collect();
                json_response(StatusCode::OK, &json!({"deadLetters": rows, "kept": true}))
            }
            Err(e) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": e.to_string()}),
            ),
        }
    }

    async fn replay(&self, headers: &HeaderMap, query: &Query) -> Response<Full<Bytes>> {
        let confirmed = headers
            .get("x-inspector-action")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"replay"));
        if !confirmed {
            return status(StatusCode::FORBIDDEN);
        }
        // An empty id would replay every dead letter: one at a time here.
        let Some(id) = query.text("id").filter(|id| !id.is_empty()) else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "name the dead letter: ?id=ID"}),
            );
        };
        let Some(store) = &self.dead_letters else {
            return status(StatusCode::NOT_FOUND);
        };
        match store.replay(vec![EntryId::new(id)]).await {
            Ok(0) => status(StatusCode::NOT_FOUND),
            Ok(moved) => json_response(StatusCode::OK, &json!({"replayed": moved})),
            Err(e) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": e.to_string()}),
            ),
        }
    }
}

/// The page and its assets, by the path under `/inspector`.
fn asset(rest: &str) -> Option<Response<Full<Bytes>>> {
    let (body, kind) = match rest {
        "" => {
            let mut response = status(StatusCode::PERMANENT_REDIRECT);
            response
                .headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/inspector/"));
            return Some(response);
        }
        "/" | "/index.html" => (PAGE, "text/html; charset=utf-8"),
        "/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(response)
}

/// Whether the request names this machine: an IP address or `localhost`.
fn local_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        // HTTP/2 carries `:authority` in the URI, which hyper exposes there;
        // a request without either comes from a client, not a browser.
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Self {
        Self(
            url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .take(16)
                .map(|(k, v)| (k.into_owned(), v.chars().take(256).collect()))
                .collect(),
        )
    }

    fn text(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    }

    fn number(&self, name: &str) -> Option<u64> {
        self.text(name).and_then(|v| v.parse().ok())
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn json_response(code: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn only_local_hosts_without_a_token() {
        for ok in [
            "127.0.0.1:9464",
            "localhost:9464",
            "[::1]:9464",
            "10.0.0.5",
            "app.localhost",
        ] {
            assert!(local_host(&host(ok)), "{ok}");
        }
        for bad in [
            "attacker.example:9464",
            "localhost.attacker.example",
            "[evil]:1",
            "127.0.0.1.nip.io",
        ] {
            assert!(!local_host(&host(bad)), "{bad}");
        }
    }

    #[test]
    fn queries_are_bounded() {
        let long = "a".repeat(10_000);
        let query = Query::parse(Some(&format!("subscription={long}&since=12&limit=x")));
        assert_eq!(query.text("subscription").map(|s| s.len()), Some(256));
        assert_eq!(query.number("since"), Some(12));
        assert_eq!(query.number("limit"), None);
        let many: String = (0..100).map(|i| format!("k{i}=v&")).collect();
        assert_eq!(Query::parse(Some(&many)).0.len(), 16);
    }
}

//! Delta queries on the emulator's data, following Microsoft Learn, "Use
//! delta query to track changes in Microsoft Graph data"
//! (<https://learn.microsoft.com/graph/delta-query-overview>):
//!
//! - a round is a snapshot taken at its first request: the initial round
//!   lists the items that exist, a round from a delta link every item
//!   changed since (latest state; deletes as `{"id", "@removed":
//!   {"reason": "deleted"}}`), each once;
//! - pages link on with `@odata.nextLink` (`$skiptoken`) until the last,
//!   which carries `@odata.deltaLink` (`$deltatoken`; `token` for drive
//!   items); tokens are opaque and remember `$select`, `$filter` and the
//!   calendarView window;
//! - `$deltatoken=latest` (users, groups) and `token=latest` (drive items)
//!   answer no items and a delta link from now;
//! - `Prefer: odata.maxpagesize=N` (1 to 1000), acknowledged with
//!   `Preference-Applied`;
//! - expired tokens: directory objects after 7 days `400 syncStateNotFound`;
//!   drive items `410 resyncRequired` with `Location`; Outlook and Teams
//!   (no fixed lifetime at Graph: [`Config::delta_token_lifetime`]) `410
//!   syncStateNotFound` with `Location`. Unknown or forged tokens are
//!   answered the same way; a sync reset is `410 resyncRequired` with
//!   `Location`, the initial query.
//!
//! The calendarView window keeps the events whose `start.dateTime` falls in
//! it (events without one are kept); `@removed` `changed` is never sent.
//!
//! [`Config::delta_token_lifetime`]: crate::emulator::Config::delta_token_lifetime

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde_json::{Map, Value, json};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use super::{ApiVersion, GraphError, authenticate};
use crate::catalog::{self, PermissionType};
use crate::emulator::Core;
use crate::emulator::identity::TokenInfo;
use crate::emulator::resources::Item;
use crate::emulator::sync::{Cursor, Endpoint, Family, Query, Refusal, Round, endpoint};

/// Graph's lifetime of directory objects' delta tokens.
const DIRECTORY_LIFETIME: Duration = Duration::days(7);

/// Largest `odata.maxpagesize` honoured.
const MAX_PAGE: usize = 1000;

/// Characters escaped when a path goes back into a link.
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

const EXPIRED: &str = "The sync state generation is not found. The delta token is expired and data must be synchronized again.";

/// Where links point: `{scheme}://{host}/{version}/{prefix}/delta`.
struct Links {
    base: String,
}

impl Links {
    fn new(core: &Core, uri: &Uri, headers: &HeaderMap, version: &str, prefix: &str) -> Self {
        let origin = super::origin(core, uri, headers);
        let path = utf8_percent_encode(prefix, PATH);
        Self {
            base: format!("{origin}/{version}/{path}/delta"),
        }
    }

    fn with(&self, options: &[(String, String)]) -> String {
        if options.is_empty() {
            return self.base.clone();
        }
        // Names as Graph writes them (`$skiptoken`), values encoded.
        let query: Vec<String> = options
            .iter()
            .map(|(name, value)| {
                let value: String =
                    url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
                format!("{name}={value}")
            })
            .collect();
        format!("{}?{}", self.base, query.join("&"))
    }
}

/// The query options, names lower-cased without `$`, first value kept.
fn options(raw: Option<&str>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let name = name.trim_start_matches('$').to_ascii_lowercase();
        if !out.iter().any(|(n, _)| *n == name) {
            out.push((name, value.into_owned()));
        }
    }
    out
}

fn option<'a>(options: &'a [(String, String)], name: &str) -> Option<&'a str> {
    options
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `Prefer: odata.maxpagesize=N`, within 1 to 1000.
fn max_page_size(headers: &HeaderMap) -> Option<usize> {
    headers.get_all("prefer").iter().find_map(|v| {
        v.to_str().ok()?.split(',').find_map(|p| {
            let (name, value) = p.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("odata.maxpagesize")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
                .map(|n| n.clamp(1, MAX_PAGE))
        })
    })
}

/// A date-time of a window or an event: RFC 3339, or without an offset (UTC).
fn parse_time(value: &str) -> Option<OffsetDateTime> {
    let value = value.trim();
    OffsetDateTime::parse(value, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(&format!("{value}Z"), &Rfc3339))
        .ok()
}

/// `id eq 'a' or id eq 'b'`.
fn filter_ids(filter: &str) -> Result<Vec<String>, GraphError> {
    let bad = || GraphError::invalid(format!("Unsupported filter: '{filter}'. Use id eq '…'."));
    let mut ids = Vec::new();
    for clause in filter.split(" or ") {
        let mut words = clause.trim().splitn(3, ' ');
        let (Some(name), Some(op), Some(value)) = (words.next(), words.next(), words.next()) else {
            return Err(bad());
        };
        let id = value
            .trim()
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .ok_or_else(bad)?;
        if !name.eq_ignore_ascii_case("id") || !op.eq_ignore_ascii_case("eq") || id.is_empty() {
            return Err(bad());
        }
        ids.push(id.replace("''", "'"));
    }
    Ok(ids)
}

fn has(caller: &TokenInfo, permission: &str) -> bool {
    caller
        .caller
        .permissions
        .iter()
        .any(|p| p.eq_ignore_ascii_case(permission))
}

/// The permissions that allow the delta query: the catalog's least
/// privileged one, the subscription resource's, and their broader forms
/// (`ReadWrite` for `Read` and `ReadBasic`, `.All`, `Directory.*` for
/// directory objects).
fn accepted(endpoint: &Endpoint, permission_type: PermissionType) -> Vec<String> {
    let (delegated, application) = endpoint.query.permissions;
    let least = if permission_type == PermissionType::Application {
        application
    } else {
        delegated
    };
    let mut names = vec![least.to_owned()];
    if let Ok(resolved) = catalog::resolve(endpoint.collection.as_str()) {
        names.extend(
            resolved
                .permissions(permission_type)
                .iter()
                .map(|p| p.name.to_owned()),
        );
    }
    let mut out = Vec::new();
    for name in names {
        let base = name.trim_end_matches(".All");
        let all = name.ends_with(".All");
        let read = base.replace(".ReadBasic", ".Read");
        let write = if read.contains(".ReadWrite") {
            read.clone()
        } else {
            read.replace(".Read", ".ReadWrite")
        };
        for variant in [base.to_owned(), read, write] {
            if !all {
                out.push(variant.clone());
            }
            out.push(format!("{variant}.All"));
        }
    }
    if endpoint.family == Family::Directory {
        out.extend([
            "Directory.Read.All".to_owned(),
            "Directory.ReadWrite.All".to_owned(),
        ]);
    }
    let mut unique: Vec<String> = Vec::new();
    for name in out {
        if !unique.contains(&name) {
            unique.push(name);
        }
    }
    unique
}

/// Graph's `401`/`403`/`400` for the caller of a delta query.
fn authorize(
    core: &Core,
    endpoint: &Endpoint,
    headers: &HeaderMap,
) -> Result<TokenInfo, GraphError> {
    let token = authenticate(core, headers)?;
    let user = endpoint.collection.user();
    if user == Some("me") && token.delegated_user().is_none() {
        return Err(GraphError::invalid(
            "/me request is only valid with delegated authentication flow.",
        ));
    }
    let permission_type = token.caller.permission_type;
    let needed = accepted(endpoint, permission_type);
    let other_mailbox = endpoint.family == Family::Outlook
        && permission_type != PermissionType::Application
        && user.is_some_and(|u| {
            !u.eq_ignore_ascii_case("me")
                && !token.object_id.eq_ignore_ascii_case(u)
                && !token
                    .caller
                    .user_principal_name
                    .as_deref()
                    .is_some_and(|upn| upn.eq_ignore_ascii_case(u))
        });
    if other_mailbox || !needed.iter().any(|p| has(&token, p)) {
        let least = needed.first().map_or("", String::as_str);
        let message = match endpoint.family {
            Family::Directory => format!(
                "Insufficient privileges to complete the operation. Needed: {least} or a broader permission."
            ),
            _ if other_mailbox => "Access is denied. Check credentials and try again.".to_owned(),
            _ => format!(
                "Access is denied. Check credentials and try again. Needed: {least} or a broader permission."
            ),
        };
        let code = match endpoint.family {
            Family::Directory => "Authorization_RequestDenied",
            Family::Outlook => "ErrorAccessDenied",
            _ => "accessDenied",
        };
        return Err(GraphError::new(StatusCode::FORBIDDEN, code, message));
    }
    Ok(token)
}

/// The data keys the collection may be under: `me` stands for the
/// signed-in user, by object id or principal name.
fn keys(core: &Core, endpoint: &Endpoint, token: &TokenInfo) -> Vec<String> {
    let path = &endpoint.collection;
    if path.user() != Some("me") {
        return vec![path.canonical(None)];
    }
    let mut keys = vec![path.canonical(Some(&token.object_id))];
    if let Some(upn) = token
        .caller
        .user_principal_name
        .as_deref()
        .filter(|u| !u.is_empty())
    {
        keys.push(path.canonical(Some(upn)));
    }
    keys.push(path.canonical(None));
    // The one with data first.
    if let Some(i) = keys.iter().position(|k| core.resources.exists(k)) {
        keys.swap(0, i);
    }
    keys
}

/// A `410 Gone` (or `400` for directory objects) for a token that cannot be used.
fn refused(endpoint: &Endpoint, refusal: &Refusal, location: &str) -> Response {
    let gone = |code: &'static str, message: &str| {
        let error = GraphError::new(StatusCode::GONE, code, message);
        match HeaderValue::from_str(location) {
            Ok(value) => ([(header::LOCATION, value)], error).into_response(),
            Err(_) => error.into_response(),
        }
    };
    match (refusal, endpoint.family) {
        (Refusal::Reset(_), _) => gone(
            "resyncRequired",
            "A sync reset is required: restart with the initial query in the Location header.",
        ),
        (_, Family::Directory) => {
            GraphError::new(StatusCode::BAD_REQUEST, "syncStateNotFound", EXPIRED).into_response()
        }
        (_, Family::Drive) => gone(
            "resyncRequired",
            "Resync required. Replace any local items with the server's version (including deletes) \
             and restart with the initial query in the Location header.",
        ),
        _ => gone("syncStateNotFound", EXPIRED),
    }
}

fn project(item: &Item, select: Option<&[String]>) -> Value {
    let Some(data) = &item.data else {
        return json!({"id": item.id, "@removed": {"reason": "deleted"}});
    };
    let mut out = Map::new();
    out.insert("id".to_owned(), Value::String(item.id.clone()));
    for (key, value) in data.iter() {
        let keep = key != "id"
            && select.is_none_or(|fields| {
                key.starts_with('@') || fields.iter().any(|f| f.eq_ignore_ascii_case(key))
            });
        if keep {
            out.insert(key.clone(), value.clone());
        }
    }
    Value::Object(out)
}

/// Whether an item belongs to the query's round (filter and window).
fn wanted(query: &Query, item: &Item) -> bool {
    if let Some(ids) = &query.ids
        && !ids.iter().any(|id| id.eq_ignore_ascii_case(&item.id))
    {
        return false;
    }
    match (&query.window, &item.data) {
        (Some((start, end)), Some(data)) => data
            .get("start")
            .and_then(|s| s.get("dateTime"))
            .and_then(Value::as_str)
            .and_then(parse_time)
            .is_none_or(|t| *start <= t && t < *end),
        _ => true,
    }
}

/// The initial query from the request's options.
fn initial(
    endpoint: &Endpoint,
    key: String,
    options: &[(String, String)],
) -> Result<Query, GraphError> {
    let select = option(options, "select").map(|s| {
        s.split(',')
            .map(|f| f.trim().to_owned())
            .filter(|f| !f.is_empty())
            .collect::<Vec<_>>()
    });
    let ids = match option(options, "filter") {
        Some(filter) if endpoint.family == Family::Directory => Some(filter_ids(filter)?),
        Some(_) => {
            return Err(GraphError::invalid(
                "$filter is not supported on this delta query.",
            ));
        }
        None => None,
    };
    let window = if endpoint.query.window {
        let (Some(start), Some(end)) = (
            option(options, "startdatetime"),
            option(options, "enddatetime"),
        ) else {
            return Err(GraphError::new(
                StatusCode::BAD_REQUEST,
                "ErrorInvalidParameter",
                "This request requires a time window specified by the query string parameters StartDateTime and EndDateTime.",
            ));
        };
        let (Some(start), Some(end)) = (parse_time(start), parse_time(end)) else {
            return Err(GraphError::new(
                StatusCode::BAD_REQUEST,
                "ErrorInvalidParameter",
                "startDateTime and endDateTime must be date-times such as 2026-01-01T00:00:00Z.",
            ));
        };
        Some((start, end))
    } else {
        None
    };
    Ok(Query {
        key,
        select,
        ids,
        window,
        options: kept(options),
    })
}

/// Takes a round's snapshot.
fn round(core: &Core, query: Arc<Query>, since: Option<u64>, page_size: usize) -> Arc<Round> {
    let (items, upto) = core.resources.changed_since(&query.key, since);
    let items = items.into_iter().filter(|i| wanted(&query, i)).collect();
    Arc::new(Round {
        query,
        items,
        upto,
        page_size,
        started: core.clock.now(),
    })
}

/// One page of a round, with the link to what follows.
fn page(
    core: &Core,
    links: &Links,
    round: &Arc<Round>,
    offset: usize,
    size: usize,
    family: Family,
) -> Value {
    let end = offset.saturating_add(size).min(round.items.len());
    let select = round.query.select.as_deref();
    let value: Vec<Value> = round
        .items
        .get(offset..end)
        .unwrap_or_default()
        .iter()
        .map(|item| project(item, select))
        .collect();
    let mut body = Map::new();
    if end < round.items.len() {
        let cursor = Cursor::Page {
            round: round.clone(),
            offset: end,
        };
        let token = core.delta.issue(cursor, round.started);
        body.insert(
            "@odata.nextLink".to_owned(),
            json!(links.with(&[("$skiptoken".to_owned(), token)])),
        );
    } else {
        body.insert(
            "@odata.deltaLink".to_owned(),
            json!(delta_link(core, links, &round.query, round.upto, family)),
        );
    }
    body.insert("value".to_owned(), Value::Array(value));
    Value::Object(body)
}

fn delta_link(
    core: &Core,
    links: &Links,
    query: &Arc<Query>,
    since: u64,
    family: Family,
) -> String {
    let cursor = Cursor::Delta {
        query: query.clone(),
        since,
    };
    let token = core.delta.issue(cursor, core.clock.now());
    let name = if family == Family::Drive {
        "token"
    } else {
        "$deltatoken"
    };
    links.with(&[(name.to_owned(), token)])
}

fn lifetime(core: &Core, family: Family) -> Duration {
    match family {
        Family::Directory => DIRECTORY_LIFETIME,
        _ => crate::emulator::clock::emulated(core.config.delta_token_lifetime),
    }
}

/// `GET /{version}/{collection}/delta`; any other path under the version is `404`.
pub(super) async fn serve(
    State(core): State<Arc<Core>>,
    Extension(ApiVersion(version)): Extension<ApiVersion>,
    // Nested under the version: the path is relative to it.
    uri: Uri,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, GraphError> {
    let relative = uri.path().trim_start_matches('/');
    let decoded = percent_decode_str(relative).decode_utf8_lossy();
    let Some(endpoint) = endpoint(&decoded) else {
        return Err(super::not_found().await);
    };
    if method != Method::GET {
        return Err(GraphError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Request_BadRequest",
            "Delta queries are GET requests.",
        ));
    }
    let token = authorize(&core, &endpoint, &headers)?;
    if let Some(retry_after) = core.delta.throttled() {
        return Ok(GraphError::throttled(
            "Too many requests. Retry after the time in the Retry-After header.",
            retry_after,
        ));
    }
    let options = options(uri.query());
    let links = Links::new(&core, &uri, &headers, version, &endpoint.prefix);
    let keys = keys(&core, &endpoint, &token);
    let preferred = max_page_size(&headers);
    let default_size = if endpoint.family == Family::Outlook {
        10
    } else {
        100
    };
    let family = endpoint.family;

    let delta_token = endpoint
        .path_token
        .clone()
        .or_else(|| option(&options, "deltatoken").map(str::to_owned))
        .or_else(|| option(&options, "token").map(str::to_owned));
    let skip_token = option(&options, "skiptoken").map(str::to_owned);

    let body = match (skip_token, delta_token) {
        (Some(skip), _) => match core.delta.get(&skip, &keys) {
            Ok(found) => match found.cursor {
                Cursor::Page { round, offset }
                    if core.clock.now() - found.issued <= lifetime(&core, family) =>
                {
                    let size = preferred.unwrap_or(round.page_size);
                    page(&core, &links, &round, offset, size, family)
                }
                Cursor::Page { round, .. } => {
                    return Ok(refused(
                        &endpoint,
                        &Refusal::Unknown,
                        &links.with(&round.query.options),
                    ));
                }
                Cursor::Delta { query, .. } => {
                    return Ok(refused(
                        &endpoint,
                        &Refusal::Unknown,
                        &links.with(&query.options),
                    ));
                }
            },
            Err(refusal) => return Ok(unusable(&endpoint, &links, &options, &refusal)),
        },
        (None, Some(delta))
            if delta.eq_ignore_ascii_case("latest")
                && family != Family::Outlook
                && family != Family::Teams =>
        {
            let query = Arc::new(initial(&endpoint, keys[0].clone(), &options)?);
            let since = core.resources.sequence(&query.key);
            let mut body = Map::new();
            body.insert(
                "@odata.deltaLink".to_owned(),
                json!(delta_link(&core, &links, &query, since, family)),
            );
            body.insert("value".to_owned(), json!([]));
            Value::Object(body)
        }
        (None, Some(delta)) => match core.delta.get(&delta, &keys) {
            Ok(found) => match found.cursor {
                Cursor::Delta { query, since }
                    if core.clock.now() - found.issued <= lifetime(&core, family) =>
                {
                    let size = preferred.unwrap_or(default_size);
                    let round = round(&core, query, Some(since), size);
                    page(&core, &links, &round, 0, size, family)
                }
                Cursor::Delta { query, .. } => {
                    return Ok(refused(
                        &endpoint,
                        &Refusal::Unknown,
                        &links.with(&query.options),
                    ));
                }
                Cursor::Page { round, .. } => {
                    return Ok(refused(
                        &endpoint,
                        &Refusal::Unknown,
                        &links.with(&round.query.options),
                    ));
                }
            },
            Err(refusal) => return Ok(unusable(&endpoint, &links, &options, &refusal)),
        },
        (None, None) => {
            let query = Arc::new(initial(&endpoint, keys[0].clone(), &options)?);
            let size = preferred.unwrap_or(default_size);
            let round = round(&core, query, None, size);
            page(&core, &links, &round, 0, size, family)
        }
    };
    let mut response = Json(body).into_response();
    if let Some(size) = preferred
        && let Ok(value) = HeaderValue::from_str(&format!("odata.maxpagesize={size}"))
    {
        response.headers_mut().insert("preference-applied", value);
    }
    Ok(response)
}

/// The answer to a token that is unknown or reset: the `Location` is the
/// reset token's initial query, or the request's own options.
fn unusable(
    endpoint: &Endpoint,
    links: &Links,
    options: &[(String, String)],
    refusal: &Refusal,
) -> Response {
    let location = match refusal {
        Refusal::Reset(initial) => links.with(initial),
        Refusal::Unknown => links.with(&kept(options)),
    };
    refused(endpoint, refusal, &location)
}

/// The options of an initial query (not the tokens), as Graph spells them.
fn kept(options: &[(String, String)]) -> Vec<(String, String)> {
    options
        .iter()
        .filter_map(|(name, value)| {
            let name = match name.as_str() {
                "select" => "$select",
                "filter" => "$filter",
                "startdatetime" => "startDateTime",
                "enddatetime" => "endDateTime",
                _ => return None,
            };
            Some((name.to_owned(), value.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_times_parse_or_refuse() {
        assert_eq!(
            filter_ids("id eq 'a' or ID EQ 'b''c'").unwrap(),
            ["a", "b'c"]
        );
        for bad in [
            "",
            "id eq a",
            "name eq 'x'",
            "id ne 'x'",
            "id eq ''",
            "id eq 'x' and",
        ] {
            assert!(filter_ids(bad).is_err(), "{bad}");
        }
        assert!(parse_time("2026-01-01T00:00:00").is_some());
        assert!(parse_time("2026-01-01T00:00:00.1234567Z").is_some());
        assert!(parse_time("garbage").is_none());
    }

    #[test]
    fn projection_keeps_id_annotations_and_selected_fields() {
        let item = Item {
            id: "a".to_owned(),
            seq: 1,
            data: Some(Arc::new(
                json!({"subject": "s", "body": "b", "@odata.etag": "e", "id": "a"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            )),
        };
        let fields = ["Subject".to_owned()];
        assert_eq!(
            project(&item, Some(&fields)),
            json!({"id": "a", "subject": "s", "@odata.etag": "e"})
        );
        let gone = Item { data: None, ..item };
        assert_eq!(
            project(&gone, Some(&fields)),
            json!({"id": "a", "@removed": {"reason": "deleted"}})
        );
    }

    #[test]
    fn broader_permissions_are_accepted() {
        let mail = endpoint("users/a/mailFolders/inbox/messages/delta").unwrap();
        let app = accepted(&mail, PermissionType::Application);
        for p in [
            "Mail.ReadBasic.All",
            "Mail.Read",
            "Mail.ReadWrite",
            "Mail.Read.All",
        ] {
            assert!(app.iter().any(|a| a == p), "{p}: {app:?}");
        }
        let users = endpoint("users/delta").unwrap();
        let app = accepted(&users, PermissionType::Application);
        assert!(app.iter().any(|a| a == "Directory.Read.All"));
        assert!(!app.iter().any(|a| a == "Mail.Read"));
    }
}

//! Delta queries: the changes Graph keeps per collection, page by page, the
//! truth to resync from when notifications went missing.
//!
//! What this relies on, from "Use delta query to track changes in Microsoft
//! Graph data" (<https://learn.microsoft.com/graph/delta-query-overview>):
//!
//! - a round follows `@odata.nextLink` until a page carries an
//!   `@odata.deltaLink`, where the next round starts; the links are opaque
//!   and carry the first request's query parameters (`$select`), so only the
//!   first request names them;
//! - a removed item is its `id` and `@removed` with a reason, `changed`
//!   (restorable) or `deleted`; drive items mark deletes with a `deleted`
//!   facet instead ("driveItem: delta",
//!   <https://learn.microsoft.com/graph/api/driveitem-delta>);
//! - an item may show up more than once in a round, and again in a later
//!   round (replays): consumers deduplicate;
//! - users and groups start "from now" with `$deltatoken=latest`, drive
//!   items with `token=latest`;
//! - a sync reset is `410 Gone` with a `Location` to start over from, and an
//!   expired token a 40x with a code such as `syncStateNotFound` (drive
//!   items: `resyncRequired`): the round starts over with a full sync;
//! - `Prefer: odata.maxpagesize=N` asks for pages of at most N items.

use std::fmt;

use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::GraphClient;
use super::client::origin;
use super::error::{ClientError, GraphError};
use super::http::clean;
use crate::catalog::DeltaQuery;

/// Largest delta page read (1000 rich items of a few KiB each).
const MAX_PAGE_BODY: usize = 64 * 1024 * 1024;

/// Where a round of a delta query starts when there is no link to follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeltaStart {
    /// A full sync: every item that exists now.
    Full,
    /// From now: no items, only a delta link for what changes next
    /// (`$deltatoken=latest`, `token=latest` for drives).
    Latest,
}

/// How the first request of a delta query is made.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct DeltaOptions {
    /// `Prefer: odata.maxpagesize=N`.
    pub max_page_size: Option<u32>,
    /// `$select`: the properties to track (Graph always adds `id`).
    pub select: Vec<String>,
    /// The window of a calendarView (`startDateTime`, `endDateTime`).
    pub window: Option<(OffsetDateTime, OffsetDateTime)>,
}

/// Why an item is in a page as removed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Removed {
    /// Deleted for good (`@removed.reason` `deleted`, or a drive item's
    /// `deleted` facet).
    Deleted,
    /// Removed from the collection but restorable (`changed`).
    Changed,
    /// Another reason Graph gave.
    Other(String),
}

impl Removed {
    /// The reason as Graph spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Removed::Deleted => "deleted",
            Removed::Changed => "changed",
            Removed::Other(reason) => reason,
        }
    }
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One item of a delta page, as Graph returned it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeltaItem {
    /// The item's id.
    pub id: String,
    /// Whether, and why, it was removed.
    pub removed: Option<Removed>,
    /// The item's JSON, exactly as returned.
    pub raw: Box<RawValue>,
}

/// Where a delta round goes after a page.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeltaNext {
    /// More pages: follow this `@odata.nextLink`.
    Next(String),
    /// The round is complete: the next round starts at this
    /// `@odata.deltaLink`.
    Done(String),
}

/// A page of a delta query.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeltaPage {
    /// The changed items, in Graph's order.
    pub items: Vec<DeltaItem>,
    /// The next page, or the link of the next round.
    pub next: DeltaNext,
}

/// Why a delta page was not fetched.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum DeltaError {
    /// Graph cannot continue from the link (a sync reset, an expired or
    /// unknown token): start over with a full sync, at `location` when
    /// Graph gave one on its own origin.
    Reset {
        /// Where to start over.
        location: Option<String>,
        /// Graph's answer.
        error: GraphError,
    },
    /// Any other failure.
    Client(ClientError),
}

impl fmt::Display for DeltaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeltaError::Reset { error, .. } => {
                write!(f, "graph asks for a full sync: {error}")
            }
            DeltaError::Client(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for DeltaError {}

/// Error codes that mean "this token can't be continued: sync again".
const RESET_CODES: &[&str] = &[
    "syncstatenotfound",
    "syncstateinvalid",
    "resyncrequired",
    "resyncchangesapplydifferences",
    "resyncchangesuploaddifferences",
    "resyncapplydifferences",
    "resyncuploaddifferences",
];

fn is_reset(error: &GraphError) -> bool {
    error.status == 410 || RESET_CODES.contains(&error.code.to_ascii_lowercase().as_str())
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    value: Vec<Box<RawValue>>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink", default)]
    delta_link: Option<String>,
}

#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    id: Option<String>,
    #[serde(rename = "@removed", default)]
    removed: Option<RemovedHead>,
    #[serde(default)]
    deleted: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct RemovedHead {
    #[serde(default)]
    reason: Option<String>,
}

fn item(raw: Box<RawValue>) -> Result<DeltaItem, String> {
    let head: Head = serde_json::from_str(raw.get()).map_err(|e| clean(&e.to_string()))?;
    let id = head
        .id
        .filter(|id| !id.is_empty())
        .ok_or("an item without an id")?;
    let removed = match (head.removed, head.deleted) {
        (Some(removed), _) => Some(match removed.reason.as_deref() {
            Some("deleted") | None => Removed::Deleted,
            Some("changed") => Removed::Changed,
            Some(other) => Removed::Other(clean(other)),
        }),
        (None, Some(_)) => Some(Removed::Deleted),
        (None, None) => None,
    };
    Ok(DeltaItem { id, removed, raw })
}

fn push_query(url: &mut String, name: &str, value: &str) {
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str(name);
    url.push('=');
    url.extend(url::form_urlencoded::byte_serialize(value.as_bytes()));
}

impl GraphClient {
    /// The URL of a delta query's first request: a full sync or from now,
    /// with the options' `$select` and window.
    pub fn delta_url(
        &self,
        query: &DeltaQuery,
        start: DeltaStart,
        options: &DeltaOptions,
    ) -> String {
        let mut url = format!(
            "{}/{}",
            self.graph_url(),
            query.path.trim_start_matches('/')
        );
        if !options.select.is_empty() {
            push_query(&mut url, "$select", &options.select.join(","));
        }
        if let Some((start, end)) = options.window
            && let (Ok(start), Ok(end)) = (start.format(&Rfc3339), end.format(&Rfc3339))
        {
            push_query(&mut url, "startDateTime", &start);
            push_query(&mut url, "endDateTime", &end);
        }
        if start == DeltaStart::Latest {
            if query.path.contains("/root/delta") {
                push_query(&mut url, "token", "latest");
            } else {
                push_query(&mut url, "$deltatoken", "latest");
            }
        }
        url
    }

    /// Fetches one page of a delta query at `url` (a first request from
    /// [`delta_url`](Self::delta_url), a next link or a delta link). Links
    /// are followed only on Graph's own origin: the token goes nowhere else.
    /// `429` and `5xx` are retried after `Retry-After`, as every call is.
    ///
    /// # Errors
    ///
    /// [`DeltaError::Reset`] when Graph asks for a full sync;
    /// [`DeltaError::Client`] otherwise, including a link that points away
    /// from Graph's origin and a page that does not read.
    pub async fn delta_page(
        &self,
        url: &str,
        options: &DeltaOptions,
    ) -> Result<DeltaPage, DeltaError> {
        let graph = origin(self.graph_url());
        if graph.is_none() || graph != origin(url) {
            return Err(DeltaError::Client(ClientError::InvalidResponse(
                "a delta link points away from Graph's origin".to_owned(),
            )));
        }
        let mut headers = Vec::new();
        if let Some(size) = options.max_page_size {
            headers.push(("prefer", format!("odata.maxpagesize={size}")));
        }
        let body = match self
            .send_with(Method::GET, url, None, &headers, MAX_PAGE_BODY)
            .await
        {
            Ok((_, _, body)) => body,
            Err(ClientError::Graph(error)) if is_reset(&error) => {
                let location = error
                    .location
                    .clone()
                    .filter(|location| origin(location) == graph);
                return Err(DeltaError::Reset { location, error });
            }
            Err(e) => return Err(DeltaError::Client(e)),
        };
        let invalid = |why: String| {
            DeltaError::Client(ClientError::InvalidResponse(format!("a delta page: {why}")))
        };
        let page: Page =
            serde_json::from_slice(&body).map_err(|e| invalid(clean(&e.to_string())))?;
        let next = match (page.next_link, page.delta_link) {
            (Some(next), _) => DeltaNext::Next(next),
            (None, Some(delta)) => DeltaNext::Done(delta),
            (None, None) => return Err(invalid("neither a next link nor a delta link".to_owned())),
        };
        let link = match &next {
            DeltaNext::Next(link) | DeltaNext::Done(link) => link,
        };
        if origin(link) != graph {
            return Err(invalid("a link points away from Graph's origin".to_owned()));
        }
        let items = page
            .value
            .into_iter()
            .map(item)
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        Ok(DeltaPage { items, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{self, Delta, ResourcePath};
    use crate::subscriptions::StaticToken;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn removed_items_and_drive_deletes() {
        let plain = item(raw(r#"{"id":"a","subject":"hi"}"#)).unwrap();
        assert_eq!((plain.id.as_str(), plain.removed), ("a", None));
        let gone = item(raw(r#"{"id":"b","@removed":{"reason":"deleted"}}"#)).unwrap();
        assert_eq!(gone.removed, Some(Removed::Deleted));
        let soft = item(raw(r#"{"id":"c","@removed":{"reason":"changed"}}"#)).unwrap();
        assert_eq!(soft.removed, Some(Removed::Changed));
        let drive = item(raw(r#"{"id":"d","deleted":{"state":"deleted"}}"#)).unwrap();
        assert_eq!(drive.removed, Some(Removed::Deleted));
        let odd = item(raw(r#"{"id":"e","@removed":{"reason":"moved\u0007"}}"#)).unwrap();
        assert_eq!(odd.removed, Some(Removed::Other("moved ".to_owned())));
        assert!(item(raw(r#"{"subject":"no id"}"#)).is_err());
        assert!(item(raw(r#"{"id":""}"#)).is_err());
        assert!(item(raw(r#"[1,2]"#)).is_err());
    }

    #[test]
    fn first_requests_carry_select_window_and_latest() {
        let client =
            GraphClient::new(StaticToken::new("t")).base_url("https://graph.example/v1.0/");
        let query = |resource: &str| match catalog::delta(&ResourcePath::parse(resource).unwrap()) {
            Delta::Query(q) => q,
            Delta::None(why) => panic!("{resource}: {why}"),
        };
        let options = DeltaOptions {
            select: vec!["subject".into(), "from".into()],
            ..DeltaOptions::default()
        };
        assert_eq!(
            client.delta_url(
                &query("users/ada/mailFolders('Inbox')/messages"),
                DeltaStart::Full,
                &options
            ),
            "https://graph.example/v1.0/users/ada/mailFolders('Inbox')/messages/delta?$select=subject%2Cfrom"
        );
        assert_eq!(
            client.delta_url(
                &query("users"),
                DeltaStart::Latest,
                &DeltaOptions::default()
            ),
            "https://graph.example/v1.0/users/delta?$deltatoken=latest"
        );
        assert_eq!(
            client.delta_url(
                &query("drives/d1/root"),
                DeltaStart::Latest,
                &DeltaOptions::default()
            ),
            "https://graph.example/v1.0/drives/d1/root/delta?token=latest"
        );
        let window = DeltaOptions {
            window: Some((
                OffsetDateTime::UNIX_EPOCH,
                OffsetDateTime::UNIX_EPOCH + time::Duration::days(1),
            )),
            ..DeltaOptions::default()
        };
        assert_eq!(
            client.delta_url(&query("users/ada/events"), DeltaStart::Full, &window),
            "https://graph.example/v1.0/users/ada/calendarView/delta?startDateTime=1970-01-01T00%3A00%3A00Z&endDateTime=1970-01-02T00%3A00%3A00Z"
        );
    }

    #[test]
    fn resets_by_status_or_code() {
        let error = |status: u16, code: &str| GraphError {
            status,
            code: code.to_owned(),
            message: String::new(),
            request_id: None,
            client_request_id: None,
            date: None,
            location: None,
        };
        assert!(is_reset(&error(410, "Gone")));
        assert!(is_reset(&error(400, "syncStateNotFound")));
        assert!(is_reset(&error(410, "resyncRequired")));
        assert!(is_reset(&error(400, "SyncStateNotFound")));
        assert!(!is_reset(&error(400, "BadRequest")));
        assert!(!is_reset(&error(403, "Forbidden")));
    }
}

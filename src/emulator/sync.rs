//! Delta query state on the server side: the rounds being paged, the delta
//! tokens handed out, sync resets and throttling.
//!
//! Tokens are opaque random ids into a bounded map (Microsoft Learn, "Use
//! delta query to track changes in Microsoft Graph data",
//! <https://learn.microsoft.com/graph/delta-query-overview>: "state tokens
//! are completely opaque"); the query's `$select`, filter and window live
//! with the token, not in the link. An id that is not (or no longer) in the
//! map is answered like an expired token.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use time::OffsetDateTime;

use super::resources::Item;
use crate::catalog::{self, Delta, DeltaQuery, ResourcePath};
use crate::notification::ResourceKind;

/// Most tokens (skip and delta) kept; the oldest are forgotten first.
const MAX_TOKENS: usize = 50_000;

/// Longest token looked up; anything longer is unknown.
const MAX_TOKEN_LEN: usize = 64;

/// The families of delta queries, by how Graph treats their tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// Users and groups: tokens live 7 days.
    Directory,
    /// Drive items.
    Drive,
    /// Mail folder messages and calendarView events.
    Outlook,
    /// Channel messages.
    Teams,
}

/// A request path recognised as a delta query of the catalog.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// The subscription resource whose delta it is (`users/ada/events` for
    /// `users/ada/calendarView/delta`): its canonical form keys the data.
    pub(crate) collection: ResourcePath,
    /// The catalog's delta query (permissions, window).
    pub(crate) query: DeltaQuery,
    pub(crate) family: Family,
    /// The path as requested, up to the delta function.
    pub(crate) prefix: String,
    /// A token given in the path: `delta(token='…')`.
    pub(crate) path_token: Option<String>,
}

/// Recognises `{collection}/delta`, `/delta()`, `/microsoft.graph.delta()`
/// and `/delta(token='…')` for the delta queries [`catalog::delta`] maps
/// subscription resources to. `path` is relative to the version root.
pub(crate) fn endpoint(path: &str) -> Option<Endpoint> {
    let path = path.trim_start_matches('/');
    let lower = path.to_ascii_lowercase();
    let (prefix, call) = ["/microsoft.graph.delta", "/delta"]
        .iter()
        .find_map(|name| {
            let at = lower.rfind(name)?;
            Some((path.get(..at)?, path.get(at + name.len()..)?))
        })?;
    let path_token = match call {
        "" | "()" => None,
        call => {
            let inner = call.strip_prefix('(')?.strip_suffix(')')?;
            let (name, value) = inner.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("token") {
                return None;
            }
            let value = value.trim().trim_matches(['\'', '"']);
            Some(value.to_owned())
        }
    };
    let calendar_view = prefix
        .rsplit_once('/')
        .is_some_and(|(_, last)| last.eq_ignore_ascii_case("calendarView"));
    let subscribed = match prefix.rsplit_once('/') {
        Some((parent, _)) if calendar_view => format!("{parent}/events"),
        _ => prefix.to_owned(),
    };
    let collection = ResourcePath::parse(&subscribed).ok()?;
    let Delta::Query(query) = catalog::delta(&collection) else {
        return None;
    };
    if query.path.contains('?') || query.window != calendar_view {
        return None;
    }
    let family = match catalog::resolve(collection.as_str()).ok()?.kind() {
        ResourceKind::User | ResourceKind::Group => Family::Directory,
        ResourceKind::DriveItem => Family::Drive,
        ResourceKind::ChatMessage => Family::Teams,
        _ => Family::Outlook,
    };
    Some(Endpoint {
        collection,
        query,
        family,
        prefix: prefix.to_owned(),
        path_token,
    })
}

/// What a delta query asks, fixed at its initial request.
#[derive(Clone, Debug)]
pub(crate) struct Query {
    /// The collection's key in [`Resources`](super::resources::Resources).
    pub(crate) key: String,
    /// `$select`, as field names.
    pub(crate) select: Option<Vec<String>>,
    /// `$filter=id eq '…'` ids (users, groups).
    pub(crate) ids: Option<Vec<String>>,
    /// The calendarView window.
    pub(crate) window: Option<(OffsetDateTime, OffsetDateTime)>,
    /// The initial query's options, for the `Location` of a sync reset.
    pub(crate) options: Vec<(String, String)>,
}

/// A round being paged: a snapshot taken at its first request.
#[derive(Debug)]
pub(crate) struct Round {
    pub(crate) query: Arc<Query>,
    pub(crate) items: Vec<Item>,
    /// The collection's sequence at the snapshot: the next round's start.
    pub(crate) upto: u64,
    pub(crate) page_size: usize,
    /// When the round began: its skip tokens' lifetime starts then.
    pub(crate) started: OffsetDateTime,
}

/// What a token stands for.
#[derive(Clone, Debug)]
pub(crate) enum Cursor {
    /// `$skiptoken`: the rest of a round from `offset`.
    Page { round: Arc<Round>, offset: usize },
    /// `$deltatoken`: the next round, of changes after `since`.
    Delta { query: Arc<Query>, since: u64 },
}

/// A token's entry: its cursor, when its lifetime started, and the reset
/// epoch it was issued in.
#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub(crate) cursor: Cursor,
    pub(crate) issued: OffsetDateTime,
    epoch: u64,
}

/// Why a token cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Never issued, forgotten, or for another endpoint.
    Unknown,
    /// A sync reset was ordered after it was issued; the initial query's options.
    Reset(Vec<(String, String)>),
}

#[derive(Debug, Default)]
struct Inner {
    tokens: HashMap<String, Token>,
    order: VecDeque<String>,
    epoch: u64,
    reset_all: u64,
    resets: HashMap<String, u64>,
    throttled: u32,
    retry_after: u64,
}

/// The delta query state of an emulator.
#[derive(Debug, Default)]
pub(crate) struct DeltaState {
    inner: Mutex<Inner>,
}

impl DeltaState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Issues a token for `cursor`.
    pub(crate) fn issue(&self, cursor: Cursor, issued: OffsetDateTime) -> String {
        let id = crate::random::hex_id(32);
        let mut inner = self.lock();
        let epoch = inner.epoch;
        while inner.order.len() >= MAX_TOKENS {
            if let Some(old) = inner.order.pop_front() {
                inner.tokens.remove(&old);
            }
        }
        inner.tokens.insert(
            id.clone(),
            Token {
                cursor,
                issued,
                epoch,
            },
        );
        inner.order.push_back(id.clone());
        id
    }

    /// The token `id` for a delta endpoint whose collection is one of `keys`.
    pub(crate) fn get(&self, id: &str, keys: &[String]) -> Result<Token, Refusal> {
        if id.len() > MAX_TOKEN_LEN {
            return Err(Refusal::Unknown);
        }
        let inner = self.lock();
        let token = inner.tokens.get(id).ok_or(Refusal::Unknown)?;
        let query = match &token.cursor {
            Cursor::Page { round, .. } => &round.query,
            Cursor::Delta { query, .. } => query,
        };
        if !keys.contains(&query.key) {
            return Err(Refusal::Unknown);
        }
        let reset = inner.resets.get(&query.key).copied().unwrap_or(0);
        if inner.reset_all > token.epoch || reset > token.epoch {
            return Err(Refusal::Reset(query.options.clone()));
        }
        Ok(token.clone())
    }

    /// Makes every token issued so far for collection `key` (all, for
    /// `None`) answer a sync reset.
    pub(crate) fn reset(&self, key: Option<&str>) {
        let mut inner = self.lock();
        inner.epoch += 1;
        let epoch = inner.epoch;
        match key {
            Some(key) => {
                inner.resets.insert(key.to_owned(), epoch);
            }
            None => inner.reset_all = epoch,
        }
    }

    /// Makes the next `requests` delta requests answer `429` with `Retry-After: retry_after`.
    pub(crate) fn throttle(&self, requests: u32, retry_after: u64) {
        let mut inner = self.lock();
        inner.throttled = requests;
        inner.retry_after = retry_after;
    }

    /// Counts a delta request against the throttle: `Some(retry_after)` if
    /// it is throttled.
    pub(crate) fn throttled(&self) -> Option<u64> {
        let mut inner = self.lock();
        (inner.throttled > 0).then(|| {
            inner.throttled -= 1;
            inner.retry_after
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(key: &str) -> Arc<Query> {
        Arc::new(Query {
            key: key.to_owned(),
            select: None,
            ids: None,
            window: None,
            options: Vec::new(),
        })
    }

    fn k(key: &str) -> Vec<String> {
        vec![key.to_owned()]
    }

    #[test]
    fn tokens_resolve_only_on_their_endpoint_and_resets_refuse_them() {
        let sync = DeltaState::default();
        let now = OffsetDateTime::UNIX_EPOCH;
        let users = sync.issue(
            Cursor::Delta {
                query: query("users"),
                since: 3,
            },
            now,
        );
        let groups = sync.issue(
            Cursor::Delta {
                query: query("groups"),
                since: 1,
            },
            now,
        );
        assert!(sync.get(&users, &k("users")).is_ok());
        assert_eq!(sync.get(&users, &k("groups")).err(), Some(Refusal::Unknown));
        assert_eq!(
            sync.get("forged", &k("users")).err(),
            Some(Refusal::Unknown)
        );
        assert_eq!(
            sync.get(&"x".repeat(10_240), &k("users")).err(),
            Some(Refusal::Unknown)
        );
        sync.reset(Some("users"));
        assert_eq!(
            sync.get(&users, &k("users")).err(),
            Some(Refusal::Reset(Vec::new()))
        );
        assert!(sync.get(&groups, &k("groups")).is_ok());
        let fresh = sync.issue(
            Cursor::Delta {
                query: query("users"),
                since: 3,
            },
            now,
        );
        assert!(sync.get(&fresh, &k("users")).is_ok());
        sync.reset(None);
        assert_eq!(
            sync.get(&groups, &k("groups")).err(),
            Some(Refusal::Reset(Vec::new()))
        );
    }

    #[test]
    fn delta_paths_are_recognised_by_the_catalog() {
        let key = |p: &str| endpoint(p).map(|e| e.collection.canonical(Some("u1")));
        assert_eq!(
            key("users/ada/mailFolders('Inbox')/messages/delta").as_deref(),
            Some("users/ada/mailfolders/inbox/messages")
        );
        assert_eq!(
            key("me/mailFolders/inbox/messages/microsoft.graph.delta()").as_deref(),
            Some("users/u1/mailfolders/inbox/messages")
        );
        assert_eq!(
            key("users/ada/calendarView/delta").as_deref(),
            Some("users/ada/events")
        );
        assert!(
            endpoint("users/ada/calendarView/delta")
                .unwrap()
                .query
                .window
        );
        assert_eq!(key("Users/delta()").as_deref(), Some("users"));
        assert_eq!(key("groups/delta").as_deref(), Some("groups"));
        let drive = endpoint("drives/d1/root/delta(token='abc')").unwrap();
        assert_eq!(drive.path_token.as_deref(), Some("abc"));
        assert_eq!(drive.family, Family::Drive);
        assert_eq!(drive.prefix, "drives/d1/root");
        assert_eq!(endpoint("users/delta").unwrap().family, Family::Directory);
        assert_eq!(
            endpoint("teams/t/channels/c/messages/delta")
                .unwrap()
                .family,
            Family::Teams
        );
        for bad in [
            "users/ada/delta",
            "users/ada/events/delta",
            "users/ada/messages/delta",
            "chats/c/messages/delta",
            "delta",
            "users/delta(x)",
            "users/deltas",
            "users/delta/more",
            "",
            "/",
            "users/delta(token='a'",
        ] {
            assert!(endpoint(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn throttling_counts_down() {
        let sync = DeltaState::default();
        assert_eq!(sync.throttled(), None);
        sync.throttle(2, 7);
        assert_eq!(sync.throttled(), Some(7));
        assert_eq!(sync.throttled(), Some(7));
        assert_eq!(sync.throttled(), None);
    }
}

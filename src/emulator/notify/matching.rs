//! Which subscriptions a change concerns: those of the change's own kind
//! whose resource the change names, or names one item of, or that a
//! `getAll…` function, a presence `$filter`, a mailbox or a drive's
//! hierarchy covers.
//!
//! The kind comes from the [catalog](crate::catalog): a change's path, or
//! the nearest collection above it, resolves to a row, and only
//! subscriptions of that row's kind hear of it — a `users` subscription
//! never hears of an event, `teams` never of a channel.

use crate::catalog::{self, ResourcePath};
use crate::emulator::store::Subscription;
use crate::notification::ResourceKind;

/// How a change relates to a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The change names the subscribed resource itself (or, for a drive
    /// folder, anything below it: Graph then names the folder).
    Subscribed,
    /// The change names one item of the subscribed collection.
    Beneath,
}

/// A changed path, read once for every subscription it is matched against.
#[derive(Clone, Debug)]
pub(crate) struct Changed {
    /// Segments, lower-cased, keys as segments, `me` as `users`, `me`.
    segments: Vec<String>,
    /// The catalog's kind of the path or of the nearest collection above it.
    kind: Option<ResourceKind>,
}

/// Most segments dropped looking for the collection above a changed item
/// (`…/messages/{id}/replies/{id}` is two keys and a segment below `messages`).
const MAX_ASCENT: usize = 4;

impl Changed {
    pub(crate) fn new(path: &ResourcePath) -> Self {
        let segments: Vec<String> = path.canonical(None).split('/').map(str::to_owned).collect();
        let original: Vec<&str> = path.segments();
        let kind = (0..=MAX_ASCENT.min(original.len().saturating_sub(1))).find_map(|up| {
            let ancestor = rejoin(&original[..original.len() - up]);
            catalog::resolve(&ancestor).ok().map(|r| r.kind().clone())
        });
        Self { segments, kind }
    }

    /// The catalog's kind of the change, if any row covers it.
    pub(crate) fn kind(&self) -> Option<&ResourceKind> {
        self.kind.as_ref()
    }
}

/// Segments as a path again; a key with a `/`, quote or parenthesis in it
/// goes back into `('…')` after the segment before it.
fn rejoin(segments: &[&str]) -> String {
    let mut out = String::new();
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 && segment.contains(['/', '(', ')', '\'', '"', '?']) {
            out.push_str("('");
            out.push_str(&segment.replace(['\'', '"'], ""));
            out.push_str("')");
        } else {
            if i > 0 {
                out.push('/');
            }
            out.push_str(segment);
        }
    }
    out
}

/// Graph's organisation-wide functions, as the collection paths they cover
/// (`*` is any key).
fn expand_get_all(segments: &[String]) -> Vec<String> {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let owned = |parts: &[&str]| parts.iter().map(|p| (*p).to_owned()).collect();
    match s.as_slice() {
        ["teams", "getallmessages"] => owned(&["teams", "*", "channels", "*", "messages"]),
        ["teams", "getallmembers"] => owned(&["teams", "*", "members"]),
        ["teams", "getallchannels"] => owned(&["teams", "*", "channels"]),
        ["chats", "getallmessages"] => owned(&["chats", "*", "messages"]),
        ["chats", "getallmembers"] => owned(&["chats", "*", "members"]),
        ["users", user, "chats", "getallmessages"] => {
            owned(&["users", user, "chats", "*", "messages"])
        }
        ["communications", "onlinemeetings", "getallrecordings"] => {
            owned(&["communications", "onlinemeetings", "*", "recordings"])
        }
        ["communications", "onlinemeetings", "getalltranscripts"] => {
            owned(&["communications", "onlinemeetings", "*", "transcripts"])
        }
        ["teams", team, "channels", "getallmembers"] => {
            owned(&["teams", team, "channels", "*", "members"])
        }
        _ => segments.to_vec(),
    }
}

/// The ids of a presence `$filter=id in ('a','b')`, lower-cased.
pub(super) fn filter_ids(filter: &str) -> Vec<String> {
    let inner = filter
        .split_once('(')
        .and_then(|(_, rest)| rest.rsplit_once(')'))
        .map_or("", |(ids, _)| ids);
    inner
        .split(',')
        .map(|id| id.trim().trim_matches(['\'', '"']).to_lowercase())
        .filter(|id| !id.is_empty())
        .collect()
}

/// Whether `got` matches `want` segment by segment: `*` is any key, and a
/// change written `me/…` stands for any user.
fn same(want: &[String], got: &[String], any_user: bool) -> bool {
    want.len() == got.len()
        && want
            .iter()
            .zip(got)
            .enumerate()
            .all(|(i, (w, g))| w == "*" || w == g || (any_user && i == 1 && want[0] == "users"))
}

/// Kinds whose single-resource subscriptions cover everything below them:
/// a drive folder (Graph: changes anywhere in the hierarchy notify the
/// root), a list, a virtual event.
fn covers_subtree(kind: &ResourceKind) -> bool {
    matches!(
        kind,
        ResourceKind::DriveItem
            | ResourceKind::List
            | ResourceKind::VirtualEventWebinar
            | ResourceKind::VirtualEventTownhall
    )
}

/// The drive of a drive path: `drives/{id}` or `users/{id}/drive`.
fn drive_of(segments: &[String]) -> Option<&[String]> {
    match segments {
        [d, _, ..] if d == "drives" => Some(&segments[..2]),
        [u, _, d, ..] if u == "users" && d == "drive" => Some(&segments[..3]),
        _ => None,
    }
}

/// Whether `change` concerns `subscription`, and how.
pub(crate) fn target(subscription: &Subscription, change: &Changed) -> Option<Target> {
    let kind = subscription.kind();
    if change.kind() != Some(kind) && *kind != ResourceKind::DriveItem {
        return None;
    }
    let changed = &change.segments;
    let subscribed: Vec<String> = subscription
        .path
        .canonical(subscription.me())
        .split('/')
        .map(str::to_owned)
        .collect();
    let any_user = changed.get(1).is_some_and(|u| u == "me") && changed[0] == "users";
    if subscription.entry.filter_required {
        let ids = filter_ids(subscription.path.query("$filter").unwrap_or_default());
        return match changed.as_slice() {
            [c, p, id] if c == "communications" && p == "presences" && ids.contains(id) => {
                Some(Target::Beneath)
            }
            _ => (*changed == subscribed).then_some(Target::Subscribed),
        };
    }
    if same(&subscribed, changed, any_user) {
        return Some(Target::Subscribed);
    }
    if subscription.entry.single_resource {
        if !covers_subtree(kind) {
            return None;
        }
        return below(&subscribed, changed, any_user, kind, change.kind())
            .then_some(Target::Subscribed);
    }
    if *kind == ResourceKind::DriveItem {
        return None;
    }
    let pattern = expand_get_all(&subscribed);
    // The collection itself (a getAll… function's), or one item of it.
    if same(&pattern, changed, any_user) && pattern != subscribed {
        return Some(Target::Subscribed);
    }
    if changed.len() == pattern.len() + 1 && same(&pattern, &changed[..pattern.len()], any_user) {
        return Some(Target::Beneath);
    }
    // A reply is an item of its channel message's collection too.
    if *kind == ResourceKind::ChatMessage
        && changed.len() == pattern.len() + 3
        && changed[pattern.len() + 1] == "replies"
        && same(&pattern, &changed[..pattern.len()], any_user)
    {
        return Some(Target::Beneath);
    }
    // A mailbox's messages are those of every folder.
    if let ["users", _, "messages"] = pattern.iter().map(String::as_str).collect::<Vec<_>>()[..]
        && let [users, user, folders, _, messages, rest @ ..] = changed.as_slice()
        && folders == "mailfolders"
        && messages == "messages"
        && rest.len() <= 1
    {
        let mailbox = [users.clone(), user.clone(), messages.clone()];
        return same(&pattern, &mailbox, any_user).then_some(Target::Beneath);
    }
    None
}

/// Whether `changed` is below `subscribed` (a drive folder, a list, a
/// virtual event): by path, or, for a drive's root, anywhere in its drive.
fn below(
    subscribed: &[String],
    changed: &[String],
    any_user: bool,
    kind: &ResourceKind,
    change_kind: Option<&ResourceKind>,
) -> bool {
    let under = changed.len() > subscribed.len()
        && same(subscribed, &changed[..subscribed.len()], any_user);
    if *kind != ResourceKind::DriveItem {
        return under && change_kind == Some(kind);
    }
    // Drive paths without a catalog row (`drives/{id}/items/{id}`) are
    // drive items too; a path of another kind is not.
    if change_kind.is_some_and(|k| k != kind) {
        return false;
    }
    if under {
        return true;
    }
    let root = subscribed.last().is_some_and(|s| s == "root");
    match (root, drive_of(subscribed), drive_of(changed)) {
        (true, Some(mine), Some(theirs)) => {
            same(mine, theirs, any_user)
                && changed
                    .get(mine.len())
                    .is_some_and(|s| s == "items" || s == "root")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(path: &str) -> Changed {
        Changed::new(&ResourcePath::parse(path).unwrap())
    }

    #[test]
    fn a_change_has_the_kind_of_its_collection() {
        let kind = |p: &str| changed(p).kind().cloned();
        assert_eq!(kind("users/u1"), Some(ResourceKind::User));
        assert_eq!(kind("users/u1/events/e1"), Some(ResourceKind::Event));
        assert_eq!(kind("teams/t1/channels/c1"), Some(ResourceKind::Channel));
        assert_eq!(
            kind("teams('t1')/channels('19:a/b')/messages('m1')/replies('r1')"),
            Some(ResourceKind::ChatMessage)
        );
        assert_eq!(
            kind("me/mailFolders('Inbox')/messages/m1"),
            Some(ResourceKind::Message)
        );
        assert_eq!(kind("nothing/here"), None);
    }

    #[test]
    fn presence_filter_ids() {
        assert_eq!(filter_ids("id in ('A', \"b\",'')"), ["a", "b"]);
        assert!(filter_ids("garbage").is_empty());
    }

    #[test]
    fn get_all_functions_expand_to_collection_paths() {
        let segs = |s: &str| s.split('/').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            expand_get_all(&segs("teams/getallmessages")),
            segs("teams/*/channels/*/messages")
        );
        assert_eq!(
            expand_get_all(&segs("teams/t1/channels/getallmembers")),
            segs("teams/t1/channels/*/members")
        );
        assert_eq!(
            expand_get_all(&segs("teams/getallmembers")),
            segs("teams/*/members")
        );
        assert_eq!(
            expand_get_all(&segs("users/u/messages")),
            segs("users/u/messages")
        );
    }

    proptest::proptest! {
        #[test]
        fn reading_any_change_never_panics(s in "\\PC{0,64}") {
            if let Ok(p) = ResourcePath::parse(&s) {
                let _ = Changed::new(&p);
            }
        }
    }
}

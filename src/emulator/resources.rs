//! The emulated tenant's data: collections of items that changes create,
//! update and delete, with a change sequence per collection and tombstones
//! for deletes, so delta queries can say what changed since a round.
//!
//! A collection is a resource that [`catalog::delta`] maps to a delta query
//! (a mail folder's messages, a user's events, a drive root, a channel's
//! messages, `users`, `groups`), keyed by the canonical form subscriptions
//! match on; a change names it or an item beneath it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::catalog::{self, Delta, ResourcePath};
use crate::notification::ChangeType;

/// Most items (tombstones included) the emulator keeps across collections.
pub(crate) const MAX_ITEMS: usize = 2_000_000;

/// What a change did to the emulator's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Applied {
    /// The collection's key: its canonical path (`users/ada/mailfolders/inbox/messages`).
    pub collection: String,
    /// The item's id.
    pub id: String,
    /// What happened to it.
    pub change_type: ChangeType,
    /// The collection's change sequence after it.
    pub sequence: u64,
}

/// One item: its latest JSON, or a tombstone.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    pub(crate) id: String,
    /// The change sequence of its last change.
    pub(crate) seq: u64,
    /// `None` for a deleted item.
    pub(crate) data: Option<Arc<Map<String, Value>>>,
}

#[derive(Debug, Default)]
struct Collection {
    seq: u64,
    items: HashMap<String, Item>,
}

/// Every collection, by key.
#[derive(Debug, Default)]
pub(crate) struct Resources {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    collections: HashMap<String, Collection>,
    total: usize,
}

/// Where a change lands: the collection's key and, for a change naming an
/// item, the item's id from the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) key: String,
    pub(crate) path_id: Option<String>,
}

/// Whether `path` is a collection with a delta query of its own
/// (`users/{id}` maps to a filtered `users/delta`: an item, not a collection).
fn is_collection(path: &ResourcePath) -> bool {
    matches!(catalog::delta(path), Delta::Query(q) if !q.path.contains('?'))
}

/// The collection a change's resource names, or is an item of.
pub(crate) fn locate(path: &ResourcePath) -> Option<Location> {
    if is_collection(path) {
        return Some(Location {
            key: path.canonical(None),
            path_id: None,
        });
    }
    let segments = path.segments();
    let (id, parent) = segments.split_last()?;
    let parent = ResourcePath::parse(&parent.join("/")).ok()?;
    is_collection(&parent).then(|| Location {
        key: parent.canonical(None),
        path_id: Some((*id).to_owned()),
    })
}

/// Why a change was not applied.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full;

impl Resources {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a change to item `id` of collection `key`: `created` replaces
    /// it, `updated` merges `data`'s fields into it (creating it if absent),
    /// `deleted` leaves a tombstone.
    pub(crate) fn apply(
        &self,
        key: &str,
        id: &str,
        change_type: &ChangeType,
        data: Option<&Map<String, Value>>,
    ) -> Result<Applied, Full> {
        let mut inner = self.lock();
        let known = inner
            .collections
            .get(key)
            .is_some_and(|c| c.items.contains_key(id));
        if !known {
            if inner.total >= MAX_ITEMS {
                return Err(Full);
            }
            inner.total += 1;
        }
        let collection = inner.collections.entry(key.to_owned()).or_default();
        collection.seq += 1;
        let seq = collection.seq;
        let previous = collection.items.get(id).and_then(|i| i.data.clone());
        let fields = || data.cloned().unwrap_or_default();
        let new = match change_type {
            ChangeType::Deleted => None,
            ChangeType::Updated => {
                let mut merged = previous.map(|p| (*p).clone()).unwrap_or_default();
                merged.extend(fields());
                Some(merged)
            }
            _ => Some(fields()),
        };
        let data = new.map(|mut map| {
            map.insert("id".to_owned(), Value::String(id.to_owned()));
            Arc::new(map)
        });
        collection.items.insert(
            id.to_owned(),
            Item {
                id: id.to_owned(),
                seq,
                data,
            },
        );
        Ok(Applied {
            collection: key.to_owned(),
            id: id.to_owned(),
            change_type: change_type.clone(),
            sequence: seq,
        })
    }

    /// Whether the collection has ever been changed.
    pub(crate) fn exists(&self, key: &str) -> bool {
        self.lock().collections.contains_key(key)
    }

    /// The collection's change sequence now (0 if it was never changed).
    pub(crate) fn sequence(&self, key: &str) -> u64 {
        self.lock().collections.get(key).map_or(0, |c| c.seq)
    }

    /// A snapshot: the items changed after `since` (live ones only when
    /// `since` is `None`, the initial round), in change order, with the
    /// sequence the snapshot was taken at.
    pub(crate) fn changed_since(&self, key: &str, since: Option<u64>) -> (Vec<Item>, u64) {
        let inner = self.lock();
        let Some(collection) = inner.collections.get(key) else {
            return (Vec::new(), 0);
        };
        let mut items: Vec<Item> = collection
            .items
            .values()
            .filter(|i| match since {
                None => i.data.is_some(),
                Some(since) => i.seq > since,
            })
            .cloned()
            .collect();
        items.sort_unstable_by_key(|i| i.seq);
        (items, collection.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn loc(resource: &str) -> Option<Location> {
        locate(&ResourcePath::parse(resource).unwrap())
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn changes_locate_their_collection_and_item() {
        let folder = "users/ada/mailfolders/inbox/messages";
        let a = loc("users/ada/mailFolders('Inbox')/messages/AAMk1").unwrap();
        assert_eq!(a.key, folder);
        assert_eq!(a.path_id.as_deref(), Some("AAMk1"));
        assert_eq!(
            loc("Users/ada/mailFolders/inbox/messages").unwrap().key,
            folder
        );
        let user = loc("users/ada").unwrap();
        assert_eq!(
            (user.key.as_str(), user.path_id.as_deref()),
            ("users", Some("ada"))
        );
        assert_eq!(loc("users").unwrap().path_id, None);
        assert_eq!(loc("users/ada/events/E1").unwrap().key, "users/ada/events");
        assert_eq!(loc("drives/d1/root").unwrap().key, "drives/d1/root");
        assert!(loc("chats/c1/messages").is_none());
        assert!(loc("users/ada/messages").is_none());
    }

    #[test]
    fn rounds_see_changes_since_and_tombstones() {
        let r = Resources::default();
        let created = ChangeType::Created;
        r.apply("c", "a", &created, Some(&map(json!({"x": 1}))))
            .unwrap();
        r.apply("c", "b", &created, None).unwrap();
        r.apply("c", "a", &ChangeType::Updated, Some(&map(json!({"y": 2}))))
            .unwrap();
        let (initial, at) = r.changed_since("c", None);
        assert_eq!(at, 3);
        assert_eq!(
            initial.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
        let a = initial[1].data.as_ref().unwrap();
        assert_eq!((a["x"].clone(), a["y"].clone()), (json!(1), json!(2)));
        r.apply("c", "b", &ChangeType::Deleted, None).unwrap();
        let (later, at) = r.changed_since("c", Some(3));
        assert_eq!(at, 4);
        assert_eq!(later.len(), 1);
        assert!(later[0].data.is_none());
        assert_eq!(r.changed_since("c", None).0.len(), 1);
        let (none, at) = r.changed_since("nothing", Some(0));
        assert!(none.is_empty() && at == 0);
    }
}

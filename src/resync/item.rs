//! A resynced item as it travels through the inbox: the delta item, where
//! it came from and why, in a form Graph never sends (no `changeType`, no
//! `lifecycleEvent`), so the listener never accepts one from the network.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ResyncReason;
use crate::store::{DedupeKey, StoredItem};
use crate::subscriptions::{DeltaItem, Removed};

/// Where a resynced item came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Origin {
    /// Why the round ran.
    pub reason: ResyncReason,
    /// The subscription resource resynced.
    pub resource: String,
    /// The cursor's key.
    pub cursor: String,
}

/// The stored form: `{"resync":{…},"id":…,"removed":…,"data":{…}}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResyncItem {
    pub resync: Origin,
    pub id: String,
    #[serde(default)]
    pub removed: Option<String>,
    pub data: Box<RawValue>,
}

impl ResyncItem {
    /// The stored item of a delta item.
    pub(crate) fn stored(origin: &Origin, item: &DeltaItem) -> serde_json::Result<StoredItem> {
        let wire = ResyncItemRef {
            resync: origin,
            id: &item.id,
            removed: item.removed.as_ref().map(Removed::as_str),
            data: &item.raw,
        };
        // Written by serde_json, so valid: no second parse.
        let raw = serde_json::value::to_raw_value(&wire)?;
        Ok(StoredItem::new(
            raw,
            crate::notification::ValidationTokens::Absent,
        ))
    }

    /// Reads a stored resync item; `None` for anything else.
    pub(crate) fn parse(raw: &RawValue) -> Option<Self> {
        serde_json::from_str(raw.get()).ok()
    }

    /// The dedupe key: the same item in the same state from the same
    /// cursor is a replay; a later change of the item is not.
    pub(crate) fn dedupe_key(&self) -> DedupeKey {
        DedupeKey::for_resync(
            &self.resync.cursor,
            &self.id,
            self.removed.as_deref(),
            self.data.get().as_bytes(),
        )
    }
}

#[derive(Serialize)]
struct ResyncItemRef<'a> {
    resync: &'a Origin,
    id: &'a str,
    removed: Option<&'a str>,
    data: &'a RawValue,
}

use std::collections::HashMap;
use std::sync::RwLock;

use futures_util::future::BoxFuture;

use crate::store::{RecordStore, StoreError, SubscriptionRecord};

/// Records in process memory.
#[derive(Debug, Default)]
pub struct MemoryRecords {
    records: RwLock<HashMap<String, SubscriptionRecord>>,
}

impl MemoryRecords {
    /// No records yet.
    pub fn new() -> Self {
        Self::default()
    }
}

impl RecordStore for MemoryRecords {
    fn get_many(
        &self,
        ids: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Option<SubscriptionRecord>>, StoreError>> {
        let records = self.records.read().unwrap_or_else(|e| e.into_inner());
        let found = ids.iter().map(|id| records.get(id).cloned()).collect();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn put(&self, record: SubscriptionRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        self.records
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.id.clone(), record);
        Box::pin(std::future::ready(Ok(())))
    }

    fn remove(&self, id: String) -> BoxFuture<'_, Result<(), StoreError>> {
        self.records
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        Box::pin(std::future::ready(Ok(())))
    }

    fn all(&self) -> BoxFuture<'_, Result<Vec<SubscriptionRecord>, StoreError>> {
        let all = self
            .records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        Box::pin(std::future::ready(Ok(all)))
    }
}

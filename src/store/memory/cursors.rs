use std::collections::HashMap;
use std::sync::RwLock;

use futures_util::future::BoxFuture;

use crate::store::{CursorProgress, Cursors, DeltaCursor, StoreError};

/// Delta cursors in process memory.
#[derive(Debug, Default)]
pub struct MemoryCursors {
    cursors: RwLock<HashMap<String, DeltaCursor>>,
}

impl MemoryCursors {
    /// No cursors yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn write<T>(&self, change: impl FnOnce(&mut HashMap<String, DeltaCursor>) -> T) -> T {
        change(&mut self.cursors.write().unwrap_or_else(|e| e.into_inner()))
    }
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, Result<T, StoreError>> {
    Box::pin(std::future::ready(Ok(value)))
}

impl Cursors for MemoryCursors {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<DeltaCursor>, StoreError>> {
        let cursors = self.cursors.read().unwrap_or_else(|e| e.into_inner());
        ready(cursors.get(key).cloned())
    }

    fn save(&self, key: &str, progress: CursorProgress) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write(|cursors| {
            let cursor = cursors.entry(key.to_owned()).or_default();
            cursor.resource = progress.resource;
            cursor.query = progress.query;
            cursor.delta_link = progress.delta_link;
            cursor.next_link = progress.next_link;
            cursor.last_success_ms = progress.last_success_ms;
        });
        ready(())
    }

    fn mark_due(
        &self,
        key: &str,
        resource: &str,
        query: &str,
        reason: &str,
        at_ms: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write(|cursors| {
            let cursor = cursors
                .entry(key.to_owned())
                .or_insert_with(|| DeltaCursor {
                    resource: resource.to_owned(),
                    query: query.to_owned(),
                    ..DeltaCursor::default()
                });
            cursor.due_reason = Some(reason.to_owned());
            cursor.due_at_ms = Some(at_ms);
        });
        ready(())
    }

    fn clear_due(&self, key: &str, seen_ms: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write(|cursors| {
            if let Some(cursor) = cursors.get_mut(key)
                && cursor.due_at_ms.is_some_and(|at| at <= seen_ms)
            {
                cursor.due_reason = None;
                cursor.due_at_ms = None;
            }
        });
        ready(())
    }

    fn remove(&self, key: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write(|cursors| cursors.remove(key));
        ready(())
    }

    fn all(&self) -> BoxFuture<'_, Result<Vec<(String, DeltaCursor)>, StoreError>> {
        let cursors = self.cursors.read().unwrap_or_else(|e| e.into_inner());
        ready(
            cursors
                .iter()
                .map(|(k, c)| (k.clone(), c.clone()))
                .collect(),
        )
    }
}

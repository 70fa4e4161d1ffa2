//! Subscription records, delta cursors, and the leases and presence of
//! instances, as rows.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_postgres::Row;

use super::PostgresStore;
use super::inbox::ms;
use crate::store::{
    CursorProgress, Cursors, DeltaCursor, Lease, RecordStore, StoreError, SubscriptionRecord,
    member_lease, member_prefix,
};

impl RecordStore for PostgresStore {
    fn get_many(
        &self,
        ids: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Option<SubscriptionRecord>>, StoreError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let sql = self.sql("SELECT id, record FROM {s}.subscriptions WHERE id = ANY($1)");
            let wanted = ids.clone();
            let rows = self
                .with(|client| async move {
                    let statement = client.prepare_cached(&sql).await?;
                    client.query(&statement, &[&wanted]).await
                })
                .await?;
            let mut found: HashMap<String, String> =
                rows.iter().map(|row| (row.get(0), row.get(1))).collect();
            Ok(ids
                .iter()
                .map(|id| {
                    found
                        .remove(id)
                        .and_then(|json| serde_json::from_str(&json).ok())
                })
                .collect())
        })
    }

    fn put(&self, record: SubscriptionRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let json = serde_json::to_string(&record).map_err(super::unavailable)?;
            let sql = self.sql(
                "INSERT INTO {s}.subscriptions (id, record) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            );
            self.with(|client| async move {
                let statement = client.prepare_cached(&sql).await?;
                client.execute(&statement, &[&record.id, &json]).await
            })
            .await
            .map(drop)
        })
    }

    fn remove(&self, id: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let sql = self.sql("DELETE FROM {s}.subscriptions WHERE id = $1");
            self.with(|client| async move { client.execute(&sql, &[&id]).await })
                .await
                .map(drop)
        })
    }

    fn all(&self) -> BoxFuture<'_, Result<Vec<SubscriptionRecord>, StoreError>> {
        Box::pin(async move {
            let sql = self.sql("SELECT record FROM {s}.subscriptions ORDER BY id");
            let rows = self
                .with(|client| async move { client.query(&sql, &[]).await })
                .await?;
            Ok(rows
                .iter()
                .filter_map(|row| serde_json::from_str(row.get::<_, &str>(0)).ok())
                .collect())
        })
    }
}

/// The columns of a cursor, in the order [`cursor_of`] reads them.
const CURSOR_COLUMNS: &str =
    "resource, query, delta_link, next_link, last_success_ms, due_reason, due_at_ms";

/// A cursor from a row of [`CURSOR_COLUMNS`] starting at column `first`.
fn cursor_of(row: &Row, first: usize) -> DeltaCursor {
    DeltaCursor {
        resource: row.get(first),
        query: row.get(first + 1),
        delta_link: row.get(first + 2),
        next_link: row.get(first + 3),
        last_success_ms: row.get(first + 4),
        due_reason: row.get(first + 5),
        due_at_ms: row.get(first + 6),
    }
}

/// Delta cursors are rows of `cursors`; progress and due marks are written
/// by different statements, each a transaction of its own.
impl Cursors for PostgresStore {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<DeltaCursor>, StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let sql = self.sql(&format!(
                "SELECT {CURSOR_COLUMNS} FROM {{s}}.cursors WHERE key = $1"
            ));
            let row = self
                .with(|client| async move {
                    let statement = client.prepare_cached(&sql).await?;
                    client.query_opt(&statement, &[&key]).await
                })
                .await?;
            Ok(row.map(|row| cursor_of(&row, 0)))
        })
    }

    fn save(&self, key: &str, progress: CursorProgress) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let sql = self.sql(
                "INSERT INTO {s}.cursors (key, resource, query, delta_link, next_link, last_success_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (key) DO UPDATE SET resource = excluded.resource,
                     query = excluded.query, delta_link = excluded.delta_link,
                     next_link = excluded.next_link, last_success_ms = excluded.last_success_ms",
            );
            self.with(|client| async move {
                let statement = client.prepare_cached(&sql).await?;
                client
                    .execute(
                        &statement,
                        &[
                            &key,
                            &progress.resource,
                            &progress.query,
                            &progress.delta_link,
                            &progress.next_link,
                            &progress.last_success_ms,
                        ],
                    )
                    .await
            })
            .await
            .map(drop)
        })
    }

    fn mark_due(
        &self,
        key: &str,
        resource: &str,
        query: &str,
        reason: &str,
        at_ms: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let fields = [key, resource, query, reason].map(str::to_owned);
        Box::pin(async move {
            // An existing cursor keeps its resource, query and links.
            let sql = self.sql(
                "INSERT INTO {s}.cursors (key, resource, query, due_reason, due_at_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (key) DO UPDATE SET due_reason = excluded.due_reason,
                     due_at_ms = excluded.due_at_ms",
            );
            let [key, resource, query, reason] = fields;
            self.with(|client| async move {
                let statement = client.prepare_cached(&sql).await?;
                client
                    .execute(&statement, &[&key, &resource, &query, &reason, &at_ms])
                    .await
            })
            .await
            .map(drop)
        })
    }

    fn clear_due(&self, key: &str, seen_ms: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let sql = self.sql(
                "UPDATE {s}.cursors SET due_reason = NULL, due_at_ms = NULL
                 WHERE key = $1 AND due_at_ms <= $2",
            );
            self.with(|client| async move {
                let statement = client.prepare_cached(&sql).await?;
                client.execute(&statement, &[&key, &seen_ms]).await
            })
            .await
            .map(drop)
        })
    }

    fn remove(&self, key: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let sql = self.sql("DELETE FROM {s}.cursors WHERE key = $1");
            self.with(|client| async move { client.execute(&sql, &[&key]).await })
                .await
                .map(drop)
        })
    }

    fn all(&self) -> BoxFuture<'_, Result<Vec<(String, DeltaCursor)>, StoreError>> {
        Box::pin(async move {
            let sql = self.sql(&format!("SELECT key, {CURSOR_COLUMNS} FROM {{s}}.cursors"));
            let rows = self
                .with(|client| async move { client.query(&sql, &[]).await })
                .await?;
            Ok(rows
                .iter()
                .map(|row| (row.get(0), cursor_of(row, 1)))
                .collect())
        })
    }
}

/// Leases are rows of `leases`, taken or extended by one upsert; presence is
/// a lease per member, as on the embedded store.
impl Lease for PostgresStore {
    fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        Box::pin(async move {
            let sql = self.sql(
                "INSERT INTO {s}.leases AS l (name, holder, expires_at_ms)
                 VALUES ($1, $2, {s}.now_ms() + $3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                     expires_at_ms = excluded.expires_at_ms
                 WHERE l.holder = excluded.holder OR l.expires_at_ms <= {s}.now_ms()",
            );
            let ttl = ms(ttl);
            let written = self
                .with(|client| async move {
                    let statement = client.prepare_cached(&sql).await?;
                    client.execute(&statement, &[&name, &holder, &ttl]).await
                })
                .await?;
            Ok(written == 1)
        })
    }

    fn release(&self, name: &str, holder: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        Box::pin(async move {
            let sql = self.sql("DELETE FROM {s}.leases WHERE name = $1 AND holder = $2");
            self.with(|client| async move {
                let statement = client.prepare_cached(&sql).await?;
                client.execute(&statement, &[&name, &holder]).await
            })
            .await
            .map(drop)
        })
    }

    fn expires_in(&self, name: &str) -> BoxFuture<'_, Result<Option<Duration>, StoreError>> {
        let name = name.to_owned();
        Box::pin(async move {
            let sql =
                self.sql("SELECT expires_at_ms - {s}.now_ms() FROM {s}.leases WHERE name = $1");
            let row = self
                .with(|client| async move {
                    let statement = client.prepare_cached(&sql).await?;
                    client.query_opt(&statement, &[&name]).await
                })
                .await?;
            let left = row.map(|row| row.get::<_, i64>(0)).filter(|left| *left > 0);
            Ok(left.map(|ms| Duration::from_millis(ms.unsigned_abs())))
        })
    }

    fn join(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let name = member_lease(group, member);
        let member = member.to_owned();
        Box::pin(async move { self.acquire(&name, &member, ttl).await.map(drop) })
    }

    fn leave(&self, group: &str, member: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let name = member_lease(group, member);
        let member = member.to_owned();
        Box::pin(async move { self.release(&name, &member).await })
    }

    fn members(&self, group: &str) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        let prefix = member_prefix(group);
        Box::pin(async move {
            let sql = self.sql(
                "SELECT holder FROM {s}.leases WHERE starts_with(name, $1) \
                 AND expires_at_ms > {s}.now_ms() ORDER BY holder",
            );
            let rows = self
                .with(|client| async move {
                    let statement = client.prepare_cached(&sql).await?;
                    client.query(&statement, &[&prefix]).await
                })
                .await?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
    }
}

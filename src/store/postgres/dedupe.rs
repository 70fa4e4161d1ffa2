//! Dedupe in PostgreSQL: one row per key, handled (no owner) until its TTL
//! ends, or being handled by its owner until its lease ends.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::PostgresStore;
use super::inbox::ms;
use crate::store::{Claim, Dedupe, DedupeKey, StoreError};

/// Claims every key that is free (no row, or its row expired) or already
/// the owner's, in one statement; reads what the others are from the rows
/// as they were before it. Keys are written in sorted order, so concurrent
/// claims of overlapping keys lock rows in the same order (no deadlock).
const BEGIN: &str = "
WITH k AS (
    SELECT key, n FROM unnest($1::bytea[]) WITH ORDINALITY AS k(key, n)
), before AS (
    SELECT key, owner FROM {s}.dedupe WHERE key IN (SELECT key FROM k)
), taken AS (
    INSERT INTO {s}.dedupe AS d (key, owner, expires_at_ms)
    SELECT key, $2::text, {s}.now_ms() + $3 FROM (SELECT DISTINCT key FROM k) u ORDER BY key
    ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires_at_ms = excluded.expires_at_ms
    WHERE d.expires_at_ms <= {s}.now_ms() OR d.owner = excluded.owner
    RETURNING key
)
SELECT taken.key IS NOT NULL, before.key IS NOT NULL AND before.owner IS NULL
FROM k LEFT JOIN taken ON taken.key = k.key LEFT JOIN before ON before.key = k.key
ORDER BY k.n";

/// Marks keys handled until their TTL ends, whoever held them.
const FINISH: &str = "
INSERT INTO {s}.dedupe (key, owner, expires_at_ms)
SELECT key, NULL, {s}.now_ms() + $2 FROM (SELECT DISTINCT key FROM unnest($1::bytea[]) AS k(key)) u
ORDER BY key
ON CONFLICT (key) DO UPDATE SET owner = NULL, expires_at_ms = excluded.expires_at_ms";

/// Dedupe on PostgreSQL. Handled keys and keys being handled are rows of
/// `dedupe`, shared by every instance: a copy claimed by another instance
/// while its original is handled waits ([`Claim::InProgress`]) rather than
/// running beside it. Expired rows are deleted by each process's sweeper
/// (`sweep.rs`), every few seconds whatever the load.
impl Dedupe for PostgresStore {
    fn begin(
        &self,
        key: DedupeKey,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Claim, StoreError>> {
        let many = self.begin_many(vec![key], owner, lease);
        Box::pin(async move {
            many.await?
                .pop()
                .ok_or_else(|| StoreError::unavailable("postgres: no answer for the key"))
        })
    }

    fn finish(
        &self,
        key: DedupeKey,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.finish_many(vec![key], owner, ttl)
    }

    fn abandon(&self, key: DedupeKey, owner: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let owner = owner.to_owned();
        Box::pin(async move {
            let sql = self.sql("DELETE FROM {s}.dedupe WHERE key = $1 AND owner = $2");
            let key = key.as_bytes().to_vec();
            self.with(|client| async move {
                let statement = client.prepare_cached(&sql).await?;
                client.execute(&statement, &[&key, &owner]).await
            })
            .await
            .map(drop)
        })
    }

    fn begin_many(
        &self,
        keys: Vec<DedupeKey>,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<Claim>, StoreError>> {
        let owner = owner.to_owned();
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let sql = self.sql(BEGIN);
            let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
            let lease = ms(lease);
            let rows = self
                .with(|client| async move {
                    let statement = client.prepare_cached(&sql).await?;
                    client.query(&statement, &[&keys, &owner, &lease]).await
                })
                .await?;
            Ok(rows
                .iter()
                .map(|row| match (row.get::<_, bool>(0), row.get::<_, bool>(1)) {
                    (true, _) => Claim::Proceed,
                    (false, true) => Claim::Duplicate,
                    // Held by another worker, or claimed just now: try again later.
                    (false, false) => Claim::InProgress,
                })
                .collect())
        })
    }

    fn finish_many(
        &self,
        keys: Vec<DedupeKey>,
        _owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(());
            }
            let sql = self.sql(FINISH);
            let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
            let ttl = ms(ttl);
            self.with(|client| async move {
                let statement = client.prepare_cached(&sql).await?;
                client.execute(&statement, &[&keys, &ttl]).await
            })
            .await
            .map(drop)
        })
    }
}

//! The sweeper: a task per process that forgets expired dedupe keys and
//! deliveries nothing names any more, whatever the load.

use std::time::Duration;

use deadpool_postgres::Pool;

use super::describe;
use super::schema::Schema;

/// How often the sweeper runs.
const EVERY: Duration = Duration::from_secs(5);
/// Expired keys one statement deletes at most, so no sweep holds many
/// locks or runs long; a sweep repeats it while it finds that many.
const BATCH: u64 = 10_000;

/// Starts the sweeper; the store aborts it when dropped.
pub(super) fn spawn(pool: Pool, schema: &Schema, timeout: Duration) -> tokio::task::JoinHandle<()> {
    let keys = schema.sql(&format!(
        "DELETE FROM {{s}}.dedupe WHERE key IN (SELECT key FROM {{s}}.dedupe \
         WHERE expires_at_ms < {{s}}.now_ms() LIMIT {BATCH})"
    ));
    // Left by a complete that failed between its two statements.
    let deliveries = schema.sql("DELETE FROM {s}.deliveries WHERE refs <= 0");
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(EVERY).await;
            let swept = tokio::time::timeout(timeout * 5, async {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                for _ in 0..10 {
                    let deleted = client.execute(&keys, &[]).await.map_err(|e| describe(&e))?;
                    if deleted < BATCH {
                        break;
                    }
                }
                client
                    .execute(&deliveries, &[])
                    .await
                    .map_err(|e| describe(&e))
            })
            .await;
            match swept {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "sweeping expired dedupe keys failed"),
                Err(_) => tracing::debug!("sweeping expired dedupe keys timed out"),
            }
        }
    })
}

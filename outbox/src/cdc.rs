//! The outbox under Debezium instead of the relay (`connect/`).
//!
//! The two publishers must never run against one table at once: each would publish every event.
//! Consumers would drop the copies (they dedupe on `event_id`), but every event would cost twice
//! and per-key order would interleave two streams. So the relay refuses to publish a table that
//! a Postgres publication covers (what Debezium's `pgoutput` plugin reads), and in CDC mode runs
//! as the table's pruner instead: Debezium reads inserts from the WAL, never deletes rows, and
//! ignores the deletes it sees, so someone must keep the table small.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;

/// Names of the publications that include this database's `outbox` table (explicitly or
/// `FOR ALL TABLES`).
pub async fn publications_covering_outbox(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar(
        "select pubname::text from pg_publication_tables
          where schemaname = current_schema() and tablename = 'outbox' order by pubname",
    )
    .fetch_all(pool)
    .await
    .context("reading the publications that cover the outbox table")
}

/// Refuses (with what to do instead) when CDC already publishes this table.
pub async fn ensure_not_captured(pool: &PgPool) -> anyhow::Result<()> {
    let publications = publications_covering_outbox(pool).await?;
    anyhow::ensure!(
        publications.is_empty(),
        "the outbox table is captured for CDC (publication {}): the relay would publish every event a second time. \
         Run the relay with ORDERFLOW_RELAY_MODE=prune beside Debezium, or drop the publication to go back to the relay",
        publications.join(", ")
    );
    Ok(())
}

/// Logical replication slots on this database (Debezium's among them).
pub async fn logical_slots(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar(
        "select slot_name::text from pg_replication_slots
          where slot_type = 'logical' and database = current_database() order by slot_name",
    )
    .fetch_all(pool)
    .await
    .context("reading the replication slots")
}

/// Deletes outbox rows older than `after`, at most `batch` at a time, and returns how many went.
///
/// Deleting is safe once a logical slot exists on the database: the slot holds every insert's
/// WAL until Debezium confirms it, and a connector's first snapshot reads the table as of the
/// slot's creation. Without a slot nothing is deleted (a connector created later snapshots
/// what is there), and the caller is told so by `Ok(None)`.
pub async fn prune(pool: &PgPool, after: Duration, batch: i64) -> anyhow::Result<Option<u64>> {
    if logical_slots(pool).await?.is_empty() {
        return Ok(None);
    }
    let deleted = sqlx::query(
        "delete from outbox where id in (
             select id from outbox where created_at < now() - make_interval(secs => $1)
              order by id limit $2 for update skip locked)",
    )
    .bind(after.as_secs_f64())
    .bind(batch)
    .execute(pool)
    .await
    .context("pruning the outbox")?;
    Ok(Some(deleted.rows_affected()))
}

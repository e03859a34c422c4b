//! Retention: the dedupe store and a handler's other per-event rows are pruned past a horizon.
//!
//! The horizon (`ConsumerSettings::retention`, 14 days by default) must be longer than the
//! source topics' retention, so any record the broker can still deliver again finds its
//! dedupe row; at start the runtime warns when it is not. A replay older than the horizon (a
//! topic re-published from a backup, an offset reset far back) is still absorbed: every
//! handler keys its effects on the business (one payment per order, one reservation per order,
//! one message per order and kind, one fact per order and step), never on the event id alone.
//!
//! Pruning never blocks consumers: rows go oldest first in batches of [`BATCH`], each its own
//! short transaction touching only rows no consumer is writing, with a pause between batches.

use std::{future::Future, time::Duration};

use chrono::{DateTime, Utc};
use prometheus::IntCounterVec;
use sqlx::PgPool;
use tokio::sync::watch;

/// Rows deleted per statement.
pub const BATCH: i64 = 2_000;
/// The pause between two batches, so consumers' transactions interleave.
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);

/// Runs `delete` (which deletes at most `BATCH` rows and says how many) until it deletes fewer
/// than a batch; returns the rows deleted.
pub async fn in_batches<F, Fut>(mut delete: F) -> sqlx::Result<u64>
where
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = sqlx::Result<u64>>,
{
    let mut total = 0;
    loop {
        let deleted = delete(BATCH).await?;
        total += deleted;
        if deleted < BATCH as u64 {
            return Ok(total);
        }
        tokio::time::sleep(BETWEEN_BATCHES).await;
    }
}

/// Deletes `group`'s dedupe rows written before `before`.
pub async fn prune_dedupe(pool: &PgPool, group: &str, before: DateTime<Utc>) -> sqlx::Result<u64> {
    in_batches(|limit| async move {
        let result = sqlx::query(
            "DELETE FROM processed_events WHERE consumer_group = $1 AND event_id IN (
                 SELECT event_id FROM processed_events
                 WHERE consumer_group = $1 AND processed_at < $2
                 ORDER BY processed_at LIMIT $3)",
        )
        .bind(group)
        .bind(before)
        .bind(limit)
        .execute(pool)
        .await?;
        Ok(result.rows_affected())
    })
    .await
}

/// Prunes every `interval` until `stop`: the group's dedupe rows and the handler's own
/// per-event rows older than `retention`. A failed round is logged and tried at the next.
pub(crate) async fn run<H: crate::Handler>(
    shared: std::sync::Arc<crate::partition::Shared<H>>,
    pruned: IntCounterVec,
    mut stop: watch::Receiver<bool>,
) {
    let (retention, interval) = (shared.settings.retention, shared.settings.prune_interval);
    let Ok(horizon) = chrono::Duration::from_std(retention) else { return };
    let group = shared.settings.group.as_str();
    loop {
        let round = async {
            let before = Utc::now() - horizon;
            match prune_dedupe(&shared.pool, group, before).await {
                Ok(n) => pruned.with_label_values(&[group, "processed_events"]).inc_by(n),
                Err(error) => tracing::warn!(%error, group, "pruning the dedupe store failed; next round"),
            }
            match shared.handler.prune(&shared.pool, before).await {
                Ok(rows) => {
                    for (table, n) in rows {
                        pruned.with_label_values(&[group, table]).inc_by(n);
                    }
                }
                Err(error) => tracing::warn!(%error, group, "pruning the handler's tables failed; next round"),
            }
        };
        // A shutdown does not wait for a round (a batch cut short is rolled back).
        tokio::select! {
            () = round => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// Warns when a source topic keeps records longer than the dedupe horizon: a redelivery of such
/// a record would rely on the business keys alone.
pub(crate) async fn check_horizon(settings: &crate::ConsumerSettings) {
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    match settings.kafka.retention(&topics).await {
        Ok(retentions) => {
            for (topic, kept) in retentions {
                match kept {
                    Some(kept) if kept < settings.retention => {}
                    Some(kept) => tracing::warn!(topic, ?kept, horizon = ?settings.retention,
                        "the topic keeps records longer than the dedupe horizon; raise the horizon above the topic's retention.ms"),
                    None => tracing::warn!(topic, horizon = ?settings.retention,
                        "the topic keeps records for ever (retention.ms = -1): redeliveries past the dedupe horizon rely on the business keys"),
                }
            }
        }
        Err(error) => tracing::debug!(%error, "cannot read the topics' retention; not checked"),
    }
}

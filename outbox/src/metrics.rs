//! The relay's Prometheus series, labelled by the outbox it relays (`outbox`, e.g. `orders`):
//! events published and failed, rows per batch, and — sampled from the table — rows waiting and
//! the age of the oldest, which is what says "accepted but not yet in Kafka".

use std::time::Duration;

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use sqlx::PgPool;

#[derive(Clone)]
pub struct RelayMetrics {
    outbox: String,
    published: IntCounterVec,
    failed: IntCounterVec,
    batch_rows: HistogramVec,
    pending: IntGaugeVec,
    oldest_age: GaugeVec,
}

impl RelayMetrics {
    pub fn register(registry: &Registry, outbox: &str) -> prometheus::Result<Self> {
        let label = ["outbox"];
        let metrics = RelayMetrics {
            outbox: outbox.to_string(),
            published: IntCounterVec::new(
                Opts::new("orderflow_outbox_published_total", "Outbox events the broker acknowledged (then deleted)"),
                &label,
            )?,
            failed: IntCounterVec::new(
                Opts::new(
                    "orderflow_outbox_failed_total",
                    "Outbox events sent but not acknowledged (left for the next claim)",
                ),
                &label,
            )?,
            batch_rows: HistogramVec::new(
                HistogramOpts::new("orderflow_outbox_batch_rows", "Rows claimed per relay batch")
                    .buckets(vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0]),
                &label,
            )?,
            pending: IntGaugeVec::new(
                Opts::new("orderflow_outbox_pending_rows", "Outbox rows not yet published"),
                &label,
            )?,
            oldest_age: GaugeVec::new(
                Opts::new(
                    "orderflow_outbox_oldest_age_seconds",
                    "How long the oldest unpublished outbox row has waited (0: none)",
                ),
                &label,
            )?,
        };
        registry.register(Box::new(metrics.published.clone()))?;
        registry.register(Box::new(metrics.failed.clone()))?;
        registry.register(Box::new(metrics.batch_rows.clone()))?;
        registry.register(Box::new(metrics.pending.clone()))?;
        registry.register(Box::new(metrics.oldest_age.clone()))?;
        Ok(metrics)
    }

    pub(crate) fn batch(&self, claimed: usize, published: usize) {
        let outbox = [self.outbox.as_str()];
        self.batch_rows.with_label_values(&outbox).observe(claimed as f64);
        self.published.with_label_values(&outbox).inc_by(published as u64);
        self.failed.with_label_values(&outbox).inc_by((claimed - published) as u64);
    }

    /// Samples the table every `every` for ever (run it beside the relay).
    pub async fn sample_backlog(self, pool: PgPool, every: Duration) {
        let outbox = [self.outbox.as_str()];
        loop {
            let sampled: Result<(i64, Option<f64>), sqlx::Error> = sqlx::query_as(
                "SELECT count(*), EXTRACT(EPOCH FROM clock_timestamp() - min(created_at))::float8
                 FROM outbox WHERE published_at IS NULL",
            )
            .fetch_one(&pool)
            .await;
            match sampled {
                Ok((rows, age)) => {
                    self.pending.with_label_values(&outbox).set(rows);
                    self.oldest_age.with_label_values(&outbox).set(age.unwrap_or(0.0).max(0.0));
                }
                Err(error) => tracing::warn!(%error, "cannot sample the outbox backlog"),
            }
            tokio::time::sleep(every).await;
        }
    }
}

//! The outbox relay: claims unpublished rows in batches, sends them to Kafka pipelined (all of
//! a batch in flight at once on an idempotent producer), and deletes a row only after the
//! broker acknowledged it (the topic is then the record of the event).
//!
//! Ordering: a row is claimed only when it is the oldest unpublished row of its key,
//! and claims hold row locks (`FOR UPDATE SKIP LOCKED`) until the batch is marked. So at most one
//! event per key is in flight at any time, across any number of relays and restarts, and one
//! order's events reach its partition in outbox order. Many relays share the work.
//!
//! Failure: if the broker is down, sends time out, nothing is marked, the transaction rolls back
//! and the rows wait; the relay backs off and tries again. A relay killed mid-batch leaves its
//! rows unmarked for the next claim: at-least-once, duplicates removed by consumers' dedupe.
//!
//! Wake-up: LISTEN/NOTIFY at commit of each insert, with a polling fallback.
//!
//! Producer lifetime: one idempotent producer for the relay's life. It rides out broker
//! restarts itself (librdkafka bumps its epoch after in-flight requests are lost, KIP-360);
//! only a fatal error (the broker fenced the producer) retires it, and the next batch starts on
//! a new one. Rows are only marked on acknowledgement and one event per key is in flight, so a
//! new producer costs at most duplicates, never order.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::future::join_all;
use orderflow_schemas::headers;
use rdkafka::{
    ClientConfig, ClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer, PurgeConfig},
};
use sqlx::{PgPool, Row, postgres::PgListener};

/// Tuning for one relay.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows claimed per transaction.
    pub batch_size: i64,
    /// Independent claim→send→mark loops (each batch in its own transaction; SKIP LOCKED and the
    /// head-of-key rule keep them disjoint and in order).
    pub concurrent_batches: usize,
    /// How long to sleep with no notification before looking again.
    pub poll_interval: Duration,
    /// Longest backoff after a failed batch.
    pub max_backoff: Duration,
    /// Prefix of every topic name (`ORDERFLOW_KAFKA_NAMESPACE`): a row's `topic` is logical.
    pub namespace: String,
}

/// The relay's defaults, written once: [`RelaySettings::default`] and the `outbox-relay` flags
/// take them from here.
pub mod defaults {
    pub const BATCH_SIZE: i64 = 2000;
    pub const CONCURRENT_BATCHES: usize = 4;
    pub const POLL_MS: u64 = 500;
    pub const MAX_BACKOFF_MS: u64 = 5_000;
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            batch_size: defaults::BATCH_SIZE,
            concurrent_batches: defaults::CONCURRENT_BATCHES,
            poll_interval: Duration::from_millis(defaults::POLL_MS),
            max_backoff: Duration::from_millis(defaults::MAX_BACKOFF_MS),
            namespace: String::new(),
        }
    }
}

/// Logs what the client reports (broker down, a lost connection); the producer retries itself.
#[derive(Clone, Default)]
pub struct RelayContext;

impl ClientContext for RelayContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
    }
}

type RelayProducer = FutureProducer<RelayContext>;

pub struct OutboxRelay {
    pool: PgPool,
    config: ClientConfig,
    producer: Mutex<Option<Arc<RelayProducer>>>,
    last_analyze: Mutex<Option<std::time::Instant>>,
    settings: RelaySettings,
    metrics: Option<crate::RelayMetrics>,
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    pub claimed: usize,
    pub published: usize,
}

struct Claimed {
    id: i64,
    event_id: uuid::Uuid,
    topic: String,
    key: String,
    event_type: String,
    schema_version: i32,
    payload: Vec<u8>,
    traceparent: Option<String>,
    occurred_at: DateTime<Utc>,
}

const CLAIM: &str = "
    SELECT o.id, o.event_id, o.topic, o.message_key, o.event_type, o.schema_version, o.payload,
           o.traceparent, o.occurred_at
    FROM outbox o
    WHERE o.published_at IS NULL
      AND o.id = (
          SELECT head.id FROM outbox head
          WHERE head.message_key = o.message_key AND head.published_at IS NULL
          ORDER BY head.message_key, head.id
          LIMIT 1)
    ORDER BY o.id
    LIMIT $1
    FOR UPDATE OF o SKIP LOCKED";

impl OutboxRelay {
    /// `config` is an idempotent producer config (see `KafkaSettings::producer`).
    pub fn new(pool: PgPool, config: ClientConfig, settings: RelaySettings) -> Self {
        OutboxRelay {
            pool,
            config,
            producer: Mutex::new(None),
            last_analyze: Mutex::new(None),
            settings,
            metrics: None,
        }
    }

    /// Counts every batch in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::RelayMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The relay's producer, made on first use and after a fatal error retired the last one.
    fn producer(&self) -> anyhow::Result<Arc<RelayProducer>> {
        let mut slot = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(producer) = slot.as_ref() {
            return Ok(producer.clone());
        }
        let producer: RelayProducer =
            self.config.create_with_context(RelayContext).context("creating the relay's producer")?;
        let producer = Arc::new(producer);
        *slot = Some(producer.clone());
        Ok(producer)
    }

    /// A claim of a few ms that takes tens means the planner's statistics describe an outbox of
    /// another size (a burst, a drained backlog): refresh them, at most every 30 s.
    async fn refresh_statistics_if_slow(&self, claim_time: Duration) {
        if claim_time < Duration::from_millis(25) {
            return;
        }
        {
            let mut last = self.last_analyze.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < Duration::from_secs(30)) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        tracing::info!(?claim_time, "slow outbox claim; refreshing the outbox table's statistics");
        if let Err(error) = sqlx::query("ANALYZE outbox").execute(&self.pool).await {
            tracing::warn!(%error, "ANALYZE outbox failed");
        }
    }

    /// Retires the producer if the broker fenced it (a fatal idempotence error): it can send
    /// nothing more, and the next batch starts on a new one.
    fn retire_if_fatal(&self, producer: &RelayProducer) {
        if let Some((code, reason)) = producer.client().fatal_error() {
            tracing::error!(
                ?code,
                reason,
                "the relay's producer hit a fatal error; the next batch starts on a new one"
            );
            producer.purge(PurgeConfig::default().queue().inflight());
            self.producer.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
    }

    /// Relays until `shutdown` resolves; in-flight batches are finished first. Runs
    /// `concurrent_batches` independent claim→send→mark loops, so the broker always has work
    /// while another loop claims or marks.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) -> anyhow::Result<()> {
        let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
        let wake = tokio::sync::Notify::new();
        let workers =
            (0..self.settings.concurrent_batches.max(1)).map(|worker| self.run_worker(worker, &wake, shutdown.clone()));
        tokio::select! {
            _ = join_all(workers) => {}
            () = self.listen(&wake) => {}
        }
        tracing::info!("outbox relay stopped");
        Ok(())
    }

    async fn run_worker(
        &self,
        worker: usize,
        wake: &tokio::sync::Notify,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(100);
        loop {
            let wait = match self.publish_batch().await {
                Ok(outcome) if outcome.claimed as i64 >= self.settings.batch_size => {
                    backoff = Duration::from_millis(100);
                    Duration::ZERO
                }
                Ok(outcome) if outcome.published < outcome.claimed => {
                    tracing::warn!(worker, ?outcome, "some events were not acknowledged; retrying after backoff");
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                    backoff
                }
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    self.settings.poll_interval
                }
                Err(error) => {
                    tracing::warn!(worker, error = format!("{error:#}"), ?backoff, "outbox batch failed; retrying");
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                    backoff
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = &mut shutdown => break,
                _ = tokio::time::timeout(wait, wake.notified()) => {}
            }
        }
    }

    /// Publishes everything unpublished now, with the configured number of loops; returns how
    /// many events were acknowledged. (The benchmark's drain; services use [`Self::run`].)
    pub async fn drain(&self) -> anyhow::Result<usize> {
        let workers = (0..self.settings.concurrent_batches.max(1)).map(|_| async {
            let mut published = 0;
            loop {
                let outcome = self.publish_batch().await?;
                published += outcome.published;
                if outcome.claimed == 0 {
                    return anyhow::Ok(published);
                }
            }
        });
        let mut total = 0;
        for result in join_all(workers).await {
            total += result?;
        }
        Ok(total)
    }

    /// One LISTEN connection per relay wakes every loop at commit of new outbox rows; when it
    /// is lost the loops fall back to polling until it is back.
    async fn listen(&self, wake: &tokio::sync::Notify) {
        loop {
            let listener = async {
                let mut listener = PgListener::connect_with(&self.pool).await?;
                listener.listen("orderflow_outbox").await?;
                Ok::<_, sqlx::Error>(listener)
            };
            match listener.await {
                Ok(mut listener) => loop {
                    match listener.recv().await {
                        Ok(_) => wake.notify_waiters(),
                        Err(error) => {
                            tracing::debug!(%error, "outbox listener lost; polling until it is back");
                            break;
                        }
                    }
                },
                Err(error) => tracing::debug!(%error, "cannot LISTEN for outbox inserts; polling"),
            }
            tokio::time::sleep(self.settings.poll_interval.max(Duration::from_secs(1))).await;
        }
    }

    /// Claims, sends and marks one batch.
    pub async fn publish_batch(&self) -> anyhow::Result<BatchOutcome> {
        let mut tx = self.pool.begin().await.context("opening the claim transaction")?;
        // The claim is a short, repeated query: JIT compilation would cost more than it saves.
        sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await.context("configuring the claim")?;
        let started = std::time::Instant::now();
        let rows = sqlx::query(CLAIM).bind(self.settings.batch_size).fetch_all(&mut *tx).await.context("claiming")?;
        self.refresh_statistics_if_slow(started.elapsed()).await;
        if rows.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let claimed: Vec<Claimed> = rows
            .into_iter()
            .map(|r| Claimed {
                id: r.get(0),
                event_id: r.get(1),
                topic: r.get(2),
                key: r.get(3),
                event_type: r.get(4),
                schema_version: r.get(5),
                payload: r.get(6),
                traceparent: r.get(7),
                occurred_at: r.get(8),
            })
            .collect();
        let claim_time = started.elapsed();
        let producer = self.producer()?;
        let mut deliveries = Vec::with_capacity(claimed.len());
        for event in &claimed {
            deliveries.push(self.send(&producer, event).await);
        }
        let results = join_all(deliveries.into_iter().map(|d| async move {
            match d {
                Ok(future) => matches!(future.await, Ok(Ok(_))),
                Err(_) => false,
            }
        }))
        .await;
        let send_time = started.elapsed() - claim_time;
        if results.iter().any(|ok| !ok) {
            self.retire_if_fatal(&producer);
        }
        drop(producer);
        let acked: Vec<i64> = claimed.iter().zip(&results).filter(|(_, ok)| **ok).map(|(e, _)| e.id).collect();
        if !acked.is_empty() {
            // Deleting is the cheapest "done" Postgres has (no new row version, no index entries);
            // the broker is now the record of the event.
            sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
                .bind(&acked)
                .execute(&mut *tx)
                .await
                .context("marking published")?;
        }
        tx.commit().await.context("committing the batch")?;
        if let Some(metrics) = &self.metrics {
            metrics.batch(claimed.len(), acked.len());
        }
        tracing::debug!(claimed = claimed.len(), published = acked.len(), ?claim_time, ?send_time,
            mark_time = ?(started.elapsed() - claim_time - send_time), "outbox batch");
        Ok(BatchOutcome { claimed: claimed.len(), published: acked.len() })
    }

    /// Enqueues one record on the producer, waiting while its local queue is full.
    async fn send(
        &self,
        producer: &RelayProducer,
        event: &Claimed,
    ) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
        let event_id = event.event_id.to_string();
        let version = event.schema_version.to_string();
        let occurred = event.occurred_at.to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: headers::EVENT_ID, value: Some(&event_id) })
            .insert(Header { key: headers::EVENT_TYPE, value: Some(&event.event_type) })
            .insert(Header { key: headers::SCHEMA_VERSION, value: Some(&version) })
            .insert(Header { key: headers::OCCURRED_AT, value: Some(&occurred) });
        if let Some(traceparent) = &event.traceparent {
            headers = headers.insert(Header { key: headers::TRACEPARENT, value: Some(traceparent) });
        }
        // Per record on the hot path: no allocation without a namespace.
        let topic = match self.settings.namespace.as_str() {
            "" => std::borrow::Cow::Borrowed(event.topic.as_str()),
            namespace => std::borrow::Cow::Owned(format!("{namespace}{}", event.topic)),
        };
        let mut record = FutureRecord::to(&topic).key(&event.key).payload(&event.payload).headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(future) => return Ok(future),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
}

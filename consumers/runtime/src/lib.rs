//! The consume loop every orderflow consumer runs. A service writes a [`Handler`]; this runtime
//! owns the rest: decoding, dedupe, transactions, retries, dead-lettering and offset commits.
//!
//! Guarantee: at-least-once delivery, effectively-once side effects. For each record:
//! decode → open a transaction → insert the dedupe row `(group, event_id)` (a duplicate stops
//! here, and a concurrent duplicate waits on the row lock) → the handler's side effect in the
//! same transaction → commit → store the offset. Offsets are committed only for records whose
//! transaction committed (or that went to the dead-letter topic), periodically and on shutdown.
//!
//! Records of one partition are handled in order, one at a time; partitions run concurrently.
//! Poison (undecodable, no event id) goes to `<topic>.<group>.DLT` at once with the reason in
//! headers, so the partition keeps moving. A handler's `Retry` is retried with exponential
//! backoff and full jitter up to `max_attempts`, then dead-lettered; `Unavailable` (a dependency
//! is down) is retried with capped backoff for as long as it takes, never dead-lettered.

mod dlt;
pub mod dlt_tools;
pub mod metrics;
mod worker;

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use orderflow_platform::kafka::KafkaSettings;
use orderflow_schemas::{Decoded, EventCodec};
use rdkafka::{
    Message,
    consumer::{CommitMode, Consumer, StreamConsumer},
};
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

pub use dlt::dlt_topic;

/// Applies the dedupe-store migration (idempotent; shares the service's database).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await.context("running consumer-runtime migrations")
}

/// A decoded record and where it came from.
#[derive(Debug, Clone)]
pub struct ConsumedEvent {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub event_id: Uuid,
    pub headers: HashMap<String, String>,
    pub decoded: Decoded,
}

impl ConsumedEvent {
    pub fn event_type(&self) -> &str {
        &self.decoded.event_type
    }

    pub fn traceparent(&self) -> Option<&str> {
        self.headers.get("traceparent").map(String::as_str)
    }
}

/// Why a handler did not finish a record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// Transient: try again later; after `max_attempts` the record is dead-lettered.
    #[error("retry: {0}")]
    Retry(String),
    /// A dependency is down: try again, with capped backoff, for as long as it takes.
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    /// Permanent: dead-letter now with this reason.
    #[error("dead-letter: {class}: {reason}")]
    Dead { class: String, reason: String },
}

impl Failure {
    pub fn dead(class: &str, reason: impl Into<String>) -> Self {
        Failure::Dead { class: class.into(), reason: reason.into() }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Unavailable(format!("database: {e}"))
    }
}

impl From<orderflow_outbox::EnqueueError> for Failure {
    fn from(e: orderflow_outbox::EnqueueError) -> Self {
        match e {
            orderflow_outbox::EnqueueError::Codec(e) if e.is_retryable() => Failure::Unavailable(e.to_string()),
            orderflow_outbox::EnqueueError::Codec(e) => Failure::dead(e.class(), e.to_string()),
            orderflow_outbox::EnqueueError::Database(e) => e.into(),
        }
    }
}

/// A service's reaction to one event, run inside the runtime's transaction.
pub trait Handler: Send + Sync + 'static {
    /// Whether this service reacts to an event type at all. Others are acknowledged without a
    /// transaction or a dedupe row (one topic carries every lifecycle event).
    fn handles(&self, _event_type: &str) -> bool {
        true
    }

    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a ConsumedEvent,
    ) -> impl Future<Output = Result<(), Failure>> + Send + 'a;
}

/// Everything a consumer needs to know about where and how to consume.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub group: String,
    pub topics: Vec<String>,
    pub kafka: KafkaSettings,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub commit_interval: Duration,
    /// Records buffered per partition before fetching waits.
    pub partition_queue: usize,
    /// Partitions of a source topic this consumer creates when it is missing.
    pub topic_partitions: i32,
    /// How often per-partition lag is read from the broker.
    pub lag_interval: Duration,
    /// Where this consumer's metrics are registered (serve it with `platform::metrics::serve`).
    pub registry: prometheus::Registry,
}

impl ConsumerSettings {
    pub fn new(group: &str, topics: &[&str], kafka: KafkaSettings) -> Self {
        ConsumerSettings {
            group: group.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            kafka,
            max_attempts: 5,
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(30),
            commit_interval: Duration::from_secs(1),
            partition_queue: 256,
            topic_partitions: 12,
            registry: prometheus::Registry::new(),
            lag_interval: Duration::from_secs(10),
        }
    }
}

/// What a consumer binary runs: `/metrics` on `metrics_listen`, then [`run`] until SIGTERM or
/// ctrl-c.
pub async fn run_service<H: Handler>(
    settings: ConsumerSettings,
    pool: PgPool,
    codec: Arc<EventCodec>,
    handler: H,
    metrics_listen: &str,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {metrics_listen} for metrics"))?;
    tokio::spawn(orderflow_platform::metrics::serve(listener, settings.registry.clone(), std::future::pending()));
    run(settings, pool, codec, handler, orderflow_platform::shutdown::shutdown_signal()).await
}

/// Consumes until `shutdown` resolves: in-flight records finish, then offsets are committed
/// synchronously.
pub async fn run<H: Handler>(
    settings: ConsumerSettings,
    pool: PgPool,
    codec: Arc<EventCodec>,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut dlts: Vec<(String, i32)> = settings.topics.iter().map(|t| (dlt_topic(t, &settings.group), 1)).collect();
    dlts.extend(settings.topics.iter().map(|t| (t.clone(), settings.topic_partitions)));
    let dlt_refs: Vec<(&str, i32)> = dlts.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    settings.kafka.ensure_topics(&dlt_refs).await.context("creating the source and dead-letter topics")?;

    let client_id = format!("{}-consumer", settings.group);
    let consumer: Arc<StreamConsumer> =
        Arc::new(settings.kafka.consumer(&client_id, &settings.group).create().context("creating the consumer")?);
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).context("subscribing")?;
    let (stop_workers, stopping) = tokio::sync::watch::channel(false);
    let shared = Arc::new(worker::Shared {
        settings: settings.clone(),
        pool,
        codec,
        handler,
        consumer: consumer.clone(),
        dlt: dlt::DeadLetters::new(&settings.kafka, &settings.group)?,
        metrics: metrics::ConsumerMetrics::register(&settings.registry).context("registering consumer metrics")?,
        stopping,
    });
    tracing::info!(group = %settings.group, topics = ?settings.topics, "consumer started");

    let mut workers: HashMap<
        (String, i32),
        (mpsc::Sender<rdkafka::message::OwnedMessage>, tokio::task::JoinHandle<()>),
    > = HashMap::new();
    let mut commit_tick = tokio::time::interval(settings.commit_interval);
    let mut lag_tick = tokio::time::interval(settings.lag_interval);
    let mut lag_report: Option<tokio::task::JoinHandle<()>> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = lag_tick.tick() => {
                // One report at a time, off the async threads (the broker calls block).
                if lag_report.as_ref().is_none_or(|r| r.is_finished()) {
                    let (consumer, shared, group) = (consumer.clone(), shared.clone(), settings.group.clone());
                    lag_report = Some(tokio::task::spawn_blocking(move || {
                        metrics::report_partitions(consumer.as_ref(), &shared.metrics, &group)
                    }));
                }
            }
            _ = commit_tick.tick() => {
                if let Err(error) = consumer.commit_consumer_state(CommitMode::Async) {
                    // NoOffset: nothing stored since the last commit.
                    if !matches!(error.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::NoOffset)) {
                        tracing::debug!(%error, "periodic commit failed; will retry");
                    }
                }
            }
            received = consumer.recv() => match received {
                Ok(message) => {
                    let message = message.detach();
                    let slot = (message.topic().to_string(), message.partition());
                    let entry = workers.entry(slot.clone()).or_insert_with(|| {
                        let (tx, rx) = mpsc::channel(settings.partition_queue);
                        let task = tokio::spawn(worker::run_partition(shared.clone(), rx));
                        (tx, task)
                    });
                    // A full queue makes this wait: fetching stops until the partition catches up.
                    // Shutdown still wins, even while a worker waits for a dependency that is down.
                    let sent = tokio::select! {
                        sent = entry.0.send(message) => sent.is_ok(),
                        () = &mut shutdown => break,
                    };
                    if !sent {
                        tracing::error!(?slot, "partition worker ended unexpectedly");
                        workers.remove(&slot);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "consume error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    tracing::info!(group = %settings.group, "stopping: finishing in-flight records");
    let _ = stop_workers.send(true);
    for (_, (sender, task)) in workers.drain() {
        drop(sender);
        let _ = task.await;
    }
    // A synchronous commit blocks its thread, and waits long if the broker is gone: bound it.
    let committing = tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync));
    match tokio::time::timeout(Duration::from_secs(10), committing).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error)))
            if matches!(error.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
        Ok(Ok(Err(error))) => {
            tracing::warn!(%error, "final commit failed; the next owner re-reads (dedupe makes it harmless)")
        }
        Ok(Err(_)) | Err(_) => tracing::warn!("final commit did not finish in 10 s; the next owner re-reads"),
    }
    tracing::info!(group = %settings.group, "consumer stopped");
    Ok(())
}

//! The consume loop every orderflow consumer runs. A service writes a [`Handler`]; this runtime
//! owns the rest: decoding, dedupe, transactions, retries, dead-lettering, backpressure,
//! rebalances and offset commits.
//!
//! Guarantee: at-least-once delivery, effectively-once side effects. For each record:
//! decode → open a transaction → insert the dedupe row `(group, event_id)` (a duplicate stops
//! here, and a concurrent duplicate waits on the row lock) → the handler's side effect in the
//! same transaction → commit → store the offset. Offsets are committed only for records whose
//! transaction committed or that were forwarded (retry topic, DLT) with the broker's ack —
//! periodically, on revoke (after the records in hand finish) and on shutdown.
//!
//! Records of one partition are handled in order; partitions run concurrently, at most
//! `max_in_flight` at once. What a partition has queued (up to `batch_size`) is handled in one
//! transaction — one dedupe insert, the handlers, one commit — and on any failure in the batch
//! the batch is rolled back and handled record by record, so a failure is treated exactly as it
//! would be alone. A partition whose queue is full is paused (fetching stops,
//! polling goes on, so a slow handler never overruns `max.poll.interval.ms`) and resumed when
//! its queue drains to half.
//!
//! Failures:
//! - Poison (undecodable, unknown schema, no event id, handler says `Dead`) goes to
//!   `<topic>.<group>.DLT` at once with the reason in headers; the partition moves on.
//! - `Retry` (transient, the record's own problem) re-publishes the record to
//!   `<topic>.<group>.retry`, due after exponential backoff with full jitter, and the source
//!   partition moves on (non-blocking retries). The group consumes its retry topics and holds
//!   each retry record until due. After `max_attempts` handler attempts: the DLT.
//! - `Unavailable` (a dependency is down, not the record's fault) waits in place with capped
//!   backoff for as long as it takes, spending no attempts: the partition pauses rather than
//!   burning retries into the DLT.
//!
//! Offsets are checked as they arrive, from the committed offset on (see [`offset_guard`]): a
//! record past the next expected offset means the client skipped some, and the runtime seeks
//! back for them — further back each time the broker serves the same gap (tansu 0.6.0's object
//! storage answers a fetch that starts inside a batch with the next batch). Only a gap that
//! stays however far back the fetch starts is passed, with an error log and
//! `orderflow_consumer_offset_gaps_total{resolution="accepted"}`.
//!
//! Ordering trade-off: while a record is in the retry topic, later records with the same key
//! are handled before it. Handlers must therefore accept events of one order out of order
//! (every orderflow handler checks the order's state and version, never the arrival order).
//! `Unavailable` keeps order, because it holds the partition. `Backpressure` is the same wait,
//! for as long as the dependency asks (`Retry-After`, an open circuit breaker).

mod context;
mod dlt;
pub mod dlt_tools;
pub mod metrics;
mod offset_guard;
mod slots;
mod worker;

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use orderflow_platform::kafka::KafkaSettings;
use orderflow_schemas::{Decoded, EventCodec};
use rdkafka::{
    Message,
    consumer::{CommitMode, Consumer},
    types::RDKafkaErrorCode,
};
use slots::Slot;
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

pub use context::RuntimeContext;
pub use dlt::{dlt_topic, retry_headers, retry_topic};
pub use worker::backoff_ceiling;

/// Applies the dedupe-store migration (idempotent; shares the service's database).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    orderflow_platform::migrations::run(sqlx::migrate!("./migrations"), pool, "consumer-runtime (dedupe)").await
}

/// A decoded record and where it came from.
#[derive(Debug, Clone)]
pub struct ConsumedEvent {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// 1 on the first delivery; n on the (n-1)th retry.
    pub attempt: u32,
    pub key: Option<String>,
    pub event_id: Uuid,
    pub headers: HashMap<String, String>,
    pub decoded: Decoded,
    /// The record's span: a child of the span that produced it (its `traceparent` header), the
    /// parent of whatever the handler does.
    pub span: tracing::Span,
    /// The `traceparent` that makes the next hop (an event this record causes) a child of
    /// [`Self::span`].
    next_traceparent: Option<String>,
}

impl ConsumedEvent {
    pub fn event_type(&self) -> &str {
        &self.decoded.event_type
    }

    /// What an event caused by this record carries as its `traceparent`: this record's span,
    /// or the incoming value when no tracer is installed.
    pub fn traceparent(&self) -> Option<&str> {
        self.next_traceparent.as_deref().or_else(|| self.headers.get("traceparent").map(String::as_str))
    }

    pub(crate) fn new(
        group: &str,
        message: &rdkafka::message::OwnedMessage,
        origin: (&str, i32, i64),
        attempt: u32,
        event_id: Uuid,
        headers: HashMap<String, String>,
        decoded: Decoded,
    ) -> Self {
        let (topic, partition, offset) = origin;
        let span = tracing::info_span!(
            "consume",
            otel.name = format!("{topic} process"),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.destination.name = topic,
            messaging.consumer.group.name = group,
            messaging.kafka.partition = partition,
            messaging.kafka.offset = offset,
            event_type = decoded.event_type.as_str(),
            attempt,
            trace_id = tracing::field::Empty,
        );
        orderflow_platform::trace::continue_trace(&span, headers.get("traceparent").map(String::as_str));
        let next_traceparent = orderflow_platform::trace::traceparent_of(&span);
        ConsumedEvent {
            topic: topic.to_string(),
            partition,
            offset,
            attempt,
            key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            event_id,
            headers,
            decoded,
            span,
            next_traceparent,
        }
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
    /// The dependency asks for a pause of at least `wait` (a 429's `Retry-After`, an open
    /// circuit breaker, a spent retry budget): wait that long (plus up to 10% jitter) and try
    /// again, spending no attempts.
    #[error("dependency asks to wait {wait:?}: {reason}")]
    Backpressure { reason: String, wait: Duration },
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

    /// Runs once at the start of a batch transaction, before `handle` is called for each event
    /// (some of which may turn out to be duplicates). A handler whose events lock shared rows
    /// takes those locks here, in a fixed order, so that two partitions' batches never
    /// deadlock. An error sends the batch down the one-by-one path.
    fn prepare_batch<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [ConsumedEvent],
    ) -> impl Future<Output = Result<(), Failure>> + Send + 'a {
        let _ = (tx, events);
        async { Ok(()) }
    }
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
    /// Records queued per partition; when full, fetching for that partition pauses.
    pub partition_queue: usize,
    /// Partitions handled at once (each with its batch).
    pub max_in_flight: usize,
    /// Most records of one partition handled in one transaction (taken from what is already
    /// queued, so a quiet partition still goes one by one).
    pub batch_size: usize,
    /// How long a revocation waits for the revoked partitions' records in hand.
    pub revoke_grace: Duration,
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
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            commit_interval: Duration::from_secs(1),
            partition_queue: 256,
            max_in_flight: 32,
            batch_size: 100,
            revoke_grace: Duration::from_secs(10),
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
    run_service_with(settings, pool, codec, handler, metrics_listen, axum::Router::new()).await
}

/// As [`run_service`], serving the service's own `routes` beside `/metrics` and `/healthz`.
pub async fn run_service_with<H: Handler>(
    settings: ConsumerSettings,
    pool: PgPool,
    codec: Arc<EventCodec>,
    handler: H,
    listen: &str,
    routes: axum::Router,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let registry = settings.registry.clone();
    // The service's own routes (analytics' API) are counted per route like order-api's.
    let routes = orderflow_platform::http_metrics::HttpMetrics::register(&registry, &settings.group)
        .context("registering the HTTP metrics")?
        .layer(routes);
    tokio::spawn(orderflow_platform::metrics::serve_with(listener, registry, routes, std::future::pending()));
    let result = run(settings, pool, codec, handler, orderflow_platform::shutdown::shutdown_signal()).await;
    orderflow_platform::telemetry::shutdown();
    result
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
    let group = settings.group.clone();
    let retry_sources: HashMap<String, String> =
        settings.topics.iter().map(|t| (retry_topic(t, &group), t.clone())).collect();
    let mut topics: Vec<(String, i32)> =
        settings.topics.iter().map(|t| (t.clone(), settings.kafka.partitions)).collect();
    topics.extend(retry_sources.keys().map(|t| (t.clone(), settings.kafka.partitions)));
    topics.extend(settings.topics.iter().map(|t| (dlt_topic(t, &group), 1)));
    let topic_refs: Vec<(&str, i32)> = topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    settings.kafka.ensure_topics(&topic_refs).await.context("creating the source, retry and dead-letter topics")?;

    let metrics = metrics::ConsumerMetrics::register(&settings.registry).context("registering consumer metrics")?;
    // Every outcome and gap series exists from the start at 0, so rates and increases over them
    // are 0 rather than absent (dashboards and alerts read "nothing failed", not "no data").
    for topic in &settings.topics {
        for outcome in metrics::OUTCOMES {
            metrics.records.with_label_values(&[&group, topic, outcome]);
        }
    }
    for resolution in ["refetched", "accepted"] {
        metrics.offset_gaps.with_label_values(&[&group, resolution]);
    }
    let partitions = Arc::new(worker::Partitions::default());
    let context = RuntimeContext {
        group: group.clone(),
        partitions: partitions.clone(),
        metrics: metrics.clone(),
        revoke_grace: settings.revoke_grace,
    };
    let consumer = context::ConsumerHandle::new(
        settings
            .kafka
            .consumer(&format!("{group}-consumer"), &group)
            .create_with_context(context)
            .context("creating the consumer")?,
    );
    let subscribed: Vec<String> = settings.topics.iter().chain(retry_sources.keys()).cloned().collect();
    consumer.subscribe(&subscribed.iter().map(String::as_str).collect::<Vec<_>>()).context("subscribing")?;
    let shared = Arc::new(worker::Shared {
        settings: settings.clone(),
        pool,
        codec,
        handler,
        consumer: consumer.clone(),
        forwarder: dlt::Forwarder::new(&settings.kafka, &group)?,
        metrics: metrics.clone(),
        retry_sources,
        in_flight_limit: tokio::sync::Semaphore::new(settings.max_in_flight.max(1)),
    });
    tracing::info!(%group, topics = ?subscribed, "consumer started");

    let mut slots: HashMap<(String, i32), Slot> = HashMap::new();
    let mut commit_tick = tokio::time::interval(settings.commit_interval);
    let mut lag_tick = tokio::time::interval(settings.lag_interval);
    let mut unpark_tick = tokio::time::interval(Duration::from_millis(20));
    let mut stall_tick = tokio::time::interval(slots::STALL_AFTER);
    unpark_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lag_report: Option<tokio::task::JoinHandle<()>> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = lag_tick.tick() => {
                // One report at a time, off the async threads (the broker calls block).
                if lag_report.as_ref().is_none_or(|r| r.is_finished()) {
                    let (consumer, metrics, group) = (consumer.clone(), metrics.clone(), group.clone());
                    lag_report = Some(tokio::task::spawn_blocking(move || {
                        metrics::report_partitions(&*consumer, &metrics, &group)
                    }));
                }
            }
            _ = commit_tick.tick() => {
                if let Err(error) = consumer.commit_consumer_state(CommitMode::Async) {
                    // NoOffset: nothing stored since the last commit.
                    if error.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset) {
                        tracing::debug!(%error, "periodic commit failed; will retry");
                    }
                }
            }
            _ = stall_tick.tick() => slots::refetch_stalled(&consumer, &mut slots, &metrics, &group),
            _ = unpark_tick.tick() => {
                slots::unpark(&consumer, &mut slots, settings.partition_queue);
                // Workers of revoked partitions finish their record in hand and end.
                slots.retain(|_, slot| !(slot.state.is_stopped() && slot.task.is_finished()));
                let paused = slots.values().filter(|s| !s.parked.is_empty()).count();
                metrics.paused_partitions.with_label_values(&[&group]).set(paused as i64);
            }
            received = consumer.recv() => match received {
                Ok(message) => {
                    let message = message.detach();
                    let key = (message.topic().to_string(), message.partition());
                    if slots.get(&key).is_some_and(|s| s.state.is_stopped() || s.sender.is_closed()) {
                        // Revoked earlier and assigned to us again: a fresh worker.
                        slots.remove(&key);
                    }
                    let slot = slots.entry(key).or_insert_with(|| {
                        let (sender, records) = mpsc::channel(settings.partition_queue.max(1));
                        let state = worker::PartitionState::new();
                        partitions.insert(message.topic(), message.partition(), state.clone());
                        let task = tokio::spawn(worker::run_partition(shared.clone(), state.clone(), records));
                        let committed = partitions.take_start(message.topic(), message.partition());
                        Slot::new(sender, task, state, committed)
                    });
                    slot.arrive(&consumer, message, &metrics, &group);
                }
                Err(error) => {
                    tracing::warn!(%error, "consume error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    tracing::info!(%group, "stopping: finishing in-flight records");
    for slot in slots.values() {
        slot.state.stop();
    }
    for (_, slot) in slots.drain() {
        drop(slot.sender);
        let _ = slot.task.await;
    }
    // A synchronous commit blocks its thread, without end if the broker is gone: bound it, on a
    // thread of its own (a runtime waits for its blocking pool when it shuts down).
    let (done, committed) = tokio::sync::oneshot::channel();
    let committer = consumer.clone();
    std::thread::spawn(move || {
        let _ = done.send(committer.commit_consumer_state(CommitMode::Sync));
    });
    match tokio::time::timeout(Duration::from_secs(10), committed).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
        Ok(Ok(Err(error))) => {
            tracing::warn!(%error, "final commit failed; the next owner re-reads (dedupe makes it harmless)")
        }
        Ok(Err(_)) | Err(_) => tracing::warn!("final commit did not finish in 10 s; the next owner re-reads"),
    }
    // The lag report gives up on its first failed request; the consumer closes on a thread of
    // its own once the last handle is gone (see `ConsumerHandle`).
    if let Some(report) = lag_report {
        let _ = report.await;
    }
    drop(shared);
    drop(consumer);
    tracing::info!(%group, "consumer stopped");
    Ok(())
}

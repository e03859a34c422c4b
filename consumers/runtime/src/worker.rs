//! One partition's records, one at a time, in order: decode, dedupe + handle in a transaction,
//! forward to the retry topic or the DLT when not done, then store the offset.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use orderflow_schemas::EventCodec;
use rand::Rng;
use rdkafka::{
    Message, TopicPartitionList,
    consumer::Consumer,
    message::{Headers, OwnedMessage},
};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    ConsumedEvent, ConsumerSettings, Failure, Handler,
    dlt::{Forwarder, Origin, Reason},
};

pub(crate) struct Shared<H> {
    pub settings: ConsumerSettings,
    pub pool: PgPool,
    pub codec: Arc<EventCodec>,
    pub handler: H,
    pub consumer: crate::context::ConsumerHandle,
    pub forwarder: Forwarder,
    pub metrics: crate::metrics::ConsumerMetrics,
    /// Retry topic → the source topic it retries.
    pub retry_sources: HashMap<String, String>,
    /// Bounds the records being handled at once across all partitions.
    pub in_flight_limit: Semaphore,
}

/// One assigned partition's worker, as the rebalance callback and the fetch loop see it.
pub(crate) struct PartitionState {
    stop: watch::Sender<bool>,
    busy: AtomicBool,
}

impl PartitionState {
    pub fn new() -> Arc<Self> {
        Arc::new(PartitionState { stop: watch::Sender::new(false), busy: AtomicBool::new(false) })
    }

    /// Revoked or shutting down: the record in hand finishes (a wait for a retry's due time or a
    /// dependency is abandoned, unacknowledged), queued records are left for the next owner.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }
}

/// The partitions this consumer works on, shared with the rebalance callback: each worker's
/// state, and the committed offset each newly assigned partition starts from.
#[derive(Default)]
pub(crate) struct Partitions {
    states: Mutex<HashMap<(String, i32), Arc<PartitionState>>>,
    starts: Mutex<HashMap<(String, i32), i64>>,
}

impl Partitions {
    pub fn insert(&self, topic: &str, partition: i32, state: Arc<PartitionState>) {
        self.states.lock().expect("partitions lock").insert((topic.to_string(), partition), state);
    }

    /// Removes and returns the states of the listed partitions.
    pub fn take(&self, list: &TopicPartitionList) -> Vec<Arc<PartitionState>> {
        let mut map = self.states.lock().expect("partitions lock");
        list.elements().iter().filter_map(|e| map.remove(&(e.topic().to_string(), e.partition()))).collect()
    }

    /// Records where newly assigned partitions start (their committed offsets).
    pub fn set_starts(&self, committed: &TopicPartitionList) {
        let mut starts = self.starts.lock().expect("partitions lock");
        for element in committed.elements() {
            let key = (element.topic().to_string(), element.partition());
            match element.offset() {
                rdkafka::Offset::Offset(offset) => starts.insert(key, offset),
                _ => starts.remove(&key),
            };
        }
    }

    /// The committed offset a partition's first record after its assignment should have.
    pub fn take_start(&self, topic: &str, partition: i32) -> Option<i64> {
        self.starts.lock().expect("partitions lock").remove(&(topic.to_string(), partition))
    }
}

pub(crate) async fn run_partition<H: Handler>(
    shared: Arc<Shared<H>>,
    state: Arc<PartitionState>,
    mut records: mpsc::Receiver<OwnedMessage>,
) {
    let mut stop = state.stop.subscribe();
    let batch_size = shared.settings.batch_size.max(1);
    while let Some(first) = records.recv().await {
        if state.is_stopped() {
            // Queued records stay unacknowledged for the next owner.
            return;
        }
        // What is already queued goes in one transaction; under light load that is one record.
        let mut batch = vec![first];
        while batch.len() < batch_size {
            match records.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        state.busy.store(true, Ordering::Release);
        let finished = match shared.in_flight_limit.acquire().await {
            Ok(_permit) => {
                let in_flight = shared.metrics.in_flight.with_label_values(&[&shared.settings.group]);
                in_flight.add(batch.len() as i64);
                let finished = process_batch(&shared, &mut stop, &batch).await;
                in_flight.sub(batch.len() as i64);
                finished
            }
            Err(_) => 0,
        };
        if let Some(last) = finished.checked_sub(1).map(|i| &batch[i]) {
            // A revoked partition's callback waits for this before it commits.
            if let Err(error) = shared.consumer.store_offset(last.topic(), last.partition(), last.offset()) {
                // Revoked and the grace period passed; the next owner re-reads (dedupe drops it).
                tracing::debug!(%error, topic = last.topic(), partition = last.partition(), "offset not stored");
            }
        }
        state.busy.store(false, Ordering::Release);
        if finished < batch.len() {
            return;
        }
    }
}

/// Handles a batch of one partition's records, in order; returns how many reached a final
/// state (all, unless the partition stopped). The fast path runs every record in one
/// transaction (one dedupe insert, the handlers, one commit); any failure in it — a handler's
/// `Retry`, `Dead` or `Unavailable`, poison, a registry hiccup — rolls it back and the batch is
/// handled record by record, where each failure gets its own treatment. Side effects outside the
/// database repeat on that second pass under the same idempotency keys, as on any redelivery.
async fn process_batch<H: Handler>(
    shared: &Shared<H>,
    stop: &mut watch::Receiver<bool>,
    batch: &[OwnedMessage],
) -> usize {
    if batch.len() > 1 && !shared.retry_sources.contains_key(batch[0].topic()) {
        match fast_path(shared, batch).await {
            Ok(()) => return batch.len(),
            Err(reason) => tracing::debug!(group = %shared.settings.group, %reason, "batch falls back to one by one"),
        }
    }
    for (done, message) in batch.iter().enumerate() {
        if !process(shared, stop, message).await {
            return done;
        }
    }
    batch.len()
}

async fn fast_path<H: Handler>(shared: &Shared<H>, batch: &[OwnedMessage]) -> Result<(), String> {
    let group = shared.settings.group.as_str();
    let mut events = Vec::with_capacity(batch.len());
    let mut skipped: HashMap<&str, u64> = HashMap::new();
    for message in batch {
        let headers = headers_of(message);
        let event_id = headers.get("event_id").and_then(|v| Uuid::parse_str(v).ok()).ok_or("no event id")?;
        let payload = message.payload().ok_or("no payload")?;
        let decoded = shared.codec.decode(payload).await.map_err(|e| e.to_string())?;
        if !shared.handler.handles(&decoded.event_type) {
            *skipped.entry(message.topic()).or_default() += 1;
            continue;
        }
        let origin = (message.topic(), message.partition(), message.offset());
        events.push(ConsumedEvent::new(group, message, origin, 1, event_id, headers, decoded));
    }
    let count_skipped = || {
        for (topic, n) in &skipped {
            shared.metrics.records.with_label_values(&[group, topic, "skipped"]).inc_by(*n);
        }
    };
    if events.is_empty() {
        // Nothing this service handles (common: one topic carries every lifecycle event).
        count_skipped();
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut tx = shared.pool.begin().await.map_err(|e| e.to_string())?;
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let offsets: Vec<i64> = events.iter().map(|e| e.offset).collect();
    let claimed: std::collections::HashSet<Uuid> = sqlx::query_scalar(
        "INSERT INTO processed_events (consumer_group, event_id, topic, kafka_partition, kafka_offset)
         SELECT $1, id, $2, $3, o FROM unnest($4::uuid[], $5::bigint[]) AS t(id, o)
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(group)
    .bind(batch[0].topic())
    .bind(batch[0].partition())
    .bind(&ids)
    .bind(&offsets)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| e.to_string())?
    .into_iter()
    .collect();
    shared.handler.prepare_batch(&mut tx, &events).await.map_err(|e| e.to_string())?;
    let mut handled = std::collections::HashSet::new();
    for event in events.iter().filter(|e| claimed.contains(&e.event_id)) {
        if handled.insert(event.event_id) {
            shared.handler.handle(&mut tx, event).instrument(event.span.clone()).await.map_err(|e| e.to_string())?;
        }
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    shared
        .metrics
        .handler_seconds
        .with_label_values(&[group, batch[0].topic()])
        .observe(started.elapsed().as_secs_f64());
    let topic = batch[0].topic();
    shared.metrics.records.with_label_values(&[group, topic, "processed"]).inc_by(handled.len() as u64);
    shared.metrics.records.with_label_values(&[group, topic, "deduped"]).inc_by((events.len() - handled.len()) as u64);
    count_skipped();
    Ok(())
}

fn headers_of(message: &OwnedMessage) -> HashMap<String, String> {
    message
        .headers()
        .map(|h| {
            h.iter()
                .filter_map(|h| h.value.map(|v| (h.key.to_string(), String::from_utf8_lossy(v).into_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The ceiling of the wait before attempt `attempt + 1`: `min(cap, base * 2^attempt)`.
pub fn backoff_ceiling(settings: &ConsumerSettings, attempt: u32) -> Duration {
    settings.backoff_base.saturating_mul(1 << attempt.min(20)).min(settings.backoff_cap)
}

/// Exponential backoff with full jitter: a random wait in [0, ceiling].
pub(crate) fn backoff(settings: &ConsumerSettings, attempt: u32) -> Duration {
    let ceiling = backoff_ceiling(settings, attempt);
    Duration::from_millis(rand::rng().random_range(0..=ceiling.as_millis() as u64))
}

/// Waits, unless the partition is stopped first (then false).
async fn pause(stop: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        _ = stop.wait_for(|stopped| *stopped) => false,
    }
}

/// Handles one record to a final state for this partition (done, duplicate, forwarded to the
/// retry topic or dead-lettered): true. False when it was abandoned because the partition
/// stopped.
async fn process<H: Handler>(shared: &Shared<H>, stop: &mut watch::Receiver<bool>, message: &OwnedMessage) -> bool {
    let group = shared.settings.group.as_str();
    let headers = headers_of(message);
    let origin = Origin::of(message, &headers, shared.retry_sources.get(message.topic()).map(String::as_str));
    let first_failure = origin.first_failure.unwrap_or_else(Utc::now);
    if let Some(due) = origin.due_at {
        // A retry record waits here until due; meanwhile only this retry partition is held.
        let wait = (due - Utc::now()).to_std().unwrap_or_default();
        if !wait.is_zero() && !pause(stop, wait).await {
            return false;
        }
    }
    let dead = |class: String, reason: String, attempts: u32, stop: watch::Receiver<bool>| {
        let origin = &origin;
        async move {
            let reason = Reason { class: &class, message: &reason, attempts, first_failure };
            dead_letter(shared, stop, message, origin, reason).await
        }
    };
    let Some(event_id) = headers.get("event_id").and_then(|v| Uuid::parse_str(v).ok()) else {
        let reason = "the record has no valid event_id header".into();
        return dead("missing_event_id".into(), reason, 1, stop.clone()).await;
    };
    let Some(payload) = message.payload() else {
        return dead("empty_payload".into(), "the record has no value".into(), 1, stop.clone()).await;
    };
    let mut attempt = 0;
    let decoded = loop {
        match shared.codec.decode(payload).await {
            Ok(decoded) => break decoded,
            Err(error) if error.is_retryable() => {
                attempt += 1;
                tracing::warn!(%error, "schema registry unavailable; retrying decode");
                if !pause(stop, backoff(&shared.settings, attempt)).await {
                    return false;
                }
            }
            Err(error) => return dead(error.class().into(), error.to_string(), 1, stop.clone()).await,
        }
    };
    if !shared.handler.handles(&decoded.event_type) {
        shared.metrics.count(group, &origin.topic, "skipped");
        return true;
    }
    let attempts = origin.attempts + 1;
    let event = ConsumedEvent::new(
        group,
        message,
        (&origin.topic, origin.partition, origin.offset),
        attempts,
        event_id,
        headers,
        decoded,
    );
    let count = |outcome: &str| shared.metrics.count(group, &event.topic, outcome);
    let mut unavailable_streak = 0;
    loop {
        let started = std::time::Instant::now();
        let result = attempt_once(shared, &event).await;
        shared
            .metrics
            .handler_seconds
            .with_label_values(&[group, &event.topic])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(true) => {
                count("processed");
                return true;
            }
            Ok(false) => {
                count("deduped");
                return true;
            }
            Err(Failure::Dead { class, reason }) => return dead(class, reason, attempts, stop.clone()).await,
            Err(Failure::Retry(reason)) if attempts >= shared.settings.max_attempts => {
                return dead("retries_exhausted".into(), reason, attempts, stop.clone()).await;
            }
            Err(Failure::Retry(reason)) => {
                let due_at = Utc::now() + backoff(&shared.settings, attempts);
                tracing::info!(group, %event_id, attempts, %reason, %due_at, "retrying through the retry topic");
                let sent = until_sent(shared, stop.clone(), || {
                    shared.forwarder.retry(message, &origin, attempts, first_failure, due_at, &reason)
                })
                .await;
                if sent {
                    count("retried");
                }
                return sent;
            }
            Err(Failure::Unavailable(reason)) => {
                // Not the record's fault: wait for the dependency, holding this partition (it is
                // paused once its queue fills) and spending no attempts.
                unavailable_streak += 1;
                count("waited_for_dependency");
                tracing::warn!(group, %event_id, %reason, "dependency unavailable; waiting");
                if !pause(stop, backoff(&shared.settings, unavailable_streak)).await {
                    return false;
                }
            }
            Err(Failure::Backpressure { reason, wait }) => {
                count("waited_for_dependency");
                tracing::debug!(group, %event_id, %reason, ?wait, "dependency asks to wait");
                let jitter = Duration::from_millis(rand::rng().random_range(0..=wait.as_millis() as u64 / 10));
                if !pause(stop, wait + jitter).await {
                    return false;
                }
            }
        }
    }
}

/// One transaction: claim the dedupe row, run the handler, commit. A duplicate commits nothing
/// (false).
async fn attempt_once<H: Handler>(shared: &Shared<H>, event: &ConsumedEvent) -> Result<bool, Failure> {
    let mut tx = shared.pool.begin().await?;
    let claimed = sqlx::query(
        "INSERT INTO processed_events (consumer_group, event_id, topic, kafka_partition, kafka_offset)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(&shared.settings.group)
    .bind(event.event_id)
    .bind(&event.topic)
    .bind(event.partition)
    .bind(event.offset)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        tracing::debug!(group = %shared.settings.group, event_id = %event.event_id, "duplicate skipped");
        return Ok(false);
    }
    shared.handler.handle(&mut tx, event).instrument(event.span.clone()).await?;
    tx.commit().await?;
    Ok(true)
}

async fn dead_letter<H>(
    shared: &Shared<H>,
    stop: watch::Receiver<bool>,
    message: &OwnedMessage,
    origin: &Origin,
    reason: Reason<'_>,
) -> bool {
    tracing::warn!(group = %shared.settings.group, topic = %origin.topic, partition = origin.partition,
        offset = origin.offset, class = reason.class, reason = reason.message, "dead-lettering record");
    let sent = until_sent(shared, stop, || shared.forwarder.dead_letter(message, origin, reason)).await;
    if sent {
        shared.metrics.count(&shared.settings.group, &origin.topic, "dead_lettered");
    }
    sent
}

/// Sends until the broker acknowledges (true), with backoff, unless the partition stops first.
async fn until_sent<H, F, Fut>(shared: &Shared<H>, mut stop: watch::Receiver<bool>, mut send: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut tries = 0;
    loop {
        match send().await {
            Ok(()) => return true,
            Err(error) => {
                tries += 1;
                tracing::error!(error = format!("{error:#}"), "cannot forward the record; retrying");
                if !pause(&mut stop, backoff(&shared.settings, tries)).await {
                    return false;
                }
            }
        }
    }
}

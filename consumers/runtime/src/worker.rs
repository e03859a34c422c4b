//! One partition's records, one at a time, in order: decode, dedupe + handle in a transaction,
//! retry or dead-letter, then store the offset.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::Utc;
use orderflow_schemas::EventCodec;
use rand::Rng;
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
    message::{Headers, OwnedMessage},
};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::{ConsumedEvent, ConsumerSettings, Failure, Handler, dlt};

pub(crate) struct Shared<H> {
    pub settings: ConsumerSettings,
    pub pool: PgPool,
    pub codec: Arc<EventCodec>,
    pub handler: H,
    pub consumer: Arc<StreamConsumer>,
    pub dlt: dlt::DeadLetters,
    pub metrics: crate::metrics::ConsumerMetrics,
    /// Flips to true on shutdown: retry loops give up their record (it is not acknowledged).
    pub stopping: watch::Receiver<bool>,
}

pub(crate) async fn run_partition<H: Handler>(shared: Arc<Shared<H>>, mut records: mpsc::Receiver<OwnedMessage>) {
    while let Some(message) = records.recv().await {
        if *shared.stopping.borrow() {
            // Stopping: queued records stay unacknowledged for the next owner.
            return;
        }
        let in_flight = shared.metrics.in_flight.with_label_values(&[&shared.settings.group]);
        in_flight.inc();
        let finished = process(&shared, &message).await;
        in_flight.dec();
        if !finished {
            // Abandoned on shutdown: not acknowledged, so the next owner handles it.
            return;
        }
        if let Err(error) = shared.consumer.store_offset(message.topic(), message.partition(), message.offset()) {
            // The partition was revoked meanwhile; its next owner re-reads (dedupe drops it).
            tracing::debug!(%error, topic = message.topic(), partition = message.partition(), "offset not stored");
        }
    }
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

/// Exponential backoff with full jitter: a random wait in [0, min(cap, base * 2^attempt)].
pub(crate) fn backoff(settings: &ConsumerSettings, attempt: u32) -> Duration {
    let ceiling = settings.backoff_base.saturating_mul(1 << attempt.min(20)).min(settings.backoff_cap);
    Duration::from_millis(rand::rng().random_range(0..=ceiling.as_millis() as u64))
}

/// Waits, unless shutdown comes first (then false).
async fn pause<H>(shared: &Shared<H>, wait: Duration) -> bool {
    let mut stopping = shared.stopping.clone();
    if *stopping.borrow() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        _ = stopping.changed() => false,
    }
}

/// Handles one record to a final state (done, duplicate or dead-lettered): true. False when it
/// was abandoned because the consumer is stopping.
async fn process<H: Handler>(shared: &Shared<H>, message: &OwnedMessage) -> bool {
    let first_failure = Utc::now();
    let headers = headers_of(message);
    let dead = |class: &'static str, reason: String, attempts: u32| async move {
        dead_letter(shared, message, class, &reason, attempts, first_failure).await
    };
    let Some(event_id) = headers.get("event_id").and_then(|v| Uuid::parse_str(v).ok()) else {
        return dead("missing_event_id", "the record has no valid event_id header".into(), 1).await;
    };
    let Some(payload) = message.payload() else {
        return dead("empty_payload", "the record has no value".into(), 1).await;
    };
    let mut attempt = 0;
    let decoded = loop {
        match shared.codec.decode(payload).await {
            Ok(decoded) => break decoded,
            Err(error) if error.is_retryable() => {
                attempt += 1;
                tracing::warn!(%error, "schema registry unavailable; retrying decode");
                if !pause(shared, backoff(&shared.settings, attempt)).await {
                    return false;
                }
            }
            Err(error) => return dead(error.class(), error.to_string(), 1).await,
        }
    };
    if !shared.handler.handles(&decoded.event_type) {
        shared.metrics.count(&shared.settings.group, message.topic(), "skipped");
        return true;
    }
    let event = ConsumedEvent {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        event_id,
        headers,
        decoded,
    };
    let mut attempts = 0;
    let mut unavailable_streak = 0;
    loop {
        attempts += 1;
        let started = std::time::Instant::now();
        let result = attempt_once(shared, &event).await;
        shared
            .metrics
            .handler_seconds
            .with_label_values(&[&shared.settings.group, &event.topic])
            .observe(started.elapsed().as_secs_f64());
        let count = |outcome: &str| shared.metrics.count(&shared.settings.group, &event.topic, outcome);
        match result {
            Ok(true) => {
                count("processed");
                return true;
            }
            Ok(false) => {
                count("deduped");
                return true;
            }
            Err(Failure::Dead { class, reason }) => {
                return dead_letter(shared, message, &class, &reason, attempts, first_failure).await;
            }
            Err(Failure::Retry(reason)) if attempts >= shared.settings.max_attempts => {
                return dead_letter(shared, message, "retries_exhausted", &reason, attempts, first_failure).await;
            }
            Err(Failure::Retry(reason)) => {
                count("retried");
                tracing::info!(group = %shared.settings.group, %event_id, attempts, %reason, "retrying");
                if !pause(shared, backoff(&shared.settings, attempts)).await {
                    return false;
                }
            }
            Err(Failure::Unavailable(reason)) => {
                // Not the record's fault: wait for the dependency without spending attempts.
                attempts -= 1;
                unavailable_streak += 1;
                count("waited_for_dependency");
                tracing::warn!(group = %shared.settings.group, %event_id, %reason, "dependency unavailable; waiting");
                if !pause(shared, backoff(&shared.settings, unavailable_streak)).await {
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
    shared.handler.handle(&mut tx, event).await?;
    tx.commit().await?;
    Ok(true)
}

/// Sends the record to its DLT, retrying until the broker takes it (or shutdown).
async fn dead_letter<H>(
    shared: &Shared<H>,
    message: &OwnedMessage,
    class: &str,
    reason: &str,
    attempts: u32,
    first_failure: chrono::DateTime<Utc>,
) -> bool {
    tracing::warn!(group = %shared.settings.group, topic = message.topic(), partition = message.partition(),
        offset = message.offset(), class, reason, "dead-lettering record");
    shared.metrics.count(&shared.settings.group, message.topic(), "dead_lettered");
    let mut tries = 0;
    loop {
        let sent = shared.dlt.send(message, dlt::Reason { class, message: reason, attempts, first_failure }).await;
        match sent {
            Ok(()) => return true,
            Err(error) => {
                tries += 1;
                tracing::error!(error = format!("{error:#}"), "cannot write to the DLT; retrying");
                if !pause(shared, backoff(&shared.settings, tries)).await {
                    return false;
                }
            }
        }
    }
}

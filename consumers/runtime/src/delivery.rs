//! Takes a partition's records to a final state — handled, a duplicate, skipped, forwarded to
//! the retry topic, parked in the quarantine, or dead-lettered — and decides what a [`Failure`]
//! means.
//!
//! A batch goes through [`transaction::handle`] once, all together; if anything in it fails
//! (poison, a handler's verdict, a registry hiccup) it is rolled back and each record goes
//! through the same function alone, where its failure gets its own treatment. Side effects
//! outside the database repeat on that second pass under the same idempotency keys, as on any
//! redelivery.

use std::{collections::HashMap, time::Duration};

use chrono::Utc;
use orderflow_schemas::headers::EVENT_ID;
use rand::Rng;
use rdkafka::{
    Message,
    message::{Headers, OwnedMessage},
};
use tokio::sync::watch;
use uuid::Uuid;

use crate::{
    ConsumedEvent, ConsumerSettings, Failure, Handler, RetryMode,
    dlt::{Origin, Reason},
    group_commit::GroupCommit,
    partition::Shared,
    quarantine, transaction,
};

/// Where one record's delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Handled, a duplicate, or an event this group does not handle.
    Done,
    /// In the group's DLT, acknowledged by the broker.
    DeadLettered,
    /// In the group's retry topic, acknowledged by the broker.
    Retried,
    /// Parked in the quarantine (durable): its key holds until it is handled or dead-lettered.
    Parked,
    /// The partition stopped first: not finished, the next owner has it.
    Abandoned,
}

impl Delivered {
    /// Whether the record reached a final state (its offset may be committed).
    pub fn finished(self) -> bool {
        self != Delivered::Abandoned
    }
}

/// Takes `batch` (one partition's records, in order) to a final state; returns how many got
/// there (all, unless the partition stopped first).
pub(crate) async fn deliver<H: Handler>(
    shared: &Shared<H>,
    stop: &mut watch::Receiver<bool>,
    batch: &[OwnedMessage],
) -> usize {
    if batch.len() > 1 && !shared.retry_sources.contains_key(batch[0].topic()) {
        match together(shared, batch).await {
            Ok(()) => return batch.len(),
            Err(Failure::Backpressure { reason, wait }) => {
                // The dependency asked for a pause (a 429's Retry-After): honour it before the
                // records go again one by one, instead of asking again at once.
                tracing::debug!(group = %shared.settings.group, %reason, ?wait, "batch held back; waiting, then one by one");
                let jitter = Duration::from_millis(rand::rng().random_range(0..=wait.as_millis() as u64 / 10));
                let why = format!("a dependency asking to slow down: {reason}");
                let _waiting = shared.waits.wait(batch[0].topic(), batch[0].partition(), why);
                if !pause(stop, wait + jitter).await {
                    return 0;
                }
            }
            Err(reason) => tracing::debug!(group = %shared.settings.group, %reason, "batch falls back to one by one"),
        }
    }
    for (done, message) in batch.iter().enumerate() {
        if !alone(shared, stop, message, None).await.finished() {
            return done;
        }
    }
    batch.len()
}

/// The whole batch in one transaction, or the failure and nothing done.
async fn together<H: Handler>(shared: &Shared<H>, batch: &[OwnedMessage]) -> Result<(), Failure> {
    let poison = |reason: &str| Failure::Retry(reason.to_string());
    let group = shared.settings.group.as_str();
    let mut events = Vec::with_capacity(batch.len());
    let mut skipped = 0;
    for message in batch {
        let headers = headers_of(message);
        let event_id = headers.get(EVENT_ID).and_then(|v| Uuid::parse_str(v).ok()).ok_or(poison("no event id"))?;
        let payload = message.payload().ok_or(poison("no payload"))?;
        let decoded = shared.codec.decode(payload).await.map_err(|e| poison(&e.to_string()))?;
        if !shared.handler.handles(&decoded.event_type) {
            skipped += 1;
            continue;
        }
        let origin = (message.topic(), message.partition(), message.offset());
        events.push(ConsumedEvent::new(group, message, origin, 1, event_id, headers, decoded));
    }
    let topic = batch[0].topic();
    if !events.is_empty() {
        let committed = transaction::handle(shared, &events).await?;
        shared.metrics.records.with_label_values(&[group, topic, "processed"]).inc_by(committed.processed as u64);
        shared.metrics.records.with_label_values(&[group, topic, "deduped"]).inc_by(committed.deduped as u64);
    }
    // Events this service does not react to need no transaction (one topic carries them all).
    shared.metrics.records.with_label_values(&[group, topic, "skipped"]).inc_by(skipped);
    Ok(())
}

pub(crate) fn headers_of(message: &OwnedMessage) -> HashMap<String, String> {
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
pub(crate) async fn pause(stop: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        _ = stop.wait_for(|stopped| *stopped) => false,
    }
}

/// Where `message` was first published, and its delivery history so far (from its `retry_*`
/// headers when it was read from one of the group's retry topics).
pub(crate) fn origin_of<H>(shared: &Shared<H>, message: &OwnedMessage) -> Origin {
    Origin::of(message, &headers_of(message), shared.retry_sources.get(message.topic()).map(String::as_str))
}

/// One record, as read from Kafka, to a final state; its first transaction shared with the
/// partition's other ready records when `commits` is given (key order).
pub(crate) async fn alone<H: Handler>(
    shared: &Shared<H>,
    stop: &mut watch::Receiver<bool>,
    message: &OwnedMessage,
    commits: Option<&GroupCommit>,
) -> Delivered {
    alone_from(shared, stop, message, origin_of(shared, message), commits).await
}

/// One record with its delivery history (`origin`: read from Kafka, or from the quarantine) to
/// a final state.
pub(crate) async fn alone_from<H: Handler>(
    shared: &Shared<H>,
    stop: &mut watch::Receiver<bool>,
    message: &OwnedMessage,
    origin: Origin,
    mut commits: Option<&GroupCommit>,
) -> Delivered {
    let group = shared.settings.group.as_str();
    let headers = headers_of(message);
    let first_failure = origin.first_failure.unwrap_or_else(Utc::now);
    // What this partition's worker waits for, while it waits (the ops console shows it).
    let waiting = |why: String| shared.waits.wait(message.topic(), message.partition(), why);
    if let Some(due) = origin.due_at {
        // A retry record waits here until due; meanwhile only this retry partition is held.
        let wait = (due - Utc::now()).to_std().unwrap_or_default();
        let _waiting = waiting(format!("a retry due at {} (attempt {} failed)", due.to_rfc3339(), origin.attempts));
        if !wait.is_zero() && !pause(stop, wait).await {
            return Delivered::Abandoned;
        }
    }
    let dead = |class: String, reason: String, attempts: u32, stop: watch::Receiver<bool>| {
        let origin = &origin;
        async move {
            let reason = Reason { class: &class, message: &reason, attempts, first_failure };
            match dead_letter(shared, stop, message, origin, reason).await {
                true => Delivered::DeadLettered,
                false => Delivered::Abandoned,
            }
        }
    };
    let Some(event_id) = headers.get(EVENT_ID).and_then(|v| Uuid::parse_str(v).ok()) else {
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
                let _waiting = waiting(format!("the schema registry: {error}"));
                if !pause(stop, backoff(&shared.settings, attempt)).await {
                    return Delivered::Abandoned;
                }
            }
            Err(error) => return dead(error.class().into(), error.to_string(), 1, stop.clone()).await,
        }
    };
    if !shared.handler.handles(&decoded.event_type) {
        shared.metrics.count(group, &origin.topic, "skipped");
        return Delivered::Done;
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
    let (mut unavailable_streak, mut conflicts) = (0, 0);
    loop {
        // The first try in the partition's group commit (key order); a shared transaction that
        // failed, and every later try, alone.
        let grouped = match commits.take() {
            Some(commits) => commits.handle(shared, &event).await,
            None => None,
        };
        let result = match grouped {
            Some(result) => result,
            None => transaction::handle(shared, std::slice::from_ref(&event)).await,
        };
        let failure = match result {
            Err(Failure::Conflict(reason)) if conflicts < CONFLICT_RETRIES => {
                // Lost a race with another transaction: at once again, after a short jitter.
                conflicts += 1;
                tracing::debug!(group, %event_id, %reason, conflicts, "transaction conflict; running it again");
                let jitter = Duration::from_millis(rand::rng().random_range(5..=50));
                if !pause(stop, jitter).await {
                    return Delivered::Abandoned;
                }
                continue;
            }
            // Still conflicting after a few runs: an attempt, through the retry topic.
            Err(Failure::Conflict(reason)) => Failure::Rejected { class: "conflict".into(), reason },
            other => match other {
                Ok(committed) if committed.processed == 1 => {
                    count("processed");
                    return Delivered::Done;
                }
                Ok(_) => {
                    count("deduped");
                    return Delivered::Done;
                }
                Err(failure) => failure,
            },
        };
        match failure {
            Failure::Dead { class, reason } => return dead(class, reason, attempts, stop.clone()).await,
            Failure::Retry(reason) if attempts >= shared.settings.max_attempts => {
                return dead("retries_exhausted".into(), reason, attempts, stop.clone()).await;
            }
            // A refusal that outlived every attempt goes with its own class (`sqlstate_22003`).
            Failure::Rejected { class, reason } if attempts >= shared.settings.max_attempts => {
                return dead(class, reason, attempts, stop.clone()).await;
            }
            Failure::Retry(reason) | Failure::Rejected { reason, .. } => {
                let due_at = Utc::now() + backoff(&shared.settings, attempts);
                if let (RetryMode::Quarantine, Some(key)) = (shared.settings.retry_mode, message.key()) {
                    // The key holds: this record and every later one of its key wait in the
                    // quarantine, in order, while the partition's other keys go on.
                    tracing::info!(group, %event_id, attempts, %reason, %due_at, key = %String::from_utf8_lossy(key),
                        "parking the record; its key is quarantined");
                    let history = quarantine::History { attempts, first_failure, due_at, error: &reason };
                    let parked = until_done(shared, stop.clone(), "park the record", || {
                        quarantine::park(&shared.pool, group, message, &origin, Some(&history))
                    })
                    .await;
                    return match parked {
                        Some(()) => {
                            count("parked");
                            Delivered::Parked
                        }
                        None => Delivered::Abandoned,
                    };
                }
                tracing::info!(group, %event_id, attempts, %reason, %due_at, "retrying through the retry topic");
                let sent = until_sent(shared, stop.clone(), || {
                    shared.forwarder.retry(message, &origin, attempts, first_failure, due_at, &reason)
                })
                .await;
                if !sent {
                    return Delivered::Abandoned;
                }
                count("retried");
                return Delivered::Retried;
            }
            Failure::Unavailable(reason) => {
                // Not the record's fault: wait for the dependency, holding this partition (it is
                // paused once its queue fills) and spending no attempts.
                unavailable_streak += 1;
                count("waited_for_dependency");
                tracing::warn!(group, %event_id, %reason, "dependency unavailable; waiting");
                let _waiting = waiting(format!("a dependency that is down: {reason}"));
                if !pause(stop, backoff(&shared.settings, unavailable_streak)).await {
                    return Delivered::Abandoned;
                }
            }
            Failure::Backpressure { reason, wait } => {
                count("waited_for_dependency");
                tracing::debug!(group, %event_id, %reason, ?wait, "dependency asks to wait");
                let jitter = Duration::from_millis(rand::rng().random_range(0..=wait.as_millis() as u64 / 10));
                let _waiting = waiting(format!("a dependency asking to slow down: {reason}"));
                if !pause(stop, wait + jitter).await {
                    return Delivered::Abandoned;
                }
            }
            Failure::Conflict(_) => unreachable!("turned into an attempt above"),
        }
    }
}

/// Times a transaction that lost a race runs again at once before it costs an attempt.
const CONFLICT_RETRIES: u32 = 3;

/// Publishes `message` to its DLT and waits for the broker's ack (true), unless the partition
/// stops first.
pub(crate) async fn dead_letter<H>(
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
async fn until_sent<H, F, Fut>(shared: &Shared<H>, stop: watch::Receiver<bool>, send: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    until_done(shared, stop, "forward the record", send).await.is_some()
}

/// Runs `work` until it succeeds, with backoff, unless the partition stops first (None).
pub(crate) async fn until_done<H, T, E, F, Fut>(
    shared: &Shared<H>,
    mut stop: watch::Receiver<bool>,
    what: &str,
    mut work: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut tries = 0;
    loop {
        match work().await {
            Ok(done) => return Some(done),
            Err(error) => {
                tries += 1;
                tracing::error!(group = %shared.settings.group, error = format!("{error:#}"), "cannot {what}; retrying");
                if !pause(&mut stop, backoff(&shared.settings, tries)).await {
                    return None;
                }
            }
        }
    }
}

//! One assigned partition: the bounded queue between the fetch loop and the partition's
//! worker, the records parked while that queue is full (fetching for the partition is paused
//! meanwhile, so a slow handler never makes the consumer buffer without limit or miss
//! `max.poll.interval.ms`), and the worker that takes what is queued, in order, to a final state
//! and only then stores the offset of the last record it finished.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use chrono::{DateTime, Utc};
use orderflow_schemas::EventCodec;
use rdkafka::{
    Message, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    message::OwnedMessage,
};
use sqlx::PgPool;
use tokio::sync::{
    Semaphore,
    mpsc::{self, error::TrySendError},
    watch,
};

use crate::{ConsumerSettings, Handler, RuntimeContext, delivery, dlt::Forwarder, key_order, metrics::ConsumerMetrics};

/// What every partition's worker shares.
pub(crate) struct Shared<H> {
    pub settings: ConsumerSettings,
    pub pool: PgPool,
    pub codec: Arc<EventCodec>,
    pub handler: H,
    pub consumer: crate::context::ConsumerHandle,
    pub forwarder: Forwarder,
    pub metrics: ConsumerMetrics,
    /// Retry topic → the source topic it retries.
    pub retry_sources: HashMap<String, String>,
    /// Bounds the batches being handled at once across all partitions.
    pub in_flight_limit: Semaphore,
    /// Per partition in quarantine: when its oldest parked record was parked.
    pub parked_since: Mutex<HashMap<(String, i32), DateTime<Utc>>>,
    /// Which partitions are paused and what each worker waits for (reported to the console).
    pub waits: crate::status::Waits,
}

impl<H> Shared<H> {
    /// Runs `work` on `records` records once the instance's `max_in_flight` allows, counted
    /// in `orderflow_consumer_in_flight` meanwhile; `None` when the runtime is closing.
    pub async fn in_flight<T>(&self, records: usize, work: impl Future<Output = T>) -> Option<T> {
        let _permit = self.in_flight_limit.acquire().await.ok()?;
        let gauge = self.metrics.in_flight.with_label_values(&[&self.settings.group]);
        gauge.add(records as i64);
        let result = work.await;
        gauge.sub(records as i64);
        Some(result)
    }

    /// Records when the oldest record parked by `place` was parked (None: nothing parked).
    pub fn parked_since(&self, place: &(String, i32), oldest: Option<DateTime<Utc>>) {
        let mut since = self.parked_since.lock().expect("parked_since lock");
        match oldest {
            Some(oldest) => since.insert(place.clone(), oldest),
            None => since.remove(place),
        };
    }

    /// Sets the age of the oldest parked record of this instance's partitions (0: none).
    pub fn report_oldest_parked(&self) {
        let oldest = self.parked_since.lock().expect("parked_since lock").values().min().copied();
        let age = oldest.map_or(0.0, |oldest| (Utc::now() - oldest).as_seconds_f64().max(0.0));
        self.metrics.oldest_parked_seconds.with_label_values(&[&self.settings.group]).set(age);
    }
}

/// One assigned partition's worker, as the rebalance callback and the fetch loop see it.
pub(crate) struct PartitionState {
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) busy: AtomicBool,
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

/// The workers of the partitions this consumer holds, shared with the rebalance callback.
#[derive(Default)]
pub(crate) struct Partitions {
    states: Mutex<HashMap<(String, i32), Arc<PartitionState>>>,
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
}

/// A partition's queue and worker, as the fetch loop sees it.
pub(crate) struct Slot {
    pub sender: mpsc::Sender<OwnedMessage>,
    pub task: tokio::task::JoinHandle<()>,
    pub state: Arc<PartitionState>,
    /// Records fetched while the queue was full; fetching for the partition is paused until
    /// they fit (librdkafka drops what it prefetched and resumes after the last one we took).
    pub parked: VecDeque<OwnedMessage>,
}

impl Slot {
    /// Starts a worker for `topic`/`partition`.
    pub fn start<H: Handler>(shared: &Arc<Shared<H>>, partitions: &Partitions, topic: &str, partition: i32) -> Self {
        let (sender, records) = mpsc::channel(shared.settings.partition_queue.max(1));
        let state = PartitionState::new();
        partitions.insert(topic, partition, state.clone());
        let task = match shared.settings.ordering {
            crate::Ordering::Partition => tokio::spawn(run_worker(shared.clone(), state.clone(), records)),
            crate::Ordering::Key => tokio::spawn(key_order::run_worker(
                shared.clone(),
                state.clone(),
                records,
                topic.to_string(),
                partition,
            )),
        };
        Slot { sender, task, state, parked: VecDeque::new() }
    }

    /// Queues a fetched record for the worker, or parks it with the partition paused when the
    /// queue is full.
    pub fn arrive(
        &mut self,
        consumer: &StreamConsumer<RuntimeContext>,
        message: OwnedMessage,
        metrics: &ConsumerMetrics,
        group: &str,
    ) {
        if !self.parked.is_empty() {
            self.parked.push_back(message);
            return;
        }
        if let Err(TrySendError::Full(message) | TrySendError::Closed(message)) = self.sender.try_send(message) {
            // The worker is behind: stop fetching this partition rather than buffer without
            // limit, and keep polling so the group keeps us.
            if let Err(error) = consumer.pause(&partition_list(message.topic(), message.partition())) {
                tracing::debug!(%error, "pause failed (partition revoked?)");
            }
            metrics.pauses.with_label_values(&[group]).inc();
            self.parked.push_back(message);
        }
    }
}

fn partition_list(topic: &str, partition: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    list
}

/// Moves parked records into their queues once the queue is at most half full, and resumes
/// fetching for partitions with nothing parked any more.
pub(crate) fn unpark(
    consumer: &StreamConsumer<RuntimeContext>,
    slots: &mut HashMap<(String, i32), Slot>,
    queue: usize,
) {
    for ((topic, partition), slot) in slots.iter_mut().filter(|(_, s)| !s.parked.is_empty()) {
        if slot.state.is_stopped() {
            // Revoked: the pause ended with the assignment; parked records are the next owner's.
            slot.parked.clear();
            continue;
        }
        if slot.sender.capacity() < queue.max(2) / 2 {
            continue;
        }
        while let Some(message) = slot.parked.pop_front() {
            if let Err(TrySendError::Full(message) | TrySendError::Closed(message)) = slot.sender.try_send(message) {
                slot.parked.push_front(message);
                break;
            }
        }
        if slot.parked.is_empty()
            && let Err(error) = consumer.resume(&partition_list(topic, *partition))
        {
            tracing::debug!(%error, "resume failed (partition revoked?)");
        }
    }
}

/// The partition's worker: what is queued (up to `batch_size`) is taken to a final state
/// together, then the last finished record's offset is stored for the next commit.
async fn run_worker<H: Handler>(
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
        // What is already queued goes together; under light load that is one record.
        let mut batch = vec![first];
        while batch.len() < batch_size {
            match records.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        state.busy.store(true, Ordering::Release);
        let delivered = shared.in_flight(batch.len(), delivery::deliver(&shared, &mut stop, &batch));
        let finished = delivered.await.unwrap_or(0);
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

//! The fetch loop's view of each assigned partition: its bounded queue to the worker, the
//! records parked while that queue is full (the partition is paused meanwhile), and the offset
//! guard that makes sure no record is skipped — gaps and stalled fetches are fetched again
//! (see [`crate::offset_guard`]).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use rdkafka::{
    Message, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    message::OwnedMessage,
};
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::{RuntimeContext, metrics, offset_guard, worker};

/// A partition's queue and worker, as the fetch loop sees it.
pub(crate) struct Slot {
    pub sender: mpsc::Sender<OwnedMessage>,
    pub task: tokio::task::JoinHandle<()>,
    pub state: Arc<worker::PartitionState>,
    /// Records fetched while the queue was full; fetching for the partition is paused until
    /// they fit (librdkafka drops what it prefetched and resumes after the last one we took).
    pub parked: VecDeque<OwnedMessage>,
    /// Which offset comes next; gaps are fetched again.
    offsets: offset_guard::OffsetGuard,
    /// When a record last arrived or the partition was last sought: a partition with records
    /// ahead and nothing arriving for [`STALL_AFTER`] is fetched again from further back.
    last_activity: Instant,
}

impl Slot {
    /// A fresh worker's slot, starting at the partition's committed offset when it has one.
    pub fn new(
        sender: mpsc::Sender<OwnedMessage>,
        task: tokio::task::JoinHandle<()>,
        state: Arc<worker::PartitionState>,
        committed: Option<i64>,
    ) -> Self {
        Slot {
            sender,
            task,
            state,
            parked: VecDeque::new(),
            offsets: offset_guard::OffsetGuard::starting_at(committed),
            last_activity: Instant::now(),
        }
    }

    /// Takes a fetched record: checked against the next expected offset (a gap is fetched
    /// again), then queued for the worker, or parked with the partition paused when the queue
    /// is full.
    pub fn arrive(
        &mut self,
        consumer: &StreamConsumer<RuntimeContext>,
        message: OwnedMessage,
        metrics: &metrics::ConsumerMetrics,
        group: &str,
    ) {
        self.last_activity = Instant::now();
        match self.offsets.arrive(message.offset()) {
            offset_guard::Arrival::Take => {}
            offset_guard::Arrival::AlreadyTaken => return,
            offset_guard::Arrival::SeekBack { to, skipped, first_time } => {
                // The client handed us a record past the next one. Go back for the
                // records in between rather than let a later commit pass them.
                if first_time {
                    metrics.offset_gaps.with_label_values(&[group, "refetched"]).inc_by(skipped);
                    tracing::warn!(%group, topic = message.topic(), partition = message.partition(),
                            expected = to, got = message.offset(), "offset gap; seeking back");
                } else {
                    tracing::debug!(%group, topic = message.topic(), partition = message.partition(),
                            seek_to = to, got = message.offset(), "the same gap again; seeking further back");
                }
                let target = rdkafka::Offset::Offset(to);
                if let Err(error) = consumer.seek(message.topic(), message.partition(), target, Duration::from_secs(2))
                {
                    tracing::warn!(%error, "seek back failed; the next record past the gap tries again");
                }
                return;
            }
            offset_guard::Arrival::GapAccepted { from, skipped } => {
                // On orderflow's topics (no compaction, no transactions) this is loss
                // by the broker: counted and logged as an error.
                metrics.offset_gaps.with_label_values(&[group, "accepted"]).inc_by(skipped);
                tracing::error!(%group, topic = message.topic(), partition = message.partition(),
                        from, to = message.offset() - 1, "the broker has no records at these offsets; moving past them");
            }
        }
        if !self.parked.is_empty() {
            self.parked.push_back(message);
            return;
        }
        if let Err(TrySendError::Full(message) | TrySendError::Closed(message)) = self.sender.try_send(message) {
            // The worker is behind: stop fetching this partition rather than buffer
            // without limit, and keep polling so the group keeps us.
            let list = partition_list(message.topic(), message.partition());
            if let Err(error) = consumer.pause(&list) {
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

/// How long a partition with records ahead may see nothing arrive before it is fetched again.
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(1);

/// Partitions whose worker has nothing to do, with records on the broker past the next offset
/// (per the last lag report) and nothing arriving: the fetch started somewhere the broker serves
/// nothing from (inside the last batch, on tansu's object storage). Fetched again from further
/// back, searched like a gap.
pub(crate) fn refetch_stalled(
    consumer: &StreamConsumer<RuntimeContext>,
    slots: &mut HashMap<(String, i32), Slot>,
    metrics: &metrics::ConsumerMetrics,
    group: &str,
) {
    for ((topic, partition), slot) in slots.iter_mut() {
        let idle = slot.parked.is_empty()
            && slot.sender.capacity() == slot.sender.max_capacity()
            && !slot.state.is_busy()
            && !slot.state.is_stopped();
        let Some(next) = slot.offsets.next_offset() else { continue };
        if !idle || slot.last_activity.elapsed() < STALL_AFTER {
            continue;
        }
        let high = metrics.high_watermark.with_label_values(&[group, topic, &partition.to_string()]).get();
        if high <= next {
            continue;
        }
        slot.last_activity = Instant::now();
        match slot.offsets.stalled() {
            Some(to) => {
                tracing::debug!(%group, topic, partition, next, high, seek_to = to, "records ahead but none arrive; fetching again");
                if let Err(error) =
                    consumer.seek(topic, *partition, rdkafka::Offset::Offset(to), Duration::from_secs(2))
                {
                    tracing::warn!(%error, "seek failed; trying again later");
                }
            }
            None => tracing::error!(%group, topic, partition, next, high,
                "the broker has records past this offset but serves none of them, however far back the fetch starts"),
        }
    }
}

/// Moves parked records into their queues once the queue is at most half full, and resumes
/// fetching for partitions with nothing parked any more (from the start of the batch holding
/// the next offset, on a broker that serves whole batches only).
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
        if slot.parked.is_empty() {
            if let Err(error) = consumer.resume(&partition_list(topic, *partition)) {
                tracing::debug!(%error, "resume failed (partition revoked?)");
            } else if let Some(to) = slot.offsets.resume_at() {
                slot.last_activity = Instant::now();
                if let Err(error) =
                    consumer.seek(topic, *partition, rdkafka::Offset::Offset(to), Duration::from_secs(2))
                {
                    tracing::debug!(%error, "seek on resume failed; the gap check fetches the batch again");
                }
            }
        }
    }
}

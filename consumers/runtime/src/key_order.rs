//! Key order: one partition's records handled concurrently across keys, strictly in order
//! within a key.
//!
//! The partition's worker takes records from its queue as long as it holds fewer than
//! `partition_queue`; a record whose key has one in hand waits behind it, any other starts at
//! once if fewer than `key_concurrency` of the partition's records are running (and the
//! instance's `max_in_flight` allows), else waits its turn in arrival order. A record without a
//! key orders against nothing. Each record goes to its final state alone ([`delivery::alone`]:
//! handled, deduped, retried, dead-lettered), as in partition order, except that its first
//! transaction is shared with the partition's other records whose call-outs finished at the same
//! time ([`group_commit`](crate::group_commit)).
//!
//! The offset stored for the next commit is always just below the lowest record not yet
//! finished ([`Unfinished`]), so a crash or a rebalance re-delivers exactly what had not
//! finished, and the dedupe store drops whatever of it had (its transaction committed, its
//! offset not yet). Once the partition is stopped, nothing new starts; what runs finishes (its
//! waits abandoned) before the worker stores its last safe offset and ends.
//!
//! In `--retry-mode quarantine` ([`quarantine`]) a record asking for another try is parked with
//! its key held: the records of that key in memory and arriving later are parked behind it
//! (each counts as finished once its row is written), and the key's head drains beside the
//! partition's running records.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{Arc, atomic::Ordering},
};

use rdkafka::{Message, consumer::Consumer, message::OwnedMessage};
use tokio::{sync::mpsc, task::JoinSet};

use crate::{
    AfterDeadLetter, Handler, RetryMode,
    delivery::{self, Delivered},
    group_commit::GroupCommit,
    partition::{PartitionState, Shared},
    quarantine,
};

/// The offsets a partition's worker took and has not finished; what may be committed.
#[derive(Debug, Default)]
pub(crate) struct Unfinished {
    offsets: BTreeSet<i64>,
    /// The first and the highest offset taken.
    first: Option<i64>,
    highest: Option<i64>,
    /// The last offset handed to the consumer to store.
    stored: Option<i64>,
}

impl Unfinished {
    pub fn take(&mut self, offset: i64) {
        self.offsets.insert(offset);
        self.first.get_or_insert(offset);
        self.highest = self.highest.max(Some(offset));
    }

    /// Marks `offset` finished; returns the offset to store when it moved: the record just
    /// below the lowest unfinished one, or the highest taken when none is unfinished.
    pub fn finish(&mut self, offset: i64) -> Option<i64> {
        self.offsets.remove(&offset);
        let safe = match self.offsets.first() {
            Some(lowest) => Some(lowest - 1),
            None => self.highest,
        };
        // Nothing below the first record taken is this worker's to store.
        if safe > self.stored && safe >= self.first {
            self.stored = safe;
            return safe;
        }
        None
    }
}

/// The records the worker holds, by what they wait for.
#[derive(Default)]
struct Waiting {
    /// A key with a record running (or ready): the records of that key behind it, in order.
    behind: HashMap<Vec<u8>, VecDeque<OwnedMessage>>,
    /// Records whose key is free, waiting for a place to run, in arrival order.
    ready: VecDeque<OwnedMessage>,
    /// Every record held and not finished: running, ready or behind its key.
    held: usize,
}

impl Waiting {
    fn arrive(&mut self, message: OwnedMessage) {
        self.held += 1;
        match message.key() {
            None => self.ready.push_back(message),
            Some(key) => match self.behind.get_mut(key) {
                Some(queue) => queue.push_back(message),
                None => {
                    self.behind.insert(key.to_vec(), VecDeque::new());
                    self.ready.push_back(message);
                }
            },
        }
    }

    /// `key` is held by the quarantine: its record in hand was parked. Returns the records that
    /// waited behind it (still counted as held until they are parked in turn).
    fn hold(&mut self, key: &[u8]) -> VecDeque<OwnedMessage> {
        self.held -= 1;
        self.behind.remove(key).unwrap_or_default()
    }

    /// A record of `key` finished: the next of its key becomes ready, or the key is free.
    fn finished(&mut self, key: Option<&[u8]>) {
        self.held -= 1;
        let Some(key) = key else { return };
        match self.behind.get_mut(key).and_then(VecDeque::pop_front) {
            Some(next) => self.ready.push_back(next),
            None => {
                self.behind.remove(key);
            }
        }
    }
}

/// A task of the worker ended.
enum Ended {
    /// A record's delivery, and how it ended.
    Record { key: Option<Vec<u8>>, offset: i64, delivered: Delivered },
    /// A record of a held key parked behind its key's records (false: the partition stopped).
    Parked { key: Vec<u8>, offset: i64, done: bool },
    /// A held key's head drained.
    Head { key: Vec<u8>, delivered: Delivered },
}

/// The worker of one partition in key order.
pub(crate) async fn run_worker<H: Handler>(
    shared: Arc<Shared<H>>,
    state: Arc<PartitionState>,
    mut records: mpsc::Receiver<OwnedMessage>,
    topic: String,
    partition: i32,
) {
    let concurrency = shared.settings.key_concurrency.max(1);
    let hold = shared.settings.partition_queue.max(concurrency);
    let group = shared.settings.group.clone();
    let mut unfinished = Unfinished::default();
    let commits =
        (shared.settings.group_commits > 0).then(|| Arc::new(GroupCommit::new(shared.settings.group_commits)));
    let mut waiting = Waiting::default();
    let mut running: JoinSet<Ended> = JoinSet::new();
    // Records' deliveries running (what `key_concurrency` bounds; parking and draining a held
    // key's head run beside them).
    let mut delivering = 0;
    let mut stop = state.stop.subscribe();
    // The keys held by the quarantine: the partition's parked records, before any new record.
    let mut held = match shared.settings.retry_mode {
        RetryMode::Topic => quarantine::Held::default(),
        RetryMode::Quarantine => {
            let loaded = delivery::until_done(&shared, stop.clone(), "load the partition's parked records", || {
                quarantine::load_partition(&shared.pool, &group, &topic, partition)
            });
            match loaded.await {
                Some(held) => held,
                None => return,
            }
        }
    };
    let mut gauges = Gauges::new(&shared, &topic, partition);
    let store = |safe: Option<i64>| {
        if let Some(safe) = safe
            && let Err(error) = shared.consumer.store_offset(&topic, partition, safe)
        {
            // Revoked and the grace period passed; the next owner re-reads.
            tracing::debug!(%error, %topic, partition, "offset not stored");
        }
    };
    // Set when the partition stopped, the queue closed or a record was abandoned: nothing new
    // starts; what runs finishes.
    let mut ending = false;
    loop {
        if state.is_stopped() {
            ending = true;
        }
        while !ending && delivering < concurrency {
            let Some(message) = waiting.ready.pop_front() else { break };
            let (shared, mut stop, commits) = (shared.clone(), state.stop.subscribe(), commits.clone());
            delivering += 1;
            running.spawn(async move {
                let delivered = shared.in_flight(1, delivery::alone(&shared, &mut stop, &message, commits.as_deref()));
                let delivered = delivered.await.unwrap_or(Delivered::Abandoned);
                Ended::Record { key: message.key().map(<[u8]>::to_vec), offset: message.offset(), delivered }
            });
        }
        if !ending {
            for (key, offset, following) in held.next_heads() {
                let (shared, stop, topic) = (shared.clone(), state.stop.subscribe(), topic.clone());
                running.spawn(async move {
                    let delivered = quarantine::drain_head(&shared, stop, &topic, partition, offset, following).await;
                    Ended::Head { key, delivered }
                });
            }
        }
        gauges.report(&held);
        state.busy.store(!running.is_empty(), Ordering::Release);
        if ending && running.is_empty() {
            break;
        }
        let take = !ending && waiting.held < hold;
        tokio::select! {
            Some(done) = running.join_next(), if !running.is_empty() => match done {
                Ok(Ended::Record { key, offset, delivered }) if delivered.finished() => {
                    delivering -= 1;
                    match (delivered, key) {
                        (Delivered::Parked, Some(key)) => {
                            // The key is held: what waits behind it in memory is parked too.
                            held.hold(&key, offset);
                            for message in waiting.hold(&key) {
                                held.arrive(&key, message.offset());
                                park(&mut running, &shared, &state, message);
                            }
                        }
                        (_, key) => waiting.finished(key.as_deref()),
                    }
                    store(unfinished.finish(offset));
                }
                Ok(Ended::Parked { key, offset, done: true }) => {
                    held.written(&key, offset);
                    waiting.held -= 1;
                    store(unfinished.finish(offset));
                }
                Ok(Ended::Head { key, delivered }) if delivered.finished() => {
                    let follows = delivered == Delivered::DeadLettered
                        && shared.settings.after_dead_letter == AfterDeadLetter::Follow;
                    held.head_ended(&key, follows.then(|| FOLLOWS.to_string()));
                }
                Ok(Ended::Head { key, .. }) => {
                    held.head_abandoned(&key);
                    ending = true;
                }
                // Abandoned (the partition stopped) or the task failed: it stays unfinished,
                // and so does everything after it.
                Ok(Ended::Record { .. } | Ended::Parked { .. }) => ending = true,
                Err(error) => {
                    tracing::error!(%group, %error, "a record's task failed; the partition stops here");
                    ending = true;
                }
            },
            received = records.recv(), if take => match received {
                Some(message) => {
                    unfinished.take(message.offset());
                    match message.key().map(<[u8]>::to_vec) {
                        Some(key) if held.holds(&key) => {
                            if held.arrive(&key, message.offset()) {
                                waiting.held += 1;
                                park(&mut running, &shared, &state, message);
                            } else {
                                // Parked or finished before: a redelivery.
                                store(unfinished.finish(message.offset()));
                            }
                        }
                        _ => waiting.arrive(message),
                    }
                }
                None => ending = true,
            },
            _ = stop.wait_for(|stopped| *stopped), if !ending => ending = true,
        }
    }
    gauges.clear();
    state.busy.store(false, Ordering::Release);
}

/// Why a record parked after its key's head was dead-lettered follows it (the rows parked
/// before carry the head's place: [`quarantine`]).
const FOLLOWS: &str = "an earlier record of this key was dead-lettered before it; this one follows it unhandled";

/// Parks `message` behind its held key's records.
fn park<H: Handler>(
    running: &mut JoinSet<Ended>,
    shared: &Arc<Shared<H>>,
    state: &PartitionState,
    message: OwnedMessage,
) {
    let (shared, stop) = (shared.clone(), state.stop.subscribe());
    running.spawn(async move {
        let origin = delivery::origin_of(&shared, &message);
        let group = shared.settings.group.as_str();
        let parked = delivery::until_done(&shared, stop, "park a record behind its key", || {
            quarantine::park(&shared.pool, group, &message, &origin, None)
        });
        let done = parked.await.is_some();
        if done {
            shared.metrics.count(group, &origin.topic, "parked");
        }
        Ended::Parked { key: message.key().unwrap_or_default().to_vec(), offset: message.offset(), done }
    });
}

/// The quarantine's gauges, as far as this partition adds to them.
struct Gauges<'a, H> {
    shared: &'a Shared<H>,
    place: (String, i32),
    keys: i64,
    records: i64,
}

impl<'a, H> Gauges<'a, H> {
    fn new(shared: &'a Shared<H>, topic: &str, partition: i32) -> Self {
        Gauges { shared, place: (topic.to_string(), partition), keys: 0, records: 0 }
    }

    fn report(&mut self, held: &quarantine::Held) {
        let (keys, records, oldest) = held.gauges();
        let (keys, records) = (keys as i64, records as i64);
        if (keys, records) == (self.keys, self.records) {
            return;
        }
        let group = [self.shared.settings.group.as_str()];
        self.shared.metrics.quarantined_keys.with_label_values(&group).add(keys - self.keys);
        self.shared.metrics.parked_records.with_label_values(&group).add(records - self.records);
        (self.keys, self.records) = (keys, records);
        self.shared.parked_since(&self.place, oldest);
    }

    fn clear(&mut self) {
        self.report(&quarantine::Held::default());
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;

    use super::*;

    fn record(offset: i64, key: Option<&str>) -> OwnedMessage {
        OwnedMessage::new(
            None,
            key.map(|k| k.as_bytes().to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    #[test]
    fn the_stored_offset_stays_below_the_lowest_unfinished_record() {
        let mut unfinished = Unfinished::default();
        for offset in 10..15 {
            unfinished.take(offset);
        }
        assert_eq!(unfinished.finish(12), None, "10 and 11 are not finished");
        assert_eq!(unfinished.finish(10), Some(10));
        assert_eq!(unfinished.finish(14), None, "11 is not finished");
        assert_eq!(unfinished.finish(11), Some(12));
        assert_eq!(unfinished.finish(13), Some(14), "all finished: the highest taken");
        assert!(unfinished.offsets.is_empty());
        unfinished.take(20);
        assert_eq!(unfinished.finish(20), Some(20), "a gap in the offsets (a transaction marker) is no record");
    }

    #[test]
    fn a_key_runs_one_record_at_a_time_in_order_and_other_keys_pass_it() {
        let mut waiting = Waiting::default();
        for (offset, key) in [(0, Some("a")), (1, Some("a")), (2, Some("b")), (3, None), (4, Some("a"))] {
            waiting.arrive(record(offset, key));
        }
        let ready: Vec<i64> = waiting.ready.drain(..).map(|m| m.offset()).collect();
        assert_eq!(ready, vec![0, 2, 3], "a's later records wait behind its first");
        waiting.finished(Some(b"b"));
        waiting.finished(None);
        assert!(waiting.ready.is_empty());
        waiting.finished(Some(b"a"));
        assert_eq!(waiting.ready.pop_front().map(|m| m.offset()), Some(1));
        waiting.finished(Some(b"a"));
        assert_eq!(waiting.ready.pop_front().map(|m| m.offset()), Some(4));
        waiting.finished(Some(b"a"));
        assert!(waiting.behind.is_empty() && waiting.held == 0, "every key free again");
    }
}

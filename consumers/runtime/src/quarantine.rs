//! The quarantine (`--retry-mode quarantine`, key order only): a retry mode that keeps a key's
//! order.
//!
//! When a record's handler asks for another try (`Retry`, `Rejected`), the record is parked in
//! `quarantined_records` instead of the retry topic, and its key is held: every later record of
//! that key is parked behind it as it arrives, while the partition's other keys go on. A parked
//! record counts as finished for the group's offsets (the row keeps it), so a held key never
//! pins the partition's commit, and a crash or rebalance loses nothing: the partition's next
//! worker loads its parked records before it takes any record from Kafka.
//!
//! A held key drains from its head, one record at a time in offset order: the head is tried
//! again when due (exponential backoff with full jitter, as the retry topic), and once handled
//! its row is deleted and the next becomes the head. When the head is dead-lettered (`Dead`, or
//! `max_attempts` spent), the records behind it resume (`--quarantine-after-dead-letter resume`,
//! the default) or follow it to the DLT unhandled (`follow`, class `key_dead_lettered`), so a
//! replay of the DLT replays the key in order. The key is free again when nothing of it is
//! parked.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use rdkafka::{
    Message, Timestamp,
    message::{Header, Headers, OwnedHeaders, OwnedMessage},
};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::{
    AfterDeadLetter, Handler,
    delivery::{self, Delivered},
    dlt::{Origin, Reason},
    partition::Shared,
};

/// A failed attempt's bookkeeping, kept with a parked record.
pub(crate) struct History<'a> {
    pub attempts: u32,
    pub first_failure: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub error: &'a str,
}

/// Parks `message` (it must have a key): with `history` after a failed attempt (a row already
/// parked gets the new attempt count and due time), without it behind its key's head (a row
/// already parked is left as it is). A record parked while its key's records follow a dead
/// letter follows too.
pub(crate) async fn park(
    pool: &PgPool,
    group: &str,
    message: &OwnedMessage,
    origin: &Origin,
    history: Option<&History<'_>>,
) -> sqlx::Result<()> {
    let (names, values): (Vec<String>, Vec<Option<Vec<u8>>>) = message
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).unzip())
        .unwrap_or_default();
    let error = history.map(|h| h.error.chars().take(2000).collect::<String>());
    sqlx::query(
        "INSERT INTO quarantined_records (consumer_group, topic, kafka_partition, kafka_offset, record_key,
             payload, header_names, header_values, record_timestamp_ms, origin_topic, origin_partition,
             origin_offset, attempts, first_failure_at, due_at, last_error, follows)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
             (SELECT follows FROM quarantined_records WHERE consumer_group = $1 AND topic = $2
                AND kafka_partition = $3 AND record_key = $5 AND follows IS NOT NULL LIMIT 1))
         ON CONFLICT (consumer_group, topic, kafka_partition, kafka_offset) DO UPDATE
         SET attempts = EXCLUDED.attempts, first_failure_at = EXCLUDED.first_failure_at,
             due_at = EXCLUDED.due_at, last_error = EXCLUDED.last_error
         WHERE EXCLUDED.attempts > 0",
    )
    .bind(group)
    .bind(message.topic())
    .bind(message.partition())
    .bind(message.offset())
    .bind(message.key().unwrap_or_default())
    .bind(message.payload())
    .bind(&names)
    .bind(&values)
    .bind(message.timestamp().to_millis())
    .bind(&origin.topic)
    .bind(origin.partition)
    .bind(origin.offset)
    .bind(history.map_or(0, |h| h.attempts.min(i32::MAX as u32) as i32))
    .bind(history.map(|h| h.first_failure))
    .bind(history.map(|h| h.due_at))
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// A parked record as its key's head: the record, its history, and whether it follows a dead
/// letter.
pub(crate) struct ParkedRecord {
    pub message: OwnedMessage,
    pub origin: Origin,
    pub follows: Option<String>,
}

type Row = (
    Vec<u8>,
    Option<Vec<u8>>,
    Vec<String>,
    Vec<Option<Vec<u8>>>,
    Option<i64>,
    String,
    i32,
    i64,
    i32,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
);

/// The parked record at `offset` of the partition, if it is still parked.
async fn load(
    pool: &PgPool,
    group: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> sqlx::Result<Option<ParkedRecord>> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT record_key, payload, header_names, header_values, record_timestamp_ms, origin_topic,
                origin_partition, origin_offset, attempts, first_failure_at, due_at, follows
         FROM quarantined_records
         WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3 AND kafka_offset = $4",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .bind(offset)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(
        |(
            key,
            payload,
            names,
            values,
            timestamp,
            origin_topic,
            origin_partition,
            origin_offset,
            attempts,
            first,
            due,
            follows,
        )| {
            let headers = names
                .iter()
                .zip(&values)
                .fold(OwnedHeaders::new(), |h, (key, value)| h.insert(Header { key, value: value.as_deref() }));
            let timestamp = timestamp.map_or(Timestamp::NotAvailable, Timestamp::CreateTime);
            let message =
                OwnedMessage::new(payload, Some(key), topic.to_string(), timestamp, partition, offset, Some(headers));
            let origin = Origin {
                topic: origin_topic,
                partition: origin_partition,
                offset: origin_offset,
                attempts: attempts.max(0) as u32,
                first_failure: first,
                due_at: due,
            };
            ParkedRecord { message, origin, follows }
        },
    ))
}

/// Deletes the parked record at `offset`, its key's head, once it reached a final state; with
/// `follows`, the key's records still parked are marked to follow it to the DLT.
async fn release(pool: &PgPool, group: &str, head: &OwnedMessage, follows: Option<&str>) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "DELETE FROM quarantined_records
         WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3 AND kafka_offset = $4",
    )
    .bind(group)
    .bind(head.topic())
    .bind(head.partition())
    .bind(head.offset())
    .execute(&mut *tx)
    .await?;
    if let Some(follows) = follows {
        sqlx::query(
            "UPDATE quarantined_records SET follows = $5
             WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3 AND record_key = $4
               AND follows IS NULL",
        )
        .bind(group)
        .bind(head.topic())
        .bind(head.partition())
        .bind(head.key().unwrap_or_default())
        .bind(follows)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// The partition's parked records, as a new worker starts.
pub(crate) async fn load_partition(pool: &PgPool, group: &str, topic: &str, partition: i32) -> sqlx::Result<Held> {
    let rows: Vec<(Vec<u8>, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT record_key, kafka_offset, parked_at FROM quarantined_records
         WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3 ORDER BY kafka_offset",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .fetch_all(pool)
    .await?;
    let mut held = Held::default();
    for (key, offset, parked_at) in rows {
        held.keys.entry(key).or_default().entries.push_back(Entry { offset, written: true, parked_at });
    }
    Ok(held)
}

/// Takes a held key's head to a final state: tried again when due (or sent after a dead letter
/// it follows), then its row deleted. Returns how it ended; `Abandoned` when the partition
/// stopped first (the row stays for the next owner).
pub(crate) async fn drain_head<H: Handler>(
    shared: &Shared<H>,
    mut stop: watch::Receiver<bool>,
    topic: &str,
    partition: i32,
    offset: i64,
    following: Option<String>,
) -> Delivered {
    let (pool, group) = (&shared.pool, shared.settings.group.as_str());
    loop {
        let loaded = delivery::until_done(shared, stop.clone(), "read a parked record", || {
            load(pool, group, topic, partition, offset)
        });
        let record = match loaded.await {
            None => return Delivered::Abandoned,
            // Released already (a worker that ended after its delete, before it learned of it).
            Some(None) => return Delivered::Done,
            Some(Some(record)) => record,
        };
        let delivered = match record.follows.or_else(|| following.clone()) {
            Some(follows) => {
                let first_failure = record.origin.first_failure.unwrap_or_else(Utc::now);
                let reason = Reason {
                    class: "key_dead_lettered",
                    message: &follows,
                    attempts: record.origin.attempts,
                    first_failure,
                };
                match delivery::dead_letter(shared, stop.clone(), &record.message, &record.origin, reason).await {
                    true => Delivered::DeadLettered,
                    false => Delivered::Abandoned,
                }
            }
            None => {
                if let Some(due) = record.origin.due_at {
                    let wait = (due - Utc::now()).to_std().unwrap_or_default();
                    if !wait.is_zero() && !delivery::pause(&mut stop, wait).await {
                        return Delivered::Abandoned;
                    }
                }
                let origin = Origin { due_at: None, ..record.origin.clone() };
                let delivery = delivery::alone_from(shared, &mut stop, &record.message, origin, None);
                shared.in_flight(1, delivery).await.unwrap_or(Delivered::Abandoned)
            }
        };
        let follows = match (delivered, shared.settings.after_dead_letter) {
            (Delivered::Abandoned, _) => return Delivered::Abandoned,
            // Failed again: the row has its new attempt count and due time.
            (Delivered::Parked, _) => continue,
            (Delivered::DeadLettered, AfterDeadLetter::Follow) => Some(format!(
                "record {}/{}@{} of this key was dead-lettered before it; this one follows it unhandled",
                record.origin.topic, record.origin.partition, record.origin.offset
            )),
            _ => None,
        };
        let released = delivery::until_done(shared, stop.clone(), "release a parked record", || {
            release(pool, group, &record.message, follows.as_deref())
        });
        return match released.await {
            Some(()) => delivered,
            // The next owner finds the row and goes through it again (deduped if handled).
            None => Delivered::Abandoned,
        };
    }
}

/// A parked record as the worker tracks it: its offset, whether its row is written, since when.
#[derive(Debug)]
struct Entry {
    offset: i64,
    written: bool,
    parked_at: DateTime<Utc>,
}

/// One held key: its parked records in offset order, whether its head is being drained, and
/// the dead letter its records follow (in `follow`).
#[derive(Debug, Default)]
struct Key {
    entries: VecDeque<Entry>,
    draining: bool,
    following: Option<String>,
}

/// The held keys of one partition, as its worker tracks them (the rows are the durable truth).
#[derive(Debug, Default)]
pub(crate) struct Held {
    keys: HashMap<Vec<u8>, Key>,
}

impl Held {
    pub fn holds(&self, key: &[u8]) -> bool {
        self.keys.contains_key(key)
    }

    /// `key`'s record at `offset` was parked by its delivery (a failed attempt): the key is held
    /// with it at the head.
    pub fn hold(&mut self, key: &[u8], offset: i64) {
        let held = self.keys.entry(key.to_vec()).or_default();
        held.entries.push_back(Entry { offset, written: true, parked_at: Utc::now() });
    }

    /// A record of a held key arrived: true when it must be parked behind the key's records;
    /// false when it already is, or was finished before the key's parked records (a redelivery).
    pub fn arrive(&mut self, key: &[u8], offset: i64) -> bool {
        let Some(held) = self.keys.get_mut(key) else { return false };
        if held.entries.back().is_some_and(|last| last.offset >= offset) {
            return false;
        }
        held.entries.push_back(Entry { offset, written: false, parked_at: Utc::now() });
        true
    }

    /// The row of `key`'s record at `offset` is written.
    pub fn written(&mut self, key: &[u8], offset: i64) {
        if let Some(entry) = self.keys.get_mut(key).and_then(|k| k.entries.iter_mut().find(|e| e.offset == offset)) {
            entry.written = true;
        }
    }

    /// The heads ready to drain (written, not draining yet): `(key, offset, following)`, now
    /// marked draining.
    pub fn next_heads(&mut self) -> Vec<(Vec<u8>, i64, Option<String>)> {
        let mut heads = Vec::new();
        for (key, held) in self.keys.iter_mut().filter(|(_, k)| !k.draining) {
            if let Some(head) = held.entries.front().filter(|e| e.written) {
                held.draining = true;
                heads.push((key.clone(), head.offset, held.following.clone()));
            }
        }
        heads
    }

    /// `key`'s head reached a final state: the next record becomes the head, or the key is
    /// free (true). `follows` is set when the head was dead-lettered and the rest follow it.
    pub fn head_ended(&mut self, key: &[u8], follows: Option<String>) -> bool {
        let Some(held) = self.keys.get_mut(key) else { return true };
        held.draining = false;
        held.entries.pop_front();
        if follows.is_some() {
            held.following = follows;
        }
        if held.entries.is_empty() {
            self.keys.remove(key);
            return true;
        }
        false
    }

    /// A head's drain was abandoned (the partition stopped): it may start again.
    pub fn head_abandoned(&mut self, key: &[u8]) {
        if let Some(held) = self.keys.get_mut(key) {
            held.draining = false;
        }
    }

    /// Keys held, records parked (written), and when the oldest parked record was parked.
    pub fn gauges(&self) -> (usize, usize, Option<DateTime<Utc>>) {
        let parked = self.keys.values().flat_map(|k| &k.entries).filter(|e| e.written);
        let (count, oldest) = parked.fold((0, None), |(n, oldest): (usize, Option<DateTime<Utc>>), e| {
            (n + 1, Some(oldest.map_or(e.parked_at, |o| o.min(e.parked_at))))
        });
        (self.keys.len(), count, oldest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_key_parks_its_later_records_and_drains_them_in_order() {
        let mut held = Held::default();
        held.hold(b"a", 5);
        assert!(held.holds(b"a") && !held.holds(b"b"));
        assert!(held.arrive(b"a", 7));
        assert!(held.arrive(b"a", 9));
        assert!(!held.arrive(b"a", 7), "parked already (a redelivery)");
        assert!(!held.arrive(b"a", 6), "finished before the key was held");
        assert!(!held.arrive(b"b", 8), "b is not held");
        assert_eq!(held.next_heads(), vec![(b"a".to_vec(), 5, None)]);
        assert!(held.next_heads().is_empty(), "one head of a key at a time");
        assert_eq!((held.gauges().0, held.gauges().1), (1, 1), "7 and 9 not written yet");
        held.written(b"a", 9);
        assert!(!held.head_ended(b"a", None));
        assert!(held.next_heads().is_empty(), "7 is the head and its row is not written yet");
        held.written(b"a", 7);
        assert_eq!(held.next_heads(), vec![(b"a".to_vec(), 7, None)]);
        assert!(!held.head_ended(b"a", Some("follows 7".into())));
        assert_eq!(held.next_heads(), vec![(b"a".to_vec(), 9, Some("follows 7".into()))]);
        assert!(held.head_ended(b"a", None), "nothing parked: a is free");
        assert!(!held.holds(b"a"));
        assert_eq!(held.gauges(), (0, 0, None));
    }

    #[test]
    fn an_abandoned_head_drains_again() {
        let mut held = Held::default();
        held.hold(b"k", 1);
        assert_eq!(held.next_heads().len(), 1);
        held.head_abandoned(b"k");
        assert_eq!(held.next_heads(), vec![(b"k".to_vec(), 1, None)]);
    }
}

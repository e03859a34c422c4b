//! Operator tools for dead-letter topics: read a DLT with its reasons, and replay chosen records
//! to the topic they came from. Replays are safe: every consumer dedupes on `event_id`, so a
//! record that was in fact handled is skipped, and one that was not is handled now.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, bail};
use orderflow_platform::kafka::KafkaSettings;
use orderflow_schemas::headers;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::{Header, Headers, OwnedHeaders, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
};

/// One dead-lettered record and why it is there.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub original_topic: Option<String>,
    pub error_class: String,
    pub error_message: String,
    pub attempts: Option<String>,
    pub message: OwnedMessage,
}

fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    message.headers()?.iter().find(|h| h.key == name)?.value.map(|v| String::from_utf8_lossy(v).into_owned())
}

impl DeadLetter {
    /// A record read from a DLT, with the reasons its headers carry.
    pub fn of(message: OwnedMessage) -> DeadLetter {
        DeadLetter {
            partition: message.partition(),
            offset: message.offset(),
            event_id: header(&message, headers::EVENT_ID),
            event_type: header(&message, headers::EVENT_TYPE),
            original_topic: header(&message, headers::dlt::ORIGINAL_TOPIC),
            error_class: header(&message, headers::dlt::ERROR_CLASS).unwrap_or_else(|| "unknown".into()),
            error_message: header(&message, headers::dlt::ERROR_MESSAGE).unwrap_or_default(),
            attempts: header(&message, headers::dlt::ATTEMPTS),
            message,
        }
    }
}

/// Reads a DLT from the beginning to its current end.
pub fn read(kafka: &KafkaSettings, dlt: &str) -> anyhow::Result<Vec<DeadLetter>> {
    read_tail(kafka, dlt, None)
}

/// Reads a DLT to its current end: every record, or the last `last` of each partition.
pub fn read_tail(kafka: &KafkaSettings, dlt: &str, last: Option<i64>) -> anyhow::Result<Vec<DeadLetter>> {
    let group = kafka.group(&format!("dlt-reader-{}", uuid::Uuid::new_v4().simple()));
    let consumer: BaseConsumer = kafka.consumer("orderflow-dlt", &group).create().context("creating a reader")?;
    let metadata = consumer.fetch_metadata(Some(dlt), Duration::from_secs(10)).context("reading topic metadata")?;
    let Some(topic) = metadata.topics().iter().find(|t| t.name() == dlt) else { bail!("no topic {dlt}") };
    if topic.partitions().is_empty() {
        bail!("no topic {dlt}");
    }
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in topic.partitions() {
        let (low, high) = consumer.fetch_watermarks(dlt, partition.id(), Duration::from_secs(10))?;
        let from = last.map_or(low, |last| (high - last).max(low));
        if high > from {
            ends.insert(partition.id(), high);
            assignment.add_partition_offset(dlt, partition.id(), Offset::Offset(from))?;
        }
    }
    consumer.assign(&assignment)?;
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        if std::time::Instant::now() > deadline {
            bail!("timed out reading {dlt}");
        }
        let Some(received) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = received.context("reading the DLT")?.detach();
        if ends.get(&message.partition()).is_some_and(|end| message.offset() + 1 >= *end) {
            ends.remove(&message.partition());
        }
        out.push(DeadLetter::of(message));
    }
    out.sort_by_key(|d| (d.partition, d.offset));
    Ok(out)
}

/// The record of a DLT at `partition` and `offset`; `None` when there is none (past its end, or
/// deleted by retention).
pub fn read_one(kafka: &KafkaSettings, dlt: &str, partition: i32, offset: i64) -> anyhow::Result<Option<DeadLetter>> {
    let group = kafka.group(&format!("dlt-reader-{}", uuid::Uuid::new_v4().simple()));
    let consumer: BaseConsumer = kafka.consumer("orderflow-dlt", &group).create().context("creating a reader")?;
    let (low, high) =
        consumer.fetch_watermarks(dlt, partition, Duration::from_secs(10)).context("reading the DLT's offsets")?;
    if !(low..high).contains(&offset) {
        return Ok(None);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(dlt, partition, Offset::Offset(offset))?;
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let Some(received) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = received.context("reading the DLT")?.detach();
        // A compacted or transactional topic may skip the offset asked for.
        return Ok((message.offset() == offset).then(|| DeadLetter::of(message)));
    }
    bail!("timed out reading {dlt} [{partition}] at {offset}")
}

/// Which dead letters to replay; every given criterion must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only this partition's records.
    pub partition: Option<i32>,
    /// Offsets from–to, inclusive.
    pub offsets: Option<(i64, i64)>,
    pub event_id: Option<String>,
    pub error_class: Option<String>,
}

impl Selection {
    pub fn matches(&self, d: &DeadLetter) -> bool {
        self.partition.is_none_or(|p| p == d.partition)
            && self.offsets.is_none_or(|(from, to)| (from..=to).contains(&d.offset))
            && self.event_id.as_ref().is_none_or(|id| d.event_id.as_ref() == Some(id))
            && self.error_class.as_ref().is_none_or(|class| &d.error_class == class)
    }

    /// Whether it names no criterion (it would match every record).
    pub fn is_everything(&self) -> bool {
        *self == Selection::default()
    }
}

/// The records of `dlt` the selection matches, read to the topic's current end.
pub fn select(kafka: &KafkaSettings, dlt: &str, selection: &Selection) -> anyhow::Result<Vec<DeadLetter>> {
    Ok(read(kafka, dlt)?.into_iter().filter(|d| selection.matches(d)).collect())
}

/// Re-publishes the selected records, unchanged but for the `dlt_*` headers, to their original
/// topics; returns how many were sent.
pub async fn replay(kafka: &KafkaSettings, dlt: &str, selection: &Selection) -> anyhow::Result<usize> {
    let chosen = select(kafka, dlt, selection)?;
    replay_records(kafka, dlt, &chosen).await
}

/// Re-publishes `chosen` (records read from `dlt`) to their original topics, all in flight at
/// once; every record is checked for its destination before any is sent. Returns how many were
/// sent; an error says how many of them the brokers did not take.
pub async fn replay_records(kafka: &KafkaSettings, dlt: &str, chosen: &[DeadLetter]) -> anyhow::Result<usize> {
    let mut destinations = Vec::with_capacity(chosen.len());
    for dead in chosen {
        let Some(topic) = dead.original_topic.as_deref() else {
            bail!("{dlt} [{}] offset {} has no {} header", dead.partition, dead.offset, headers::dlt::ORIGINAL_TOPIC);
        };
        destinations.push(topic);
    }
    let producer: FutureProducer = kafka.producer("orderflow-dlt-replay", Duration::from_secs(30)).create()?;
    let sends = chosen.iter().zip(&destinations).map(|(dead, topic)| {
        let mut headers = OwnedHeaders::new();
        if let Some(existing) = dead.message.headers() {
            for h in existing.iter().filter(|h| !h.key.starts_with(headers::dlt::PREFIX)) {
                headers = headers.insert(Header { key: h.key, value: h.value });
            }
        }
        let mut record = FutureRecord::to(topic).headers(headers);
        if let Some(key) = dead.message.key() {
            record = record.key(key);
        }
        if let Some(payload) = dead.message.payload() {
            record = record.payload(payload);
        }
        producer.send(record, Duration::from_secs(30))
    });
    let results = futures::future::join_all(sends).await;
    let failed: Vec<String> = results.into_iter().filter_map(|r| r.err().map(|(e, _)| e.to_string())).collect();
    if let Some(first) = failed.first() {
        bail!(
            "{} of {} records were not replayed (first: {first}); replaying them again is safe",
            failed.len(),
            chosen.len()
        );
    }
    Ok(chosen.len())
}

/// The consumer group whose committed offsets on a DLT say how far an operator has triaged it
/// (the lag exporter reports the rest as untriaged dead letters).
pub const TRIAGE_GROUP: &str = "orderflow-dlt-triage";

/// Where triage of one partition of a DLT stands and would move to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriageMark {
    pub partition: i32,
    /// The first untriaged offset now.
    pub before: i64,
    /// The first untriaged offset after marking.
    pub next: i64,
}

impl TriageMark {
    /// Records this mark triages.
    pub fn count(&self) -> i64 {
        self.next - self.before
    }
}

/// What marking `dlt` triaged through `through` (inclusive) on every partition, or through its
/// current end when `None`, would do; nothing is changed. Triage never moves backwards.
pub fn triage_plan(kafka: &KafkaSettings, dlt: &str, through: Option<i64>) -> anyhow::Result<Vec<TriageMark>> {
    let consumer: BaseConsumer =
        kafka.consumer("orderflow-dlt", &kafka.group(TRIAGE_GROUP)).create().context("creating a client")?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(dlt), timeout).context("reading topic metadata")?;
    let Some(topic) = metadata.topics().iter().find(|t| t.name() == dlt && !t.partitions().is_empty()) else {
        bail!("no topic {dlt}")
    };
    let mut all = TopicPartitionList::new();
    for partition in topic.partitions() {
        all.add_partition(dlt, partition.id());
    }
    let committed = consumer.committed_offsets(all, timeout).context("reading what was triaged before")?;
    let mut plan = Vec::new();
    for partition in topic.partitions() {
        let (low, high) = consumer.fetch_watermarks(dlt, partition.id(), timeout)?;
        let before = committed
            .find_partition(dlt, partition.id())
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .unwrap_or(low)
            .max(low);
        let next = through.map_or(high, |t| (t + 1).clamp(low, high)).max(before);
        plan.push(TriageMark { partition: partition.id(), before, next });
    }
    plan.sort_by_key(|m| m.partition);
    Ok(plan)
}

/// Commits the triage group to `marks` (partition, first untriaged offset); a mark behind what
/// is already triaged leaves that partition as it is.
pub fn commit_triage(kafka: &KafkaSettings, dlt: &str, marks: &[(i32, i64)]) -> anyhow::Result<Vec<(i32, i64)>> {
    let now = triage_plan(kafka, dlt, Some(-1))?;
    let mut list = TopicPartitionList::new();
    let mut out = Vec::new();
    for &(partition, next) in marks {
        let Some(current) = now.iter().find(|m| m.partition == partition) else {
            bail!("{dlt} has no partition {partition}")
        };
        let next = next.max(current.before);
        list.add_partition_offset(dlt, partition, Offset::Offset(next))?;
        out.push((partition, next));
    }
    let consumer: BaseConsumer =
        kafka.consumer("orderflow-dlt", &kafka.group(TRIAGE_GROUP)).create().context("creating a client")?;
    consumer.commit(&list, rdkafka::consumer::CommitMode::Sync).context("recording the triage")?;
    Ok(out)
}

/// Marks a DLT as triaged through `through` (inclusive) on every partition, or through its
/// current end when `None`, by committing the triage group; returns (partition, next untriaged
/// offset) per partition. Triage never moves backwards.
pub fn mark_triaged(kafka: &KafkaSettings, dlt: &str, through: Option<i64>) -> anyhow::Result<Vec<(i32, i64)>> {
    let plan = triage_plan(kafka, dlt, through)?;
    let marks: Vec<(i32, i64)> = plan.iter().map(|m| (m.partition, m.next)).collect();
    commit_triage(kafka, dlt, &marks)
}

/// Whether `topic` exists.
pub fn exists(kafka: &KafkaSettings, topic: &str) -> anyhow::Result<bool> {
    let group = kafka.group(&format!("dlt-reader-{}", uuid::Uuid::new_v4().simple()));
    let consumer: BaseConsumer = kafka.consumer("orderflow-dlt", &group).create().context("creating a client")?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).context("reading topic metadata")?;
    Ok(metadata.topics().iter().any(|t| t.name() == topic && !t.partitions().is_empty() && t.error().is_none()))
}

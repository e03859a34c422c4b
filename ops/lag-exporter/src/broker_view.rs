//! One look at the broker: every partition's watermarks, every consumer group's committed
//! offsets, and the time of each group's oldest unconsumed record — read through the Kafka
//! protocol (Metadata, ListOffsets, ListGroups, OffsetFetch, Fetch), never from the consumers,
//! so a group whose every member has crashed still shows its lag growing.
//!
//! The calls block; [`BrokerReader::read`] runs off the async threads.
//!
//! With a namespace (`ORDERFLOW_KAFKA_NAMESPACE`), only that namespace's topics and groups are
//! read, and the configured groups are logical names within it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use orderflow_platform::kafka::KafkaSettings;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};

/// After the broker refused to list groups, reads between attempts to list them again.
const LIST_RETRY_POLLS: u64 = 30;

/// Groups whose name starts with this are the exporter's own.
const OWN_GROUP_PREFIX: &str = "orderflow-lag-exporter";

#[derive(Debug, Clone, PartialEq)]
pub struct PartitionOffsets {
    pub topic: String,
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupPartition {
    pub topic: String,
    pub partition: i32,
    /// The next offset the group will read.
    pub committed: i64,
    /// Records between the committed offset and the high watermark.
    pub lag: i64,
    /// How old the oldest unconsumed record is (0 with no lag); `None` when it could not be read.
    pub lag_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupView {
    pub name: String,
    /// Members the coordinator lists (0 for a group it knows only by its commits); `None` when
    /// the broker would not list groups.
    pub members: Option<usize>,
    /// The coordinator's state of the group (`Stable`, `PreparingRebalance`,
    /// `CompletingRebalance`, `Empty`, `Dead`) and its members (`client-id@host member-id`,
    /// sorted); `None` and empty when the broker would not list groups.
    pub state: Option<String>,
    pub member_ids: Vec<String>,
    pub partitions: Vec<GroupPartition>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub partitions: Vec<PartitionOffsets>,
    pub groups: Vec<GroupView>,
}

pub struct ReaderSettings {
    pub kafka: KafkaSettings,
    /// Groups to report even before the broker lists them (the rest are discovered); logical
    /// names.
    pub groups: Vec<String>,
    /// The group that marks dead-lettered records as triaged (`orderflow-dlt` commits it): on
    /// `*.DLT` topics it has not committed, it counts from the low watermark, so untriaged
    /// dead letters show as its lag.
    pub triage_group: Option<String>,
    /// Per broker request.
    pub timeout: Duration,
}

pub struct BrokerReader {
    settings: ReaderSettings,
    admin: BaseConsumer,
    /// Lists the groups; its own client, so a broker that drops the connection on ListGroups
    /// does not take the other reads with it.
    lister: BaseConsumer,
    listing_failed: bool,
    polls: u64,
    /// One client per group for OffsetFetch (it never joins the group).
    offset_readers: HashMap<String, BaseConsumer>,
    /// Assigned to the partitions a group lags on, to read the oldest unconsumed record's time.
    probe: BaseConsumer,
    /// Every group seen: a group whose members all crashed may drop out of ListGroups, but
    /// its commits (and its lag) remain.
    known: BTreeSet<String>,
    /// (topic, partition, offset) → the time (ms) of the record there, kept while a group lags
    /// at that offset: a stuck group's oldest record is read once.
    record_times: HashMap<(String, i32, i64), i64>,
}

impl BrokerReader {
    pub fn new(mut settings: ReaderSettings) -> anyhow::Result<Self> {
        let kafka = &settings.kafka;
        settings.groups = settings.groups.iter().map(|g| kafka.group(g)).collect();
        settings.triage_group = settings.triage_group.as_deref().map(|g| kafka.group(g));
        let own = kafka.group(OWN_GROUP_PREFIX);
        let admin = kafka.consumer(OWN_GROUP_PREFIX, &own).create().context("creating a client")?;
        let lister = kafka.consumer(OWN_GROUP_PREFIX, &own).create().context("creating a client")?;
        let probe = kafka
            .consumer(&format!("{OWN_GROUP_PREFIX}-probe"), &format!("{own}-probe"))
            .create()
            .context("creating the probe client")?;
        let known = settings.groups.iter().cloned().chain(settings.triage_group.clone()).collect();
        Ok(BrokerReader {
            settings,
            admin,
            lister,
            listing_failed: false,
            polls: 0,
            offset_readers: HashMap::new(),
            probe,
            known,
            record_times: HashMap::new(),
        })
    }

    pub fn read(&mut self) -> anyhow::Result<Snapshot> {
        let timeout = self.settings.timeout;
        let metadata = self.admin.fetch_metadata(None, timeout).context("reading the cluster's topics")?;
        let mut partitions = Vec::new();
        let namespace = self.settings.kafka.namespace.clone();
        let ours = |name: &str| !name.starts_with("__") && name.starts_with(&namespace);
        for topic in metadata.topics().iter().filter(|t| ours(t.name())) {
            for partition in topic.partitions() {
                let (low, high) = self
                    .admin
                    .fetch_watermarks(topic.name(), partition.id(), timeout)
                    .with_context(|| format!("reading the watermarks of {}/{}", topic.name(), partition.id()))?;
                partitions.push(PartitionOffsets {
                    topic: topic.name().to_string(),
                    partition: partition.id(),
                    low,
                    high,
                });
            }
        }

        // Listing groups (ListGroups + DescribeGroups) is best effort, on a client of its own:
        // lag must not depend on it (an ACL may refuse it) — the known groups' committed
        // offsets are read either way.
        // After a refusal, ask again only every LIST_RETRY_POLLS reads.
        let skip = self.listing_failed && !self.polls.is_multiple_of(LIST_RETRY_POLLS);
        self.polls += 1;
        let attempt = if skip { None } else { Some(self.lister.fetch_group_list(None, timeout)) };
        let listed: Option<BTreeMap<String, (String, Vec<String>)>> = match attempt {
            None => None,
            Some(Ok(list)) => Some(
                list.groups()
                    .iter()
                    .filter(|g| g.protocol_type().is_empty() || g.protocol_type() == "consumer")
                    .filter(|g| g.name().starts_with(&namespace))
                    .map(|g| {
                        let mut members: Vec<String> = g
                            .members()
                            .iter()
                            .map(|m| {
                                format!("{}@{} {}", m.client_id(), m.client_host().trim_start_matches('/'), m.id())
                            })
                            .collect();
                        members.sort();
                        (g.name().to_string(), (g.state().to_string(), members))
                    })
                    .collect(),
            ),
            Some(Err(error)) => {
                if !self.listing_failed {
                    tracing::warn!(%error, "the broker does not list consumer groups; reporting the configured and remembered groups, without member counts");
                }
                self.listing_failed = true;
                None
            }
        };
        if let Some(listed) = &listed {
            let own = self.settings.kafka.group(OWN_GROUP_PREFIX);
            self.known.extend(listed.keys().filter(|g| !g.starts_with(&own)).cloned());
        }

        let mut all = TopicPartitionList::new();
        for p in &partitions {
            all.add_partition(&p.topic, p.partition);
        }
        let mut groups = Vec::new();
        for name in self.known.clone() {
            let committed = self.committed(&name, &all)?;
            let is_triage = self.settings.triage_group.as_deref() == Some(name.as_str());
            let mut views = Vec::new();
            for p in &partitions {
                let start = match committed.get(&(p.topic.clone(), p.partition)) {
                    Some(offset) => *offset,
                    None if is_triage && p.topic.ends_with(".DLT") => p.low,
                    None => continue,
                };
                // A committed offset below the log start (retention deleted records) reads from
                // the log start.
                let committed = start.max(p.low);
                views.push(GroupPartition {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    committed,
                    lag: (p.high - committed).max(0),
                    lag_seconds: None,
                });
            }
            let entry = listed.as_ref().and_then(|l| l.get(&name));
            let members = listed.as_ref().map(|_| entry.map_or(0, |(_, m)| m.len()));
            let state = entry.map(|(state, _)| state.clone());
            let member_ids = entry.map(|(_, m)| m.clone()).unwrap_or_default();
            let gone = listed.as_ref().is_some_and(|l| !l.contains_key(&name));
            if views.is_empty() && gone && !self.settings.groups.contains(&name) && !is_triage {
                // Gone: no members, no commits (deleted, or expired by the broker).
                self.known.remove(&name);
                self.offset_readers.remove(&name);
                continue;
            }
            groups.push(GroupView { name, members, state, member_ids, partitions: views });
        }
        self.fill_record_times(&mut groups);
        Ok(Snapshot { partitions, groups })
    }

    /// The group's committed offsets, by (topic, partition); partitions it never committed are
    /// absent.
    fn committed(&mut self, group: &str, all: &TopicPartitionList) -> anyhow::Result<HashMap<(String, i32), i64>> {
        if !self.offset_readers.contains_key(group) {
            let client_id = format!("{OWN_GROUP_PREFIX}-offsets");
            let reader =
                self.settings.kafka.consumer(&client_id, group).create().context("creating an offset reader")?;
            self.offset_readers.insert(group.to_string(), reader);
        }
        let reader = &self.offset_readers[group];
        let committed = reader
            .committed_offsets(all.clone(), self.settings.timeout)
            .with_context(|| format!("reading the committed offsets of group {group}"))?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) if offset >= 0 => Some(((e.topic().to_string(), e.partition()), offset)),
                _ => None,
            })
            .collect())
    }

    /// Sets each lagging partition's `lag_seconds` from the timestamp of the record at its
    /// committed offset, reading each such record once.
    fn fill_record_times(&mut self, groups: &mut [GroupView]) {
        let lagging: BTreeSet<(String, i32, i64)> = groups
            .iter()
            .flat_map(|g| g.partitions.iter())
            .filter(|p| p.lag > 0)
            .map(|p| (p.topic.clone(), p.partition, p.committed))
            .collect();
        self.record_times.retain(|key, _| lagging.contains(key));
        let mut unread: Vec<(String, i32, i64)> =
            lagging.iter().filter(|key| !self.record_times.contains_key(*key)).cloned().collect();
        // Several groups may lag on one partition at different offsets: one offset per
        // partition per round.
        while !unread.is_empty() {
            let mut round: BTreeMap<(String, i32), i64> = BTreeMap::new();
            unread.retain(|(topic, partition, offset)| {
                let fresh = !round.contains_key(&(topic.clone(), *partition));
                if fresh {
                    round.insert((topic.clone(), *partition), *offset);
                }
                !fresh
            });
            self.read_record_times(&round);
        }
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default();
        for partition in groups.iter_mut().flat_map(|g| g.partitions.iter_mut()) {
            partition.lag_seconds = if partition.lag == 0 {
                Some(0.0)
            } else {
                self.record_times
                    .get(&(partition.topic.clone(), partition.partition, partition.committed))
                    .map(|at_ms| ((now_ms - at_ms).max(0)) as f64 / 1000.0)
            };
        }
    }

    /// Fetches the first record at or after each given offset and remembers its time.
    fn read_record_times(&mut self, offsets: &BTreeMap<(String, i32), i64>) {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in offsets {
            if list.add_partition_offset(topic, *partition, Offset::Offset(*offset)).is_err() {
                return;
            }
        }
        if let Err(error) = self.probe.assign(&list) {
            tracing::warn!(%error, "cannot assign the probe; lag in seconds is not reported this round");
            return;
        }
        let mut missing: BTreeSet<(String, i32)> = offsets.keys().cloned().collect();
        let deadline = Instant::now() + self.settings.timeout;
        while !missing.is_empty() && Instant::now() < deadline {
            match self.probe.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    let key = (message.topic().to_string(), message.partition());
                    if missing.remove(&key)
                        && let Some(at_ms) = message.timestamp().to_millis()
                    {
                        // Keyed by the offset asked for: the first record at or after it.
                        let offset = offsets[&key];
                        self.record_times.insert((key.0, key.1, offset), at_ms);
                    }
                }
                Some(Err(error)) => tracing::debug!(%error, "probe fetch"),
                None => {}
            }
        }
        if let Err(error) = self.probe.unassign() {
            tracing::debug!(%error, "probe unassign");
        }
    }
}

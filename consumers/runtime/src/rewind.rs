//! Replay by time: moves a consumer group's committed offsets on a topic back to a time, to the
//! beginning, or to offsets per partition, so the group reads those records again — the
//! operator's answer to "a bug in a handler ran for an hour". Safe to do: every consumer dedupes
//! on `event_id`, so what was handled right is skipped and what was not is handled now.
//!
//! [`plan`] says what would be re-read (nothing changes: the dry run); [`apply`] commits it. A
//! group with live members is refused, naming them: its members would go on from their own
//! positions and commit over the rewind (Kafka refuses a commit from outside a live group for
//! the same reason). Stop the group's instances (scale its Deployment to 0), rewind, start them.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use orderflow_platform::kafka::KafkaSettings;
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer},
};

/// Where to move the group's offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The first record at or after this time, per partition (the end where none is).
    Time(DateTime<Utc>),
    /// The beginning of each partition (what the broker still keeps).
    Earliest,
    /// These offsets (the next record to read), per partition; partitions not named keep theirs.
    Offsets(BTreeMap<i32, i64>),
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;

    /// `earliest`, an RFC 3339 time (`2026-12-02T04:00:00Z`), a duration back from now (`1h`,
    /// `90m`, `30s`, `2d`), or offsets `partition:offset,…` (`0:120,3:77`).
    fn from_str(raw: &str) -> anyhow::Result<Target> {
        let raw = raw.trim();
        if raw == "earliest" {
            return Ok(Target::Earliest);
        }
        if let Ok(time) = DateTime::parse_from_rfc3339(raw) {
            return Ok(Target::Time(time.into()));
        }
        if raw.contains(':')
            && raw.split(',').all(|p| p.split_once(':').is_some_and(|(a, b)| is_number(a) && is_number(b)))
        {
            let mut offsets = BTreeMap::new();
            for pair in raw.split(',') {
                let (partition, offset) = pair.split_once(':').expect("checked above");
                let (partition, offset): (i32, i64) = (partition.trim().parse()?, offset.trim().parse()?);
                if offsets.insert(partition, offset).is_some() {
                    bail!("partition {partition} named twice in {raw:?}");
                }
            }
            return Ok(Target::Offsets(offsets));
        }
        let unit = |suffix: char, seconds: i64| {
            raw.strip_suffix(suffix).and_then(|n| n.parse::<i64>().ok()).map(|n| n * seconds)
        };
        let back = unit('s', 1).or(unit('m', 60)).or(unit('h', 3600)).or(unit('d', 86_400));
        match back {
            Some(seconds) if seconds > 0 => Ok(Target::Time(Utc::now() - chrono::Duration::seconds(seconds))),
            _ => bail!(
                "cannot read {raw:?} as a rewind target: give `earliest`, a time (2026-12-02T04:00:00Z), a duration back \
                 from now (90m, 1h, 2d) or offsets per partition (0:120,3:77)"
            ),
        }
    }
}

fn is_number(s: &str) -> bool {
    let s = s.trim();
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit())
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub partition: i32,
    /// The group's committed offset now (`None`: it never committed here).
    pub committed: Option<i64>,
    /// Where it will be.
    pub target: i64,
    /// What the broker keeps: the first offset and the next to be written.
    pub low: i64,
    pub high: i64,
}

impl Move {
    /// Records the group will read again (or skip, when the target is ahead of it).
    pub fn reread(&self) -> i64 {
        self.committed.unwrap_or(self.low) - self.target
    }
}

/// What a rewind will do, per partition.
#[derive(Debug, Clone)]
pub struct Plan {
    /// As the broker knows them.
    pub group: String,
    pub topic: String,
    pub moves: Vec<Move>,
    /// The group's live members (client id @ host), which [`apply`] refuses.
    pub members: Vec<String>,
}

impl Plan {
    /// Records read again over every partition.
    pub fn reread(&self) -> i64 {
        self.moves.iter().map(Move::reread).filter(|n| *n > 0).sum()
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// What rewinding `group` on `topic` (both as the broker knows them) to `target` would do;
/// changes nothing.
pub fn plan(kafka: &KafkaSettings, group: &str, topic: &str, target: &Target) -> anyhow::Result<Plan> {
    let consumer: BaseConsumer = kafka.consumer("orderflow-rewind", group).create().context("creating a client")?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT).context("reading topic metadata")?;
    let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic && !t.partitions().is_empty()) else {
        bail!("no topic {topic}")
    };
    let partitions: Vec<i32> = meta.partitions().iter().map(|p| p.id()).collect();
    if let Target::Offsets(offsets) = target
        && let Some(unknown) = offsets.keys().find(|p| !partitions.contains(p))
    {
        bail!("{topic} has no partition {unknown} (it has {})", partitions.len());
    }
    let mut all = TopicPartitionList::new();
    for partition in &partitions {
        all.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(all.clone(), TIMEOUT).context("reading the group's offsets")?;
    let by_time = match target {
        Target::Time(time) => {
            let mut query = TopicPartitionList::new();
            for partition in &partitions {
                query.add_partition_offset(topic, *partition, Offset::Offset(time.timestamp_millis()))?;
            }
            Some(consumer.offsets_for_times(query, TIMEOUT).context("looking the time up")?)
        }
        _ => None,
    };
    let mut moves = Vec::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, TIMEOUT)?;
        let offset_of = |list: &TopicPartitionList| match list.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        };
        let now = offset_of(&committed);
        let wanted = match target {
            Target::Earliest => low,
            // No record at or after the time: the end.
            Target::Time(_) => by_time.as_ref().and_then(offset_of).unwrap_or(high),
            Target::Offsets(offsets) => match offsets.get(&partition) {
                Some(offset) => *offset,
                None => now.unwrap_or(low),
            },
        };
        if let Target::Offsets(_) = target
            && !(low..=high).contains(&wanted)
        {
            bail!("{topic} partition {partition} holds offsets {low}..{high}; {wanted} is outside them");
        }
        moves.push(Move { partition, committed: now, target: wanted.clamp(low, high), low, high });
    }
    Ok(Plan { group: group.to_string(), topic: topic.to_string(), moves, members: members(&consumer, group)? })
}

/// The group's live members, as `client-id@host`.
fn members(consumer: &BaseConsumer, group: &str) -> anyhow::Result<Vec<String>> {
    let groups = consumer.fetch_group_list(Some(group), TIMEOUT).context("describing the group")?;
    Ok(groups
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .flat_map(|g| g.members())
        .map(|m| format!("{}@{}", m.client_id(), m.client_host().trim_start_matches('/')))
        .collect())
}

/// Commits `plan` for its group; refuses while the group has live members (a fresh look, not
/// the plan's).
pub fn apply(kafka: &KafkaSettings, plan: &Plan) -> anyhow::Result<()> {
    let consumer: BaseConsumer =
        kafka.consumer("orderflow-rewind", &plan.group).create().context("creating a client")?;
    let live = members(&consumer, &plan.group)?;
    if !live.is_empty() {
        bail!(
            "group {} has {} live member(s) ({}): they would go on from where they are and commit over the rewind; \
             stop the group's instances (scale its Deployment to 0) and run this again",
            plan.group,
            live.len(),
            live.join(", ")
        );
    }
    let mut offsets = TopicPartitionList::new();
    for m in &plan.moves {
        offsets.add_partition_offset(&plan.topic, m.partition, Offset::Offset(m.target))?;
    }
    consumer.commit(&offsets, CommitMode::Sync).context("committing the group's new offsets")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_as_an_operator_writes_them() {
        assert_eq!("earliest".parse::<Target>().unwrap(), Target::Earliest);
        let at = "2026-12-02T04:00:00Z".parse::<Target>().unwrap();
        assert_eq!(at, Target::Time("2026-12-02T04:00:00Z".parse().unwrap()));
        let Target::Time(hour_ago) = "1h".parse::<Target>().unwrap() else { panic!("a time") };
        assert!(((Utc::now() - hour_ago).num_seconds() - 3600).abs() <= 5);
        let Target::Time(ninety) = "90m".parse::<Target>().unwrap() else { panic!("a time") };
        assert!(((Utc::now() - ninety).num_seconds() - 5400).abs() <= 5);
        assert_eq!("0:120, 3:77".parse::<Target>().unwrap(), Target::Offsets(BTreeMap::from([(0, 120), (3, 77)])));
        for bad in ["yesterday", "0:1,0:2", "-1h", "0h", "1x", "0:", ""] {
            let error = bad.parse::<Target>().unwrap_err().to_string();
            assert!(error.contains("rewind target") || error.contains("twice"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_move_counts_what_is_read_again() {
        let m = Move { partition: 0, committed: Some(90), target: 40, low: 10, high: 90 };
        assert_eq!(m.reread(), 50);
        let never = Move { committed: None, ..m.clone() };
        assert_eq!(never.reread(), -30, "a group that never committed starts at the beginning anyway");
    }
}

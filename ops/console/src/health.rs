//! Health at a glance: every consumer group's lag per partition (records and seconds), the skew
//! between its partitions, whether its committed offsets move; every outbox's backlog. Read from
//! the broker (the lag exporter's [`BrokerReader`]) and the databases directly, so the page works
//! without Prometheus.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use orderflow_lag_exporter::broker_view::{GroupView, Snapshot};
use serde::Serialize;
use sqlx::PgPool;

/// What the page shows, as of one read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    /// When the broker was last read (Unix seconds); `None` before the first read.
    pub read_at: Option<u64>,
    /// Why the last read of the broker failed (what is shown is then the read before it).
    pub broker_error: Option<String>,
    pub groups: Vec<GroupHealth>,
    pub outboxes: Vec<OutboxHealth>,
    pub dead_letters: Vec<crate::dead_letters::DeadLetterTopic>,
    /// Each payment instance's guard in front of the provider, as it last reported it.
    pub payment_guards: Vec<PaymentGuard>,
    /// Why the payments database could not be read (`None`: read, or not configured).
    pub payment_guards_error: Option<String>,
}

/// One payment instance's circuit breaker and adaptive window (its `provider_health` row).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PaymentGuard {
    pub instance: String,
    /// `closed`, `half_open` or `open`.
    pub breaker: String,
    pub window_size: i32,
    pub window_max: i32,
    pub in_flight: i32,
    /// Seconds since the instance last reported (it reports every 2 s; more: it is gone or stuck).
    pub age_seconds: f64,
}

/// Instances that reported within this long are listed.
const GUARDS_WITHIN: &str = "10 minutes";

/// Every payment instance's guard, from the payments database.
pub async fn payment_guards(pool: &PgPool, timeout: Duration) -> Result<Vec<PaymentGuard>, String> {
    let sql = format!(
        "SELECT instance, breaker, window_size, window_max, in_flight,
                extract(epoch FROM now() - updated_at)::float8 AS age_seconds
         FROM provider_health WHERE updated_at > now() - interval '{GUARDS_WITHIN}' ORDER BY instance"
    );
    match tokio::time::timeout(timeout, sqlx::query_as::<_, PaymentGuard>(&sql).fetch_all(pool)).await {
        Ok(Ok(rows)) => Ok(rows),
        // sqlx names the failure, never the URL's password.
        Ok(Err(error)) => Err(format!("the payments database: {error}")),
        Err(_) => Err(format!("the payments database did not answer within {timeout:?}")),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupHealth {
    pub name: String,
    /// Members the coordinator lists; `None` when the broker would not list groups.
    pub members: Option<usize>,
    /// Records behind, over every partition.
    pub lag: i64,
    /// The oldest unconsumed record's age, over every partition.
    pub lag_seconds: Option<f64>,
    /// The coordinator's state of the group and its members (see the broker view).
    pub state: Option<String>,
    pub member_ids: Vec<String>,
    /// Rebalances the console saw (changes of the member list between its reads) since it
    /// started, and how long ago the last one was.
    pub rebalances: u64,
    pub last_rebalance_seconds: Option<f64>,
    /// The worst partition's lag ÷ the median partition's (`None` while the median is 0).
    pub skew: Option<f64>,
    /// The longest a partition with lag has gone without its committed offset moving.
    pub stalled_seconds: f64,
    pub partitions: Vec<PartitionHealth>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionHealth {
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub lag: i64,
    pub lag_seconds: Option<f64>,
    /// How long since the committed offset last moved (0 while the partition has no lag).
    pub still_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboxHealth {
    pub name: String,
    /// Rows not yet published, and the oldest one's age; `None` when the database did not answer.
    pub pending: Option<i64>,
    pub oldest_seconds: Option<f64>,
    pub error: Option<String>,
}

/// Remembers when each group partition's committed offset last moved, across reads.
#[derive(Default)]
pub struct Motion {
    last: HashMap<(String, String, i32), (i64, Instant)>,
    /// Per group: its members at the last read, the rebalances seen since the console started,
    /// and when the last one was seen.
    membership: HashMap<String, (Vec<String>, u64, Option<Instant>)>,
}

impl Motion {
    /// The groups of `snapshot`, with how long each partition has stood still.
    pub fn groups(&mut self, snapshot: &Snapshot, now: Instant) -> Vec<GroupHealth> {
        snapshot.groups.iter().map(|group| self.group(group, now)).collect()
    }

    fn group(&mut self, group: &GroupView, now: Instant) -> GroupHealth {
        let partitions: Vec<PartitionHealth> = group
            .partitions
            .iter()
            .map(|p| {
                let place = (group.name.clone(), p.topic.clone(), p.partition);
                let (committed, since) = self.last.entry(place).or_insert((p.committed, now));
                if *committed != p.committed || p.lag == 0 {
                    (*committed, *since) = (p.committed, now);
                }
                PartitionHealth {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    committed: p.committed,
                    lag: p.lag,
                    lag_seconds: p.lag_seconds,
                    still_seconds: now.duration_since(*since).as_secs_f64(),
                }
            })
            .collect();
        let lags: Vec<i64> = partitions.iter().map(|p| p.lag).collect();
        // A changed member list (one joined, left, or was replaced) means the group rebalanced.
        // A group not seen before (or listed without members' detail) has nothing to compare.
        let (rebalances, last_rebalance) = match self.membership.get_mut(&group.name) {
            None => {
                self.membership.insert(group.name.clone(), (group.member_ids.clone(), 0, None));
                (0, None)
            }
            Some((members, count, at)) => {
                if group.state.is_some() && *members != group.member_ids {
                    *count += 1;
                    *at = Some(now);
                    members.clone_from(&group.member_ids);
                }
                (*count, *at)
            }
        };
        GroupHealth {
            name: group.name.clone(),
            members: group.members,
            state: group.state.clone(),
            member_ids: group.member_ids.clone(),
            rebalances,
            last_rebalance_seconds: last_rebalance.map(|t| now.duration_since(t).as_secs_f64()),
            lag: lags.iter().sum(),
            lag_seconds: partitions.iter().filter_map(|p| p.lag_seconds).reduce(f64::max),
            skew: skew(&lags),
            stalled_seconds: partitions.iter().filter(|p| p.lag > 0).map(|p| p.still_seconds).fold(0.0, f64::max),
            partitions,
        }
    }
}

/// The worst lag ÷ the median lag (the mean of the middle two for an even count); `None` while the
/// median is 0 (most partitions idle: a ratio would mean nothing).
pub fn skew(lags: &[i64]) -> Option<f64> {
    let mut sorted = lags.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => sorted[n / 2] as f64,
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0,
    };
    (median > 0.0).then(|| sorted[n - 1] as f64 / median)
}

/// Each outbox's backlog, every database asked at once; one that does not answer within
/// `timeout` is reported as such.
pub async fn outboxes(databases: &[(String, PgPool)], timeout: Duration) -> Vec<OutboxHealth> {
    let reads = databases.iter().map(|(name, pool)| async move {
        match tokio::time::timeout(timeout, orderflow_outbox::backlog(pool)).await {
            Ok(Ok((pending, oldest))) => {
                OutboxHealth { name: name.clone(), pending: Some(pending), oldest_seconds: Some(oldest), error: None }
            }
            Ok(Err(error)) => OutboxHealth {
                name: name.clone(),
                pending: None,
                oldest_seconds: None,
                // sqlx names the failure, never the URL's password.
                error: Some(error.to_string()),
            },
            Err(_) => OutboxHealth {
                name: name.clone(),
                pending: None,
                oldest_seconds: None,
                error: Some(format!("no answer within {timeout:?}")),
            },
        }
    });
    futures::future::join_all(reads).await
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use orderflow_lag_exporter::broker_view::GroupPartition;

    use super::*;

    #[test]
    fn skew_is_the_worst_over_the_median_and_undefined_when_most_partitions_are_idle() {
        assert_eq!(skew(&[10, 10, 40]), Some(4.0));
        assert_eq!(skew(&[10, 20, 30, 100]), Some(4.0));
        assert_eq!(skew(&[0, 0, 500]), None);
        assert_eq!(skew(&[]), None);
    }

    fn snapshot(committed: i64, lag: i64) -> Snapshot {
        let partition = GroupPartition { topic: "orders".into(), partition: 0, committed, lag, lag_seconds: Some(1.0) };
        Snapshot {
            partitions: vec![],
            groups: vec![GroupView {
                name: "g".into(),
                members: Some(1),
                state: Some("Stable".into()),
                member_ids: vec![],
                partitions: vec![partition],
            }],
        }
    }

    #[test]
    fn a_partition_with_lag_whose_commit_does_not_move_counts_as_stalled() {
        let mut motion = Motion::default();
        let start = Instant::now();
        motion.groups(&snapshot(5, 3), start);
        let later = motion.groups(&snapshot(5, 3), start + Duration::from_secs(40));
        assert_eq!(later[0].stalled_seconds, 40.0);
        let moved = motion.groups(&snapshot(7, 3), start + Duration::from_secs(45));
        assert_eq!(moved[0].stalled_seconds, 0.0, "the commit moved");
        let idle = motion.groups(&snapshot(7, 0), start + Duration::from_secs(90));
        assert_eq!(idle[0].stalled_seconds, 0.0, "no lag: nothing to wait for");
    }
}

/// One consumer instance's report of its partitions (its `consumer_instances` row).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct InstanceStatus {
    pub instance: String,
    pub assigned: i32,
    /// `[{"topic", "partition", "waiting", "since"}]`: paused partitions, and others waiting.
    pub paused: sqlx::types::Json<serde_json::Value>,
    pub waiting: sqlx::types::Json<serde_json::Value>,
    pub age_seconds: f64,
}

/// The instances of `group` (as the broker knows it) that reported in the last ten minutes, from
/// every database the console reads; a database without the table (no consumer of its own) is
/// skipped, one that is down is named.
pub async fn instances(
    stores: &crate::story::Stores,
    group: &str,
    timeout: Duration,
) -> (Vec<(String, InstanceStatus)>, Vec<String>) {
    let (mut found, mut errors) = (Vec::new(), Vec::new());
    for (name, pool) in stores.named() {
        let Some(pool) = pool else { continue };
        let read = sqlx::query_as::<_, InstanceStatus>(
            "SELECT instance, assigned, paused, waiting, extract(epoch FROM now() - updated_at)::float8 AS age_seconds
             FROM consumer_instances WHERE consumer_group = $1 AND updated_at > now() - interval '10 minutes'
             ORDER BY instance",
        )
        .bind(group)
        .fetch_all(pool);
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(rows)) => found.extend(rows.into_iter().map(|r| (name.to_string(), r))),
            Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("42P01") => {}
            Ok(Err(error)) => errors.push(format!("the {name} database: {error}")),
            Err(_) => errors.push(format!("the {name} database did not answer within {timeout:?}")),
        }
    }
    (found, errors)
}

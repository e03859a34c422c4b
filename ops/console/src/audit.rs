//! The console's audit log: a Kafka topic (`console-audit`, one partition, so it reads in the
//! order things happened) holding one JSON record per step of an operator action — `started`
//! before anything changes, then `done` or `failed` with what happened. An action whose
//! `started` record the brokers did not take is not run: nothing changes that the log does not
//! show. The page lists the newest entries; any Kafka tool reads the rest.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use orderflow_consumer_runtime::dlt_tools;
use orderflow_platform::kafka::KafkaSettings;
use rdkafka::{
    Message,
    producer::{FutureProducer, FutureRecord},
};
use serde::{Deserialize, Serialize};

/// The audit topic's logical name (the namespace is added).
pub const TOPIC: &str = "console-audit";

/// How long writing an entry may take before the action is refused.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// One step of one action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// The action's id: its `started` and its outcome share it.
    pub action_id: String,
    pub at: DateTime<Utc>,
    /// The operator, as signed in.
    pub who: String,
    /// `replay`, `triage` or `rewind`.
    pub action: String,
    /// The topic (or group and topic) acted on.
    pub target: String,
    /// What was chosen, in words (the selection, the marks, the time).
    pub what: String,
    /// Records affected (planned in `started`, done in the outcome).
    pub count: i64,
    /// `started`, `done` or `failed: <why>`.
    pub outcome: String,
}

pub struct AuditLog {
    kafka: KafkaSettings,
    topic: String,
    producer: FutureProducer,
    created: tokio::sync::OnceCell<()>,
}

impl AuditLog {
    pub fn new(kafka: &KafkaSettings) -> anyhow::Result<AuditLog> {
        let producer =
            kafka.producer("orderflow-console-audit", WRITE_TIMEOUT).create().context("creating the audit producer")?;
        Ok(AuditLog { kafka: kafka.clone(), topic: kafka.topic(TOPIC), producer, created: Default::default() })
    }

    /// The topic's broker name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes `entry` and waits until the brokers have it (`acks=all`).
    pub async fn write(&self, entry: &Entry) -> anyhow::Result<()> {
        let work = async {
            self.created
                .get_or_try_init(|| async { self.kafka.ensure_topics(&[(self.topic.as_str(), 1)]).await })
                .await?;
            let value = serde_json::to_vec(entry)?;
            self.producer
                .send(FutureRecord::to(&self.topic).key(&entry.action_id).payload(&value), WRITE_TIMEOUT)
                .await
                .map_err(|(error, _)| anyhow::anyhow!("{error}"))?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(WRITE_TIMEOUT, work).await {
            Ok(result) => result.with_context(|| format!("writing the audit log ({})", self.topic)),
            Err(_) => anyhow::bail!("writing the audit log ({}) took longer than {WRITE_TIMEOUT:?}", self.topic),
        }
    }

    /// The newest `last` entries, newest first (blocking: run it off the async threads). A
    /// record that is not an entry is skipped.
    pub fn recent(kafka: &KafkaSettings, last: i64) -> anyhow::Result<Vec<Entry>> {
        let topic = kafka.topic(TOPIC);
        if !dlt_tools::exists(kafka, &topic)? {
            return Ok(Vec::new());
        }
        let mut entries: Vec<Entry> = dlt_tools::read_tail(kafka, &topic, Some(last))?
            .into_iter()
            .filter_map(|r| r.message.payload().and_then(|p| serde_json::from_slice(p).ok()))
            .collect();
        entries.reverse();
        Ok(entries)
    }
}

/// The newest entries about `target` (a topic, or a group), at most 20 of the last 500 (blocking),
/// or why the log could not be read — shown in place of the list, the rest of the page stands.
pub fn recent_for(kafka: &KafkaSettings, target: &str) -> Result<Vec<Entry>, String> {
    AuditLog::recent(kafka, 500)
        .map(|entries| entries.into_iter().filter(|e| e.target == target).take(20).collect())
        .map_err(|e| format!("{e:#}"))
}

impl Entry {
    /// A `started` entry for a new action.
    pub fn started(who: &str, action: &str, target: &str, what: String, count: i64) -> Entry {
        Entry {
            action_id: uuid::Uuid::now_v7().to_string(),
            at: Utc::now(),
            who: who.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            what,
            count,
            outcome: "started".into(),
        }
    }

    /// The same action's outcome.
    pub fn finished(&self, result: &anyhow::Result<i64>) -> Entry {
        let (count, outcome) = match result {
            Ok(count) => (*count, "done".to_string()),
            Err(error) => (0, format!("failed: {error:#}")),
        };
        Entry { at: Utc::now(), count, outcome, ..self.clone() }
    }
}

//! Where a record goes when it is not finished on its first delivery.
//!
//! - `<topic>.<group>.retry`: a transient failure is re-published here with the time it is due
//!   again, and the source partition moves on. The group consumes its retry topics too and
//!   holds a retry record until it is due (that pauses only the retry partition).
//! - `<topic>.<group>.DLT`: poison, or retries exhausted. One per source topic and group, so one
//!   group's poison never blocks another.
//!
//! Both keep the original key, value and headers and add their own headers (`retry_*`,
//! `dlt_*`); a record forwarded again loses the previous ones, so a DLT record never carries
//! stale retry bookkeeping.

use std::{collections::HashMap, time::Duration};

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use orderflow_platform::kafka::KafkaSettings;
use orderflow_schemas::headers;
use rdkafka::{
    Message,
    message::{Header, Headers, OwnedHeaders, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
};

/// `<topic>.<group>.DLT`: `topic` as the broker knows it, `group` by its logical name, so a
/// namespace appears once (`staging.orders.payment.DLT`).
pub fn dlt_topic(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.DLT")
}

/// `<topic>.<group>.retry`, named as [`dlt_topic`].
pub fn retry_topic(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.retry")
}

/// Header names on retry records (the contract lives in `orderflow_schemas::headers`).
pub use orderflow_schemas::headers::retry as retry_headers;

/// Where a record was first consumed, and its delivery history so far. For a record read from a
/// retry topic this comes from its `retry_*` headers.
#[derive(Debug, Clone)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Handler attempts already made (0 on the source topic).
    pub attempts: u32,
    pub first_failure: Option<DateTime<Utc>>,
    /// When a retry record may be handled (None on the source topic).
    pub due_at: Option<DateTime<Utc>>,
}

impl Origin {
    /// `retry_source` is the source topic when `message` was read from one of the group's retry
    /// topics. A retry record with unreadable bookkeeping is treated as a first delivery of its
    /// source topic (attempts restart; nothing is lost).
    pub fn of(message: &OwnedMessage, headers: &HashMap<String, String>, retry_source: Option<&str>) -> Origin {
        use retry_headers as h;
        let fresh = Origin {
            topic: retry_source.unwrap_or(message.topic()).to_string(),
            partition: message.partition(),
            offset: message.offset(),
            attempts: 0,
            first_failure: None,
            due_at: None,
        };
        if retry_source.is_none() {
            return fresh;
        }
        let parse = |name: &str| headers.get(name).and_then(|v| v.parse::<i64>().ok());
        let time = |name: &str| headers.get(name).and_then(|v| DateTime::parse_from_rfc3339(v).ok()).map(|t| t.into());
        Origin {
            topic: headers.get(h::ORIGINAL_TOPIC).cloned().unwrap_or(fresh.topic),
            partition: parse(h::ORIGINAL_PARTITION).map(|p| p as i32).unwrap_or(fresh.partition),
            offset: parse(h::ORIGINAL_OFFSET).unwrap_or(fresh.offset),
            attempts: parse(h::ATTEMPTS).map(|a| a.clamp(0, u32::MAX as i64) as u32).unwrap_or(0),
            first_failure: time(h::FIRST_FAILURE_AT),
            due_at: parse(h::DUE_AT_MS).and_then(DateTime::from_timestamp_millis),
        }
    }
}

/// Why a record is dead-lettered.
#[derive(Clone, Copy)]
pub struct Reason<'a> {
    pub class: &'a str,
    pub message: &'a str,
    pub attempts: u32,
    pub first_failure: DateTime<Utc>,
}

/// The group's producer for retry and dead-letter records.
pub struct Forwarder {
    producer: FutureProducer,
    /// The group as the broker knows it (the `dlt_consumer_group` header).
    group: String,
    /// The group as its retry and DLT topics name it (logical: the namespace is in the topic).
    topic_group: String,
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Forwarder {
    /// `group` as the broker knows it; `topic_group` as its retry and DLT topics name it.
    pub fn new(kafka: &KafkaSettings, group: &str, topic_group: &str) -> anyhow::Result<Self> {
        let producer = kafka
            .producer(&format!("{group}-forwarder"), Duration::from_secs(30))
            .create()
            .context("retry/DLT producer")?;
        Ok(Forwarder { producer, group: group.into(), topic_group: topic_group.into() })
    }

    /// Publishes the record to its DLT and waits for the broker's acknowledgement.
    pub async fn dead_letter(
        &self,
        original: &OwnedMessage,
        origin: &Origin,
        reason: Reason<'_>,
    ) -> anyhow::Result<()> {
        let topic = dlt_topic(&origin.topic, &self.topic_group);
        let message: String = reason.message.chars().take(2000).collect();
        let (partition, offset) = (origin.partition.to_string(), origin.offset.to_string());
        let (attempts, first, last) =
            (reason.attempts.to_string(), timestamp(reason.first_failure), timestamp(Utc::now()));
        use orderflow_schemas::headers::dlt as h;
        let added = [
            (h::ORIGINAL_TOPIC, origin.topic.as_str()),
            (h::ORIGINAL_PARTITION, &partition),
            (h::ORIGINAL_OFFSET, &offset),
            (h::CONSUMER_GROUP, &self.group),
            (h::ATTEMPTS, &attempts),
            (h::ERROR_CLASS, reason.class),
            (h::ERROR_MESSAGE, &message),
            (h::FIRST_FAILURE_AT, &first),
            (h::LAST_FAILURE_AT, &last),
        ];
        self.forward(&topic, original, &added).await
    }

    /// Publishes the record to the group's retry topic, due again at `due_at`, after `attempts`
    /// failed attempts.
    pub async fn retry(
        &self,
        original: &OwnedMessage,
        origin: &Origin,
        attempts: u32,
        first_failure: DateTime<Utc>,
        due_at: DateTime<Utc>,
        error: &str,
    ) -> anyhow::Result<()> {
        use retry_headers as h;
        let topic = retry_topic(&origin.topic, &self.topic_group);
        let error: String = error.chars().take(2000).collect();
        let (partition, offset) = (origin.partition.to_string(), origin.offset.to_string());
        let (attempts, due, first) =
            (attempts.to_string(), due_at.timestamp_millis().to_string(), timestamp(first_failure));
        let added = [
            (h::ORIGINAL_TOPIC, origin.topic.as_str()),
            (h::ORIGINAL_PARTITION, &partition),
            (h::ORIGINAL_OFFSET, &offset),
            (h::ATTEMPTS, &attempts),
            (h::DUE_AT_MS, &due),
            (h::FIRST_FAILURE_AT, &first),
            (h::LAST_ERROR, &error),
        ];
        self.forward(&topic, original, &added).await
    }

    async fn forward(&self, topic: &str, original: &OwnedMessage, added: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut headers = OwnedHeaders::new();
        if let Some(existing) = original.headers() {
            let ours = |key: &str| key.starts_with(headers::dlt::PREFIX) || key.starts_with(headers::retry::PREFIX);
            for header in existing.iter().filter(|h| !ours(h.key)) {
                headers = headers.insert(Header { key: header.key, value: header.value });
            }
        }
        for (key, value) in added {
            headers = headers.insert(Header { key, value: Some(*value) });
        }
        let mut record = FutureRecord::to(topic).headers(headers);
        if let Some(key) = original.key() {
            record = record.key(key);
        }
        if let Some(payload) = original.payload() {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("send to {topic}: {e}"))?;
        Ok(())
    }
}

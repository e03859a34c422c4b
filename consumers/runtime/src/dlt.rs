//! Dead-letter topics, one per source topic and consumer group (`<topic>.<group>.DLT`), so one
//! group's poison never blocks another. A DLT record keeps the original key, value and headers
//! and adds why and where it came from.

use std::time::Duration;

use anyhow::Context;
use chrono::{SecondsFormat, Utc};
use orderflow_platform::kafka::KafkaSettings;
use rdkafka::{
    Message,
    message::{Header, Headers, OwnedHeaders, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
};

pub fn dlt_topic(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.DLT")
}

pub struct DeadLetters {
    producer: FutureProducer,
    group: String,
}

/// Why a record is dead-lettered.
pub struct Reason<'a> {
    pub class: &'a str,
    pub message: &'a str,
    pub attempts: u32,
    pub first_failure: chrono::DateTime<Utc>,
}

impl DeadLetters {
    pub fn new(kafka: &KafkaSettings, group: &str) -> anyhow::Result<Self> {
        let producer =
            kafka.producer(&format!("{group}-dlt"), Duration::from_secs(30)).create().context("DLT producer")?;
        Ok(DeadLetters { producer, group: group.into() })
    }

    /// Publishes the record to its DLT and waits for the broker's acknowledgement.
    pub async fn send(&self, original: &OwnedMessage, reason: Reason<'_>) -> anyhow::Result<()> {
        let topic = dlt_topic(original.topic(), &self.group);
        let mut headers = OwnedHeaders::new();
        if let Some(existing) = original.headers() {
            for header in existing.iter().filter(|h| !h.key.starts_with("dlt_")) {
                headers = headers.insert(Header { key: header.key, value: header.value });
            }
        }
        let partition = original.partition().to_string();
        let offset = original.offset().to_string();
        let attempts = reason.attempts.to_string();
        let first = reason.first_failure.to_rfc3339_opts(SecondsFormat::Millis, true);
        let last = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let message: String = reason.message.chars().take(2000).collect();
        for (key, value) in [
            ("dlt_original_topic", original.topic()),
            ("dlt_original_partition", &partition),
            ("dlt_original_offset", &offset),
            ("dlt_consumer_group", &self.group),
            ("dlt_attempts", &attempts),
            ("dlt_error_class", reason.class),
            ("dlt_error_message", &message),
            ("dlt_first_failure_at", &first),
            ("dlt_last_failure_at", &last),
        ] {
            headers = headers.insert(Header { key, value: Some(value) });
        }
        let mut record = FutureRecord::to(&topic).headers(headers);
        if let Some(key) = original.key() {
            record = record.key(key);
        }
        if let Some(payload) = original.payload() {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("DLT send to {topic}: {e}"))?;
        Ok(())
    }
}

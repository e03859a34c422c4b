//! Kafka client builders with the settings orderflow's delivery rules depend on, so no service
//! can forget one: idempotent producers with `acks=all`, consumers that never auto-commit and
//! store offsets only when told, and topics created idempotently at start-up.
//!
//! Everything goes through the Kafka protocol via `rdkafka`, against Apache Kafka (KRaft) locally,
//! in the tests and in production alike.
//!
//! Names: services speak of topics and groups by their logical names (`orders`, `payment`);
//! [`KafkaSettings::topic`] and [`KafkaSettings::group`] add the namespace
//! (`ORDERFLOW_KAFKA_NAMESPACE`, empty by default), so several environments, or the test
//! suite's parallel tests, share one cluster without meeting.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, bail};
use rdkafka::{
    ClientConfig, ClientContext,
    admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::{KafkaError, RDKafkaErrorCode},
};

/// The Kafka flags every binary takes (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap servers, `host:port[,host:port]`.
    #[arg(long = "kafka-bootstrap", env = "ORDERFLOW_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Extra librdkafka properties, `key=value,key=value` (e.g. security settings; never logged).
    #[arg(long = "kafka-properties", env = "ORDERFLOW_KAFKA_PROPERTIES", default_value = "", hide_env_values = true)]
    pub properties: String,
    /// Replication factor of the topics a service creates at start (existing topics, e.g. ones a
    /// Strimzi KafkaTopic made, are left as they are). 1 suits a single local broker only.
    #[arg(long = "kafka-replication-factor", env = "ORDERFLOW_KAFKA_REPLICATION_FACTOR", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub replication_factor: i32,
    /// Partitions of the source and retry topics a consumer creates at start.
    #[arg(long = "kafka-partitions", env = "ORDERFLOW_KAFKA_PARTITIONS", default_value_t = 12,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// Prefix of every topic and consumer group name this service uses (e.g. `staging.`);
    /// empty: the names as they are.
    #[arg(long = "kafka-namespace", env = "ORDERFLOW_KAFKA_NAMESPACE", default_value = "")]
    pub namespace: String,
}

impl KafkaArgs {
    pub fn settings(&self) -> anyhow::Result<KafkaSettings> {
        let mut settings = KafkaSettings::new(&self.bootstrap).with_properties(&self.properties)?;
        settings.replication_factor = self.replication_factor;
        settings.partitions = self.partitions;
        settings.namespace = self.namespace.clone();
        Ok(settings)
    }
}

/// Where the brokers are and any extra client properties (security, tuning).
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    /// `host:port[,host:port]`.
    pub bootstrap: String,
    /// Extra librdkafka properties, e.g. `security.protocol=SASL_SSL`.
    pub properties: Vec<(String, String)>,
    /// Replication factor of topics created by [`KafkaSettings::ensure_topics`].
    pub replication_factor: i32,
    /// Partitions of the topics a consumer creates (its source and retry topics).
    pub partitions: i32,
    /// Prefix of every topic and group name (see the module header).
    pub namespace: String,
}

impl KafkaSettings {
    pub fn new(bootstrap: impl Into<String>) -> Self {
        KafkaSettings {
            bootstrap: bootstrap.into(),
            properties: Vec::new(),
            replication_factor: 1,
            partitions: 12,
            namespace: String::new(),
        }
    }

    /// The broker's name of the logical topic `name`.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.namespace)
    }

    /// The broker's name of the logical consumer group `name`.
    pub fn group(&self, name: &str) -> String {
        format!("{}{name}", self.namespace)
    }

    /// Parses the `ORDERFLOW_KAFKA_PROPERTIES` format: `key=value,key=value` on one line, or —
    /// as a file named by `ORDERFLOW_KAFKA_PROPERTIES_FILE` usually is — one `key=value` per
    /// line (blank lines and `#` comments skipped), where a value may hold commas. A malformed
    /// entry is an error naming its place (line, or entry on one line), never its text (it may
    /// hold a password).
    pub fn with_properties(mut self, raw: &str) -> anyhow::Result<Self> {
        let raw = raw.trim();
        let entries: Vec<&str> = match raw.contains('\n') {
            true => raw.lines().collect(),
            false => raw.split(',').collect(),
        };
        for (number, entry) in entries.into_iter().enumerate() {
            let entry = entry.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let Some((key, value)) = entry.split_once('=') else {
                bail!("Kafka property {} is not key=value", number + 1);
            };
            if key.trim().is_empty() {
                bail!("Kafka property {} has no key", number + 1);
            }
            self.properties.push((key.trim().to_string(), value.trim().to_string()));
        }
        Ok(self)
    }

    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// An idempotent producer config: `acks=all`, per-partition order kept across retries,
    /// batching for throughput. `delivery_timeout` bounds how long a send may be retried.
    /// Keys are placed as Java clients place them (murmur2, as Kafka Connect and Debezium do),
    /// so a key stays on its partition whichever of the relay or the connector publishes it.
    pub fn producer(&self, client_id: &str, delivery_timeout: Duration) -> ClientConfig {
        let mut config = self.base();
        config
            .set("client.id", client_id)
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .set("message.timeout.ms", delivery_timeout.as_millis().to_string());
        config
    }

    /// A consumer config for at-least-once: no auto-commit and no automatic offset store; the
    /// caller stores an offset only after its side effect committed.
    pub fn consumer(&self, client_id: &str, group: &str) -> ClientConfig {
        let mut config = self.base();
        config
            .set("client.id", client_id)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("max.poll.interval.ms", "300000")
            // One fetch per broker is in flight at a time; when it names only partitions with
            // nothing new (a quiet retry topic), the broker holds it up to this long while the
            // busy partitions wait. 100 ms keeps an idle consumer cheap and a busy one moving.
            .set("fetch.wait.max.ms", "100");
        config
    }

    /// Waits until a broker answers this client (logging, with capped backoff, for as long as it
    /// takes: a service started before Kafka starts when Kafka does). A broker that refuses the
    /// client — wrong SASL credentials, a certificate that does not verify — is an error at
    /// once, naming the cause and where the settings come from (never their values).
    /// Runs `work` — a service that keeps serving while Kafka is away — and stops it early, with
    /// the reason, if the broker refuses this client's credentials ([`Self::check_access`]).
    pub async fn unless_refused<T>(&self, work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
        tokio::pin!(work);
        tokio::select! {
            done = &mut work => done,
            access = self.check_access() => {
                access?;
                work.await
            }
        }
    }

    pub async fn check_access(&self) -> anyhow::Result<()> {
        let watch = AccessWatch::default();
        let refused = watch.refused.clone();
        let probe: Arc<BaseConsumer<AccessWatch>> = Arc::new(
            self.base()
                .set("client.id", "orderflow-access-check")
                .create_with_context(watch)
                .context("creating a Kafka client")?,
        );
        let mut wait = Duration::from_millis(500);
        loop {
            let attempt = probe.clone();
            let answered = tokio::task::spawn_blocking(move || {
                let answered = attempt.fetch_metadata(None, Duration::from_secs(5)).map(|_| ());
                if answered.is_err() {
                    // Serves the client's error events (AccessWatch::error): the request's
                    // result only says the broker did not answer, not whether it refused us.
                    let _ = attempt.poll(Duration::from_millis(100));
                }
                answered
            })
            .await
            .context("the Kafka access check panicked")?;
            if let Some(reason) = refused.lock().expect("access watch lock").take() {
                bail!(
                    "Kafka at {} refused this client: {reason}. Check the client's security settings \
                     (security.protocol, sasl.mechanism, sasl.username, sasl.password, ssl.ca.location) \
                     in ORDERFLOW_KAFKA_PROPERTIES or the file ORDERFLOW_KAFKA_PROPERTIES_FILE names",
                    self.bootstrap
                );
            }
            match answered {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::warn!(bootstrap = %self.bootstrap, %error, retry_in = ?wait, "waiting for Kafka")
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }

    /// Creates the topics that do not exist yet (broker names: callers apply [`Self::topic`]);
    /// existing ones are left as they are. Waits for Kafka first ([`Self::check_access`]: a
    /// broker refusing the client is an error at once); a topic the brokers refuse (bad
    /// settings, no rights) is an error at once too.
    pub async fn ensure_topics(&self, topics: &[(&str, i32)]) -> anyhow::Result<()> {
        self.check_access().await?;
        let admin: AdminClient<DefaultClientContext> = self.base().create().context("creating a Kafka admin client")?;
        let new_topics: Vec<NewTopic> = topics
            .iter()
            .map(|(name, partitions)| {
                NewTopic::new(name, *partitions, TopicReplication::Fixed(self.replication_factor))
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let mut wait = Duration::from_millis(500);
        loop {
            match admin.create_topics(&new_topics, &options).await {
                Ok(results) => {
                    let mut unanswered = None;
                    for result in results {
                        match result {
                            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                            Err((topic, code)) if not_ready(code) => unanswered = Some(format!("{topic}: {code}")),
                            Err((topic, code)) => bail!("cannot create topic {topic}: {code}"),
                        }
                    }
                    let Some(error) = unanswered else { return Ok(()) };
                    tracing::warn!(bootstrap = %self.bootstrap, %error, retry_in = ?wait, "waiting for Kafka");
                }
                Err(error) => {
                    tracing::warn!(bootstrap = %self.bootstrap, %error, retry_in = ?wait, "waiting for Kafka")
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }

    /// How long each topic keeps records (`retention.ms`; `None`: for ever).
    pub async fn retention(&self, topics: &[&str]) -> anyhow::Result<Vec<(String, Option<Duration>)>> {
        let admin: AdminClient<DefaultClientContext> = self.base().create().context("creating a Kafka admin client")?;
        let resources: Vec<ResourceSpecifier> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let mut kept = Vec::new();
        for (topic, result) in topics.iter().zip(admin.describe_configs(&resources, &options).await?) {
            let resource = result.map_err(|code| anyhow::anyhow!("describing {topic}: {code}"))?;
            let ms = resource
                .get("retention.ms")
                .and_then(|entry| entry.value.as_deref())
                .and_then(|v| v.parse::<i64>().ok())
                .with_context(|| format!("{topic} has no retention.ms"))?;
            kept.push((topic.to_string(), u64::try_from(ms).ok().map(Duration::from_millis)));
        }
        Ok(kept)
    }
}

/// A client context that keeps the last reason a broker refused the client. librdkafka reports
/// a failed SASL authentication or TLS handshake through its error callback and then retries
/// for ever; a request only times out.
#[derive(Default)]
struct AccessWatch {
    refused: Arc<Mutex<Option<String>>>,
}

impl ClientContext for AccessWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(%error, reason, "Kafka client error");
        let code = error.rdkafka_error_code();
        // A TLS failure is the client's settings only when verification failed (a reset during
        // the handshake is the network's).
        let refused = code == Some(RDKafkaErrorCode::Authentication)
            || (code == Some(RDKafkaErrorCode::SSL) && reason.contains("certificate"));
        if refused {
            *self.refused.lock().expect("access watch lock") = Some(reason.to_string());
        }
    }
}

impl ConsumerContext for AccessWatch {}

/// Answers that mean the cluster is not (yet) able to serve, not that the request is wrong.
fn not_ready(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::NotController
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_come_on_one_line_or_one_per_line_and_a_bad_one_is_named_without_its_value() {
        let one_line = KafkaSettings::new("b:9092")
            .with_properties("security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512")
            .unwrap();
        assert_eq!(
            one_line.properties,
            [("security.protocol".into(), "SASL_SSL".into()), ("sasl.mechanism".into(), "SCRAM-SHA-512".into())]
        );
        let file = "# the cluster's client settings\nsecurity.protocol=SASL_SSL\n\nsasl.password=a,b=c\n";
        let per_line = KafkaSettings::new("b:9092").with_properties(file).unwrap();
        assert_eq!(
            per_line.properties,
            [("security.protocol".into(), "SASL_SSL".into()), ("sasl.password".into(), "a,b=c".into())]
        );
        let bad =
            KafkaSettings::new("b:9092").with_properties("security.protocol=SSL\nhunter2\n").unwrap_err().to_string();
        assert_eq!(bad, "Kafka property 2 is not key=value");
        assert!(KafkaSettings::new("b:9092").with_properties("").unwrap().properties.is_empty());
    }
}

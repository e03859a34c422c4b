//! What a consumer is told: the flags every consumer binary takes ([`ConsumerArgs`],
//! [`RuntimeArgs`]), their defaults, and the settings they make ([`ConsumerSettings`]).

use std::time::Duration;

use orderflow_platform::kafka::KafkaSettings;

use crate::{dlt_topic, retry_topic};

/// The flags every consumer binary takes besides its database and its own (`#[command(flatten)]`):
/// Kafka, the runtime's knobs, the schema registry.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerArgs {
    #[command(flatten)]
    pub kafka: orderflow_platform::kafka::KafkaArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub registry: orderflow_schemas::RegistryArgs,
}

impl ConsumerArgs {
    /// The settings for consuming `topics` (logical names) as `group`.
    pub fn settings(&self, group: &str, topics: &[&str]) -> anyhow::Result<ConsumerSettings> {
        Ok(self.runtime.settings(group, topics, self.kafka.settings()?))
    }

    /// As [`Self::settings`], in `default` order unless `--ordering` names one.
    pub fn settings_ordered(
        &self,
        group: &str,
        topics: &[&str],
        default: Ordering,
    ) -> anyhow::Result<ConsumerSettings> {
        Ok(self.runtime.settings_ordered(group, topics, self.kafka.settings()?, default))
    }

    /// The event codec on the registry.
    pub fn codec(&self) -> anyhow::Result<std::sync::Arc<orderflow_schemas::EventCodec>> {
        let codec = orderflow_schemas::EventCodec::new(self.registry.access()?, Duration::from_secs(5))?;
        Ok(std::sync::Arc::new(codec))
    }
}

/// The runtime's defaults, each written once: [`ConsumerSettings::new`] and the flags
/// ([`RuntimeArgs`]) both take them from here.
pub mod defaults {
    pub const MAX_ATTEMPTS: u32 = 5;
    pub const BACKOFF_BASE_MS: u64 = 500;
    pub const BACKOFF_CAP_MS: u64 = 30_000;
    pub const COMMIT_INTERVAL_MS: u64 = 1_000;
    pub const PARTITION_QUEUE: usize = 256;
    /// In partition order: partitions (each with its batch) handled at once.
    pub const MAX_IN_FLIGHT: usize = 32;
    /// In key order: records handled at once, each mostly waiting on a provider. Twice the
    /// payment client's adaptive window (64): a record holds its place for its own work too
    /// (decode, dedupe, the call's intent and outcome rows, its transaction), and with only 64
    /// places the window stood a sixth empty (the payment bench: 53 calls in flight of 64).
    pub const MAX_IN_FLIGHT_KEYED: usize = 128;
    pub const BATCH_SIZE: usize = 100;
    pub const CALL_OUT_CONCURRENCY: usize = 16;
    pub const REVOKE_GRACE_SECS: u64 = 10;
    pub const LAG_INTERVAL_SECS: u64 = 10;
    /// Twice Kafka's default topic retention (168 hours).
    pub const RETENTION_HOURS: u64 = 336;
    pub const PRUNE_INTERVAL_SECS: u64 = 600;
    pub const TRANSACTION_IDLE_LIMIT_SECS: u64 = 30;
    pub const KEY_CONCURRENCY: usize = 64;
    pub const GROUP_COMMITS: usize = 4;
}

/// The runtime's flags every consumer binary takes (`#[command(flatten)]`): every knob of
/// [`ConsumerSettings`], listed in `--help` with its default.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Handler attempts of a record (its first delivery and its retries) before the DLT.
    #[arg(long, env = "ORDERFLOW_MAX_ATTEMPTS", default_value_t = defaults::MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// The first retry's backoff ceiling, doubled per attempt (full jitter below it).
    #[arg(long, env = "ORDERFLOW_BACKOFF_BASE_MS", default_value_t = defaults::BACKOFF_BASE_MS)]
    pub backoff_base_ms: u64,
    /// The most any retry or dependency wait backs off.
    #[arg(long, env = "ORDERFLOW_BACKOFF_CAP_MS", default_value_t = defaults::BACKOFF_CAP_MS)]
    pub backoff_cap_ms: u64,
    /// How often stored offsets are committed.
    #[arg(long, env = "ORDERFLOW_COMMIT_INTERVAL_MS", default_value_t = defaults::COMMIT_INTERVAL_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub commit_interval_ms: u64,
    /// Records queued per partition; a full queue pauses fetching for that partition.
    #[arg(long, env = "ORDERFLOW_PARTITION_QUEUE", default_value_t = defaults::PARTITION_QUEUE,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub partition_queue: usize,
    /// What one instance handles at once: partitions in partition order (32 unless set),
    /// records in key order (64 unless set).
    #[arg(long, env = "ORDERFLOW_MAX_IN_FLIGHT",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_in_flight: Option<usize>,
    /// Most records of one partition in one transaction.
    #[arg(long, env = "ORDERFLOW_BATCH_SIZE", default_value_t = defaults::BATCH_SIZE,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch_size: usize,
    /// Orders of one batch whose provider calls run at once.
    #[arg(long, env = "ORDERFLOW_CALL_OUT_CONCURRENCY", default_value_t = defaults::CALL_OUT_CONCURRENCY,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub call_out_concurrency: usize,
    /// How long a revocation waits for the revoked partitions' records in hand.
    #[arg(long, env = "ORDERFLOW_REVOKE_GRACE_SECS", default_value_t = defaults::REVOKE_GRACE_SECS)]
    pub revoke_grace_secs: u64,
    /// How often per-partition lag is read from the broker.
    #[arg(long, env = "ORDERFLOW_LAG_INTERVAL_SECS", default_value_t = defaults::LAG_INTERVAL_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub lag_interval_secs: u64,
    /// Hours dedupe rows (and a handler's per-event rows) are kept: longer than the source
    /// topics' retention.
    #[arg(long = "dedupe-retention-hours", env = "ORDERFLOW_DEDUPE_RETENTION_HOURS",
          default_value_t = defaults::RETENTION_HOURS, value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_hours: u64,
    /// Seconds between two pruning rounds.
    #[arg(long = "prune-interval-secs", env = "ORDERFLOW_PRUNE_INTERVAL_SECS",
          default_value_t = defaults::PRUNE_INTERVAL_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    pub prune_interval_secs: u64,
    /// Seconds a record's transaction may sit idle before Postgres ends it (a frozen or
    /// partitioned consumer must not hold its row locks for ever).
    #[arg(long = "transaction-idle-limit-secs", env = "ORDERFLOW_TRANSACTION_IDLE_LIMIT_SECS",
          default_value_t = defaults::TRANSACTION_IDLE_LIMIT_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    pub transaction_idle_limit_secs: u64,
    /// `partition`: a partition's records one at a time (or a batch), in order; `key`: records
    /// of different keys concurrently, each key's in order. Unset: the service's own default.
    #[arg(long, env = "ORDERFLOW_ORDERING", value_enum)]
    pub ordering: Option<Ordering>,
    /// In key order, the records of one partition handled at once.
    #[arg(long, env = "ORDERFLOW_KEY_CONCURRENCY", default_value_t = defaults::KEY_CONCURRENCY,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub key_concurrency: usize,
    /// In key order, the shared transactions of one partition running at once: records whose
    /// provider calls finished while all are busy share the next one (0: each record commits
    /// in a transaction of its own).
    #[arg(long, env = "ORDERFLOW_GROUP_COMMITS", default_value_t = defaults::GROUP_COMMITS)]
    pub group_commits: usize,
    /// Where a record goes when its handler asks for another try: `topic`, the group's retry
    /// topic (the partition moves on, later records of the key pass it); `quarantine` (key
    /// order only), parked in the database with every later record of its key, which are then
    /// handled in order once it is.
    #[arg(long, env = "ORDERFLOW_RETRY_MODE", value_enum, default_value_t = RetryMode::Topic)]
    pub retry_mode: RetryMode,
    /// In quarantine: when a key's record is dead-lettered, whether the key's records parked
    /// behind it are handled (`resume`) or follow it to the DLT unhandled (`follow`).
    #[arg(long, env = "ORDERFLOW_QUARANTINE_AFTER_DEAD_LETTER", value_enum, default_value_t = AfterDeadLetter::Resume)]
    pub quarantine_after_dead_letter: AfterDeadLetter,
}

/// Where a record goes when its handler asks for another try (see README "Retry modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RetryMode {
    /// The group's retry topic, due after a backoff: the partition and the record's key move on.
    Topic,
    /// Parked in `quarantined_records` with every later record of its key; the key's records
    /// are handled in offset order once the failing one is handled or dead-lettered, while the
    /// partition's other keys go on. Needs key order.
    Quarantine,
}

/// In quarantine, what happens to a key's parked records when the record at their head is
/// dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AfterDeadLetter {
    /// They are handled, in order (the dead letter is the operator's to replay or triage).
    Resume,
    /// They follow it to the DLT unhandled (`dlt_error_class=key_dead_lettered`), to be replayed
    /// after it, in order.
    Follow,
}

/// How one partition's records are ordered (see the crate's docs and README "Orderings").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ordering {
    /// One record (or batch) of a partition at a time, in offset order: batches, so the
    /// cheapest for database-only handlers.
    Partition,
    /// A partition's records of different keys concurrently, of one key in offset order: for
    /// handlers that wait on a slow dependency (a provider), whose throughput would otherwise
    /// be partitions ÷ latency. No batches.
    Key,
}

impl RuntimeArgs {
    /// The consumer settings for `group` and `topics`, with these flags applied.
    pub fn settings(&self, group: &str, topics: &[&str], kafka: KafkaSettings) -> ConsumerSettings {
        self.settings_ordered(group, topics, kafka, Ordering::Partition)
    }

    /// As [`Self::settings`], in `default` order unless `--ordering` names one.
    pub fn settings_ordered(
        &self,
        group: &str,
        topics: &[&str],
        kafka: KafkaSettings,
        default: Ordering,
    ) -> ConsumerSettings {
        let mut settings = ConsumerSettings::new(group, topics, kafka);
        settings.set_ordering(self.ordering.unwrap_or(default));
        settings.key_concurrency = self.key_concurrency;
        settings.group_commits = self.group_commits;
        settings.retry_mode = self.retry_mode;
        settings.after_dead_letter = self.quarantine_after_dead_letter;
        settings.max_attempts = self.max_attempts;
        settings.backoff_base = Duration::from_millis(self.backoff_base_ms);
        settings.backoff_cap = Duration::from_millis(self.backoff_cap_ms);
        settings.commit_interval = Duration::from_millis(self.commit_interval_ms);
        settings.partition_queue = self.partition_queue;
        if let Some(max_in_flight) = self.max_in_flight {
            settings.max_in_flight = max_in_flight;
        }
        settings.batch_size = self.batch_size;
        settings.call_out_concurrency = self.call_out_concurrency;
        settings.revoke_grace = Duration::from_secs(self.revoke_grace_secs);
        settings.lag_interval = Duration::from_secs(self.lag_interval_secs);
        settings.retention = Duration::from_secs(self.retention_hours * 3600);
        settings.prune_interval = Duration::from_secs(self.prune_interval_secs);
        settings.transaction_idle_limit = Duration::from_secs(self.transaction_idle_limit_secs);
        settings
    }
}

/// Everything a consumer needs to know about where and how to consume.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The consumer group, as the broker knows it.
    pub group: String,
    /// The source topics, as the broker knows them.
    pub topics: Vec<String>,
    pub kafka: KafkaSettings,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub commit_interval: Duration,
    /// Records queued per partition; when full, fetching for that partition pauses.
    pub partition_queue: usize,
    /// Partitions handled at once (each with its batch).
    pub max_in_flight: usize,
    /// Most records of one partition handled in one transaction (taken from what is already
    /// queued, so a quiet partition still goes one by one).
    pub batch_size: usize,
    /// Orders (record keys) of one batch whose [`Handler::call_out`] runs at once.
    pub call_out_concurrency: usize,
    /// How long a revocation waits for the revoked partitions' records in hand.
    pub revoke_grace: Duration,
    /// How often per-partition lag is read from the broker.
    pub lag_interval: Duration,
    /// How long dedupe rows (and a handler's per-event rows) are kept: longer than the source
    /// topics' retention (see [`retention`]).
    pub retention: Duration,
    /// How often rows past the horizon are pruned.
    pub prune_interval: Duration,
    /// How long a record's transaction may idle before the server ends it
    /// (`idle_in_transaction_session_timeout`): a consumer frozen mid-transaction (SIGSTOP, a
    /// VM pause, a partition) releases its locks instead of stalling every other member.
    pub transaction_idle_limit: Duration,
    pub ordering: Ordering,
    /// In key order: the records of one partition handled at once (each instance's
    /// `max_in_flight` bounds them across partitions).
    pub key_concurrency: usize,
    /// In key order: the shared transactions of one partition running at once (0: a
    /// transaction per record; [`crate::group_commit`]).
    pub group_commits: usize,
    /// Where a record asking for another try goes: the retry topic or the quarantine.
    pub retry_mode: RetryMode,
    /// In quarantine: a dead-lettered record's parked followers resume or follow it.
    pub after_dead_letter: AfterDeadLetter,
    /// Where this consumer's metrics are registered (serve it with `platform::metrics::serve`).
    pub registry: prometheus::Registry,
    /// Set once the consumer has its topics and has subscribed (`/readyz` answers 200); unset
    /// while it waits for Kafka and once it stops.
    pub ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ConsumerSettings {
    /// `group` and `topics` are logical names; the settings hold the broker's names (the
    /// namespace of `kafka` applied), and so do the retry and dead-letter topics, the headers
    /// and the metrics derived from them.
    pub fn new(group: &str, topics: &[&str], kafka: KafkaSettings) -> Self {
        ConsumerSettings {
            group: kafka.group(group),
            topics: topics.iter().map(|t| kafka.topic(t)).collect(),
            kafka,
            max_attempts: defaults::MAX_ATTEMPTS,
            backoff_base: Duration::from_millis(defaults::BACKOFF_BASE_MS),
            backoff_cap: Duration::from_millis(defaults::BACKOFF_CAP_MS),
            commit_interval: Duration::from_millis(defaults::COMMIT_INTERVAL_MS),
            partition_queue: defaults::PARTITION_QUEUE,
            max_in_flight: defaults::MAX_IN_FLIGHT,
            batch_size: defaults::BATCH_SIZE,
            call_out_concurrency: defaults::CALL_OUT_CONCURRENCY,
            revoke_grace: Duration::from_secs(defaults::REVOKE_GRACE_SECS),
            registry: prometheus::Registry::new(),
            lag_interval: Duration::from_secs(defaults::LAG_INTERVAL_SECS),
            retention: Duration::from_secs(defaults::RETENTION_HOURS * 3600),
            prune_interval: Duration::from_secs(defaults::PRUNE_INTERVAL_SECS),
            transaction_idle_limit: Duration::from_secs(defaults::TRANSACTION_IDLE_LIMIT_SECS),
            ordering: Ordering::Partition,
            key_concurrency: defaults::KEY_CONCURRENCY,
            group_commits: defaults::GROUP_COMMITS,
            retry_mode: RetryMode::Topic,
            after_dead_letter: AfterDeadLetter::Resume,
            ready: Default::default(),
        }
    }

    /// Runs in `ordering`, with that ordering's `max_in_flight` default (partitions in partition
    /// order, records in key order).
    pub fn set_ordering(&mut self, ordering: Ordering) {
        self.ordering = ordering;
        self.max_in_flight = match ordering {
            Ordering::Partition => defaults::MAX_IN_FLIGHT,
            Ordering::Key => defaults::MAX_IN_FLIGHT_KEYED,
        };
    }

    /// Settings that cannot work together, named: the quarantine keeps a key's order, so it
    /// needs key order.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.retry_mode == RetryMode::Quarantine && self.ordering != Ordering::Key {
            anyhow::bail!(
                "group {}: --retry-mode quarantine needs --ordering key (in partition order a failing record \
                 would hold its whole partition); use --retry-mode topic or --ordering key",
                self.group
            );
        }
        Ok(())
    }

    /// The group's retry topic for source topic `topic` (a broker name).
    pub fn retry_topic(&self, topic: &str) -> String {
        retry_topic(topic, self.logical_group())
    }

    /// The group's dead-letter topic for source topic `topic` (a broker name).
    pub fn dlt_topic(&self, topic: &str) -> String {
        dlt_topic(topic, self.logical_group())
    }

    /// The group without the namespace: how its retry and DLT topics name it.
    pub(crate) fn logical_group(&self) -> &str {
        self.group.strip_prefix(&self.kafka.namespace).unwrap_or(&self.group)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        runtime: RuntimeArgs,
    }

    fn knobs(s: &ConsumerSettings) -> String {
        format!(
            "{} {:?} {:?} {:?} {} {} {} {} {:?} {:?} {:?} {:?} {:?} {:?} {} {} {:?} {:?}",
            s.max_attempts,
            s.backoff_base,
            s.backoff_cap,
            s.commit_interval,
            s.partition_queue,
            s.max_in_flight,
            s.batch_size,
            s.call_out_concurrency,
            s.revoke_grace,
            s.lag_interval,
            s.retention,
            s.prune_interval,
            s.transaction_idle_limit,
            s.ordering,
            s.key_concurrency,
            s.group_commits,
            s.retry_mode,
            s.after_dead_letter
        )
    }

    #[test]
    fn the_flags_defaults_are_the_settings_defaults_and_every_knob_is_settable() {
        let kafka = KafkaSettings::new("127.0.0.1:1");
        let plain = ConsumerSettings::new("g", &["t"], kafka.clone());
        let defaults = Cli::try_parse_from(["consumer"]).unwrap().runtime.settings("g", &["t"], kafka.clone());
        assert_eq!(knobs(&defaults), knobs(&plain));
        let set =
            Cli::try_parse_from(["consumer", "--batch-size", "7", "--max-attempts", "2", "--backoff-cap-ms", "900"])
                .unwrap()
                .runtime
                .settings("g", &["t"], kafka);
        assert_eq!((set.batch_size, set.max_attempts, set.backoff_cap), (7, 2, Duration::from_millis(900)));
        // The service's ordering unless the flag names one.
        let cli = Cli::try_parse_from(["consumer"]).unwrap().runtime;
        assert_eq!(
            cli.settings_ordered("g", &["t"], KafkaSettings::new("127.0.0.1:1"), Ordering::Key).ordering,
            Ordering::Key
        );
        let cli = Cli::try_parse_from([
            "consumer",
            "--ordering",
            "partition",
            "--key-concurrency",
            "8",
            "--group-commits",
            "0",
        ])
        .unwrap()
        .runtime;
        let ordered = cli.settings_ordered("g", &["t"], KafkaSettings::new("127.0.0.1:1"), Ordering::Key);
        assert_eq!((ordered.ordering, ordered.key_concurrency, ordered.group_commits), (Ordering::Partition, 8, 0));
        // max_in_flight counts partitions in partition order, records in key order.
        assert_eq!(ordered.max_in_flight, defaults::MAX_IN_FLIGHT);
        let cli = Cli::try_parse_from(["consumer"]).unwrap().runtime;
        let keyed = cli.settings_ordered("g", &["t"], KafkaSettings::new("127.0.0.1:1"), Ordering::Key);
        assert_eq!(keyed.max_in_flight, defaults::MAX_IN_FLIGHT_KEYED);
        let cli = Cli::try_parse_from(["consumer", "--max-in-flight", "9"]).unwrap().runtime;
        assert_eq!(
            cli.settings_ordered("g", &["t"], KafkaSettings::new("127.0.0.1:1"), Ordering::Key).max_in_flight,
            9
        );
    }

    #[test]
    fn the_quarantine_needs_key_order() {
        let kafka = KafkaSettings::new("127.0.0.1:1");
        let cli =
            Cli::try_parse_from(["consumer", "--retry-mode", "quarantine", "--quarantine-after-dead-letter", "follow"])
                .unwrap()
                .runtime;
        let keyed = cli.settings_ordered("g", &["t"], kafka.clone(), Ordering::Key);
        assert_eq!((keyed.retry_mode, keyed.after_dead_letter), (RetryMode::Quarantine, AfterDeadLetter::Follow));
        keyed.check().unwrap();
        let error = cli.settings("g", &["t"], kafka).check().unwrap_err().to_string();
        assert!(error.contains("--retry-mode quarantine needs --ordering key"), "{error}");
    }

    #[test]
    fn a_knob_out_of_range_is_refused_with_its_name() {
        let error = Cli::try_parse_from(["consumer", "--batch-size", "0"]).err().unwrap().to_string();
        assert!(error.contains("--batch-size"), "{error}");
    }
}

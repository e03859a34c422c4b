//! What the consume loop counts, per group and topic (labels stay low-cardinality: never an
//! order or event id).

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Every `outcome` label `orderflow_consumer_records_total` takes.
pub const OUTCOMES: [&str; 7] =
    ["processed", "deduped", "skipped", "retried", "parked", "dead_lettered", "waited_for_dependency"];

#[derive(Clone)]
pub struct ConsumerMetrics {
    /// outcome: processed | deduped | skipped | retried | parked | dead_lettered |
    /// waited_for_dependency
    pub records: IntCounterVec,
    pub handler_seconds: HistogramVec,
    pub in_flight: IntGaugeVec,
    /// Per assigned partition: the broker's high watermark, this group's committed offset, and
    /// the difference (messages not yet committed). Partition numbers are few; ids never appear.
    pub high_watermark: IntGaugeVec,
    pub committed_offset: IntGaugeVec,
    pub lag: IntGaugeVec,
    /// Partitions whose fetching is paused because their worker is behind.
    pub paused_partitions: IntGaugeVec,
    /// Times a partition was paused (its queue was full).
    pub pauses: IntCounterVec,
    /// kind: assign | revoke
    pub rebalances: IntCounterVec,
    /// Time from revoke to committed offsets (finishing the records in hand).
    pub revoke_seconds: HistogramVec,
    /// Rows deleted past the retention horizon, by table.
    pub pruned: IntCounterVec,
    /// In quarantine: keys held, records parked, and the age of the oldest parked record, over
    /// the partitions this instance holds.
    pub quarantined_keys: IntGaugeVec,
    pub parked_records: IntGaugeVec,
    pub oldest_parked_seconds: GaugeVec,
}

impl ConsumerMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let records = IntCounterVec::new(
            Opts::new("orderflow_consumer_records_total", "Records handled by the consume loop, by outcome"),
            &["group", "topic", "outcome"],
        )?;
        let handler_seconds = HistogramVec::new(
            HistogramOpts::new(
                "orderflow_consumer_handler_seconds",
                "Time per handler transaction (dedupe + side effect + commit)",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["group", "topic"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new("orderflow_consumer_in_flight", "Records fetched and not yet finished, by group"),
            &["group"],
        )?;
        let partition_gauge =
            |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["group", "topic", "partition"]);
        let high_watermark =
            partition_gauge("orderflow_consumer_high_watermark", "Next offset the broker will assign, per partition")?;
        let committed_offset =
            partition_gauge("orderflow_consumer_committed_offset", "Offset this group committed, per partition")?;
        let lag = partition_gauge("orderflow_consumer_lag", "Messages not yet committed by this group, per partition")?;
        let paused_partitions = IntGaugeVec::new(
            Opts::new("orderflow_consumer_paused_partitions", "Partitions paused because their worker is behind"),
            &["group"],
        )?;
        let pauses = IntCounterVec::new(
            Opts::new(
                "orderflow_consumer_pauses_total",
                "Times fetching of a partition was paused (its queue was full)",
            ),
            &["group"],
        )?;
        let rebalances = IntCounterVec::new(
            Opts::new("orderflow_consumer_rebalances_total", "Partition assignments and revocations"),
            &["group", "kind"],
        )?;
        let revoke_seconds = HistogramVec::new(
            HistogramOpts::new(
                "orderflow_consumer_revoke_seconds",
                "Time a revocation took: finishing the records in hand and committing",
            )
            .buckets(vec![0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["group"],
        )?;
        let pruned = IntCounterVec::new(
            Opts::new("orderflow_consumer_pruned_rows_total", "Rows deleted past the retention horizon, by table"),
            &["group", "table"],
        )?;
        let group_gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["group"]);
        let quarantined_keys =
            group_gauge("orderflow_consumer_quarantined_keys", "Keys held by the quarantine (their records parked)")?;
        let parked_records =
            group_gauge("orderflow_consumer_parked_records", "Records parked in the quarantine behind a failing one")?;
        let oldest_parked_seconds = GaugeVec::new(
            Opts::new(
                "orderflow_consumer_oldest_parked_seconds",
                "Age of the oldest record parked in the quarantine (0: none)",
            ),
            &["group"],
        )?;
        // One registry per consumer: a second registration of these names fails loudly.
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(handler_seconds.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(high_watermark.clone()))?;
        registry.register(Box::new(committed_offset.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(paused_partitions.clone()))?;
        registry.register(Box::new(pauses.clone()))?;
        registry.register(Box::new(rebalances.clone()))?;
        registry.register(Box::new(revoke_seconds.clone()))?;
        registry.register(Box::new(pruned.clone()))?;
        registry.register(Box::new(quarantined_keys.clone()))?;
        registry.register(Box::new(parked_records.clone()))?;
        registry.register(Box::new(oldest_parked_seconds.clone()))?;
        Ok(ConsumerMetrics {
            records,
            handler_seconds,
            in_flight,
            high_watermark,
            committed_offset,
            lag,
            paused_partitions,
            pauses,
            rebalances,
            revoke_seconds,
            pruned,
            quarantined_keys,
            parked_records,
            oldest_parked_seconds,
        })
    }

    pub fn count(&self, group: &str, topic: &str, outcome: &str) {
        self.records.with_label_values(&[group, topic, outcome]).inc();
    }
}

/// Reads, for every assigned partition, the high watermark and the group's committed offset
/// (blocking broker calls: run it off the async threads) and sets the partition gauges.
pub fn report_partitions<X: rdkafka::consumer::ConsumerContext, C: rdkafka::consumer::Consumer<X>>(
    consumer: &C,
    metrics: &ConsumerMetrics,
    group: &str,
) {
    use std::time::Duration;
    let Ok(assignment) = consumer.assignment() else { return };
    // Short timeouts, and give up on the first failure: a broker that does not answer now will
    // be asked again at the next tick, and a process that is stopping must not wait on it.
    let Ok(committed) = consumer.committed_offsets(assignment.clone(), Duration::from_secs(2)) else { return };
    for element in committed.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let Ok((low, high)) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(2)) else { return };
        let committed = match element.offset() {
            rdkafka::Offset::Offset(offset) => offset,
            _ => low,
        };
        let labels = [group, topic, &partition.to_string()];
        metrics.high_watermark.with_label_values(&labels).set(high);
        metrics.committed_offset.with_label_values(&labels).set(committed);
        metrics.lag.with_label_values(&labels).set((high - committed).max(0));
    }
}

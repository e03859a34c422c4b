//! The exporter's Prometheus series. Each poll replaces every per-partition series, so a
//! partition or group that is gone stops being reported instead of freezing at its last value.
//! Labels: group, topic, partition — never a key or an event.

use prometheus::{GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::broker_view::Snapshot;

#[derive(Clone)]
pub struct LagMetrics {
    high_watermark: IntGaugeVec,
    low_watermark: IntGaugeVec,
    committed: IntGaugeVec,
    lag_messages: IntGaugeVec,
    lag_seconds: GaugeVec,
    members: IntGaugeVec,
    polls: IntCounterVec,
    poll_seconds: Histogram,
    last_success: IntGauge,
}

impl LagMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let partition = ["topic", "partition"];
        let group_partition = ["group", "topic", "partition"];
        let metrics = LagMetrics {
            high_watermark: IntGaugeVec::new(
                Opts::new(
                    "orderflow_kafka_partition_high_watermark",
                    "The offset the next record written to the partition gets",
                ),
                &partition,
            )?,
            low_watermark: IntGaugeVec::new(
                Opts::new("orderflow_kafka_partition_low_watermark", "The partition's first offset still stored"),
                &partition,
            )?,
            committed: IntGaugeVec::new(
                Opts::new(
                    "orderflow_group_committed_offset",
                    "The group's committed offset (the next record it reads)",
                ),
                &group_partition,
            )?,
            lag_messages: IntGaugeVec::new(
                Opts::new(
                    "orderflow_group_lag_messages",
                    "Records between the group's committed offset and the high watermark",
                ),
                &group_partition,
            )?,
            lag_seconds: GaugeVec::new(
                Opts::new(
                    "orderflow_group_lag_seconds",
                    "Age of the oldest record the group has not committed (0 with no lag)",
                ),
                &group_partition,
            )?,
            members: IntGaugeVec::new(
                Opts::new(
                    "orderflow_group_members",
                    "Members the group coordinator lists for the group (0: nobody is consuming)",
                ),
                &["group"],
            )?,
            polls: IntCounterVec::new(
                Opts::new("orderflow_lag_exporter_polls_total", "Reads of the broker, by result"),
                &["result"],
            )?,
            poll_seconds: Histogram::with_opts(
                HistogramOpts::new("orderflow_lag_exporter_poll_seconds", "How long one read of the broker took")
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            )?,
            last_success: IntGauge::new(
                "orderflow_lag_exporter_last_success_timestamp_seconds",
                "When the broker was last read successfully (unix time)",
            )?,
        };
        registry.register(Box::new(metrics.high_watermark.clone()))?;
        registry.register(Box::new(metrics.low_watermark.clone()))?;
        registry.register(Box::new(metrics.committed.clone()))?;
        registry.register(Box::new(metrics.lag_messages.clone()))?;
        registry.register(Box::new(metrics.lag_seconds.clone()))?;
        registry.register(Box::new(metrics.members.clone()))?;
        registry.register(Box::new(metrics.polls.clone()))?;
        registry.register(Box::new(metrics.poll_seconds.clone()))?;
        registry.register(Box::new(metrics.last_success.clone()))?;
        Ok(metrics)
    }

    pub fn publish(&self, snapshot: &Snapshot, took_secs: f64, now_unix: i64) {
        self.high_watermark.reset();
        self.low_watermark.reset();
        for p in &snapshot.partitions {
            let partition = p.partition.to_string();
            self.high_watermark.with_label_values(&[&p.topic, &partition]).set(p.high);
            self.low_watermark.with_label_values(&[&p.topic, &partition]).set(p.low);
        }
        self.committed.reset();
        self.lag_messages.reset();
        self.lag_seconds.reset();
        self.members.reset();
        for group in &snapshot.groups {
            if let Some(members) = group.members {
                self.members.with_label_values(&[&group.name]).set(members as i64);
            }
            for p in &group.partitions {
                let labels = [group.name.as_str(), p.topic.as_str(), &p.partition.to_string()];
                self.committed.with_label_values(&labels).set(p.committed);
                self.lag_messages.with_label_values(&labels).set(p.lag);
                if let Some(seconds) = p.lag_seconds {
                    self.lag_seconds.with_label_values(&labels).set(seconds);
                }
            }
        }
        self.polls.with_label_values(&["ok"]).inc();
        self.poll_seconds.observe(took_secs);
        self.last_success.set(now_unix);
    }

    pub fn failed(&self) {
        self.polls.with_label_values(&["error"]).inc();
    }
}

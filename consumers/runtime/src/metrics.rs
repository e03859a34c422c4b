//! What the consume loop counts, per group and topic (labels stay low-cardinality: never an
//! order or event id).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct ConsumerMetrics {
    /// outcome: processed | deduped | retried | dead_lettered | waited_for_dependency
    pub records: IntCounterVec,
    pub handler_seconds: HistogramVec,
    pub in_flight: IntGaugeVec,
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
        // One registry per consumer: a second registration of these names fails loudly.
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(handler_seconds.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(ConsumerMetrics { records, handler_seconds, in_flight })
    }

    pub fn count(&self, group: &str, topic: &str, outcome: &str) {
        self.records.with_label_values(&[group, topic, outcome]).inc();
    }
}

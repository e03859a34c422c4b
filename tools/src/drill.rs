//! The drain drill's measures (docs/failure-catalog.md §8: payments down, a backlog, instances come back),
//! shared by `orderflow-drill` and the small drill in the test suite.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
};

use orderflow_payment_simulator::{LedgerEntry, faults::Stats};

/// What one drill run measured.
#[derive(Debug, Clone, Default)]
pub struct DrillReport {
    pub orders: u64,
    pub instances: usize,
    /// The provider's limit, requests per second.
    pub limit: f64,
    /// From the payment instances' start (or the provider's return) until every order has its
    /// payment (charged or declined): the payment backlog drained.
    pub drain_secs: f64,
    /// Until no order is left pending (order-service has applied every payment outcome).
    pub settled_secs: f64,
    /// Provider requests per wall-clock second during the drain.
    pub peak_rps: u64,
    pub mean_rps: f64,
    pub provider_requests: u64,
    /// Requests the provider had to refuse with 429 (the limit exceeded).
    pub rate_limited: u64,
    /// Requests under a key whose last request failed.
    pub retries: u64,
    pub breaker_openings: u64,
    pub dead_lettered: u64,
    /// Orders charged under more than one key.
    pub duplicate_charges: u64,
    /// Orders still PLACED when the drill ended.
    pub pending: u64,
    /// Provider calls that sent no request, by why (`window`, `rate_limit`, `breaker_open`, …).
    pub held_back: BTreeMap<String, u64>,
    /// Records that waited for a dependency (a held-back call, an outage) before going again.
    pub waits: u64,
}

impl DrillReport {
    /// The target: drain within 1.1 × N / limit.
    pub fn target_secs(&self) -> f64 {
        1.1 * self.orders as f64 / self.limit
    }

    pub fn met_target(&self) -> bool {
        self.drain_secs <= self.target_secs()
    }

    /// Fills the provider's view from its stats over `[from, to]` (unix seconds).
    pub fn provider_view(&mut self, stats: &Stats, from: i64, to: i64) {
        let window: Vec<u64> = stats.per_second.range(from..=to).map(|(_, n)| *n).collect();
        self.peak_rps = window.iter().copied().max().unwrap_or(0);
        self.provider_requests = window.iter().sum();
        self.mean_rps = self.provider_requests as f64 / ((to - from).max(1)) as f64;
        self.rate_limited = stats.rate_limited;
    }

    /// Adds one payment instance's counters from its `/metrics` text.
    pub fn add_instance_metrics(&mut self, text: &str) {
        self.retries += metric_sum(text, "orderflow_provider_retries_total", &[r#"decision="allowed""#]) as u64;
        self.breaker_openings +=
            metric_sum(text, "orderflow_provider_breaker_transitions_total", &[r#"to="open""#]) as u64;
        self.dead_lettered +=
            metric_sum(text, "orderflow_consumer_records_total", &[r#"outcome="dead_lettered""#]) as u64;
        self.waits +=
            metric_sum(text, "orderflow_consumer_records_total", &[r#"outcome="waited_for_dependency""#]) as u64;
        for (reason, count) in metric_by_label(text, "orderflow_provider_held_back_total", "reason") {
            *self.held_back.entry(reason).or_default() += count as u64;
        }
    }
}

impl fmt::Display for DrillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.met_target() { "met" } else { "MISSED" };
        writeln!(
            f,
            "drill: {} orders, {} payment instances, provider limit {}/s",
            self.orders, self.instances, self.limit
        )?;
        writeln!(
            f,
            "  payments drained   {:.1} s (target ≤ 1.1 × N / limit = {:.1} s: {verdict})",
            self.drain_secs,
            self.target_secs()
        )?;
        writeln!(f, "  orders settled     {:.1} s (no order left pending)", self.settled_secs)?;
        writeln!(
            f,
            "  provider requests  {} (peak {}/s, mean {:.1}/s, limit {}/s; refused with 429: {})",
            self.provider_requests, self.peak_rps, self.mean_rps, self.limit, self.rate_limited
        )?;
        writeln!(f, "  retries            {}", self.retries)?;
        writeln!(f, "  breaker openings   {}", self.breaker_openings)?;
        let held: Vec<String> = self.held_back.iter().map(|(reason, n)| format!("{reason} {n}")).collect();
        writeln!(
            f,
            "  held back          {} (calls that sent no request); records that waited: {}",
            if held.is_empty() { "none".to_string() } else { held.join(", ") },
            self.waits
        )?;
        writeln!(f, "  dead-lettered      {}", self.dead_lettered)?;
        writeln!(f, "  duplicate charges  {}", self.duplicate_charges)?;
        write!(f, "  orders pending     {}", self.pending)
    }
}

/// Orders (by the charge's reference) charged under more than one idempotency key.
pub fn duplicate_charges(ledger: &[LedgerEntry]) -> u64 {
    let mut per_order: HashMap<&str, u32> = HashMap::new();
    for entry in ledger.iter().filter(|e| e.kind == "charge" && e.status == "approved") {
        *per_order.entry(entry.reference.as_str()).or_default() += 1;
    }
    per_order.values().filter(|n| **n > 1).count() as u64
}

/// The sum of a metric's samples whose labels contain every one of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name && labels.iter().all(|label| series.contains(label))).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A metric's samples summed by the value of one label.
pub fn metric_by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let prefix = format!("{label}=\"");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (Some(metric), Ok(value)) = (series.split('{').next(), value.parse::<f64>()) else { continue };
        if metric != name {
            continue;
        }
        let Some(start) = series.find(&prefix).map(|i| i + prefix.len()) else { continue };
        let Some(end) = series[start..].find('"') else { continue };
        *out.entry(series[start..start + end].to_string()).or_default() += value;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_matching_series_only() {
        let text = "# HELP x\norderflow_provider_retries_total{decision=\"allowed\"} 3\n\
                    orderflow_provider_retries_total{decision=\"denied\"} 5\n\
                    orderflow_provider_retries_total_other{decision=\"allowed\"} 7\n";
        assert_eq!(metric_sum(text, "orderflow_provider_retries_total", &[r#"decision="allowed""#]), 3.0);
        assert_eq!(metric_sum(text, "orderflow_provider_retries_total", &[]), 8.0);
    }

    #[test]
    fn metric_by_label_sums_per_label_value() {
        let text = "orderflow_provider_held_back_total{reason=\"window\"} 2\n\
                    orderflow_provider_held_back_total{reason=\"rate_limit\"} 40\n\
                    orderflow_provider_held_back_total{reason=\"window\"} 1\n\
                    orderflow_provider_requests_total{outcome=\"ok\"} 9\n";
        let by = metric_by_label(text, "orderflow_provider_held_back_total", "reason");
        assert_eq!(by.into_iter().collect::<Vec<_>>(), vec![("rate_limit".into(), 40.0), ("window".into(), 3.0)]);
    }

    #[test]
    fn provider_view_reads_the_window() {
        let mut stats = Stats::default();
        stats.per_second.extend([(9, 100), (10, 5), (11, 20), (12, 10), (13, 50)]);
        let mut report = DrillReport { orders: 10, limit: 20.0, ..Default::default() };
        report.provider_view(&stats, 10, 12);
        assert_eq!((report.peak_rps, report.provider_requests), (20, 35));
        assert_eq!(report.mean_rps, 17.5);
    }
}

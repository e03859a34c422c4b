//! The retry budget.

use std::{
    collections::HashSet,
    sync::Mutex,
    time::{Duration, Instant},
};

use prometheus::IntCounterVec;

/// Retries as a bounded share of first requests (Finagle's and gRPC's retry budget).
pub struct RetryBudget {
    ratio: f64,
    floor_per_sec: f64,
    cap: f64,
    tokens: Mutex<(f64, Instant)>,
    /// Keys whose last request failed: the next request under one of them is a retry.
    failing: Mutex<HashSet<String>>,
    decisions: IntCounterVec,
}

impl RetryBudget {
    pub fn new(ratio: f64, floor_per_sec: f64, decisions: IntCounterVec) -> Self {
        let cap = (floor_per_sec * 10.0).max(10.0);
        RetryBudget {
            ratio,
            floor_per_sec,
            cap,
            tokens: Mutex::new((cap, Instant::now())),
            failing: Mutex::new(HashSet::new()),
            decisions,
        }
    }

    pub fn is_retry(&self, key: &str) -> bool {
        self.failing.lock().expect("budget lock").contains(key)
    }

    /// A first request adds `ratio` of a retry to the budget.
    pub fn deposit(&self) {
        let mut tokens = self.tokens.lock().expect("budget lock");
        tokens.0 = (tokens.0 + self.ratio).min(self.cap);
    }

    /// Spends one retry if the budget holds one.
    pub fn try_retry(&self) -> bool {
        let mut tokens = self.tokens.lock().expect("budget lock");
        let now = Instant::now();
        tokens.0 = (tokens.0 + self.floor_per_sec * now.duration_since(tokens.1).as_secs_f64()).min(self.cap);
        tokens.1 = now;
        let allowed = tokens.0 >= 1.0;
        if allowed {
            tokens.0 -= 1.0;
        }
        self.decisions.with_label_values(&[if allowed { "allowed" } else { "denied" }]).inc();
        allowed
    }

    /// How long until the floor alone refills one retry.
    pub fn refill_wait(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.floor_per_sec.max(0.01))
    }

    pub fn failed(&self, key: &str) {
        let mut failing = self.failing.lock().expect("budget lock");
        if failing.len() >= 100_000 {
            // A bound on memory; forgetting only makes a later retry count as a first request.
            failing.clear();
        }
        failing.insert(key.to_string());
    }

    pub fn settled(&self, key: &str) {
        self.failing.lock().expect("budget lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    #[test]
    fn retry_budget_is_a_share_of_first_requests() {
        let decisions = IntCounterVec::new(Opts::new("d", "d"), &["decision"]).unwrap();
        let budget = RetryBudget::new(0.1, 0.0001, decisions);
        // Start full (the cap: 10), then spend it.
        let mut allowed = 0;
        while budget.try_retry() {
            allowed += 1;
        }
        assert_eq!(allowed, 10);
        for _ in 0..100 {
            budget.deposit();
        }
        let mut allowed = 0;
        while budget.try_retry() {
            allowed += 1;
        }
        assert!((9..=10).contains(&allowed), "100 first requests buy 10 retries, got {allowed}");
        budget.failed("k");
        assert!(budget.is_retry("k"));
        budget.settled("k");
        assert!(!budget.is_retry("k"));
    }
}

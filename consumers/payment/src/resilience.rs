//! What stands between the payment service and a failing provider (seed 000 §6–§8, seed 003):
//!
//! - [`Breaker`]: after `failure_threshold` failures in a row (no answer, 5xx, an error payload)
//!   the circuit opens and calls fail fast, costing the provider nothing; after `open_for` one
//!   probe goes through (half-open); its success closes the circuit, its failure doubles the
//!   open time (up to `max_open_for`).
//! - [`Window`]: how many calls this instance has in flight, adapted to the provider's
//!   feedback like TCP's congestion window: slow start from 1 (doubling per round of
//!   successes), additive increase past the threshold, halved on a 429, a timeout or a 5xx,
//!   back to 1 when the breaker opens. After downtime each instance ramps up instead of
//!   pulling its whole backlog at once.
//! - [`SharedRateLimit`]: a token bucket in Postgres, shared by every payment instance, so the
//!   provider's limit holds whatever the number of instances (see the README: "How the limit
//!   is shared").
//! - [`RetryBudget`]: retries (a second request under a key whose last request failed) stay
//!   a bounded fraction of first requests (`ratio`), plus a small floor per second so a quiet
//!   service can still retry.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus::{IntCounterVec, IntGauge};
use sqlx::PgPool;
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub open_for: Duration,
    pub max_open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failure_threshold: 5,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed { failures: u32 },
    Open { until: Instant, open_for: Duration },
    HalfOpen { open_for: Duration },
}

impl BreakerState {
    /// The value of the `orderflow_provider_breaker_state` gauge.
    pub fn gauge(&self) -> i64 {
        match self {
            BreakerState::Closed { .. } => 0,
            BreakerState::HalfOpen { .. } => 1,
            BreakerState::Open { .. } => 2,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed { .. } => "closed",
            BreakerState::HalfOpen { .. } => "half_open",
            BreakerState::Open { .. } => "open",
        }
    }
}

pub struct Breaker {
    settings: BreakerSettings,
    state: Mutex<BreakerState>,
    gauge: IntGauge,
    transitions: IntCounterVec,
}

/// Leave to make one call. Dropped without an outcome (the caller was cancelled), a probe
/// hands its turn to the next caller.
pub struct BreakerPermit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl BreakerPermit<'_> {
    /// The provider answered (any answer but a 5xx or an error payload: a decline, a 429, a
    /// 4xx all prove it is up).
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.settle(self.probe, true);
    }

    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.settle(self.probe, false);
    }
}

impl Drop for BreakerPermit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            let mut state = self.breaker.state.lock().expect("breaker lock");
            if let BreakerState::HalfOpen { open_for } = *state {
                *state = BreakerState::Open { until: Instant::now(), open_for };
            }
        }
    }
}

impl Breaker {
    pub fn new(settings: BreakerSettings, gauge: IntGauge, transitions: IntCounterVec) -> Self {
        gauge.set(0);
        Breaker { settings, state: Mutex::new(BreakerState::Closed { failures: 0 }), gauge, transitions }
    }

    pub fn state(&self) -> BreakerState {
        *self.state.lock().expect("breaker lock")
    }

    /// A permit to call, or how long to wait before asking again.
    pub fn allow(&self) -> Result<BreakerPermit<'_>, Duration> {
        let mut state = self.state.lock().expect("breaker lock");
        let probe = match *state {
            BreakerState::Closed { .. } => false,
            BreakerState::Open { until, open_for } => {
                let now = Instant::now();
                if now < until {
                    return Err(until - now);
                }
                self.set(&mut state, BreakerState::HalfOpen { open_for });
                true
            }
            // One probe at a time; the others look again soon.
            BreakerState::HalfOpen { open_for } => return Err(open_for / 4),
        };
        Ok(BreakerPermit { breaker: self, probe, settled: false })
    }

    fn settle(&self, probe: bool, success: bool) {
        let mut state = self.state.lock().expect("breaker lock");
        let next = match (*state, success) {
            (BreakerState::Closed { .. }, true) => BreakerState::Closed { failures: 0 },
            (BreakerState::HalfOpen { .. }, true) if probe => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, false) if failures + 1 >= self.settings.failure_threshold => {
                BreakerState::Open { until: Instant::now() + self.settings.open_for, open_for: self.settings.open_for }
            }
            (BreakerState::Closed { failures }, false) => BreakerState::Closed { failures: failures + 1 },
            (BreakerState::HalfOpen { open_for }, false) if probe => {
                let open_for = (open_for * 2).min(self.settings.max_open_for);
                BreakerState::Open { until: Instant::now() + open_for, open_for }
            }
            // A call let through before the circuit opened answers late: the state stands.
            (current, _) => current,
        };
        self.set(&mut state, next);
    }

    fn set(&self, state: &mut BreakerState, next: BreakerState) {
        if state.gauge() != next.gauge() {
            self.transitions.with_label_values(&[next.name()]).inc();
            self.gauge.set(next.gauge());
            match next {
                BreakerState::Open { open_for, .. } => {
                    tracing::warn!(?open_for, "payment provider circuit opened: calls fail fast")
                }
                BreakerState::Closed { .. } => tracing::info!("payment provider circuit closed"),
                BreakerState::HalfOpen { .. } => tracing::info!("payment provider circuit half-open: probing"),
            }
        }
        *state = next;
    }
}

/// The adaptive concurrency window (AIMD with slow start).
pub struct Window {
    state: Mutex<WindowState>,
    changed: Notify,
    max: f64,
    gauge: IntGauge,
}

struct WindowState {
    cwnd: f64,
    ssthresh: f64,
    in_flight: usize,
    last_decrease: Option<Instant>,
}

pub struct WindowPermit<'a>(&'a Window);

impl Drop for WindowPermit<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("window lock").in_flight -= 1;
        self.0.changed.notify_waiters();
    }
}

impl Window {
    pub fn new(max: usize, gauge: IntGauge) -> Self {
        let max = max.max(1) as f64;
        gauge.set(1);
        Window {
            state: Mutex::new(WindowState { cwnd: 1.0, ssthresh: max, in_flight: 0, last_decrease: None }),
            changed: Notify::new(),
            max,
            gauge,
        }
    }

    pub fn size(&self) -> usize {
        self.state.lock().expect("window lock").cwnd as usize
    }

    /// Waits for room in the window.
    pub async fn acquire(&self) -> WindowPermit<'_> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.state.lock().expect("window lock");
                if (state.in_flight as f64) < state.cwnd.floor() {
                    state.in_flight += 1;
                    return WindowPermit(self);
                }
            }
            changed.await;
        }
    }

    pub fn on_success(&self) {
        let mut state = self.state.lock().expect("window lock");
        let increase = if state.cwnd < state.ssthresh { 1.0 } else { 1.0 / state.cwnd };
        state.cwnd = (state.cwnd + increase).min(self.max);
        self.gauge.set(state.cwnd as i64);
        drop(state);
        self.changed.notify_waiters();
    }

    /// A 429, a timeout or a 5xx: halve, at most once per `min_interval` (a burst of failures
    /// from one round of calls is one signal).
    pub fn on_congestion(&self, min_interval: Duration) {
        let mut state = self.state.lock().expect("window lock");
        if state.last_decrease.is_some_and(|at| at.elapsed() < min_interval) {
            return;
        }
        state.ssthresh = (state.cwnd / 2.0).max(1.0);
        state.cwnd = state.ssthresh;
        state.last_decrease = Some(Instant::now());
        self.gauge.set(state.cwnd as i64);
    }

    /// The provider went away: start again from one call at a time.
    pub fn on_outage(&self) {
        let mut state = self.state.lock().expect("window lock");
        state.ssthresh = (state.cwnd / 2.0).max(2.0);
        state.cwnd = 1.0;
        self.gauge.set(1);
    }
}

/// The provider's rate limit as a token bucket in Postgres, shared by all instances. The
/// bucket refills at 92% of the limit and holds at most 4% of it: a one-second window sees at
/// most 96% of the limit in grants, and the last 4% absorbs requests that reach the provider
/// later than their grant (scheduling on a busy host) and so bunch up in its next window. The
/// burst matters too: a bucket of one token loses every grant no poller happens to be waiting
/// for at that instant (the drill measured 65 requests/s against a limit of 200 that way).
pub struct SharedRateLimit {
    pool: PgPool,
    name: String,
    limit_per_sec: f64,
    /// One poller per instance; the others queue here in order.
    gate: tokio::sync::Mutex<()>,
}

impl SharedRateLimit {
    /// Creates or re-sizes the bucket `name` (the latest deploy's limit wins).
    pub async fn new(pool: PgPool, name: &str, limit_per_sec: f64) -> anyhow::Result<Self> {
        anyhow::ensure!(limit_per_sec >= 1.0, "the provider rate limit must be at least 1 request/s");
        let (rate, burst) = (limit_per_sec * 0.92, (limit_per_sec * 0.04).max(1.0));
        sqlx::query(
            "INSERT INTO provider_rate_buckets (name, rate_per_sec, burst, tokens, refilled_at)
             VALUES ($1, $2, $3, 0, clock_timestamp())
             ON CONFLICT (name) DO UPDATE SET rate_per_sec = $2, burst = $3, tokens = LEAST(provider_rate_buckets.tokens, $3)",
        )
        .bind(name)
        .bind(rate)
        .bind(burst)
        .execute(&pool)
        .await?;
        Ok(SharedRateLimit { pool, name: name.into(), limit_per_sec, gate: tokio::sync::Mutex::new(()) })
    }

    pub fn limit_per_sec(&self) -> f64 {
        self.limit_per_sec
    }

    /// Takes one token, waiting for it unless that would pass `deadline` (then how long the
    /// caller should wait before asking again).
    pub async fn acquire(&self, deadline: Instant) -> Result<(), Duration> {
        let _turn = tokio::time::timeout_at(deadline.into(), self.gate.lock()).await.map_err(|_| self.tick())?;
        loop {
            let taken: Result<(bool, f64), sqlx::Error> = sqlx::query_as(
                "WITH now AS (SELECT clock_timestamp() AS t),
                 b AS (SELECT name, rate_per_sec,
                              LEAST(burst, tokens + rate_per_sec * EXTRACT(EPOCH FROM (SELECT t FROM now) - refilled_at)::float8) AS available
                       FROM provider_rate_buckets WHERE name = $1 FOR UPDATE)
                 UPDATE provider_rate_buckets p
                 SET tokens = CASE WHEN b.available >= 1 THEN b.available - 1 ELSE b.available END,
                     refilled_at = (SELECT t FROM now)
                 FROM b WHERE p.name = b.name
                 RETURNING b.available >= 1, GREATEST(0, (1 - b.available) / b.rate_per_sec)",
            )
            .bind(&self.name)
            .fetch_one(&self.pool)
            .await;
            let wait = match taken {
                Ok((true, _)) => return Ok(()),
                Ok((false, wait)) => Duration::from_secs_f64(wait.max(0.0005)),
                Err(error) => {
                    tracing::warn!(%error, "cannot take a provider token from Postgres");
                    return Err(Duration::from_secs(1));
                }
            };
            if Instant::now() + wait > deadline {
                return Err(wait);
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn tick(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.limit_per_sec)
    }
}

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

/// Everything above, shared by the client's clones.
pub struct Resilience {
    pub breaker: Breaker,
    pub window: Window,
    pub budget: RetryBudget,
    pub limit: Option<SharedRateLimit>,
}

pub type SharedResilience = Arc<Resilience>;

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn breaker(threshold: u32) -> Breaker {
        let settings = BreakerSettings {
            failure_threshold: threshold,
            open_for: Duration::from_millis(50),
            max_open_for: Duration::from_millis(150),
        };
        let transitions = IntCounterVec::new(Opts::new("t", "t"), &["to"]).unwrap();
        Breaker::new(settings, IntGauge::new("g", "g").unwrap(), transitions)
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_a_probe_closes_it() {
        let b = breaker(3);
        for _ in 0..2 {
            b.allow().unwrap().failure();
        }
        b.allow().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 }, "a success resets the count");
        for _ in 0..3 {
            b.allow().unwrap().failure();
        }
        assert_eq!(b.state().gauge(), 2);
        let wait = b.allow().err().expect("open: fail fast");
        assert!(wait <= Duration::from_millis(50));
        std::thread::sleep(wait);
        let probe = b.allow().expect("the probe");
        assert_eq!(b.state().gauge(), 1);
        assert!(b.allow().is_err(), "one probe at a time");
        probe.failure();
        match b.state() {
            BreakerState::Open { open_for, .. } => assert_eq!(open_for, Duration::from_millis(100), "doubled"),
            other => panic!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(110));
        b.allow().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
        assert_eq!(b.transitions.with_label_values(&["open"]).get(), 2);
    }

    #[test]
    fn an_abandoned_probe_hands_its_turn_on() {
        let b = breaker(1);
        b.allow().unwrap().failure();
        std::thread::sleep(Duration::from_millis(60));
        drop(b.allow().expect("probe"));
        assert!(b.allow().is_ok(), "the next caller probes");
    }

    #[tokio::test]
    async fn window_slow_starts_halves_on_congestion_and_restarts_after_an_outage() {
        let w = Window::new(64, IntGauge::new("w", "w").unwrap());
        assert_eq!(w.size(), 1);
        for _ in 0..7 {
            w.on_success();
        }
        assert_eq!(w.size(), 8, "slow start: +1 per success");
        w.on_congestion(Duration::from_secs(1));
        assert_eq!(w.size(), 4);
        w.on_congestion(Duration::from_secs(1));
        assert_eq!(w.size(), 4, "one decrease per interval");
        for _ in 0..4 {
            w.on_success();
        }
        assert_eq!(w.size(), 4, "congestion avoidance: +1/cwnd per success");
        w.on_success();
        assert_eq!(w.size(), 5);
        w.on_outage();
        assert_eq!(w.size(), 1);
        let held = w.acquire().await;
        let blocked = tokio::time::timeout(Duration::from_millis(50), w.acquire()).await;
        assert!(blocked.is_err(), "a window of 1 admits one call");
        drop(held);
        let _again = tokio::time::timeout(Duration::from_millis(50), w.acquire()).await.expect("room again");
    }

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

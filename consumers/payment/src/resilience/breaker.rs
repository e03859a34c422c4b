//! The circuit breaker: closed, open (fail fast), half-open (one probe).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use prometheus::{IntCounterVec, IntGauge};

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub open_for: Duration,
    pub max_open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failure_threshold: crate::provider::defaults::BREAKER_FAILURES,
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

    /// `closed`, `half_open` or `open`.
    pub fn name(&self) -> &'static str {
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
    /// For a call let through while the circuit was closed that has not been sent yet: how
    /// long to hold back if the circuit opened meanwhile (`None`: still closed, or this is the
    /// probe). Sending it now would add to an outage the breaker has already seen.
    pub fn opened_since(&self) -> Option<Duration> {
        if self.probe {
            return None;
        }
        match *self.breaker.state.lock().expect("breaker lock") {
            BreakerState::Closed { .. } => None,
            BreakerState::Open { until, .. } => Some(until.saturating_duration_since(Instant::now())),
            BreakerState::HalfOpen { open_for } => Some(open_for / 4),
        }
    }

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
}

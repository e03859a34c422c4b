//! The adaptive concurrency window (AIMD with slow start).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use prometheus::IntGauge;
use tokio::sync::Notify;

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

    /// The window's ceiling.
    pub fn max(&self) -> usize {
        self.max as usize
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.state.lock().expect("window lock").in_flight
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

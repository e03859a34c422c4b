//! Faults the payment simulator injects, switched at runtime (`PUT /admin/faults`, read back with
//! `GET /admin/faults`), per test. Each mode reproduces one way a real provider fails
//! (docs/failure-catalog.md §6–§8):
//!
//! | mode | what the caller sees | charged? |
//! |---|---|---|
//! | `none` | the real answer | yes |
//! | `down` | connection refused (the API port is closed, open connections reset) | no |
//! | `unavailable` | 503 | no |
//! | `latency` | the real answer after `delay_ms` | yes |
//! | `hang` | no answer for `delay_ms` (past the client's timeout), then the answer | yes |
//! | `fail_after_charge` | 500 | **yes** |
//! | `error_payload` | 200 whose body is an error object | **yes** |
//! | `reset_after_charge` | the connection reset, no answer | **yes** |
//! | `api_version_mismatch` | 400 `api_version_mismatch` | no |
//!
//! Independently, `transient_timeout_pct` of requests hang for `delay_ms` after charging
//! (the catalog's flash-sale example: 2% of transient timeouts), decided by a random generator seeded with `seed`, so a
//! run is repeatable; and `rate_limit_per_sec` answers requests beyond the limit of the current
//! second with 429 and `Retry-After`.
//!
//! Ledger reads (`GET /v1/charges/{key}`) are provider requests too: they count against the
//! rate limit and meet `down`, `unavailable` and `latency`; the other modes break only writes.
//! `down` needs the admin port (`--admin-listen`), or nothing could switch it back.
//!
//! What the provider saw is counted ([`Stats`], `GET /admin/stats`): requests, 429s, and
//! requests per wall-clock second — the drill's measure of the load it put on the provider.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultMode {
    #[default]
    None,
    Down,
    Unavailable,
    Latency,
    Hang,
    FailAfterCharge,
    ErrorPayload,
    ApiVersionMismatch,
    ResetAfterCharge,
}

/// Which writes a fault breaks (`down` always takes the whole port).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    All,
    Charges,
    Refunds,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    #[serde(default)]
    pub mode: FaultMode,
    /// Which writes the mode and the transient timeouts break: `all` (also ledger reads),
    /// `charges` or `refunds`.
    #[serde(default)]
    pub scope: Scope,
    /// For `latency`, `hang` and transient timeouts.
    #[serde(default)]
    pub delay_ms: u64,
    /// Share of requests (0–100) that hang for `delay_ms` after charging.
    #[serde(default)]
    pub transient_timeout_pct: f64,
    /// Seed of the generator behind `transient_timeout_pct`.
    #[serde(default)]
    pub seed: u64,
    /// Requests per second served; beyond it, 429 with `Retry-After`.
    #[serde(default)]
    pub rate_limit_per_sec: Option<u32>,
}

impl Faults {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=100.0).contains(&self.transient_timeout_pct) {
            return Err(format!("transient_timeout_pct must be within 0..=100, not {}", self.transient_timeout_pct));
        }
        if self.rate_limit_per_sec == Some(0) {
            return Err("rate_limit_per_sec must be at least 1 (omit it for no limit)".into());
        }
        let needs_delay = matches!(self.mode, FaultMode::Latency | FaultMode::Hang) || self.transient_timeout_pct > 0.0;
        if needs_delay && self.delay_ms == 0 {
            return Err("this mode needs delay_ms".into());
        }
        Ok(())
    }
}

/// The live fault state: the settings, the seeded generator, the rate window, the counts.
pub struct FaultState {
    pub faults: Faults,
    rng: StdRng,
    window_start: Instant,
    window_count: u32,
    pub stats: Stats,
}

/// What the provider saw since it started (or since `DELETE /admin/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests that reached the API (charges, refunds, ledger reads), 429s included.
    pub requests: u64,
    /// Of which answered 429.
    pub rate_limited: u64,
    /// Requests per wall-clock second (unix seconds → count), the last hour.
    pub per_second: BTreeMap<i64, u64>,
}

impl Stats {
    fn count(&mut self) {
        self.requests += 1;
        let second = chrono::Utc::now().timestamp();
        *self.per_second.entry(second).or_default() += 1;
        while self.per_second.len() > 3600 {
            self.per_second.pop_first();
        }
    }

    /// The busiest second's count.
    pub fn peak_per_second(&self) -> u64 {
        self.per_second.values().copied().max().unwrap_or(0)
    }
}

/// What to do with one request, decided before it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// 429, retry after this many seconds.
    RateLimited(u64),
    Serve {
        mode: FaultMode,
        hang_after: Option<Duration>,
    },
}

impl Default for FaultState {
    fn default() -> Self {
        FaultState::new(Faults::default())
    }
}

impl FaultState {
    pub fn new(faults: Faults) -> Self {
        FaultState {
            faults,
            rng: StdRng::seed_from_u64(faults.seed),
            window_start: Instant::now(),
            window_count: 0,
            stats: Stats::default(),
        }
    }

    /// New settings; the counts go on.
    pub fn switch(&mut self, faults: Faults) {
        let stats = std::mem::take(&mut self.stats);
        *self = FaultState { stats, ..FaultState::new(faults) };
    }

    /// Counts a request against the rate limit: Some(retry-after seconds) when over it.
    pub fn admit(&mut self) -> Option<u64> {
        self.stats.count();
        if let Some(limit) = self.faults.rate_limit_per_sec {
            if self.window_start.elapsed() >= Duration::from_secs(1) {
                self.window_start = Instant::now();
                self.window_count = 0;
            }
            if self.window_count >= limit {
                self.stats.rate_limited += 1;
                return Some(1);
            }
            self.window_count += 1;
        }
        None
    }

    /// What to do with one charge (`refund` false) or refund.
    pub fn plan(&mut self, refund: bool) -> Plan {
        if let Some(seconds) = self.admit() {
            return Plan::RateLimited(seconds);
        }
        let in_scope = match self.faults.scope {
            Scope::All => true,
            Scope::Charges => !refund,
            Scope::Refunds => refund,
        };
        if !in_scope {
            return Plan::Serve { mode: FaultMode::None, hang_after: None };
        }
        let delay = Duration::from_millis(self.faults.delay_ms);
        let transient = self.faults.transient_timeout_pct > 0.0
            && self.rng.random_range(0.0..100.0) < self.faults.transient_timeout_pct;
        let hang_after = match self.faults.mode {
            FaultMode::Hang => Some(delay),
            _ if transient => Some(delay),
            _ => None,
        };
        Plan::Serve { mode: self.faults.mode, hang_after }
    }
}

//! What stands between the payment service and a failing provider (docs/failure-catalog.md §6–§8, docs/failure-catalog.md (delivery discipline)):
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
//! - [`SharedRateLimit`]: a schedule of slots in Postgres, shared by every payment instance, so the
//!   provider's limit holds whatever the number of instances (see the README: "How the limit
//!   is shared").
//! - [`RetryBudget`]: retries (a second request under a key whose last request failed) stay
//!   a bounded fraction of first requests (`ratio`), plus a small floor per second so a quiet
//!   service can still retry.

mod breaker;
mod budget;
mod rate_limit;
pub mod report;
mod window;

pub use breaker::{Breaker, BreakerPermit, BreakerSettings, BreakerState};
pub use budget::RetryBudget;
pub use rate_limit::{REFILL_SHARE, SharedRateLimit};
pub use window::{Window, WindowPermit};

/// The four guards of one client, shared by its clones.
pub struct Resilience {
    pub breaker: Breaker,
    pub window: Window,
    pub budget: RetryBudget,
    pub limit: Option<SharedRateLimit>,
}

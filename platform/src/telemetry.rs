//! Logging set-up shared by every binary: `RUST_LOG` filters (default `info`, with sqlx's
//! statement-level chatter at `warn`), and `ORDERFLOW_LOG_FORMAT=json` switches to one JSON
//! object per line for log shippers. Logs go to stderr, so a command's stdout (e.g.
//! `inventory stock show`) carries only its answer.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber once; a second call (e.g. from a test) is a no-op.
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json = std::env::var("ORDERFLOW_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry.with(fmt::layer().json().with_current_span(true).with_writer(std::io::stderr)).try_init()
    } else {
        registry.with(fmt::layer().with_target(false).with_writer(std::io::stderr)).try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
    }
}

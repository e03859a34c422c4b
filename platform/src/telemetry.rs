//! Logging set-up shared by every binary: `RUST_LOG` filters (default `info`), and
//! `ORDERFLOW_LOG_FORMAT=json` switches to one JSON object per line for log shippers.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber once; a second call (e.g. from a test) is a no-op.
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("ORDERFLOW_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry.with(fmt::layer().json().with_current_span(true)).try_init()
    } else {
        registry.with(fmt::layer().with_target(false)).try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
    }
}

//! Logging and tracing set-up shared by every binary.
//!
//! Logs: `RUST_LOG` filters (default `info`, with sqlx's statement-level chatter at `warn`), and
//! `ORDERFLOW_LOG_FORMAT=json` switches to one JSON object per line for log shippers. Logs go to
//! stderr, so a command's stdout (e.g. `inventory stock show`) carries only its answer. A log
//! line written inside a request's or a record's span carries that span's `trace_id`.
//!
//! Traces: every span becomes an OpenTelemetry span, and W3C `traceparent` is the propagation
//! format (see [`crate::trace`]). Spans are exported over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; without it
//! trace ids are still made, propagated and logged, and nothing is exported.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    Resource,
    trace::{SdkTracerProvider, SpanExporter},
};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber once, exporting over OTLP when an endpoint is configured; a
/// second call (e.g. from a test) is a no-op.
pub fn init(service: &str) {
    let configured = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()));
    let exporter = if configured {
        match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
            Ok(exporter) => Some(exporter),
            Err(error) => {
                eprintln!("orderflow: cannot export traces over OTLP ({error}); tracing without export");
                None
            }
        }
    } else {
        None
    };
    init_with(service, exporter);
}

/// As [`init`], sending finished spans to `exporter` (tests pass an in-memory one).
pub fn init_with<E: SpanExporter + 'static>(service: &str, exporter: Option<E>) {
    let mut builder =
        SdkTracerProvider::builder().with_resource(Resource::builder().with_service_name(service.to_string()).build());
    if let Some(exporter) = exporter {
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service.to_string()));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json = std::env::var("ORDERFLOW_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = if json {
        registry
            .with(fmt::layer().json().with_current_span(true).with_span_list(false).with_writer(std::io::stderr))
            .try_init()
    } else {
        registry.with(fmt::layer().with_target(false).with_writer(std::io::stderr)).try_init()
    };
    if result.is_ok() {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
        let _ = PROVIDER.set(provider);
        tracing::debug!(service, "telemetry initialised");
    }
}

/// Sends every finished span now (tests read the exporter after this).
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
    }
}

/// Exports what is left; call before the process exits.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}

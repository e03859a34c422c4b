//! W3C trace context across HTTP, the outbox and Kafka headers. Each unit of work (an HTTP
//! request, a consumed record, a provider call) runs in a `tracing` span that
//! [`crate::telemetry`] turns into an OpenTelemetry span; these helpers continue a trace from an
//! incoming `traceparent`, write the current span's `traceparent` for the next hop, and give the
//! trace id that log lines and `GET /orders/{id}` show.
//!
//! Without the OpenTelemetry layer installed (a library used on its own), spans have no trace
//! context: [`traceparent_of`] then returns the incoming value unchanged, so nothing is lost.

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct One<'a>(Option<&'a str>);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if key == "traceparent" { self.0 } else { None }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// Makes `span` continue the trace of `traceparent` (a new trace when there is none or it is
/// malformed), and records its trace id in the span's `trace_id` field when it has one.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.filter(|t| is_traceparent(t)) {
        let context = TraceContextPropagator::new().extract(&One(Some(parent)));
        let _ = span.set_parent(context);
    }
    if let Some(id) = trace_id(span) {
        span.record("trace_id", id.as_str());
    }
}

/// The `traceparent` that makes the next hop a child of `span`.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8())
    })
}

/// The 32-hex-digit trace id of `span`, when it has one.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

/// The trace id inside a `traceparent` value.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    is_traceparent(traceparent).then(|| &traceparent[3..35])
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero.
pub fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() == 4
        && parts.iter().zip([2, 32, 16, 2]).all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_checked_for_shape_and_zero_ids() {
        assert!(is_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!is_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
        assert!(!is_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"));
        assert!(!is_traceparent("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"));
        assert!(!is_traceparent("garbage"));
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }
}

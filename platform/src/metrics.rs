//! Prometheus metrics over HTTP for services that have no HTTP API of their own (relays,
//! consumers): `GET /metrics` in the text exposition format, `GET /healthz`.

use std::future::Future;

use anyhow::Context;
use axum::{Router, http::header, response::IntoResponse, routing::get};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

/// Renders every metric in `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(error) = encoder.encode(&registry.gather(), &mut buffer) {
        tracing::error!(%error, "cannot encode metrics");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

/// `/metrics` alone, for a service with its own health endpoints.
pub fn metrics_route(registry: Registry) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render(&registry)).into_response() }
        }),
    )
}

/// `/metrics` and `/healthz`, to serve alone or merged into a service's own routes.
pub fn router(registry: Registry) -> Router {
    metrics_route(registry).route("/healthz", get(|| async { "ok" }))
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(listener, registry, Router::new(), shutdown).await
}

/// Serves `routes` beside `/metrics` and `/healthz` until `shutdown`.
pub async fn serve_with(
    listener: TcpListener,
    registry: Registry,
    routes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = routes.merge(router(registry));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("serving metrics")
}

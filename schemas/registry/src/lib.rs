//! orderflow's schema registry: the Confluent Schema Registry REST API for Avro, stored in
//! Postgres so ids survive restarts and several replicas can serve one store.
//!
//! Start it with [`run`] on a listener the caller owns (tests bind port 0) and a stop future.

pub mod access;
pub mod error;
pub mod routes;
pub mod store;

use std::future::Future;

use anyhow::Context;
use orderflow_schemas::CompatibilityLevel;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;

pub use access::{Access, AccessSettings};
pub use store::Store;

/// Largest request body accepted (a schema is a few KiB; this leaves ample room).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Applies the registry's migrations (idempotent).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    orderflow_platform::migrations::run(sqlx::migrate!("./migrations"), pool, "registry").await
}

/// Serves the API (and `/metrics`: requests per route and status) on `listener` until
/// `shutdown` resolves, then drains in-flight requests. Who may read and write is `access`'s
/// to say ([`access`]); a registry without any way to authenticate a writer does not start.
pub async fn run(
    listener: TcpListener,
    pool: PgPool,
    default_level: CompatibilityLevel,
    access: AccessSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let access = std::sync::Arc::new(Access::new(access).await?);
    let registry = prometheus::Registry::new();
    let http_metrics = orderflow_platform::http_metrics::HttpMetrics::register(&registry, "registry")
        .context("registering the HTTP metrics")?;
    let api = routes::router(Store::new(pool, default_level), access)
        .merge(orderflow_platform::metrics::metrics_route(registry));
    let app = http_metrics
        .layer(api)
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    tracing::info!(addr = %listener.local_addr()?, "schema registry listening");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("serving the registry API")
}

//! order-api ([`run_api`]), the orders domain's intake: `POST /orders` writes the order and its
//! OrderPlaced event in one Postgres transaction (the outbox), idempotent per `Idempotency-Key`;
//! `GET /orders/{id}` serves its status and history. A 202 means both are committed: nothing
//! accepted is lost. `GET /orders/{id}?wait_for=…` waits for a change, woken by LISTEN/NOTIFY
//! ([`waiters`]). The status itself is moved by order-service (`orders/order-service/`).

pub mod auth;
pub mod openapi;
pub mod order_request;
pub mod problem;
pub mod rate_limit;
pub mod routes;
pub mod store;
pub mod waiters;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
pub use orderflow_orders::migrate;
use orderflow_schemas::{EventCodec, events::Event};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::rate_limit::ClientRateLimiter;

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub max_body_bytes: usize,
    /// Requests per second per caller (the token's subject), and the burst allowed above it.
    pub client_rate: f64,
    pub client_burst: f64,
    /// Where the API's metrics are registered; served on `/metrics` beside the API.
    pub registry: prometheus::Registry,
    /// Requests that may wait for an order change at once (`GET /orders/{id}?wait_for=…`).
    pub max_waiters: usize,
    /// Callers the rate limiter remembers at once (its memory bound).
    pub rate_limit_callers: usize,
}

/// order-api's defaults, written once: [`ApiSettings::default`] and the `order-api` flags take
/// them from here.
pub mod defaults {
    pub const MAX_BODY_BYTES: usize = 64 * 1024;
    pub const CLIENT_RATE: f64 = 1000.0;
    pub const CLIENT_BURST: f64 = 2000.0;
    pub const MAX_WAITERS: usize = 1000;
    pub const RATE_LIMIT_CALLERS: usize = 100_000;
    pub const DB_POOL: u32 = 20;
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            max_body_bytes: defaults::MAX_BODY_BYTES,
            client_rate: defaults::CLIENT_RATE,
            client_burst: defaults::CLIENT_BURST,
            registry: prometheus::Registry::new(),
            max_waiters: defaults::MAX_WAITERS,
            rate_limit_callers: defaults::RATE_LIMIT_CALLERS,
        }
    }
}

pub struct AppState {
    pub pool: PgPool,
    pub codec: Arc<EventCodec>,
    pub limiter: ClientRateLimiter,
    /// Callers the limiter remembers (a gauge, set as requests arrive).
    pub limited_callers: prometheus::IntGauge,
    /// Checks every order request's bearer token.
    pub verifier: auth::Verifier,
    /// Orders from before idempotency keys had callers exist (read at start; see
    /// [`store::has_keys_without_caller`]).
    pub legacy_keys: AtomicBool,
    pub settings: ApiSettings,
    /// Set once the writer schemas' registry ids are known; until then /readyz says no.
    pub schemas_ready: AtomicBool,
    /// Orders accepted (not replays) since start.
    pub accepted: AtomicU64,
    /// Requests waiting for an order to change.
    pub watch: Arc<waiters::OrderWatch>,
    /// Waits by outcome: reached | timed_out | refused.
    pub waits: prometheus::IntCounterVec,
}

/// Serves order-api on `listener` until `shutdown`, then drains in-flight requests. Every order
/// route takes a bearer token checked as `auth` says.
pub async fn run_api(
    listener: TcpListener,
    pool: PgPool,
    codec: Arc<EventCodec>,
    settings: ApiSettings,
    auth: auth::AuthSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let http_metrics = orderflow_platform::http_metrics::HttpMetrics::register(&settings.registry, "order-api")
        .context("registering the HTTP metrics")?;
    let metrics_routes = orderflow_platform::metrics::metrics_route(settings.registry.clone());
    let waiting = prometheus::IntGauge::new("orderflow_api_order_waiters", "Requests waiting for an order to change")?;
    let waits = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "orderflow_api_order_waits_total",
            "Requests that waited for an order change, by outcome",
        ),
        &["outcome"],
    )?;
    settings.registry.register(Box::new(waiting.clone())).context("registering the waiter metrics")?;
    settings.registry.register(Box::new(waits.clone())).context("registering the waiter metrics")?;
    let limited_callers = prometheus::IntGauge::new(
        "orderflow_api_rate_limited_callers",
        "Callers (token subjects) the rate limiter remembers; bounded by --rate-limit-callers",
    )?;
    settings.registry.register(Box::new(limited_callers.clone())).context("registering the limiter metrics")?;
    let verifier = auth::Verifier::new(auth).await?;
    let legacy_keys = AtomicBool::new(store::has_keys_without_caller(&pool).await.context("reading the orders table")?);
    let watch = waiters::OrderWatch::new(settings.max_waiters, waiting);
    let listening = tokio::spawn(watch.clone().listen(pool.clone()));
    let state = Arc::new(AppState {
        pool,
        codec,
        limiter: ClientRateLimiter::new(settings.client_rate, settings.client_burst, settings.rate_limit_callers),
        limited_callers,
        verifier,
        legacy_keys,
        settings,
        schemas_ready: AtomicBool::new(false),
        accepted: AtomicU64::new(0),
        watch: watch.clone(),
        waits,
    });
    tokio::spawn(warm_up_schemas(state.clone()));
    let app = http_metrics
        .layer(routes::router(state).merge(metrics_routes))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    tracing::info!(addr = %listener.local_addr()?, "order-api listening");
    let shutdown = async move {
        shutdown.await;
        // Waiting requests answer now, so the drain does not wait for their timeouts.
        watch.close();
    };
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving order-api");
    listening.abort();
    served
}

/// Resolves the OrderPlaced schema id, retrying while the registry is unreachable.
async fn warm_up_schemas(state: Arc<AppState>) {
    let schemas = [orderflow_schemas::events::OrderPlaced::schema()];
    let mut delay = Duration::from_millis(100);
    loop {
        match state.codec.warm_up(&schemas).await {
            Ok(()) => {
                state.schemas_ready.store(true, Ordering::Relaxed);
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "event schemas not resolved yet; not ready");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

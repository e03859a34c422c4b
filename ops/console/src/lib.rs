//! `orderflow-console`: the page on-call opens. This first part is health at a glance: every
//! consumer group's lag per partition in records and seconds, the skew between its partitions,
//! whether its commits move, and every outbox's backlog — read from the broker (the lag
//! exporter's [`BrokerReader`]) and the databases directly, refreshed live, so it works without
//! Prometheus and while the broker or a database is down (the page says which, and shows the
//! last good read).
//!
//! Routes: `/` (the page), `/fragments/health` (its live section), `/api/health` (the same as
//! JSON), `/static/*` (its one stylesheet and script, built in: nothing comes from a CDN), and
//! `/metrics`, `/healthz`, `/readyz`. Every response forbids framing and inline script
//! (`Content-Security-Policy`), so a value that slipped past escaping could still not run.

pub mod health;
pub mod page;

use std::{
    future::Future,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use health::{Health, Motion};
use orderflow_lag_exporter::broker_view::{BrokerReader, ReaderSettings};
use sqlx::PgPool;
use tokio::net::TcpListener;

pub struct ConsoleSettings {
    pub reader: ReaderSettings,
    /// The outbox databases shown, by name.
    pub outboxes: Vec<(String, PgPool)>,
    /// How often the broker and the databases are read.
    pub interval: Duration,
}

type Shared = Arc<RwLock<Health>>;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// Serves the console on `listener` and reads the broker and databases every `interval` until
/// `shutdown`.
pub async fn run(
    settings: ConsoleSettings,
    listener: TcpListener,
    registry: prometheus::Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shared: Shared = Arc::default();
    let routes = Router::new()
        .route("/", get(index))
        .route("/fragments/health", get(health_fragment))
        .route("/api/health", get(health_json))
        .route("/static/console.css", get(|| async { asset("text/css", include_str!("../static/console.css")) }))
        .route("/static/console.js", get(|| async { asset("text/javascript", include_str!("../static/console.js")) }))
        .route("/readyz", get(ready))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(shared.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let mut server_stopped = stopped.clone();
    let server = tokio::spawn(orderflow_platform::metrics::serve_with(listener, registry, routes, async move {
        let _ = server_stopped.wait_for(|s| *s).await;
    }));
    read_loop(settings, shared, stopped).await?;
    server.await.context("the console's server panicked")?
}

/// Reads the broker (off the async threads: its calls block) and the outboxes every interval.
async fn read_loop(
    settings: ConsoleSettings,
    shared: Shared,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let timeout = settings.reader.timeout;
    let mut reader = Some(BrokerReader::new(settings.reader)?);
    let mut motion = Motion::default();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        }
        let mut taken = reader.take().expect("the reader is returned after every read");
        let broker = tokio::task::spawn_blocking(move || {
            let result = taken.read();
            (taken, result)
        });
        let (outboxes, broker) = tokio::join!(health::outboxes(&settings.outboxes, timeout), broker);
        let (back, result) = broker.context("the broker read panicked")?;
        reader = Some(back);
        let mut health = shared.write().expect("health lock");
        health.outboxes = outboxes;
        match result {
            Ok(snapshot) => {
                health.groups = motion.groups(&snapshot, Instant::now());
                health.read_at = Some(health::unix_now());
                health.broker_error = None;
            }
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "reading the broker failed; the page shows the last read");
                health.broker_error = Some(format!("{error:#}"));
            }
        }
    }
}

async fn index(State(shared): State<Shared>) -> Html<String> {
    Html(page::health_page(&shared.read().expect("health lock")))
}

async fn health_fragment(State(shared): State<Shared>) -> Html<String> {
    Html(page::health_fragment(&shared.read().expect("health lock")))
}

async fn health_json(State(shared): State<Shared>) -> Json<Health> {
    Json(shared.read().expect("health lock").clone())
}

async fn ready(State(shared): State<Shared>) -> (StatusCode, &'static str) {
    match shared.read().expect("health lock").read_at {
        Some(_) => (StatusCode::OK, "ready"),
        None => (StatusCode::SERVICE_UNAVAILABLE, "the broker has not been read yet"),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

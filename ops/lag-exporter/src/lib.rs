//! `lag-exporter`: consumer-group lag measured at the broker, like kafka-lag-exporter or
//! Burrow. Every `interval` it reads each partition's watermarks, each group's committed
//! offsets and the time of each group's oldest unconsumed record, and serves them on
//! `/metrics`. It never asks the consumers: a group whose members have all crashed (or hang
//! without committing) still shows its lag growing, which is exactly when it matters.
//!
//! Groups are discovered from the broker and remembered; `groups` names ones to report from the
//! start. The DLT triage group (`orderflow-dlt` commits it when an operator triages or replays)
//! counts every `*.DLT` topic from its start, so its lag is the untriaged dead letters.

pub mod broker_view;
pub mod metrics;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{Router, http::StatusCode, routing::get};
use broker_view::{BrokerReader, ReaderSettings};
use prometheus::Registry;
use tokio::net::TcpListener;

pub struct ExporterSettings {
    pub reader: ReaderSettings,
    /// How often the broker is read.
    pub interval: Duration,
}

/// Serves `/metrics`, `/healthz` and `/readyz` (ready once the broker was read) on `listener`
/// and reads the broker every `interval` until `shutdown`.
pub async fn run(
    settings: ExporterSettings,
    listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = metrics::LagMetrics::register(&registry).context("registering the lag metrics")?;
    let ready = Arc::new(AtomicBool::new(false));
    let routes = Router::new().route(
        "/readyz",
        get({
            let ready = ready.clone();
            move || async move {
                if ready.load(Ordering::Acquire) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "the broker has not been read yet")
                }
            }
        }),
    );
    // One stop signal for the HTTP server and the read loop.
    let stopped = orderflow_platform::shutdown::fan_out(shutdown);
    let mut server_stopped = stopped.clone();
    let server = tokio::spawn(orderflow_platform::metrics::serve_with(listener, registry, routes, async move {
        let _ = server_stopped.wait_for(|s| *s).await;
    }));
    let mut loop_stopped = stopped;
    let interval = settings.interval;
    let mut reader = Some(BrokerReader::new(settings.reader)?);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = loop_stopped.wait_for(|s| *s) => break,
        }
        let mut taken = reader.take().expect("the reader is returned after every read");
        let started = Instant::now();
        let (back, result) = tokio::task::spawn_blocking(move || {
            let result = taken.read();
            (taken, result)
        })
        .await
        .context("the broker read panicked")?;
        reader = Some(back);
        match result {
            Ok(snapshot) => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                metrics.publish(&snapshot, started.elapsed().as_secs_f64(), now.as_secs() as i64);
                ready.store(true, Ordering::Release);
            }
            Err(error) => {
                metrics.failed();
                tracing::warn!(
                    error = format!("{error:#}"),
                    "reading the broker failed; the last values stay until the next read"
                );
            }
        }
    }
    server.await.context("the metrics server panicked")?
}

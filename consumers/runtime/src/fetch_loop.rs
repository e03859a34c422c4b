//! The fetch loop: one consumer per service instance, subscribed to the group's source and
//! retry topics. It polls continuously (so the group keeps it), hands each record to its
//! partition's queue ([`crate::partition`]), commits stored offsets every `commit_interval`,
//! reports per-partition lag every `lag_interval`, and on shutdown lets the records in hand
//! finish and commits synchronously.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context;
use orderflow_schemas::EventCodec;
use rdkafka::{
    Message,
    consumer::{CommitMode, Consumer},
    types::RDKafkaErrorCode,
};
use sqlx::PgPool;

use crate::{
    ConsumerSettings, Handler, RuntimeContext, context, dlt, metrics,
    partition::{self, Partitions, Shared, Slot},
    retention,
};

/// What a consumer binary runs: `/metrics` on `metrics_listen`, then [`run`] until SIGTERM or
/// ctrl-c.
pub async fn run_service<H: Handler>(
    settings: ConsumerSettings,
    pool: PgPool,
    codec: Arc<EventCodec>,
    handler: H,
    metrics_listen: &str,
) -> anyhow::Result<()> {
    run_service_with(settings, pool, codec, handler, metrics_listen, axum::Router::new()).await
}

/// As [`run_service`], serving the service's own `routes` beside `/metrics`, `/healthz` and
/// `/readyz` (503 while the consumer waits for Kafka).
pub async fn run_service_with<H: Handler>(
    settings: ConsumerSettings,
    pool: PgPool,
    codec: Arc<EventCodec>,
    handler: H,
    listen: &str,
    routes: axum::Router,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let registry = settings.registry.clone();
    let ready = settings.ready.clone();
    let routes = routes.route(
        "/readyz",
        axum::routing::get(move || {
            let ready = ready.load(Ordering::Acquire);
            async move {
                match ready {
                    true => (axum::http::StatusCode::OK, "ready"),
                    false => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "waiting for Kafka: not subscribed yet"),
                }
            }
        }),
    );
    // The service's own routes (analytics' API) are counted per route like order-api's.
    let routes = orderflow_platform::http_metrics::HttpMetrics::register(&registry, &settings.group)
        .context("registering the HTTP metrics")?
        .layer(routes);
    tokio::spawn(orderflow_platform::metrics::serve_with(listener, registry, routes, std::future::pending()));
    let result = run(settings, pool, codec, handler, orderflow_platform::shutdown::shutdown_signal()).await;
    orderflow_platform::telemetry::shutdown();
    result
}

/// Consumes until `shutdown` resolves: in-flight records finish, then offsets are committed
/// synchronously.
pub async fn run<H: Handler>(
    settings: ConsumerSettings,
    pool: PgPool,
    codec: Arc<EventCodec>,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    settings.check()?;
    let group = settings.group.clone();
    let retry_sources: HashMap<String, String> =
        settings.topics.iter().map(|t| (settings.retry_topic(t), t.clone())).collect();
    let mut topics: Vec<(String, i32)> =
        settings.topics.iter().map(|t| (t.clone(), settings.kafka.partitions)).collect();
    topics.extend(retry_sources.keys().map(|t| (t.clone(), settings.kafka.partitions)));
    topics.extend(settings.topics.iter().map(|t| (settings.dlt_topic(t), 1)));
    let topic_refs: Vec<(&str, i32)> = topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    settings.kafka.ensure_topics(&topic_refs).await.context("creating the source, retry and dead-letter topics")?;

    let metrics = metrics::ConsumerMetrics::register(&settings.registry).context("registering consumer metrics")?;
    // Every outcome and gap series exists from the start at 0, so rates and increases over them
    // are 0 rather than absent (dashboards and alerts read "nothing failed", not "no data").
    for topic in &settings.topics {
        for outcome in metrics::OUTCOMES {
            metrics.records.with_label_values(&[&group, topic, outcome]);
        }
    }
    metrics.quarantined_keys.with_label_values(&[&group]);
    metrics.parked_records.with_label_values(&[&group]);
    metrics.oldest_parked_seconds.with_label_values(&[&group]);
    let partitions = Arc::new(Partitions::default());
    let context = RuntimeContext {
        group: group.clone(),
        partitions: partitions.clone(),
        metrics: metrics.clone(),
        revoke_grace: settings.revoke_grace,
    };
    let consumer = context::ConsumerHandle::new(
        settings
            .kafka
            .consumer(&format!("{group}-consumer"), &group)
            .create_with_context(context)
            .context("creating the consumer")?,
    );
    let subscribed: Vec<String> = settings.topics.iter().chain(retry_sources.keys()).cloned().collect();
    consumer.subscribe(&subscribed.iter().map(String::as_str).collect::<Vec<_>>()).context("subscribing")?;
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        pool,
        codec,
        handler,
        consumer: consumer.clone(),
        forwarder: dlt::Forwarder::new(&settings.kafka, &group, settings.logical_group())?,
        metrics: metrics.clone(),
        retry_sources,
        in_flight_limit: tokio::sync::Semaphore::new(settings.max_in_flight.max(1)),
        parked_since: Default::default(),
        waits: Default::default(),
    });
    settings.ready.store(true, Ordering::Release);
    tracing::info!(%group, topics = ?subscribed, "consumer started");
    tokio::spawn({
        let settings = settings.clone();
        async move { retention::check_horizon(&settings).await }
    });
    let (stop_pruning, pruning_stopped) = tokio::sync::watch::channel(false);
    let pruner = tokio::spawn(retention::run(shared.clone(), metrics.pruned.clone(), pruning_stopped.clone()));
    // What the partitions wait for, in this group's database for the ops console.
    let reporter = tokio::spawn({
        let (shared, group) = (shared.clone(), group.clone());
        async move {
            let pool = shared.pool.clone();
            shared.waits.run_reporter(pool, group, crate::status::instance_name(), pruning_stopped).await
        }
    });

    let mut slots: HashMap<(String, i32), Slot> = HashMap::new();
    let mut commit_tick = tokio::time::interval(settings.commit_interval);
    let mut lag_tick = tokio::time::interval(settings.lag_interval);
    let mut unpark_tick = tokio::time::interval(Duration::from_millis(20));
    unpark_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lag_report: Option<tokio::task::JoinHandle<()>> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = lag_tick.tick() => {
                shared.report_oldest_parked();
                // One report at a time, off the async threads (the broker calls block).
                if lag_report.as_ref().is_none_or(|r| r.is_finished()) {
                    let (consumer, metrics, group) = (consumer.clone(), metrics.clone(), group.clone());
                    lag_report = Some(tokio::task::spawn_blocking(move || {
                        metrics::report_partitions(&*consumer, &metrics, &group)
                    }));
                }
            }
            _ = commit_tick.tick() => {
                if let Err(error) = consumer.commit_consumer_state(CommitMode::Async) {
                    // NoOffset: nothing stored since the last commit.
                    if error.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset) {
                        tracing::debug!(%error, "periodic commit failed; will retry");
                    }
                }
            }
            _ = unpark_tick.tick() => {
                partition::unpark(&consumer, &mut slots, settings.partition_queue);
                // Workers of revoked partitions finish their record in hand and end.
                slots.retain(|_, slot| !(slot.state.is_stopped() && slot.task.is_finished()));
                let paused: std::collections::BTreeSet<(String, i32)> =
                    slots.iter().filter(|(_, s)| !s.parked.is_empty()).map(|(place, _)| place.clone()).collect();
                metrics.paused_partitions.with_label_values(&[&group]).set(paused.len() as i64);
                let held = slots.values().filter(|s| !s.state.is_stopped()).count();
                shared.waits.set_partitions(held, paused);
            }
            received = consumer.recv() => match received {
                Ok(message) => {
                    let message = message.detach();
                    let key = (message.topic().to_string(), message.partition());
                    if slots.get(&key).is_some_and(|s| s.state.is_stopped() || s.sender.is_closed()) {
                        // Revoked earlier and assigned to us again: a fresh worker.
                        slots.remove(&key);
                    }
                    let slot = slots
                        .entry(key)
                        .or_insert_with(|| Slot::start(&shared, &partitions, message.topic(), message.partition()));
                    slot.arrive(&consumer, message, &metrics, &group);
                }
                Err(error) => {
                    tracing::warn!(%error, "consume error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    settings.ready.store(false, Ordering::Release);
    tracing::info!(%group, "stopping: finishing in-flight records");
    let _ = stop_pruning.send(true);
    let _ = pruner.await;
    let _ = reporter.await;
    for slot in slots.values() {
        slot.state.stop();
    }
    for (_, slot) in slots.drain() {
        drop(slot.sender);
        let _ = slot.task.await;
    }
    // A synchronous commit blocks its thread, without end if the broker is gone: bound it, on a
    // thread of its own (a runtime waits for its blocking pool when it shuts down).
    let (done, committed) = tokio::sync::oneshot::channel();
    let committer = consumer.clone();
    std::thread::spawn(move || {
        let _ = done.send(committer.commit_consumer_state(CommitMode::Sync));
    });
    match tokio::time::timeout(Duration::from_secs(10), committed).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
        Ok(Ok(Err(error))) => {
            tracing::warn!(%error, "final commit failed; the next owner re-reads (dedupe makes it harmless)")
        }
        Ok(Err(_)) | Err(_) => tracing::warn!("final commit did not finish in 10 s; the next owner re-reads"),
    }
    // The lag report gives up on its first failed request. The consumer closes (leaves the
    // group) on a thread of its own, and `run` returns once it has (see `ConsumerHandle`).
    if let Some(report) = lag_report {
        let _ = report.await;
    }
    drop(shared);
    consumer.close(Duration::from_secs(15)).await;
    tracing::info!(%group, "consumer stopped");
    Ok(())
}

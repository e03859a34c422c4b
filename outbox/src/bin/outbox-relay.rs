//! `outbox-relay`: publishes one database's outbox to Kafka. Run one or more per database
//! (orders, payments); they share the work and keep per-order order.
//!
//! `ORDERFLOW_RELAY_MODE=prune` is the CDC companion (`connect/`): Debezium publishes the table
//! from the WAL, and this process only deletes rows older than `ORDERFLOW_RELAY_PRUNE_AFTER_SECS`.
//! In the default `publish` mode the relay refuses a table that CDC already captures.

use std::time::Duration;

use clap::Parser;
use orderflow_outbox::{OutboxRelay, RelaySettings, relay::defaults};

#[derive(Parser)]
#[command(name = "outbox-relay", about = "Publish a transactional outbox to Kafka")]
struct Args {
    /// Database whose `outbox` table is relayed (never logged).
    #[arg(long, env = "ORDERFLOW_OUTBOX_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    kafka: orderflow_platform::kafka::KafkaArgs,
    /// Topics to create at start-up if missing, `name:partitions,...`.
    #[arg(long, env = "ORDERFLOW_RELAY_ENSURE_TOPICS", default_value = "orders:12,payments:12")]
    ensure_topics: String,
    /// Rows claimed per transaction.
    #[arg(long, env = "ORDERFLOW_RELAY_BATCH", default_value_t = defaults::BATCH_SIZE,
          value_parser = clap::value_parser!(i64).range(1..))]
    batch_size: i64,
    /// Batches in flight at once.
    #[arg(long, env = "ORDERFLOW_RELAY_CONCURRENT_BATCHES", default_value_t = defaults::CONCURRENT_BATCHES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    concurrent_batches: usize,
    /// How long to sleep without a notification before looking again.
    #[arg(long, env = "ORDERFLOW_RELAY_POLL_MS", default_value_t = defaults::POLL_MS)]
    poll_ms: u64,
    /// Longest backoff after a failed batch.
    #[arg(long, env = "ORDERFLOW_RELAY_MAX_BACKOFF_MS", default_value_t = defaults::MAX_BACKOFF_MS)]
    max_backoff_ms: u64,
    /// How long a send may be retried by the producer before the batch gives up on it.
    #[arg(long, env = "ORDERFLOW_RELAY_DELIVERY_TIMEOUT_MS", default_value_t = 120_000)]
    delivery_timeout_ms: u64,
    /// Where `/metrics` (Prometheus) and `/healthz` are served.
    #[arg(long, env = "ORDERFLOW_METRICS_LISTEN", default_value = "127.0.0.1:9105")]
    metrics_listen: String,
    /// The `outbox` label on the relay's metrics (default: the database's name).
    #[arg(long, env = "ORDERFLOW_OUTBOX_NAME")]
    outbox_name: Option<String>,
    /// `publish` (the relay) or `prune` (beside Debezium: keep the table small, publish nothing).
    #[arg(long, env = "ORDERFLOW_RELAY_MODE", value_enum, default_value_t = Mode::Publish)]
    mode: Mode,
    /// In prune mode, how old a row must be before it is deleted.
    #[arg(long, env = "ORDERFLOW_RELAY_PRUNE_AFTER_SECS", default_value_t = 3600)]
    prune_after_secs: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Publish,
    Prune,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("outbox-relay");
    let args: Args = orderflow_platform::secret::parse();
    // One connection per claim loop, one for LISTEN, one for clean-up.
    let pool =
        orderflow_platform::service::connect(&args.database_url, args.concurrent_batches as u32 + 2, "outbox").await?;
    orderflow_outbox::migrate(&pool).await?;
    if args.mode == Mode::Prune {
        let result = prune(&pool, &args).await;
        orderflow_platform::telemetry::shutdown();
        return result;
    }
    orderflow_outbox::cdc::ensure_not_captured(&pool).await?;
    let kafka = args.kafka.settings()?;
    let topics: Vec<(String, i32)> = args
        .ensure_topics
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| match t.trim().split_once(':') {
            Some((name, partitions)) => Ok((kafka.topic(name), partitions.parse()?)),
            None => Ok((kafka.topic(t.trim()), 12)),
        })
        .collect::<anyhow::Result<_>>()?;
    let topic_refs: Vec<(&str, i32)> = topics.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    kafka.ensure_topics(&topic_refs).await?;
    let producer = kafka.producer("outbox-relay", Duration::from_millis(args.delivery_timeout_ms));
    let settings = RelaySettings {
        batch_size: args.batch_size,
        concurrent_batches: args.concurrent_batches,
        poll_interval: Duration::from_millis(args.poll_ms),
        max_backoff: Duration::from_millis(args.max_backoff_ms),
        namespace: kafka.namespace.clone(),
    };
    let (outbox, metrics) = serve_metrics(&pool, &args).await?;
    tracing::info!(outbox, metrics = %args.metrics_listen, "outbox relay started");
    let result = OutboxRelay::new(pool, producer, settings)
        .with_metrics(metrics)
        .run(orderflow_platform::shutdown::shutdown_signal())
        .await;
    orderflow_platform::telemetry::shutdown();
    result
}

/// Serves `/metrics` and `/healthz` on `--metrics-listen` and samples the outbox's backlog
/// (both modes); returns the outbox's label and its metrics.
async fn serve_metrics(pool: &sqlx::PgPool, args: &Args) -> anyhow::Result<(String, orderflow_outbox::RelayMetrics)> {
    let outbox = args.outbox_name.clone().unwrap_or_else(|| database_name(&args.database_url));
    let registry = prometheus::Registry::new();
    let metrics = orderflow_outbox::RelayMetrics::register(&registry, &outbox)?;
    let listener = tokio::net::TcpListener::bind(&args.metrics_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.metrics_listen))?;
    tokio::spawn(orderflow_platform::metrics::serve(listener, registry, std::future::pending()));
    tokio::spawn(metrics.clone().sample_backlog(pool.clone(), Duration::from_secs(5)));
    Ok((outbox, metrics))
}

/// Prune mode: every poll interval, delete what Debezium has had for long enough.
async fn prune(pool: &sqlx::PgPool, args: &Args) -> anyhow::Result<()> {
    let after = Duration::from_secs(args.prune_after_secs);
    let (outbox, _metrics) = serve_metrics(pool, args).await?;
    tracing::info!(outbox, prune_after_secs = args.prune_after_secs, "outbox pruner started (CDC mode)");
    let mut shutdown = std::pin::pin!(orderflow_platform::shutdown::shutdown_signal());
    let mut warned = false;
    let idle = Duration::from_millis(args.poll_ms.max(1000));
    loop {
        // A full batch means more is due: go again at once (still stopping on a signal).
        let pause = match orderflow_outbox::cdc::prune(pool, after, args.batch_size).await {
            Ok(Some(n)) => {
                if n > 0 {
                    tracing::info!(outbox, deleted = n, "pruned outbox rows older than the retention");
                }
                if n as i64 >= args.batch_size { Duration::ZERO } else { idle }
            }
            Ok(None) => {
                if !warned {
                    warned = true;
                    tracing::warn!(
                        outbox,
                        "no logical replication slot on this database yet: keeping every row for the connector's snapshot"
                    );
                }
                idle
            }
            Err(e) => {
                tracing::warn!(outbox, error = %format!("{e:#}"), "prune failed; retrying");
                idle
            }
        };
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// The database name in a Postgres URL (`…/orderflow_orders?…` → `orderflow_orders`).
fn database_name(url: &str) -> String {
    let path = url.split('?').next().unwrap_or(url);
    path.rsplit('/').next().filter(|n| !n.is_empty() && !n.contains('@')).unwrap_or("outbox").to_string()
}

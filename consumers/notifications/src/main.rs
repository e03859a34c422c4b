//! `notifications`: the notifications consumer (group `notifications`).

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use orderflow_notifications::{GROUP, NotificationClient, NotificationHandler};
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(name = "notifications", about = "Sends one email/SMS per order and kind through the provider")]
struct Args {
    #[arg(long, env = "ORDERFLOW_NOTIFICATIONS_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    kafka: orderflow_platform::kafka::KafkaArgs,
    #[command(flatten)]
    runtime: orderflow_consumer_runtime::RuntimeArgs,
    #[arg(long, env = "ORDERFLOW_REGISTRY_URL", default_value = "http://127.0.0.1:8081")]
    registry_url: String,
    /// Where `/metrics` (Prometheus) and `/healthz` are served.
    #[arg(long, env = "ORDERFLOW_METRICS_LISTEN", default_value = "127.0.0.1:9104")]
    metrics_listen: String,
    #[arg(long, env = "ORDERFLOW_NOTIFY_PROVIDER_URL", default_value = "http://127.0.0.1:8091")]
    provider_url: String,
    /// Per-attempt timeout of a provider call.
    #[arg(long, env = "ORDERFLOW_NOTIFY_PROVIDER_TIMEOUT_MS", default_value_t = 5000)]
    provider_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("notifications");
    let args = Args::parse();
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(&args.database_url)
        .await
        .context("connecting to the notifications database")?;
    orderflow_notifications::migrate(&pool).await?;
    let codec = Arc::new(orderflow_schemas::EventCodec::new(&args.registry_url, Duration::from_secs(5))?);
    let provider = NotificationClient::new(&args.provider_url, Duration::from_millis(args.provider_timeout_ms));
    let handler = NotificationHandler { provider };
    let settings = args.runtime.settings(GROUP, &[orderflow_schemas::topics::ORDERS], args.kafka.settings()?);
    orderflow_consumer_runtime::run_service(settings, pool, codec, handler, &args.metrics_listen).await
}

//! `analytics`: the analytics consumer (group `analytics`) and its HTTP read side.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use orderflow_analytics::{AnalyticsHandler, GROUP};
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(name = "analytics", about = "Per-minute order aggregates, served over HTTP")]
struct Args {
    #[arg(long, env = "ORDERFLOW_ANALYTICS_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    kafka: orderflow_platform::kafka::KafkaArgs,
    #[command(flatten)]
    runtime: orderflow_consumer_runtime::RuntimeArgs,
    #[arg(long, env = "ORDERFLOW_REGISTRY_URL", default_value = "http://127.0.0.1:8081")]
    registry_url: String,
    /// Where `/aggregates`, `/funnel`, `/metrics` and `/healthz` are served.
    #[arg(long, env = "ORDERFLOW_ANALYTICS_LISTEN", default_value = "127.0.0.1:8082")]
    listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("analytics");
    let args = Args::parse();
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(&args.database_url)
        .await
        .context("connecting to the analytics database")?;
    orderflow_analytics::migrate(&pool).await?;
    let codec = Arc::new(orderflow_schemas::EventCodec::new(&args.registry_url, Duration::from_secs(5))?);
    let settings = args.runtime.settings(GROUP, &[orderflow_schemas::topics::ORDERS], args.kafka.settings()?);
    let routes = orderflow_analytics::http::router(pool.clone());
    orderflow_consumer_runtime::run_service_with(settings, pool, codec, AnalyticsHandler, &args.listen, routes).await
}

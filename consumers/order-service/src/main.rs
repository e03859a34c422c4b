//! `order-service`: applies payment outcomes to orders (group `order-service`).

use std::{sync::Arc, time::Duration};

use clap::Parser;
use orderflow_order_service::{GROUP, OrderStatusHandler};
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(name = "order-service", about = "Applies payment outcomes to orders")]
struct Args {
    #[arg(long, env = "ORDERFLOW_ORDERS_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    kafka: orderflow_platform::kafka::KafkaArgs,
    #[command(flatten)]
    runtime: orderflow_consumer_runtime::RuntimeArgs,
    #[arg(long, env = "ORDERFLOW_REGISTRY_URL", default_value = "http://127.0.0.1:8081")]
    registry_url: String,
    /// Where `/metrics` (Prometheus) and `/healthz` are served.
    #[arg(long, env = "ORDERFLOW_METRICS_LISTEN", default_value = "127.0.0.1:9102")]
    metrics_listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("order-service");
    let args = Args::parse();
    let pool = PgPoolOptions::new().max_connections(20).connect(&args.database_url).await?;
    orderflow_order_service::migrate(&pool).await?;
    let codec = Arc::new(orderflow_schemas::EventCodec::new(&args.registry_url, Duration::from_secs(5))?);
    let kafka = args.kafka.settings()?;
    let settings = args.runtime.settings(GROUP, &orderflow_order_service::TOPICS, kafka);
    let handler = OrderStatusHandler::new(codec.clone(), &settings.registry)?;
    orderflow_consumer_runtime::run_service(settings, pool, codec, handler, &args.metrics_listen).await
}

//! `order-service`: applies payment outcomes to orders (group `order-service`).

use clap::Parser;
use orderflow_order_service::{GROUP, OrderStatusHandler};

#[derive(Parser)]
#[command(name = "order-service", about = "Applies payment outcomes to orders")]
struct Args {
    #[arg(long, env = "ORDERFLOW_ORDERS_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    consumer: orderflow_consumer_runtime::ConsumerArgs,
    /// Where `/metrics` (Prometheus) and `/healthz` are served.
    #[arg(long, env = "ORDERFLOW_METRICS_LISTEN", default_value = "127.0.0.1:9102")]
    metrics_listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("order-service");
    let args: Args = orderflow_platform::secret::parse();
    let pool = orderflow_platform::service::connect(&args.database_url, 20, "orders").await?;
    orderflow_order_service::migrate(&pool).await?;
    let codec = args.consumer.codec()?;
    let settings = args.consumer.settings(GROUP, &orderflow_order_service::TOPICS)?;
    let handler = OrderStatusHandler::new(codec.clone(), &settings.registry)?;
    orderflow_consumer_runtime::run_service(settings, pool, codec, handler, &args.metrics_listen).await
}

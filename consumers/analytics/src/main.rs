//! `analytics`: the analytics consumer (group `analytics`) and its HTTP read side.

use clap::Parser;
use orderflow_analytics::{AnalyticsHandler, GROUP};

#[derive(Parser)]
#[command(name = "analytics", about = "Per-minute order aggregates, served over HTTP")]
struct Args {
    #[arg(long, env = "ORDERFLOW_ANALYTICS_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    consumer: orderflow_consumer_runtime::ConsumerArgs,
    /// Where `/aggregates`, `/funnel`, `/metrics` and `/healthz` are served.
    #[arg(long, env = "ORDERFLOW_ANALYTICS_LISTEN", default_value = "127.0.0.1:8082")]
    listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("analytics");
    let args: Args = orderflow_platform::secret::parse();
    let pool = orderflow_platform::service::connect(&args.database_url, 20, "analytics").await?;
    orderflow_analytics::migrate(&pool).await?;
    let codec = args.consumer.codec()?;
    let settings = args.consumer.settings(GROUP, &orderflow_analytics::TOPICS)?;
    let routes = orderflow_analytics::http::router(pool.clone());
    orderflow_consumer_runtime::run_service_with(settings, pool, codec, AnalyticsHandler, &args.listen, routes).await
}

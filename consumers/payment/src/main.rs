//! `payment`: the payment consumer (group `payment`).

use std::{sync::Arc, time::Duration};

use clap::Parser;
use orderflow_consumer_runtime::ConsumerSettings;
use orderflow_payment::{GROUP, PaymentHandler, PaymentProviderClient};
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(name = "payment", about = "Charges placed orders through the payment provider")]
struct Args {
    #[arg(long, env = "ORDERFLOW_PAYMENTS_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    kafka: orderflow_platform::kafka::KafkaArgs,
    #[arg(long, env = "ORDERFLOW_REGISTRY_URL", default_value = "http://127.0.0.1:8081")]
    registry_url: String,
    /// Where `/metrics` (Prometheus) and `/healthz` are served.
    #[arg(long, env = "ORDERFLOW_METRICS_LISTEN", default_value = "127.0.0.1:9101")]
    metrics_listen: String,
    #[arg(long, env = "ORDERFLOW_PROVIDER_URL", default_value = "http://127.0.0.1:8090")]
    provider_url: String,
    /// Per-attempt timeout of a provider call.
    #[arg(long, env = "ORDERFLOW_PROVIDER_TIMEOUT_MS", default_value_t = 5000)]
    provider_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("payment");
    let args = Args::parse();
    let pool = PgPoolOptions::new().max_connections(20).connect(&args.database_url).await?;
    orderflow_payment::migrate(&pool).await?;
    let codec = Arc::new(orderflow_schemas::EventCodec::new(&args.registry_url, Duration::from_secs(5))?);
    let kafka = args.kafka.settings()?;
    let handler = PaymentHandler {
        provider: PaymentProviderClient::new(&args.provider_url, Duration::from_millis(args.provider_timeout_ms)),
        codec: codec.clone(),
    };
    let settings = ConsumerSettings::new(GROUP, &["orders"], kafka);
    orderflow_consumer_runtime::run_service(settings, pool, codec, handler, &args.metrics_listen).await
}

//! `notifications`: the notifications consumer (group `notifications`).

use std::time::Duration;

use clap::Parser;
use orderflow_consumer_runtime::Ordering;
use orderflow_notifications::{GROUP, NotificationClient, NotificationHandler};

#[derive(Parser)]
#[command(name = "notifications", about = "Sends one email/SMS per order and kind through the provider")]
struct Args {
    #[arg(long, env = "ORDERFLOW_NOTIFICATIONS_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    consumer: orderflow_consumer_runtime::ConsumerArgs,
    /// Where `/metrics` (Prometheus) and `/healthz` are served.
    #[arg(long, env = "ORDERFLOW_METRICS_LISTEN", default_value = "127.0.0.1:9104")]
    metrics_listen: String,
    #[arg(long, env = "ORDERFLOW_NOTIFY_PROVIDER_URL", default_value = "http://127.0.0.1:8091")]
    provider_url: String,
    /// Per-attempt timeout of a provider call.
    #[arg(long, env = "ORDERFLOW_NOTIFY_PROVIDER_TIMEOUT_MS", default_value_t = 5000)]
    provider_timeout_ms: u64,
    /// A PEM file of CA certificates to trust for the provider's HTTPS, besides the system's
    /// (a provider sandbox or an internal gateway signed by a private CA).
    #[arg(long, env = "ORDERFLOW_NOTIFY_PROVIDER_CA_CERT")]
    provider_ca_cert: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("notifications");
    let args: Args = orderflow_platform::secret::parse();
    let pool = orderflow_platform::service::connect(&args.database_url, 20, "notifications").await?;
    orderflow_notifications::migrate(&pool).await?;
    let codec = args.consumer.codec()?;
    let provider = NotificationClient::new(
        &args.provider_url,
        Duration::from_millis(args.provider_timeout_ms),
        args.provider_ca_cert.as_deref(),
    )?;
    let handler = NotificationHandler { provider };
    // Key order: each message waits on the provider; one order's messages still go in turn.
    let settings = args.consumer.settings_ordered(GROUP, &orderflow_notifications::TOPICS, Ordering::Key)?;
    orderflow_consumer_runtime::run_service(settings, pool, codec, handler, &args.metrics_listen).await
}

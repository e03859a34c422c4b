//! `payment`: the payment consumer (group `payment`).

use std::time::Duration;

use clap::Parser;
use orderflow_consumer_runtime::Ordering;
use orderflow_payment::{GROUP, PaymentHandler, PaymentProviderClient, ProviderSettings, provider::defaults};

#[derive(Parser)]
#[command(name = "payment", about = "Charges placed orders through the payment provider")]
struct Args {
    #[arg(long, env = "ORDERFLOW_PAYMENTS_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    consumer: orderflow_consumer_runtime::ConsumerArgs,
    /// Where `/metrics` (Prometheus) and `/healthz` are served.
    #[arg(long, env = "ORDERFLOW_METRICS_LISTEN", default_value = "127.0.0.1:9101")]
    metrics_listen: String,
    #[arg(long, env = "ORDERFLOW_PROVIDER_URL", default_value = "http://127.0.0.1:8090")]
    provider_url: String,
    /// The provider's API key, sent as `Authorization: Bearer` (a secret: from the environment
    /// or ORDERFLOW_PROVIDER_API_KEY_FILE).
    #[arg(long, env = "ORDERFLOW_PROVIDER_API_KEY", hide_env_values = true)]
    provider_api_key: Option<String>,
    /// A PEM file of CA certificates to trust for the provider's HTTPS, besides the system's
    /// (a provider sandbox or an internal gateway signed by a private CA).
    #[arg(long, env = "ORDERFLOW_PROVIDER_CA_CERT")]
    provider_ca_cert: Option<std::path::PathBuf>,
    /// Per-attempt timeout of a provider request.
    #[arg(long, env = "ORDERFLOW_PROVIDER_TIMEOUT_MS", default_value_t = defaults::ATTEMPT_TIMEOUT_MS)]
    provider_timeout_ms: u64,
    /// Overall deadline of one provider call (waits for a token, the request, the ledger read).
    #[arg(long, env = "ORDERFLOW_PROVIDER_DEADLINE_MS", default_value_t = defaults::DEADLINE_MS)]
    provider_deadline_ms: u64,
    /// The provider's request limit per second, shared by every payment instance through a
    /// token bucket in the payments database. Unset: no limit.
    #[arg(long, env = "ORDERFLOW_PROVIDER_RATE_LIMIT")]
    provider_rate_limit: Option<f64>,
    /// Failures in a row that open the circuit breaker.
    #[arg(long, env = "ORDERFLOW_PROVIDER_BREAKER_FAILURES", default_value_t = defaults::BREAKER_FAILURES,
          value_parser = clap::value_parser!(u32).range(1..))]
    breaker_failures: u32,
    /// The most provider calls one instance has in flight (the adaptive window's ceiling).
    #[arg(long, env = "ORDERFLOW_PROVIDER_MAX_WINDOW", default_value_t = defaults::MAX_WINDOW,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    provider_max_window: usize,
    /// Retries allowed as a share of first requests.
    #[arg(long, env = "ORDERFLOW_PROVIDER_RETRY_RATIO", default_value_t = defaults::RETRY_RATIO)]
    retry_ratio: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("payment");
    let args: Args = orderflow_platform::secret::parse();
    let pool = orderflow_platform::service::connect(&args.database_url, 20, "payments").await?;
    orderflow_payment::migrate(&pool).await?;
    let codec = args.consumer.codec()?;
    // Key order: each charge waits on the provider, so one partition's orders are charged at
    // once, each order's events (placed, cancelled) still in turn.
    let settings = args.consumer.settings_ordered(GROUP, &orderflow_payment::TOPICS, Ordering::Key)?;
    let mut provider = ProviderSettings::new(&args.provider_url);
    provider.attempt_timeout = Duration::from_millis(args.provider_timeout_ms);
    provider.deadline = Duration::from_millis(args.provider_deadline_ms);
    provider.rate_limit_per_sec = args.provider_rate_limit;
    provider.api_key = args.provider_api_key.map(orderflow_platform::secret::Secret::new);
    provider.ca_cert = args.provider_ca_cert;
    provider.breaker.failure_threshold = args.breaker_failures;
    provider.max_window = args.provider_max_window;
    provider.retry_ratio = args.retry_ratio;
    // The shared bucket lives in the payments database, on a connection of its own.
    let provider = PaymentProviderClient::new(provider, &settings.registry, Some(pool.clone())).await?;
    // The ops console shows each instance's breaker and window from the payments database.
    provider.report_to(pool.clone(), orderflow_consumer_runtime::status::instance_name());
    let handler = PaymentHandler { provider, codec: codec.clone() };
    orderflow_consumer_runtime::run_service(settings, pool, codec, handler, &args.metrics_listen).await
}

//! `lag-exporter`: consumer-group lag from the broker on `/metrics` (see the library).

use std::time::Duration;

use clap::Parser;
use orderflow_lag_exporter::{ExporterSettings, broker_view::ReaderSettings};

#[derive(Parser)]
#[command(name = "lag-exporter", about = "Consumer-group lag read from the broker, for Prometheus")]
struct Args {
    #[command(flatten)]
    kafka: orderflow_platform::kafka::KafkaArgs,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, env = "ORDERFLOW_METRICS_LISTEN", default_value = "127.0.0.1:9108")]
    listen: String,
    /// Seconds between reads of the broker.
    #[arg(long, env = "ORDERFLOW_LAG_INTERVAL_SECS", default_value_t = 10.0)]
    interval_secs: f64,
    /// Groups to report from the start, comma-separated (others are discovered).
    #[arg(
        long,
        env = "ORDERFLOW_LAG_GROUPS",
        value_delimiter = ',',
        default_value = "payment,order-service,inventory,notifications,analytics"
    )]
    groups: Vec<String>,
    /// The group `orderflow-dlt` commits when dead letters are triaged or replayed.
    #[arg(long, env = "ORDERFLOW_DLT_TRIAGE_GROUP", default_value = "orderflow-dlt-triage")]
    triage_group: String,
    /// Seconds one broker request may take.
    #[arg(long, env = "ORDERFLOW_LAG_TIMEOUT_SECS", default_value_t = 5.0)]
    timeout_secs: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("lag-exporter");
    let args: Args = orderflow_platform::secret::parse();
    anyhow::ensure!(args.interval_secs >= 0.1, "--interval-secs must be at least 0.1");
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let settings = ExporterSettings {
        reader: ReaderSettings {
            kafka: args.kafka.settings()?,
            groups: args.groups.into_iter().map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect(),
            triage_group: Some(args.triage_group).filter(|g| !g.is_empty()),
            timeout: Duration::from_secs_f64(args.timeout_secs.max(0.1)),
        },
        interval: Duration::from_secs_f64(args.interval_secs),
    };
    tracing::info!(listen = %args.listen, "lag exporter started");
    let kafka = settings.reader.kafka.clone();
    let exporter = orderflow_lag_exporter::run(
        settings,
        listener,
        prometheus::Registry::new(),
        orderflow_platform::shutdown::shutdown_signal(),
    );
    // The exporter serves while Kafka is away (its gauges say so); a broker refusing our
    // credentials is a mistake to stop on at once, not an outage to wait out.
    kafka.unless_refused(exporter).await
}

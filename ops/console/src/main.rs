//! `orderflow-console`: the ops console (see the library).

use std::time::Duration;

use clap::Parser;
use orderflow_console::ConsoleSettings;
use orderflow_lag_exporter::broker_view::ReaderSettings;
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(name = "orderflow-console", about = "The ops console: lag, outboxes and dead letters on one page")]
struct Args {
    #[command(flatten)]
    kafka: orderflow_platform::kafka::KafkaArgs,
    /// The schema registry dead-lettered payloads are decoded with.
    #[command(flatten)]
    registry: orderflow_schemas::RegistryArgs,
    /// Where the console (and its `/metrics`, `/healthz`, `/readyz`) is served.
    #[arg(long, env = "ORDERFLOW_CONSOLE_LISTEN", default_value = "127.0.0.1:9110")]
    listen: String,
    /// Seconds between reads of the broker and the databases.
    #[arg(long, env = "ORDERFLOW_CONSOLE_INTERVAL_SECS", default_value_t = 3.0)]
    interval_secs: f64,
    /// Groups shown from the start, comma-separated (others are discovered).
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
    /// Seconds one broker request or database query may take.
    #[arg(long, env = "ORDERFLOW_CONSOLE_TIMEOUT_SECS", default_value_t = 5.0)]
    timeout_secs: f64,
    /// The databases whose outbox backlog is shown (each optional).
    #[arg(long, env = "ORDERFLOW_ORDERS_DATABASE_URL", hide_env_values = true)]
    orders_database_url: Option<String>,
    #[arg(long, env = "ORDERFLOW_PAYMENTS_DATABASE_URL", hide_env_values = true)]
    payments_database_url: Option<String>,
    #[arg(long, env = "ORDERFLOW_INVENTORY_DATABASE_URL", hide_env_values = true)]
    inventory_database_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("orderflow-console");
    let args: Args = orderflow_platform::secret::parse();
    anyhow::ensure!(args.interval_secs >= 0.1, "--interval-secs must be at least 0.1");
    let timeout = Duration::from_secs_f64(args.timeout_secs.max(0.1));
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let mut outboxes = Vec::new();
    for (name, url) in [
        ("orders", &args.orders_database_url),
        ("payments", &args.payments_database_url),
        ("inventory", &args.inventory_database_url),
    ] {
        let Some(url) = url else { continue };
        // Lazy: a database that is down at start is shown as unreachable, not a reason to stop.
        let pool = PgPoolOptions::new().max_connections(2).acquire_timeout(timeout).connect_lazy(url);
        // The parse error is not repeated: it may quote the URL, password and all.
        outboxes.push((name.to_string(), pool.map_err(|_| anyhow::anyhow!("the {name} database URL does not parse"))?));
    }
    let codec = orderflow_schemas::EventCodec::new(args.registry.access()?, timeout)?;
    let settings = ConsoleSettings {
        codec: Some(std::sync::Arc::new(codec)),
        reader: ReaderSettings {
            kafka: args.kafka.settings()?,
            groups: args.groups.into_iter().map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect(),
            triage_group: Some(args.triage_group).filter(|g| !g.is_empty()),
            timeout,
        },
        outboxes,
        interval: Duration::from_secs_f64(args.interval_secs),
    };
    tracing::info!(listen = %args.listen, "console started");
    let kafka = settings.reader.kafka.clone();
    let console = orderflow_console::run(
        settings,
        listener,
        prometheus::Registry::new(),
        orderflow_platform::shutdown::shutdown_signal(),
    );
    // It serves while Kafka is away (the page says so); credentials the broker refuses stop it.
    kafka.unless_refused(console).await
}

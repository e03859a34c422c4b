//! `orderflow-console`: the ops console (see the library).

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use orderflow_console::ConsoleSettings;
use orderflow_lag_exporter::broker_view::ReaderSettings;
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(
    name = "orderflow-console",
    about = "The ops console: lag, outboxes, dead letters and an order's story on one page",
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Operators allowed to replay, triage and rewind, signing in with HTTP basic:
    /// `name:bcrypt-hash[:operator|viewer]` per line (re-read when it changes). Without it the
    /// console is read-only.
    #[arg(long, env = "ORDERFLOW_CONSOLE_OPERATORS_FILE")]
    operators_file: Option<PathBuf>,
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
    /// The databases an order's story also reads (each optional).
    #[arg(long, env = "ORDERFLOW_NOTIFICATIONS_DATABASE_URL", hide_env_values = true)]
    notifications_database_url: Option<String>,
    #[arg(long, env = "ORDERFLOW_ANALYTICS_DATABASE_URL", hide_env_values = true)]
    analytics_database_url: Option<String>,
    /// A trace UI's page for one trace, `{trace_id}` standing for the id (e.g.
    /// `http://jaeger:16686/trace/{trace_id}`); without it the story shows the id alone.
    #[arg(long, env = "ORDERFLOW_CONSOLE_TRACE_URL")]
    trace_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Reads a password on standard input and prints the operators-file line for it.
    HashPassword {
        /// The operator's name.
        #[arg(long)]
        user: String,
        /// `operator` may replay, triage and rewind; `viewer` may only sign in.
        #[arg(long, default_value = "operator", value_parser = ["operator", "viewer"])]
        role: String,
        /// bcrypt cost (each step doubles the work of a check).
        #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(4..=31))]
        cost: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("orderflow-console");
    let args: Args = orderflow_platform::secret::parse();
    if let Some(Command::HashPassword { user, role, cost }) = args.command {
        println!("{}", orderflow_platform::users_file::line_from_stdin(&user, &role, cost)?);
        return Ok(());
    }
    anyhow::ensure!(args.interval_secs >= 0.1, "--interval-secs must be at least 0.1");
    let timeout = Duration::from_secs_f64(args.timeout_secs.max(0.1));
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    // Lazy pools: a database that is down at start is shown as unreachable, not a reason to stop.
    let pool = |name: &str, url: &Option<String>| -> anyhow::Result<Option<sqlx::PgPool>> {
        let Some(url) = url else { return Ok(None) };
        // The parse error is not repeated: it may quote the URL, password and all.
        let pool = PgPoolOptions::new().max_connections(2).acquire_timeout(timeout).connect_lazy(url);
        Ok(Some(pool.map_err(|_| anyhow::anyhow!("the {name} database URL does not parse"))?))
    };
    let stores = orderflow_console::story::Stores {
        orders: pool("orders", &args.orders_database_url)?,
        payments: pool("payments", &args.payments_database_url)?,
        inventory: pool("inventory", &args.inventory_database_url)?,
        notifications: pool("notifications", &args.notifications_database_url)?,
        analytics: pool("analytics", &args.analytics_database_url)?,
    };
    let outboxes = [("orders", &stores.orders), ("payments", &stores.payments), ("inventory", &stores.inventory)]
        .into_iter()
        .filter_map(|(name, pool)| Some((name.to_string(), pool.clone()?)))
        .collect();
    if let Some(template) = &args.trace_url {
        anyhow::ensure!(
            template.contains("{trace_id}"),
            "--trace-url must contain {{trace_id}}, where the trace's id goes"
        );
    }
    let operators = match args.operators_file {
        Some(path) => {
            Some(orderflow_platform::users_file::UsersFile::open(path, orderflow_console::operate::ROLES).await?)
        }
        None => {
            tracing::info!("no operators file: the console is read-only");
            None
        }
    };
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
        operators,
        stores,
        trace_url: args.trace_url,
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

//! `orderflow-registry`: serve the schema registry.

use clap::Parser;
use orderflow_schemas::CompatibilityLevel;
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(name = "orderflow-registry", about = "Confluent-compatible Avro schema registry on Postgres")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ORDERFLOW_REGISTRY_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,
    /// Postgres connection URL (never logged).
    #[arg(long, env = "ORDERFLOW_REGISTRY_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Compatibility level when neither the global nor a subject's level was set over the API.
    #[arg(long, env = "ORDERFLOW_REGISTRY_DEFAULT_COMPATIBILITY", default_value = "BACKWARD_TRANSITIVE")]
    default_compatibility: CompatibilityLevel,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("orderflow-registry");
    let args = Args::parse();
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&args.database_url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the registry database: {e}"))?;
    orderflow_registry::migrate(&pool).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    orderflow_registry::run(listener, pool, args.default_compatibility, orderflow_platform::shutdown::shutdown_signal())
        .await
}

//! `payment-simulator`: the payment provider stand-in.

use clap::Parser;
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(name = "payment-simulator", about = "Simulated payment provider with an idempotent ledger")]
struct Args {
    #[arg(long, env = "ORDERFLOW_SIMULATOR_LISTEN", default_value = "127.0.0.1:8090")]
    listen: String,
    /// The admin port: the API plus the ledger, faults and stats; it stays up when the `down`
    /// fault closes the API port. Loopback unless told otherwise: whoever reaches it can make
    /// the provider fail.
    #[arg(long, env = "ORDERFLOW_SIMULATOR_ADMIN_LISTEN", default_value = "127.0.0.1:8089")]
    admin_listen: String,
    #[arg(long, env = "ORDERFLOW_SIMULATOR_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The API key clients must send as `Authorization: Bearer` (a secret: from the environment
    /// or ORDERFLOW_SIMULATOR_API_KEY_FILE). Unset: the API takes any caller.
    #[arg(long, env = "ORDERFLOW_SIMULATOR_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Serve the API over HTTPS with this PEM certificate chain (leaf first) and --tls-key.
    #[arg(long, env = "ORDERFLOW_SIMULATOR_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "ORDERFLOW_SIMULATOR_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("payment-simulator");
    let args: Args = orderflow_platform::secret::parse();
    let tls = orderflow_http::server_config_if(args.tls_cert.as_deref(), args.tls_key.as_deref())?;
    let pool = PgPoolOptions::new().max_connections(20).connect(&args.database_url).await?;
    orderflow_payment_simulator::migrate(&pool).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let admin = tokio::net::TcpListener::bind(&args.admin_listen).await?;
    let shutdown = orderflow_platform::shutdown::shutdown_signal();
    let options = orderflow_payment_simulator::ApiOptions { api_key: args.api_key, tls };
    orderflow_payment_simulator::run(listener, Some(admin), pool, options, shutdown).await
}

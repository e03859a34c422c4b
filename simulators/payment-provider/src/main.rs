//! `payment-simulator`: the payment provider stand-in.

use clap::Parser;
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(name = "payment-simulator", about = "Simulated payment provider with an idempotent ledger")]
struct Args {
    #[arg(long, env = "ORDERFLOW_SIMULATOR_LISTEN", default_value = "127.0.0.1:8090")]
    listen: String,
    /// A second port serving the same routes, which stays up when the `down` fault closes the
    /// API port (faults, ledger and stats are reachable here).
    #[arg(long, env = "ORDERFLOW_SIMULATOR_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    #[arg(long, env = "ORDERFLOW_SIMULATOR_DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("payment-simulator");
    let args: Args = orderflow_platform::secret::parse();
    let pool = PgPoolOptions::new().max_connections(20).connect(&args.database_url).await?;
    orderflow_payment_simulator::migrate(&pool).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let admin = match &args.admin_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    orderflow_payment_simulator::run(listener, admin, pool, orderflow_platform::shutdown::shutdown_signal()).await
}

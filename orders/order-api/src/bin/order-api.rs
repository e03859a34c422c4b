//! `order-api`: REST order intake.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use orderflow_order_api::{ApiSettings, auth, defaults};
use orderflow_platform::jwt::JwtArgs;
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(name = "order-api", about = "orderflow's REST order intake")]
struct Args {
    #[arg(long, env = "ORDERFLOW_API_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Orders database (never logged).
    #[arg(long, env = "ORDERFLOW_ORDERS_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    registry: orderflow_schemas::RegistryArgs,
    /// Largest request body accepted (413 beyond).
    #[arg(long, env = "ORDERFLOW_API_MAX_BODY_BYTES", default_value_t = defaults::MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Requests per second per caller (the token's subject).
    #[arg(long, env = "ORDERFLOW_API_CLIENT_RATE", default_value_t = defaults::CLIENT_RATE)]
    client_rate: f64,
    /// Requests a caller may send at once above its rate.
    #[arg(long, env = "ORDERFLOW_API_CLIENT_BURST", default_value_t = defaults::CLIENT_BURST)]
    client_burst: f64,
    #[arg(long, env = "ORDERFLOW_API_DB_POOL", default_value_t = defaults::DB_POOL,
          value_parser = clap::value_parser!(u32).range(1..))]
    db_pool: u32,
    /// Requests that may wait for an order change at once (`GET /orders/{id}?wait_for=…`);
    /// beyond, 503 with Retry-After.
    #[arg(long, env = "ORDERFLOW_API_MAX_WAITERS", default_value_t = defaults::MAX_WAITERS)]
    max_waiters: usize,
    /// Callers the rate limiter remembers at once (its memory bound); past it, new callers share
    /// an overflow bucket.
    #[arg(long, env = "ORDERFLOW_API_RATE_LIMIT_CALLERS", default_value_t = defaults::RATE_LIMIT_CALLERS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    rate_limit_callers: usize,
    /// Bearer-token verification (`ORDERFLOW_API_JWKS_FILE` and so on); a key set and an
    /// issuer are required.
    #[command(flatten)]
    jwt: JwtArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("order-api");
    let args: Args = orderflow_platform::secret::parse_with(|command| {
        JwtArgs::named(command, "ORDERFLOW_API", auth::defaults::AUDIENCE)
    });
    let auth = args.jwt.settings()?.context("--jwks-file or --jwks-url (and --jwt-issuer) is required")?;
    let pool = PgPoolOptions::new()
        .max_connections(args.db_pool)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&args.database_url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the orders database: {e}"))?;
    orderflow_order_api::migrate(&pool).await?;
    let codec = Arc::new(orderflow_schemas::EventCodec::new(args.registry.access()?, Duration::from_secs(5))?);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let settings = ApiSettings {
        max_body_bytes: args.max_body_bytes,
        client_rate: args.client_rate,
        client_burst: args.client_burst,
        max_waiters: args.max_waiters,
        rate_limit_callers: args.rate_limit_callers,
        ..Default::default()
    };
    let shutdown = orderflow_platform::shutdown::shutdown_signal();
    let result = orderflow_order_api::run_api(listener, pool, codec, settings, auth, shutdown).await;
    orderflow_platform::telemetry::shutdown();
    result
}

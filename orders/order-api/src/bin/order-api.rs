//! `order-api`: REST order intake.

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use orderflow_order_api::{
    ApiSettings,
    auth::{self, AuthSettings, JwksSource},
    defaults,
};
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
    registry: orderflow_platform::service::RegistryArgs,
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
    /// The token issuer's public keys as a JWKS file (re-read when it changes) ...
    #[arg(long, env = "ORDERFLOW_API_JWKS_FILE", required_unless_present = "jwks_url", conflicts_with = "jwks_url")]
    jwks_file: Option<PathBuf>,
    /// ... or at a URL (e.g. https://idp.example.com/.well-known/jwks.json).
    #[arg(long, env = "ORDERFLOW_API_JWKS_URL")]
    jwks_url: Option<String>,
    /// The token issuer accepted (`iss`).
    #[arg(long, env = "ORDERFLOW_API_JWT_ISSUER")]
    jwt_issuer: String,
    /// Audiences accepted (`aud`), comma-separated.
    #[arg(long, env = "ORDERFLOW_API_JWT_AUDIENCE", value_delimiter = ',', default_value = auth::defaults::AUDIENCE)]
    jwt_audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "ORDERFLOW_API_JWT_LEEWAY_SECS", default_value_t = auth::defaults::LEEWAY_SECS)]
    jwt_leeway_secs: u64,
    /// Seconds between reads of the issuer's keys (a rotation takes effect within this).
    #[arg(long, env = "ORDERFLOW_API_JWKS_REFRESH_SECS", default_value_t = auth::defaults::REFRESH_SECS)]
    jwks_refresh_secs: u64,
    /// The least seconds between two reads caused by tokens naming an unknown key.
    #[arg(long, env = "ORDERFLOW_API_JWKS_MIN_REFRESH_SECS", default_value_t = auth::defaults::MIN_REFRESH_SECS)]
    jwks_min_refresh_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("order-api");
    let args = Args::parse();
    let pool = PgPoolOptions::new()
        .max_connections(args.db_pool)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&args.database_url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the orders database: {e}"))?;
    orderflow_order_api::migrate(&pool).await?;
    let codec = Arc::new(orderflow_schemas::EventCodec::new(&args.registry.url, Duration::from_secs(5))?);
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
    let jwks = match (args.jwks_file, args.jwks_url) {
        (Some(path), _) => JwksSource::File(path),
        (None, Some(url)) => JwksSource::Url(url),
        (None, None) => anyhow::bail!("--jwks-file or --jwks-url is required"),
    };
    let auth = AuthSettings {
        audiences: args.jwt_audience.into_iter().map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect(),
        leeway: Duration::from_secs(args.jwt_leeway_secs),
        refresh: Duration::from_secs(args.jwks_refresh_secs.max(1)),
        min_refresh: Duration::from_secs(args.jwks_min_refresh_secs),
        ..AuthSettings::new(jwks, args.jwt_issuer)
    };
    let shutdown = orderflow_platform::shutdown::shutdown_signal();
    let result = orderflow_order_api::run_api(listener, pool, codec, settings, auth, shutdown).await;
    orderflow_platform::telemetry::shutdown();
    result
}

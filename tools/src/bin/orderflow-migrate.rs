//! `orderflow-migrate`: brings every database it is given to this release's schema, in one
//! place, before any service starts (the Helm chart's pre-install/pre-upgrade hook Job).
//!
//! Each database is named by the same variable its service reads, so one Secret serves both:
//!
//! ```text
//! ORDERFLOW_ORDERS_DATABASE_URL=postgres://… ORDERFLOW_PAYMENTS_DATABASE_URL=postgres://… orderflow-migrate
//! ORDERFLOW_MIGRATIONS=verify orderflow-migrate     # only check; change nothing
//! ```
//!
//! Migrations are idempotent and sqlx serialises concurrent runs with an advisory lock, so a
//! retried or doubled Job is harmless. Exits non-zero, naming the database, on the first failure.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::future::BoxFuture;
use orderflow_platform::migrations::{self, Mode};
use sqlx::{PgPool, postgres::PgPoolOptions};

/// A service's `migrate`, which applies or verifies as `ORDERFLOW_MIGRATIONS` says.
type Migrate = for<'a> fn(&'a PgPool) -> BoxFuture<'a, anyhow::Result<()>>;

#[derive(Parser)]
#[command(name = "orderflow-migrate", about = "Applies (or verifies) the schema of every orderflow database given")]
struct Args {
    /// Orders, outbox and order-service's dedupe store (order-api, order-service, the orders relay).
    #[arg(long, env = "ORDERFLOW_ORDERS_DATABASE_URL", hide_env_values = true)]
    orders: Option<String>,
    /// Payments, refunds, the shared provider bucket, outbox and dedupe (payment, its relay).
    #[arg(long, env = "ORDERFLOW_PAYMENTS_DATABASE_URL", hide_env_values = true)]
    payments: Option<String>,
    /// Stock, reservations, outbox and dedupe (inventory, its relay).
    #[arg(long, env = "ORDERFLOW_INVENTORY_DATABASE_URL", hide_env_values = true)]
    inventory: Option<String>,
    #[arg(long, env = "ORDERFLOW_NOTIFICATIONS_DATABASE_URL", hide_env_values = true)]
    notifications: Option<String>,
    #[arg(long, env = "ORDERFLOW_ANALYTICS_DATABASE_URL", hide_env_values = true)]
    analytics: Option<String>,
    /// The schema registry's store.
    #[arg(long, env = "ORDERFLOW_REGISTRY_DATABASE_URL", hide_env_values = true)]
    registry: Option<String>,
    /// The payment provider simulator's ledger (demo installs only).
    #[arg(long, env = "ORDERFLOW_SIMULATOR_DATABASE_URL", hide_env_values = true)]
    payment_simulator: Option<String>,
    /// The email/SMS provider simulator's ledger (demo installs only).
    #[arg(long, env = "ORDERFLOW_NOTIFY_SIMULATOR_DATABASE_URL", hide_env_values = true)]
    notification_simulator: Option<String>,
    /// How long to keep trying to reach each database (a hook Job may start before the
    /// database's Service answers).
    #[arg(long, env = "ORDERFLOW_MIGRATE_CONNECT_TIMEOUT_SECS", default_value_t = 120)]
    connect_timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("orderflow-migrate");
    let args: Args = orderflow_platform::secret::parse();
    let mode = migrations::mode()?;
    let wait = Duration::from_secs(args.connect_timeout_secs);
    // Each database with the migrations of every service that uses it.
    let databases: [(&str, &Option<String>, Migrate); 8] = [
        ("orders", &args.orders, |p| Box::pin(orderflow_order_service::migrate(p))),
        ("payments", &args.payments, |p| Box::pin(orderflow_payment::migrate(p))),
        ("inventory", &args.inventory, |p| Box::pin(orderflow_inventory::migrate(p))),
        ("notifications", &args.notifications, |p| Box::pin(orderflow_notifications::migrate(p))),
        ("analytics", &args.analytics, |p| Box::pin(orderflow_analytics::migrate(p))),
        ("registry", &args.registry, |p| Box::pin(orderflow_registry::migrate(p))),
        ("payment-simulator", &args.payment_simulator, |p| Box::pin(orderflow_payment_simulator::migrate(p))),
        ("notification-simulator", &args.notification_simulator, |p| {
            Box::pin(orderflow_notification_simulator::migrate(p))
        }),
    ];
    anyhow::ensure!(
        databases.iter().any(|(_, url, _)| url.is_some()),
        "no database given: set ORDERFLOW_ORDERS_DATABASE_URL, ORDERFLOW_PAYMENTS_DATABASE_URL, … (see --help)"
    );
    let done = if mode == Mode::Verify { "verified" } else { "migrated" };
    for (name, url, migrate) in databases {
        let Some(url) = url else { continue };
        let pool = connect(name, url, wait).await?;
        migrate(&pool).await.with_context(|| format!("the {name} database"))?;
        pool.close().await;
        println!("{name}: {done}");
    }
    Ok(())
}

/// Connects, retrying every 2 s for up to `wait` while the server is not reachable yet; a
/// server whose certificate does not verify, or a bad URL, fails at once (waiting cannot fix it).
async fn connect(name: &str, url: &str, wait: Duration) -> anyhow::Result<PgPool> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match PgPoolOptions::new().max_connections(1).acquire_timeout(Duration::from_secs(5)).connect(url).await {
            Ok(pool) => return Ok(pool),
            Err(e @ (sqlx::Error::Tls(_) | sqlx::Error::Configuration(_))) => {
                return Err(e).with_context(|| format!("connecting to the {name} database"));
            }
            // A TLS handshake that failed (the certificate does not verify) comes as bad data.
            Err(sqlx::Error::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(anyhow::Error::new(e)
                    .context(format!("connecting to the {name} database over TLS (the server's certificate)")));
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(database = name, error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to the {name} database")),
        }
    }
}

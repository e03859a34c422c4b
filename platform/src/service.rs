//! What every service binary takes and does the same way: the schema registry's address and a
//! Postgres pool with a clear error when the database cannot be reached.

use anyhow::Context;
use sqlx::{PgPool, postgres::PgPoolOptions};

/// The schema registry (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// The schema registry's base URL (Confluent-compatible REST).
    #[arg(long = "registry-url", env = "ORDERFLOW_REGISTRY_URL", default_value = "http://127.0.0.1:8081")]
    pub url: String,
}

/// A pool of at most `max_connections` on `url`; `what` names the database in the error
/// (the URL, which may hold a password, is never printed).
pub async fn connect(url: &str, max_connections: u32, what: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .connect(url)
        .await
        .with_context(|| format!("connecting to the {what} database"))
}

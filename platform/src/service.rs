//! What every service binary does the same way: a Postgres pool with a clear error when the
//! database cannot be reached. (The registry's address and credentials are
//! `orderflow_schemas::RegistryArgs`.)

use anyhow::Context;
use sqlx::{PgPool, postgres::PgPoolOptions};

/// A pool of at most `max_connections` on `url`; `what` names the database in the error
/// (the URL, which may hold a password, is never printed).
pub async fn connect(url: &str, max_connections: u32, what: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .connect(url)
        .await
        .with_context(|| format!("connecting to the {what} database"))
}

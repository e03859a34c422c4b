//! `orderflow-registry`: serve the schema registry, or hash a password for its users file.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orderflow_platform::jwt::JwtArgs;
use orderflow_registry::{AccessSettings, access};
use orderflow_schemas::CompatibilityLevel;
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(
    name = "orderflow-registry",
    about = "Confluent-compatible Avro schema registry on Postgres",
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on.
    #[arg(long, env = "ORDERFLOW_REGISTRY_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,
    /// Postgres connection URL (a secret: from the environment or a `_FILE`, never logged).
    #[arg(long, env = "ORDERFLOW_REGISTRY_DATABASE_URL", hide_env_values = true, required = true)]
    database_url: Option<String>,
    /// Compatibility level when neither the global nor a subject's level was set over the API.
    #[arg(long, env = "ORDERFLOW_REGISTRY_DEFAULT_COMPATIBILITY", default_value = "BACKWARD_TRANSITIVE")]
    default_compatibility: CompatibilityLevel,
    /// Users allowed in with HTTP basic: `name:bcrypt-hash[:read|write]` per line (re-read when
    /// it changes). Writers need this or a token issuer.
    #[arg(long, env = "ORDERFLOW_REGISTRY_USERS_FILE")]
    users_file: Option<PathBuf>,
    /// Whether reads (schemas by id, subjects, lookups, compatibility checks) need no
    /// credentials. Writes always do.
    #[arg(long, env = "ORDERFLOW_REGISTRY_ANONYMOUS_READS", default_value_t = true, action = clap::ArgAction::Set)]
    anonymous_reads: bool,
    /// Bearer tokens (`ORDERFLOW_REGISTRY_JWKS_FILE` and so on): writes need the
    /// `schemas:write` scope, closed reads `schemas:read`.
    #[command(flatten)]
    jwt: JwtArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Reads a password on standard input and prints the users-file line for it.
    HashPassword {
        /// The user's name.
        #[arg(long)]
        user: String,
        /// `write` may register, delete and configure; `read` may only read (when reads are
        /// closed).
        #[arg(long, default_value = "write", value_parser = ["read", "write"])]
        role: String,
        /// bcrypt cost (each step doubles the work of a check).
        #[arg(long, default_value_t = bcrypt::DEFAULT_COST, value_parser = clap::value_parser!(u32).range(4..=31))]
        cost: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = orderflow_platform::secret::parse_with(|command| {
        JwtArgs::named(command, "ORDERFLOW_REGISTRY", access::AUDIENCE)
    });
    if let Some(Command::HashPassword { user, role, cost }) = args.command {
        println!("{}", orderflow_platform::users_file::line_from_stdin(&user, &role, cost)?);
        return Ok(());
    }
    orderflow_platform::telemetry::init("orderflow-registry");
    let access = AccessSettings {
        users_file: args.users_file,
        jwt: args.jwt.settings()?,
        anonymous_reads: args.anonymous_reads,
    };
    access.ensure_writers()?;
    let database_url = args.database_url.context("--database-url is required")?;
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&database_url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the registry database: {e}"))?;
    orderflow_registry::migrate(&pool).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let shutdown = orderflow_platform::shutdown::shutdown_signal();
    orderflow_registry::run(listener, pool, args.default_compatibility, access, shutdown).await
}

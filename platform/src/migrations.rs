//! One way for every service to treat its database schema at start.
//!
//! `ORDERFLOW_MIGRATIONS=apply` (the default, for the local stack and compose) runs the
//! service's migrations under an advisory lock, so replicas starting together are safe.
//! `ORDERFLOW_MIGRATIONS=verify` (the Helm chart: a hook Job migrates before any app starts)
//! changes nothing and refuses to start unless every migration the binary carries is applied
//! with the same checksum, so an app needs no DDL rights and never races a half-applied schema.

use anyhow::{Context, bail};
use sqlx::{PgPool, migrate::Migrator};

pub const ENV: &str = "ORDERFLOW_MIGRATIONS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    Verify,
}

impl std::str::FromStr for Mode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim() {
            "" | "apply" => Ok(Mode::Apply),
            "verify" => Ok(Mode::Verify),
            other => bail!("{ENV}={other:?}: expected \"apply\" or \"verify\""),
        }
    }
}

/// The mode `ORDERFLOW_MIGRATIONS` asks for (apply when unset).
pub fn mode() -> anyhow::Result<Mode> {
    std::env::var(ENV).unwrap_or_default().parse()
}

/// Applies or verifies `migrator` on `pool` as `ORDERFLOW_MIGRATIONS` says. `what` names the
/// schema in errors ("outbox", "payments", …). Several migrators may share one database (their
/// versions never overlap), so each ignores the others' applied versions.
pub async fn run(mut migrator: Migrator, pool: &PgPool, what: &str) -> anyhow::Result<()> {
    migrator.set_ignore_missing(true);
    match mode()? {
        Mode::Apply => apply(&mut migrator, pool).await.with_context(|| format!("applying the {what} migrations")),
        Mode::Verify => verify(&migrator, pool, what).await,
    }
}

/// Runs `migrator` holding the database's migration lock. The lock is taken by polling
/// `pg_try_advisory_lock`, not by waiting in `pg_advisory_lock` as sqlx does: a replica waiting
/// inside a statement holds a snapshot, and `CREATE INDEX CONCURRENTLY` in the lock holder's
/// migration waits for every snapshot — replicas starting together then deadlock (found by the
/// drain drill: four payment instances at once on an empty database).
async fn apply(migrator: &mut Migrator, pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let key = "SELECT hashtext(current_database() || ':orderflow-migrations')::bigint";
    let key: i64 = sqlx::query_scalar(key).fetch_one(&mut *conn).await?;
    let mut waited = std::time::Duration::ZERO;
    while !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut *conn).await? {
        if waited >= std::time::Duration::from_secs(600) {
            bail!("another process has held the migration lock for 10 minutes");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        waited += std::time::Duration::from_millis(200);
    }
    migrator.set_locking(false);
    let result = migrator.run_direct(&mut *conn).await;
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut *conn).await?;
    Ok(result?)
}

/// Fails, naming each one, unless every up migration of `migrator` is applied successfully with
/// the checksum this binary carries.
pub async fn verify(migrator: &Migrator, pool: &PgPool, what: &str) -> anyhow::Result<()> {
    let table: Option<String> = sqlx::query_scalar("select to_regclass('_sqlx_migrations')::text")
        .fetch_one(pool)
        .await
        .with_context(|| format!("checking the {what} migrations"))?;
    let applied: Vec<(i64, bool, Vec<u8>)> = if table.is_some() {
        sqlx::query_as("select version, success, checksum from _sqlx_migrations")
            .fetch_all(pool)
            .await
            .with_context(|| format!("reading the applied {what} migrations"))?
    } else {
        Vec::new()
    };
    let mut problems = Vec::new();
    for m in migrator.iter().filter(|m| !m.migration_type.is_down_migration()) {
        match applied.iter().find(|(v, _, _)| *v == m.version) {
            None => problems.push(format!("{} ({}) is not applied", m.version, m.description)),
            Some((_, false, _)) => problems.push(format!("{} ({}) failed part-way", m.version, m.description)),
            Some((_, true, sum)) if sum.as_slice() != &*m.checksum => {
                problems.push(format!("{} ({}) was applied from a different file", m.version, m.description))
            }
            Some(_) => {}
        }
    }
    if !problems.is_empty() {
        bail!(
            "{ENV}=verify: the {what} schema is not at this release's version: {}; run `orderflow-migrate` (the chart's pre-install/pre-upgrade hook) first",
            problems.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parses_and_rejects_typos() {
        assert_eq!("apply".parse::<Mode>().unwrap(), Mode::Apply);
        assert_eq!("".parse::<Mode>().unwrap(), Mode::Apply);
        assert_eq!("verify".parse::<Mode>().unwrap(), Mode::Verify);
        let err = "verfy".parse::<Mode>().unwrap_err().to_string();
        assert!(err.contains("ORDERFLOW_MIGRATIONS") && err.contains("verfy"), "{err}");
    }
}

//! Each instance writes its breaker state and adaptive window to `provider_health` every
//! [`EVERY`], so the ops console can show every instance's guard from the payments database.
//! The task ends when the client it reports on is dropped; a failed write is logged and tried
//! again next time (the report is a view, never on the path of a charge).

use std::{sync::Weak, time::Duration};

use sqlx::PgPool;

use super::Resilience;

/// How often an instance reports.
pub const EVERY: Duration = Duration::from_secs(2);
/// Rows not updated for this long are removed when an instance starts (instances that are gone).
const FORGET_AFTER: &str = "1 day";

pub(crate) fn spawn(guard: Weak<Resilience>, pool: PgPool, instance: String) {
    tokio::spawn(async move {
        let forget = format!("DELETE FROM provider_health WHERE updated_at < now() - interval '{FORGET_AFTER}'");
        if let Err(error) = sqlx::query(&forget).execute(&pool).await {
            tracing::debug!(%error, "could not forget old provider_health rows");
        }
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(guard) = guard.upgrade() else { return };
            let (breaker, size, max, in_flight) =
                (guard.breaker.state().name(), guard.window.size(), guard.window.max(), guard.window.in_flight());
            drop(guard);
            let write = sqlx::query(
                "INSERT INTO provider_health (instance, breaker, window_size, window_max, in_flight, updated_at)
                 VALUES ($1, $2, $3, $4, $5, now())
                 ON CONFLICT (instance) DO UPDATE SET breaker = $2, window_size = $3, window_max = $4,
                     in_flight = $5, updated_at = now()",
            )
            .bind(&instance)
            .bind(breaker)
            .bind(size as i32)
            .bind(max as i32)
            .bind(in_flight as i32)
            .execute(&pool);
            match tokio::time::timeout(EVERY, write).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::debug!(%error, "could not report the provider guard"),
                Err(_) => tracing::debug!("reporting the provider guard took longer than {EVERY:?}"),
            }
        }
    });
}

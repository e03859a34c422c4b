//! The provider's rate limit, shared by every instance through Postgres.

use std::time::{Duration, Instant};

use sqlx::PgPool;

/// The share of the provider's limit the bucket refills per second. The drain after downtime
/// runs at this share of the limit, so the drill's target (the backlog drained within 1.1 × the
/// time the limit allows) needs more than 91%.
pub const REFILL_SHARE: f64 = 0.96;
/// The share of the limit the bucket holds at most (its burst).
pub const BURST_SHARE: f64 = 0.02;

/// The provider's rate limit as a token bucket in Postgres, shared by all instances. The
/// bucket refills at [`REFILL_SHARE`] of the limit and holds at most [`BURST_SHARE`] of it: a
/// one-second window sees at most 98% of the limit in grants, and the last 2% absorbs requests
/// that reach the provider later than their grant (scheduling on a busy host) and so bunch up
/// in its next window. The burst matters too: a bucket of one token loses every grant no poller
/// happens to be waiting for at that instant (the drill measured 65 requests/s against a limit
/// of 200 that way).
pub struct SharedRateLimit {
    pool: PgPool,
    name: String,
    limit_per_sec: f64,
    /// One poller per instance; the others queue here in order.
    gate: tokio::sync::Mutex<()>,
}

impl SharedRateLimit {
    /// Creates or re-sizes the bucket `name` (the latest deploy's limit wins).
    pub async fn new(pool: PgPool, name: &str, limit_per_sec: f64) -> anyhow::Result<Self> {
        anyhow::ensure!(limit_per_sec >= 1.0, "the provider rate limit must be at least 1 request/s");
        let (rate, burst) = (limit_per_sec * REFILL_SHARE, (limit_per_sec * BURST_SHARE).max(1.0));
        sqlx::query(
            "INSERT INTO provider_rate_buckets (name, rate_per_sec, burst, tokens, refilled_at)
             VALUES ($1, $2, $3, 0, clock_timestamp())
             ON CONFLICT (name) DO UPDATE SET rate_per_sec = $2, burst = $3, tokens = LEAST(provider_rate_buckets.tokens, $3)",
        )
        .bind(name)
        .bind(rate)
        .bind(burst)
        .execute(&pool)
        .await?;
        Ok(SharedRateLimit { pool, name: name.into(), limit_per_sec, gate: tokio::sync::Mutex::new(()) })
    }

    pub fn limit_per_sec(&self) -> f64 {
        self.limit_per_sec
    }

    /// Takes one token, waiting for it unless that would pass `deadline` (then how long the
    /// caller should wait before asking again).
    pub async fn acquire(&self, deadline: Instant) -> Result<(), Duration> {
        let _turn = tokio::time::timeout_at(deadline.into(), self.gate.lock()).await.map_err(|_| self.tick())?;
        loop {
            let taken: Result<(bool, f64), sqlx::Error> = sqlx::query_as(
                "WITH now AS (SELECT clock_timestamp() AS t),
                 b AS (SELECT name, rate_per_sec,
                              LEAST(burst, tokens + rate_per_sec * EXTRACT(EPOCH FROM (SELECT t FROM now) - refilled_at)::float8) AS available
                       FROM provider_rate_buckets WHERE name = $1 FOR UPDATE)
                 UPDATE provider_rate_buckets p
                 SET tokens = CASE WHEN b.available >= 1 THEN b.available - 1 ELSE b.available END,
                     refilled_at = (SELECT t FROM now)
                 FROM b WHERE p.name = b.name
                 RETURNING b.available >= 1, GREATEST(0, (1 - b.available) / b.rate_per_sec)",
            )
            .bind(&self.name)
            .fetch_one(&self.pool)
            .await;
            let wait = match taken {
                Ok((true, _)) => return Ok(()),
                Ok((false, wait)) => Duration::from_secs_f64(wait.max(0.0005)),
                Err(error) => {
                    tracing::warn!(%error, "cannot take a provider token from Postgres");
                    return Err(Duration::from_secs(1));
                }
            };
            if Instant::now() + wait > deadline {
                return Err(wait);
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn tick(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.limit_per_sec)
    }
}

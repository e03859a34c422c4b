//! The provider's rate limit, shared by every instance through Postgres.

use std::{
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
    time::{Duration, Instant},
};

use sqlx::{PgPool, postgres::PgPoolOptions};

/// The share of the provider's limit the bucket books per second. The drain after downtime
/// runs at this share of the limit, so the drill's target (the backlog drained within 1.1 × the
/// time the limit allows) needs more than 91%.
pub const REFILL_SHARE: f64 = 0.94;

/// How far ahead an instance may book the bucket's slots: a poller that books up to this far
/// keeps the provider busy even when its next round trip comes late (on a saturated host a
/// round trip and the wake-up after it can take tens of milliseconds).
const HORIZON: Duration = Duration::from_millis(100);
/// A booked slot whose caller reaches it later than this is dropped instead of used (the
/// caller books again): sent late, it would land in a window with the slots booked after it.
/// (Dropping the slots callers *wake* for late as well cost the drill a third of its rate on
/// this saturated 2-core host, where wake-ups 30 ms late are common; the margin covers those.)
const LATE_FOR: Duration = Duration::from_millis(50);

/// The provider's rate limit as a schedule of slots in Postgres, shared by all instances: one
/// slot every `1 / rate` seconds at [`REFILL_SHARE`] of the limit, never booked in the past
/// (GCRA without a burst: the row's `refilled_at - tokens / rate` is the next free slot). Any
/// one-second window holds at most `rate + 1` slots, 94% of the limit and one; the other 6%
/// absorbs requests that reach the provider later than their slot (the round trip that booked
/// it, scheduling on a busy host: about [`LATE_FOR`]) and so bunch up with the slots after.
/// With a 2% margin and a 2% burst the drill saw 23 requests refused with 429 once the slots
/// were all used, and a test at a limit of 20/s one.
///
/// One caller per instance polls the schedule and books the next slots up to [`HORIZON`]
/// ahead, one for itself and one for every caller queued behind it; each caller then waits for
/// its own slot. So an instance with many calls waiting makes one round trip per batch, and
/// time the pollers come late for is not lost, as a token was when a full bucket overflowed
/// (the drill measured 128 requests/s against a refill of 192 that way, with 64 calls per
/// instance queued for tokens). The schedule has a connection of its own, so a poller never
/// queues behind the handlers' work for one of the service's pool, and its updates commit
/// without waiting for the WAL flush (`synchronous_commit = off` on that connection): a
/// booking lost in a Postgres crash reached at most [`HORIZON`] ahead, a shorter time than
/// Postgres takes to come back, so no slot is booked twice.
///
/// A version before this one kept the same row as a token bucket (`tokens` at `refilled_at`,
/// capped at `burst`); both read and write it consistently, so a rolling update shares one
/// account of the limit.
pub struct SharedRateLimit {
    pool: PgPool,
    name: String,
    limit_per_sec: f64,
    /// One poller per instance; the others queue here in order.
    gate: tokio::sync::Mutex<()>,
    /// Callers in `acquire` now, the poller included.
    waiting: AtomicUsize,
    /// Slots the poller booked for the callers behind it.
    booked: std::sync::Mutex<Booked>,
}

/// `left` slots, the first at `next`, `spacing` apart.
struct Booked {
    next: Instant,
    left: u32,
    spacing: Duration,
}

impl SharedRateLimit {
    /// Creates or re-sizes the bucket `name` (the latest deploy's limit wins), kept in the
    /// database `pool` connects to, through a connection of the bucket's own.
    pub async fn new(pool: PgPool, name: &str, limit_per_sec: f64) -> anyhow::Result<Self> {
        anyhow::ensure!(limit_per_sec >= 1.0, "the provider rate limit must be at least 1 request/s");
        let options = (*pool.connect_options()).clone().options([("synchronous_commit", "off")]);
        let pool = PgPoolOptions::new().max_connections(1).connect_lazy_with(options);
        let rate = limit_per_sec * REFILL_SHARE;
        // `burst` 1: an instance of the version before takes a token only when one is due.
        sqlx::query(
            "INSERT INTO provider_rate_buckets (name, rate_per_sec, burst, tokens, refilled_at)
             VALUES ($1, $2, 1, 0, clock_timestamp())
             ON CONFLICT (name) DO UPDATE SET rate_per_sec = $2, burst = 1, tokens = LEAST(provider_rate_buckets.tokens, 1)",
        )
        .bind(name)
        .bind(rate)
        .execute(&pool)
        .await?;
        let booked = Booked { next: Instant::now(), left: 0, spacing: Duration::from_secs_f64(1.0 / rate) };
        Ok(SharedRateLimit {
            pool,
            name: name.into(),
            limit_per_sec,
            gate: tokio::sync::Mutex::new(()),
            waiting: AtomicUsize::new(0),
            booked: std::sync::Mutex::new(booked),
        })
    }

    pub fn limit_per_sec(&self) -> f64 {
        self.limit_per_sec
    }

    /// Takes one slot and waits for it, unless it would come after `deadline` (then how long
    /// the caller should wait before asking again).
    pub async fn acquire(&self, deadline: Instant) -> Result<(), Duration> {
        let slot = self.slot(deadline).await?;
        if slot > deadline {
            return Err(slot - Instant::now());
        }
        tokio::time::sleep_until(slot.into()).await;
        Ok(())
    }

    /// This caller's slot: one booked by the poller before it, or the first of a new booking.
    async fn slot(&self, deadline: Instant) -> Result<Instant, Duration> {
        self.waiting.fetch_add(1, Relaxed);
        let _left = Left(&self.waiting);
        let _turn = tokio::time::timeout_at(deadline.into(), self.gate.lock()).await.map_err(|_| self.tick())?;
        match self.take_booked() {
            Some(slot) => Ok(slot),
            None => self.book(deadline).await,
        }
    }

    /// Books the bucket's next slots for the callers waiting now and returns the first.
    async fn book(&self, deadline: Instant) -> Result<Instant, Duration> {
        loop {
            let want = self.waiting.load(Relaxed).clamp(1, i32::MAX as usize) as i32;
            let asked = Instant::now();
            // `start`: seconds from now to the first free slot; the slots up to the horizon are
            // booked, at most `want`.
            let booked: Result<(i32, f64, f64), sqlx::Error> = sqlx::query_as(
                "WITH now AS (SELECT clock_timestamp() AS t),
                 b AS (SELECT name, rate_per_sec AS rate,
                              GREATEST(EXTRACT(EPOCH FROM refilled_at - (SELECT t FROM now))::float8 - tokens / rate_per_sec, 0)
                                AS start
                       FROM provider_rate_buckets WHERE name = $1 FOR UPDATE),
                 g AS (SELECT name, rate, start, LEAST($2, GREATEST(0, ceil(($3 - start) * rate)))::int4 AS granted FROM b)
                 UPDATE provider_rate_buckets p
                 SET tokens = 0, refilled_at = (SELECT t FROM now) + make_interval(secs => g.start + g.granted / g.rate)
                 FROM g WHERE p.name = g.name
                 RETURNING g.granted, g.start, g.rate",
            )
            .bind(&self.name)
            .bind(want)
            .bind(HORIZON.as_secs_f64())
            .fetch_one(&self.pool)
            .await;
            // The database's clock read somewhere within the round trip: its middle.
            let now = asked + asked.elapsed() / 2;
            let wait = match booked {
                Ok((granted, start, rate)) if granted >= 1 => {
                    let spacing = Duration::from_secs_f64(1.0 / rate);
                    let first = now + Duration::from_secs_f64(start);
                    *self.booked.lock().expect("booked slots") =
                        Booked { next: first + spacing, left: (granted - 1) as u32, spacing };
                    return Ok(first);
                }
                Ok((_, start, _)) => Duration::from_secs_f64((start - HORIZON.as_secs_f64()).max(0.0005)),
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

    /// The next slot the poller before booked that is not past by more than [`LATE_FOR`].
    fn take_booked(&self) -> Option<Instant> {
        let mut guard = self.booked.lock().expect("booked slots");
        let booked = &mut *guard;
        let now = Instant::now();
        while booked.left > 0 && booked.next + LATE_FOR < now {
            booked.next += booked.spacing;
            booked.left -= 1;
        }
        if booked.left == 0 {
            return None;
        }
        let slot = booked.next;
        booked.next += booked.spacing;
        booked.left -= 1;
        Some(slot)
    }

    fn tick(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.limit_per_sec)
    }
}

/// Counts a caller out of `acquire` however it leaves.
struct Left<'a>(&'a AtomicUsize);

impl Drop for Left<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

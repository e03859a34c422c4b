//! The provider's rate limit, shared by every instance through Postgres.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::sync::oneshot;

/// The share of the provider's limit the bucket books per second. The drain after downtime
/// runs at this share of the limit, so the drill's target (the backlog drained within 1.1 × the
/// time the limit allows) needs more than 91%.
pub const REFILL_SHARE: f64 = 0.92;

/// How far ahead an instance may book the bucket's slots: a poller that books up to this far
/// keeps the provider busy even when its next round trip comes late (on a saturated host a
/// round trip and the wake-up after it can take tens of milliseconds).
const HORIZON: Duration = Duration::from_millis(100);

/// The provider's rate limit as a schedule of slots in Postgres, shared by all instances: one
/// slot every `1 / rate` seconds at [`REFILL_SHARE`] of the limit, never booked in the past
/// (GCRA without a burst: the row's `refilled_at - tokens / rate` is the next free slot). Any
/// one-second window holds at most `rate + 1` slots, 92% of the limit and one; the other 8%
/// absorbs requests that reach the provider later than their slot (a wake-up on a busy host:
/// tens of milliseconds) and so bunch up with the slots after. With a 2% margin and a 2% burst
/// the drill saw 23 requests refused with 429 once the slots were all used, and a test at a
/// limit of 20/s one; at 94% without a burst the drill in partition order still saw 6 or 7.
///
/// One caller per instance polls the schedule and books the next slots up to [`HORIZON`]
/// ahead, one for every caller queued, and sends each its own in arrival order (a caller gone
/// meanwhile leaves its slot to the next); each caller then waits for its slot, and the poller
/// goes on booking until it is served itself, then hands the role to the next caller. So an
/// instance with many calls waiting makes one round trip per batch, and time the pollers come
/// late for is not lost, as a token was when a full bucket overflowed (the drill measured 128
/// requests/s against a refill of 192 that way, with 64 calls per instance queued for tokens;
/// handing booked slots from caller to caller through a lock instead took 64.2 s against
/// 59.2 s for the 10,000-order drain: each hand-over waited for a wake-up).
///
/// The schedule has a connection of its own, so a poller never queues behind the handlers'
/// work for one of the service's pool, and its updates commit without waiting for the WAL
/// flush (`synchronous_commit = off` on that connection): a booking lost in a Postgres crash
/// reached at most [`HORIZON`] ahead, a shorter time than Postgres takes to come back, so no
/// slot is booked twice.
///
/// A version before this one kept the same row as a token bucket (`tokens` at `refilled_at`,
/// capped at `burst`); both read and write it consistently, so a rolling update shares one
/// account of the limit.
pub struct SharedRateLimit {
    pool: PgPool,
    name: String,
    limit_per_sec: f64,
    /// Callers waiting for a slot, in arrival order; the poller sends each its slot.
    queue: std::sync::Mutex<VecDeque<oneshot::Sender<Instant>>>,
    /// Held by the one caller that books slots for the queue.
    poller: tokio::sync::Mutex<()>,
    /// Where the schedule's clock stands against this process's.
    clock: std::sync::Mutex<Option<DbClock>>,
}

/// The database's clock as this process sees it: one reading (seconds since the epoch) and the
/// local instant it was most likely taken at — the middle of the round trip that brought it,
/// from the quickest round trip seen lately, since a reading could have been taken anywhere
/// within its round trip. Mapping every booking through the best reading rather than through
/// its own round trip keeps a slow round trip from moving its slots (measured once each, the
/// 10,000-order drill in partition order drained in 58.2 s placing each booking by its own
/// round trip's middle, in 54.1 s through the best reading).
#[derive(Clone, Copy)]
struct DbClock {
    at: Instant,
    read: f64,
    /// Half the round trip the reading came in.
    error: Duration,
}

impl DbClock {
    /// Keeps the reading `read` from a round trip sent at `asked` and back now if its error is no
    /// worse than the held one's, grown by 1 ms per second of age (the clocks drift, and the
    /// database's may be stepped); returns the reading to map with.
    fn observe(held: &mut Option<DbClock>, asked: Instant, read: f64) -> DbClock {
        let now = Instant::now();
        let error = (now - asked) / 2;
        let fresh = DbClock { at: asked + error, read, error };
        match held {
            Some(clock) if clock.error + (now - clock.at) / 1000 < error => *clock,
            _ => *held.insert(fresh),
        }
    }

    /// The local instant of the database's time `at`.
    fn local(&self, at: f64) -> Instant {
        let from_reading = at - self.read;
        if from_reading >= 0.0 {
            self.at + Duration::from_secs_f64(from_reading)
        } else {
            self.at.checked_sub(Duration::from_secs_f64(-from_reading)).unwrap_or(self.at)
        }
    }
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
        Ok(SharedRateLimit {
            pool,
            name: name.into(),
            limit_per_sec,
            queue: std::sync::Mutex::new(VecDeque::new()),
            poller: tokio::sync::Mutex::new(()),
            clock: std::sync::Mutex::new(None),
        })
    }

    pub fn limit_per_sec(&self) -> f64 {
        self.limit_per_sec
    }

    /// Takes one slot and waits for it, unless it would come after `deadline` (then how long
    /// the caller should wait before asking again).
    pub async fn acquire(&self, deadline: Instant) -> Result<(), Duration> {
        let (sender, mut slot) = oneshot::channel();
        self.queue.lock().expect("slot queue").push_back(sender);
        let slot = tokio::select! {
            biased;
            Ok(slot) = &mut slot => slot,
            // Nobody books for the queue now: this caller does, until it is served itself.
            _turn = self.poller.lock() => self.serve(&mut slot, deadline).await?,
            _ = tokio::time::sleep_until(deadline.into()) => return Err(self.tick()),
        };
        if slot > deadline {
            return Err(slot - Instant::now());
        }
        tokio::time::sleep_until(slot.into()).await;
        Ok(())
    }

    /// As the poller: books slots for everyone queued, sending each caller its own in order,
    /// until `mine` is served.
    async fn serve(&self, mine: &mut oneshot::Receiver<Instant>, deadline: Instant) -> Result<Instant, Duration> {
        loop {
            if let Ok(slot) = mine.try_recv() {
                return Ok(slot);
            }
            let want = {
                let mut queue = self.queue.lock().expect("slot queue");
                queue.retain(|caller| !caller.is_closed());
                queue.len()
            };
            match self.book(want.max(1)).await {
                Ok((first, granted, spacing)) => {
                    let mut queue = self.queue.lock().expect("slot queue");
                    let mut next = first;
                    let mut left = granted;
                    // A caller gone since (its deadline passed) leaves its slot to the next.
                    while left > 0 {
                        let Some(caller) = queue.pop_front() else { break };
                        if caller.send(next).is_ok() {
                            next += spacing;
                            left -= 1;
                        }
                    }
                }
                Err(wait) => {
                    if Instant::now() + wait > deadline {
                        return Err(wait);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Books up to `want` of the schedule's next slots within the horizon: the first, how many
    /// and their spacing; or how long to wait before asking again.
    async fn book(&self, want: usize) -> Result<(Instant, usize, Duration), Duration> {
        let want = want.min(i32::MAX as usize) as i32;
        let asked = Instant::now();
        // `start`: seconds from now to the first free slot; the slots up to the horizon are
        // booked, at most `want`.
        let booked: Result<(i32, f64, f64, f64), sqlx::Error> = sqlx::query_as(
            "WITH now AS (SELECT clock_timestamp() AS t),
             b AS (SELECT name, rate_per_sec AS rate,
                          GREATEST(EXTRACT(EPOCH FROM refilled_at - (SELECT t FROM now))::float8 - tokens / rate_per_sec, 0)
                            AS start
                   FROM provider_rate_buckets WHERE name = $1 FOR UPDATE),
             g AS (SELECT name, rate, start, LEAST($2, GREATEST(0, ceil(($3 - start) * rate)))::int4 AS granted FROM b)
             UPDATE provider_rate_buckets p
             SET tokens = 0, refilled_at = (SELECT t FROM now) + make_interval(secs => g.start + g.granted / g.rate)
             FROM g WHERE p.name = g.name
             RETURNING g.granted, g.start, g.rate, EXTRACT(EPOCH FROM (SELECT t FROM now))::float8",
        )
        .bind(&self.name)
        .bind(want)
        .bind(HORIZON.as_secs_f64())
        .fetch_one(&self.pool)
        .await;
        match booked {
            Ok((granted, start, rate, read)) if granted >= 1 => {
                let clock = DbClock::observe(&mut self.clock.lock().expect("database clock"), asked, read);
                Ok((clock.local(read + start), granted as usize, Duration::from_secs_f64(1.0 / rate)))
            }
            Ok((_, start, _, _)) => Err(Duration::from_secs_f64((start - HORIZON.as_secs_f64()).max(0.0005))),
            Err(error) => {
                tracing::warn!(%error, "cannot book provider slots in Postgres");
                Err(Duration::from_secs(1))
            }
        }
    }

    fn tick(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.limit_per_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_clock_is_mapped_through_the_quickest_round_trip_and_a_stale_one_gives_way() {
        let mut held = None;
        let asked = Instant::now() - Duration::from_millis(2);
        let quick = DbClock::observe(&mut held, asked, 1000.0);
        assert!(quick.error <= Duration::from_millis(5), "{:?}", quick.error);
        // A slower round trip's reading does not replace it.
        let slow = DbClock::observe(&mut held, Instant::now() - Duration::from_millis(400), 1000.5);
        assert_eq!(slow.read, 1000.0);
        // The database's time 0.25 s after the reading is 0.25 s after its local instant.
        assert_eq!(quick.local(1000.25), quick.at + Duration::from_millis(250));
        assert_eq!(quick.local(999.0), quick.at.checked_sub(Duration::from_secs(1)).unwrap_or(quick.at));
        // Aged by a minute (60 ms more error), a reading with 100 ms of round trip wins.
        held.as_mut().unwrap().at -= Duration::from_secs(60);
        let fresh = DbClock::observe(&mut held, Instant::now() - Duration::from_millis(100), 1061.0);
        assert_eq!(fresh.read, 1061.0);
        assert_eq!(held.unwrap().read, 1061.0);
    }
}

//! Per-caller rate limits, keyed on the authenticated subject (never on a header the caller
//! sets): each may send `rate` requests per second with bursts up to `burst`; beyond that, 429
//! with Retry-After.
//!
//! Each caller is one timestamp (GCRA: the time its bucket would be full again), in one of 64
//! shards, each behind its own lock. Memory is bounded: a shard holds at most `capacity / 64`
//! callers. A caller whose bucket is full again is worth forgetting (it loses nothing), so a full
//! shard first drops those — a sweep of that one shard, at most once a second, never per request.
//! If the shard is still full, a new caller shares the shard's overflow bucket: many distinct
//! subjects at once are then limited together, and memory stays as it was.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

const SHARDS: usize = 64;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct ClientRateLimiter {
    /// Time between two requests at the steady rate, and the burst's length in time.
    interval: Duration,
    burst: Duration,
    per_shard: usize,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
    /// Callers remembered across the shards.
    callers: AtomicUsize,
}

struct Shard {
    /// Caller → the time at which its bucket is full again (theoretical arrival time).
    full_at: HashMap<String, Instant>,
    overflow: Option<Instant>,
    swept: Option<Instant>,
}

impl ClientRateLimiter {
    /// `capacity`: the most callers remembered at once (at least one per shard).
    pub fn new(rate_per_second: f64, burst: f64, capacity: usize) -> Self {
        let rate = rate_per_second.max(1e-9);
        ClientRateLimiter {
            interval: Duration::from_secs_f64(1.0 / rate),
            burst: Duration::from_secs_f64(burst.max(1.0) / rate),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard { full_at: HashMap::new(), overflow: None, swept: None }))
                .collect(),
            callers: AtomicUsize::new(0),
        }
    }

    /// Takes one request's worth for `caller`, or says how long until one is available.
    pub fn check(&self, caller: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let shard = &self.shards[self.hasher.hash_one(caller) as usize % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        if !shard.full_at.contains_key(caller) && shard.full_at.len() >= self.per_shard {
            if shard.swept.is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY) {
                let before = shard.full_at.len();
                shard.full_at.retain(|_, full_at| *full_at > now);
                self.callers.fetch_sub(before - shard.full_at.len(), Ordering::Relaxed);
                shard.swept = Some(now);
            }
            if shard.full_at.len() >= self.per_shard {
                let overflow = shard.overflow.get_or_insert(now);
                return self.take(overflow, now);
            }
        }
        let full_at = shard.full_at.entry(caller.to_string()).or_insert_with(|| {
            self.callers.fetch_add(1, Ordering::Relaxed);
            now
        });
        self.take(full_at, now)
    }

    /// GCRA: a request is allowed while the bucket's full-again time is at most `burst` ahead.
    fn take(&self, full_at: &mut Instant, now: Instant) -> Result<(), Duration> {
        let start = (*full_at).max(now);
        let next = start + self.interval;
        if next > now + self.burst {
            return Err(next - (now + self.burst));
        }
        *full_at = next;
        Ok(())
    }

    /// Callers remembered now (the `orderflow_api_rate_limited_callers` gauge).
    pub fn callers(&self) -> usize {
        self.callers.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_waits_while_others_are_unaffected() {
        let limiter = ClientRateLimiter::new(1.0, 3.0, 1000);
        for _ in 0..3 {
            limiter.check("a").unwrap();
        }
        let wait = limiter.check("a").unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
        limiter.check("b").unwrap();
    }

    #[test]
    fn distinct_callers_past_the_capacity_share_an_overflow_bucket_and_memory_stays_bounded() {
        let limiter = ClientRateLimiter::new(1.0, 2.0, 128);
        let mut refused = 0;
        for i in 0..10_000 {
            if limiter.check(&format!("caller-{i}")).is_err() {
                refused += 1;
            }
        }
        assert!(limiter.callers() <= 128, "{} callers remembered", limiter.callers());
        // Past the capacity, newcomers share 64 overflow buckets of 2: nearly all are refused.
        assert!(refused >= 10_000 - 128 - 64 * 2, "{refused} refused");
        // A caller remembered before the flood keeps its own bucket.
        let limiter = ClientRateLimiter::new(1.0, 2.0, 128);
        limiter.check("known").unwrap();
        for i in 0..10_000 {
            let _ = limiter.check(&format!("caller-{i}"));
        }
        limiter.check("known").unwrap();
        assert!(limiter.check("known").is_err());
    }

    #[test]
    fn callers_whose_buckets_are_full_again_are_forgotten_when_room_is_needed() {
        let limiter = ClientRateLimiter::new(1000.0, 1.0, 64);
        for i in 0..1000 {
            let _ = limiter.check(&format!("old-{i}"));
        }
        assert!(limiter.callers() <= 64);
        std::thread::sleep(Duration::from_millis(1100));
        // Every old bucket is full again: the newcomer's shard forgets them to make room.
        let before = limiter.callers();
        limiter.check("new").unwrap();
        assert!(limiter.callers() <= before, "{} callers, {before} before", limiter.callers());
    }
}

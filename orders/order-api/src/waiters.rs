//! Requests waiting for an order to change (`GET /orders/{id}?wait_for=…`), woken by Postgres,
//! never by polling per request.
//!
//! Every status change announces the order on `orderflow_order_changed` at commit (a trigger,
//! migration 2002). One LISTEN connection per order-api instance receives the announcements
//! and wakes the requests waiting on that order, which then read it once. While that
//! connection is lost, and once it is back, every waiter is woken to read again, so a change
//! made meanwhile is not missed. Waiters are bounded per instance: past `max`, a request is
//! refused at once (503 with `Retry-After`) instead of holding a task and a socket.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use orderflow_orders::OrderStatus;
use prometheus::IntGauge;
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

pub const CHANNEL: &str = "orderflow_order_changed";

/// The orders being waited on, and how many may wait at once.
pub struct OrderWatch {
    waiting: Mutex<HashMap<Uuid, (Arc<Notify>, usize)>>,
    permits: Arc<Semaphore>,
    gauge: IntGauge,
    /// Set at shutdown: waiters answer with what they have instead of holding the drain.
    closed: AtomicBool,
}

/// One request's place in the watch; leaving drops it.
pub struct Subscription {
    pub order_id: Uuid,
    pub changed: Arc<Notify>,
    watch: Arc<OrderWatch>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut waiting = self.watch.waiting.lock().expect("watch lock");
        if let Some((_, count)) = waiting.get_mut(&self.order_id) {
            *count -= 1;
            if *count == 0 {
                waiting.remove(&self.order_id);
            }
        }
        self.watch.gauge.dec();
    }
}

impl OrderWatch {
    pub fn new(max: usize, gauge: IntGauge) -> Arc<Self> {
        let permits = Arc::new(Semaphore::new(max));
        Arc::new(OrderWatch { waiting: Mutex::default(), permits, gauge, closed: AtomicBool::new(false) })
    }

    /// Shutdown: every waiter answers now with the order as it is.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// A place among the waiters on `order_id`, or `None` when every place is taken.
    pub fn subscribe(self: &Arc<Self>, order_id: Uuid) -> Option<Subscription> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let changed = {
            let mut waiting = self.waiting.lock().expect("watch lock");
            let (notify, count) = waiting.entry(order_id).or_insert_with(|| (Arc::new(Notify::new()), 0));
            *count += 1;
            notify.clone()
        };
        self.gauge.inc();
        Some(Subscription { order_id, changed, watch: self.clone(), _permit: permit })
    }

    fn wake(&self, order_id: Uuid) {
        if let Some((notify, _)) = self.waiting.lock().expect("watch lock").get(&order_id) {
            notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for (notify, _) in self.waiting.lock().expect("watch lock").values() {
            notify.notify_waiters();
        }
    }

    /// Listens for order changes until the process ends, reconnecting with backoff; every
    /// waiter is woken when the connection is lost and again when it is back.
    pub async fn listen(self: Arc<Self>, pool: PgPool) {
        let mut delay = Duration::from_millis(100);
        loop {
            let mut listener = match connect(&pool).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "cannot LISTEN for order changes; waiters wake at their timeout");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            delay = Duration::from_millis(100);
            // Anything that changed while no one listened.
            self.wake_all();
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => match Uuid::parse_str(notification.payload()) {
                        Ok(order_id) => self.wake(order_id),
                        Err(_) => tracing::warn!(payload = notification.payload(), "unexpected order-change payload"),
                    },
                    Ok(None) | Err(_) => {
                        tracing::warn!("lost the LISTEN connection for order changes; reconnecting");
                        self.wake_all();
                        break;
                    }
                }
            }
        }
    }
}

async fn connect(pool: &PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// What a request waits for: one of `statuses`, or a version above `newer_than`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitFor {
    pub statuses: Vec<String>,
    pub newer_than: Option<i32>,
    pub timeout: Duration,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);

impl WaitFor {
    /// From the query string; `None` when the request does not wait.
    pub fn parse(query: &HashMap<String, String>) -> Result<Option<WaitFor>, String> {
        if let Some(unknown) = query.keys().find(|k| !["wait_for", "newer_than", "timeout"].contains(&k.as_str())) {
            return Err(format!("unknown query parameter {unknown:?}; use wait_for, newer_than and timeout"));
        }
        let statuses = match query.get("wait_for") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse::<OrderStatus>()
                        .map(|s| s.as_str().to_string())
                        .map_err(|e| format!("wait_for: {e}"))
                })
                .collect::<Result<_, _>>()?,
        };
        let newer_than = match query.get("newer_than") {
            None => None,
            Some(v) => Some(
                v.parse::<i32>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| format!("newer_than: {v:?} is not a version (a whole number, 0 or more)"))?,
            ),
        };
        let timeout = query.get("timeout").map(|t| parse_timeout(t)).transpose()?;
        if statuses.is_empty() && newer_than.is_none() {
            return match timeout {
                Some(_) => Err("timeout needs wait_for or newer_than: what should the request wait for?".into()),
                None => Ok(None),
            };
        }
        Ok(Some(WaitFor { statuses, newer_than, timeout: timeout.unwrap_or(DEFAULT_TIMEOUT) }))
    }

    /// Whether an order in `status` at `version` is what the request waits for.
    pub fn reached(&self, status: &str, version: i32) -> bool {
        self.statuses.iter().any(|s| s == status) || self.newer_than.is_some_and(|n| version > n)
    }
}

/// `10s`, `1500ms` or `10` (seconds), from 0 to [`MAX_TIMEOUT`].
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let invalid =
        || format!("timeout: {text:?} is not a duration like 10s, 1500ms or 10 (at most {}s)", MAX_TIMEOUT.as_secs());
    let duration = if let Some(ms) = text.strip_suffix("ms") {
        Duration::from_millis(ms.parse().map_err(|_| invalid())?)
    } else {
        let seconds: f64 = text.strip_suffix('s').unwrap_or(text).parse().map_err(|_| invalid())?;
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(invalid());
        }
        Duration::from_secs_f64(seconds.min(MAX_TIMEOUT.as_secs_f64() + 1.0))
    };
    if duration > MAX_TIMEOUT {
        return Err(invalid());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Option<WaitFor>, String> {
        WaitFor::parse(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn no_wait_parameters_means_no_wait() {
        assert_eq!(parse(&[]).unwrap(), None);
    }

    #[test]
    fn statuses_versions_and_timeouts_parse() {
        let wait = parse(&[("wait_for", "PAID,PAYMENT_FAILED, CANCELLED"), ("timeout", "10s")]).unwrap().unwrap();
        assert_eq!(wait.statuses, vec!["PAID", "PAYMENT_FAILED", "CANCELLED"]);
        assert_eq!(wait.timeout, Duration::from_secs(10));
        assert!(wait.reached("PAID", 2) && !wait.reached("PENDING_PAYMENT", 1));
        let wait = parse(&[("newer_than", "1"), ("timeout", "1500ms")]).unwrap().unwrap();
        assert_eq!(wait.timeout, Duration::from_millis(1500));
        assert!(!wait.reached("PENDING_PAYMENT", 1) && wait.reached("PAID", 2));
        assert_eq!(parse(&[("newer_than", "3")]).unwrap().unwrap().timeout, DEFAULT_TIMEOUT);
        assert_eq!(parse(&[("wait_for", "PAID"), ("timeout", "2.5")]).unwrap().unwrap().timeout.as_millis(), 2500);
    }

    #[test]
    fn bad_parameters_say_what_is_wrong() {
        assert!(parse(&[("wait_for", "SHIPPED")]).unwrap_err().contains("PENDING_PAYMENT, PAID"));
        assert!(parse(&[("newer_than", "-1")]).unwrap_err().contains("newer_than"));
        assert!(parse(&[("wait_for", "PAID"), ("timeout", "31s")]).unwrap_err().contains("at most 30s"));
        assert!(parse(&[("wait_for", "PAID"), ("timeout", "soon")]).unwrap_err().contains("timeout"));
        assert!(parse(&[("timeout", "5s")]).unwrap_err().contains("needs wait_for"));
        assert!(parse(&[("wiat_for", "PAID")]).unwrap_err().contains("unknown query parameter"));
    }
}

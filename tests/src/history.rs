//! Jepsen-style histories for the failover tests: a checkout client places orders at a steady
//! pace while the test breaks the cluster, recording every operation as ok (202, an order id),
//! failed (a definite refusal) or unknown (no answer in time: it may or may not have happened);
//! at the end [`check`] waits for the pipeline to settle and checks the invariants against
//! Kafka and every database: no acknowledged order lost, every order's events on `orders` once
//! (a re-published copy counts as a duplicate absorbed), in lifecycle order, charged once,
//! reserved once, handled by every group; and how long the pipeline stalled.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use rdkafka::Message;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    broker::{header, key},
    intake::{eventually, sample_order},
    stack::TestStack,
};

/// How one operation ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted: the order's id.
    Ok(Uuid),
    /// Refused (a status that says nothing was done).
    Failed(String),
    /// No answer (a timeout, a reset, a 5xx after the request was sent): maybe applied.
    Unknown(String),
}

/// One client operation: its idempotency key, when it started, how it ended.
#[derive(Debug, Clone)]
pub struct Op {
    pub key: String,
    pub at: DateTime<Utc>,
    pub outcome: Outcome,
}

/// The checkout client: orders posted at a steady pace, each on its own task (a hung request
/// never slows the pace), every outcome recorded.
pub struct Intake {
    ops: Arc<Mutex<Vec<Op>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Intake {
    pub fn start(stack: &TestStack, per_second: f64) -> Intake {
        let ops: Arc<Mutex<Vec<Op>>> = Arc::default();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (http, url) = (stack.api.http.clone(), format!("{}/orders", stack.api.url));
        let run = Uuid::new_v4().simple().to_string()[..8].to_string();
        let recorded = ops.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
            let mut requests = tokio::task::JoinSet::new();
            for n in 0.. {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
                let (http, url, ops) = (http.clone(), url.clone(), recorded.clone());
                let key = format!("history-{run}-{n}");
                requests.spawn(async move {
                    let at = Utc::now();
                    let sent = http
                        .post(&url)
                        .header("Idempotency-Key", &key)
                        .timeout(Duration::from_secs(5))
                        .json(&sample_order(&format!("c-{n}")))
                        .send()
                        .await;
                    let outcome = match sent {
                        Ok(response) if response.status() == 202 => match response.json::<Value>().await {
                            Ok(body) => match body["order_id"].as_str().and_then(|id| id.parse().ok()) {
                                Some(id) => Outcome::Ok(id),
                                None => Outcome::Unknown(format!("202 without an order id: {body}")),
                            },
                            Err(error) => Outcome::Unknown(format!("202, body unread: {error}")),
                        },
                        Ok(response) if response.status().is_server_error() => {
                            Outcome::Unknown(format!("{}", response.status()))
                        }
                        Ok(response) => Outcome::Failed(format!("{}", response.status())),
                        Err(error) => Outcome::Unknown(error.to_string()),
                    };
                    ops.lock().unwrap().push(Op { key, at, outcome });
                });
            }
            while requests.join_next().await.is_some() {}
        });
        Intake { ops, stop, task }
    }

    /// Operations so far.
    pub fn count(&self) -> usize {
        self.ops.lock().unwrap().len()
    }

    /// Stops placing orders; returns the history once every request has its outcome.
    pub async fn stop(self) -> Vec<Op> {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
        let mut ops = self.ops.lock().unwrap().clone();
        ops.sort_by_key(|op| op.at);
        ops
    }
}

/// What a failover run did, and whether anything was lost.
#[derive(Debug)]
pub struct Report {
    pub accepted: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Unknown operations that turned out to have been applied (their order exists).
    pub unknown_applied: usize,
    /// Distinct events on `orders` of this run's orders (OrderPlaced and OrderPaid).
    pub events_published: usize,
    /// Records on `orders` that repeat an event id already there.
    pub duplicate_records: usize,
    /// Events handled per consumer group (their dedupe rows).
    pub handled: BTreeMap<String, i64>,
    /// Redeliveries the dedupe stores absorbed (`outcome="deduped"` over every group).
    pub duplicates_absorbed: f64,
    /// Accepted orders without their full story: must be 0.
    pub lost: usize,
    /// The longest time without an order reaching PAID, from the fault until every order was.
    pub stall: Duration,
    /// When the longest stall began, from the fault.
    pub stall_from: Duration,
}

impl Report {
    /// The lines the test prints (and the README records).
    pub fn print(&self, scenario: &str) {
        println!(
            "{scenario}: accepted {} (failed {}, unknown {} of which applied {}), events published {} \
             (duplicate records {}), handled {:?}, duplicates absorbed {}, lost {}, stalled {:.1} s (from {:.1} s after the fault)",
            self.accepted,
            self.failed,
            self.unknown,
            self.unknown_applied,
            self.events_published,
            self.duplicate_records,
            self.handled,
            self.duplicates_absorbed,
            self.lost,
            self.stall.as_secs_f64(),
            self.stall_from.as_secs_f64()
        );
    }
}

/// Waits (up to `settle`) for every order of the history to be PAID and every outbox empty,
/// then checks the invariants; panics naming what broke. `fault` is when the test broke the
/// cluster (the stall is measured from there).
pub async fn check(stack: &TestStack, ops: &[Op], fault: DateTime<Utc>, settle: Duration) -> Report {
    let keys: Vec<String> = ops.iter().map(|op| op.key.clone()).collect();
    let orders: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT order_id, idempotency_key FROM orders WHERE idempotency_key = ANY($1)")
            .bind(&keys)
            .fetch_all(&stack.api.pool)
            .await
            .unwrap();
    let by_key: HashMap<&str, Uuid> = orders.iter().map(|(id, key)| (key.as_str(), *id)).collect();
    let mut report = Report {
        accepted: 0,
        failed: 0,
        unknown: 0,
        unknown_applied: 0,
        events_published: 0,
        duplicate_records: 0,
        handled: BTreeMap::new(),
        duplicates_absorbed: 0.0,
        lost: 0,
        stall: Duration::ZERO,
        stall_from: Duration::ZERO,
    };
    for op in ops {
        match &op.outcome {
            Outcome::Ok(id) => {
                report.accepted += 1;
                assert_eq!(by_key.get(op.key.as_str()), Some(id), "an acknowledged order is not in the database");
            }
            Outcome::Failed(_) => {
                report.failed += 1;
                assert!(!by_key.contains_key(op.key.as_str()), "a refused order ({}) exists", op.key);
            }
            Outcome::Unknown(_) => {
                report.unknown += 1;
                report.unknown_applied += usize::from(by_key.contains_key(op.key.as_str()));
            }
        }
    }
    let ids: Vec<Uuid> = orders.iter().map(|(id, _)| *id).collect();
    let paid = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders WHERE order_id = ANY($1) AND status = 'PAID'")
            .bind(&ids)
            .fetch_one(&stack.api.pool)
            .await
            .unwrap()
    };
    let outboxes_empty = || async {
        let mut rows = 0;
        for pool in &stack.service_pools {
            rows += sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox").fetch_one(pool).await.unwrap();
        }
        rows == 0
    };
    // Every group handles each order's events: payment, inventory and order-service one each,
    // notifications and analytics both (OrderPlaced and OrderPaid).
    let n = ids.len() as i64;
    let expected: BTreeMap<&str, i64> =
        [("payment", n), ("inventory", n), ("order-service", n), ("notifications", 2 * n), ("analytics", 2 * n)]
            .into_iter()
            .collect();
    let behind = || async {
        let handled = handled(stack).await;
        expected
            .iter()
            .filter(|(group, want)| handled.get(**group).copied().unwrap_or_default() < **want)
            .map(|(group, want)| format!("{group} {} of {want}", handled.get(*group).copied().unwrap_or_default()))
            .collect::<Vec<_>>()
    };
    let settled = tokio::time::timeout(settle, async {
        while paid().await < n || !outboxes_empty().await || !behind().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    report.lost = ids.len() - paid().await as usize;
    let stuck = behind().await;
    // Where it stopped, for a failure's message: which groups are behind, what is left in the
    // outboxes, and each order's status.
    let mut statuses: BTreeMap<String, i64> = BTreeMap::new();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM orders WHERE order_id = ANY($1) GROUP BY status")
            .bind(&ids)
            .fetch_all(&stack.api.pool)
            .await
            .unwrap();
    statuses.extend(rows);
    assert!(
        settled.is_ok() && report.lost == 0,
        "{} of {} orders not PAID after {settle:?}; statuses {statuses:?}; groups behind {stuck:?}; outboxes empty: {}",
        report.lost,
        ids.len(),
        outboxes_empty().await
    );
    assert!(stuck.is_empty(), "groups behind after {settle:?}: {stuck:?}");

    // Kafka: each order's OrderPlaced and OrderPaid once (by event id), in that order.
    let wanted = ids.len() * 2;
    let records = stack.broker.read_all("orders", wanted, Duration::from_secs(5)).await;
    let ours: HashMap<String, Uuid> = ids.iter().map(|id| (id.to_string(), *id)).collect();
    let mut seen: HashMap<String, (String, i32, i64)> = HashMap::new();
    let mut story: HashMap<Uuid, Vec<(i32, i64, String)>> = HashMap::new();
    for record in &records {
        let Some(order) = ours.get(&key(record)) else { continue };
        let (id, kind) = (header(record, "event_id").unwrap(), header(record, "event_type").unwrap());
        if seen.insert(id, (kind.clone(), record.partition(), record.offset())).is_some() {
            report.duplicate_records += 1;
            continue;
        }
        story.entry(*order).or_default().push((record.partition(), record.offset(), kind));
    }
    report.events_published = seen.len();
    for id in &ids {
        let mut events = story.remove(id).unwrap_or_default();
        events.sort();
        let kinds: Vec<&str> = events.iter().map(|(_, _, kind)| kind.as_str()).collect();
        assert_eq!(kinds, ["OrderPlaced", "OrderPaid"], "order {id}'s events on `orders`, in offset order");
        assert!(events.windows(2).all(|w| w[0].0 == w[1].0), "order {id}'s events on one partition: {events:?}");
    }

    // Side effects once each: one approved charge and one payment row per order, one reservation.
    let ledger = stack.simulator.ledger().await;
    let mut charges: HashMap<String, usize> = HashMap::new();
    for entry in ledger.iter().filter(|e| e.status == "approved") {
        *charges.entry(entry.reference.clone()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(charges.get(&id.to_string()).copied(), Some(1), "order {id} charged once");
    }
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE order_id = ANY($1)")
        .bind(&ids)
        .fetch_one(&stack.payments)
        .await
        .unwrap();
    assert_eq!(payments, ids.len() as i64, "one payment row per order");
    let reserved: i64 = sqlx::query_scalar("SELECT count(*) FROM reservations WHERE order_id = ANY($1)")
        .bind(&ids)
        .fetch_one(&stack.inventory)
        .await
        .unwrap();
    assert_eq!(reserved, ids.len() as i64, "one reservation per order");

    report.handled = handled(stack).await;
    report.duplicates_absorbed = stack.metrics.iter().map(|(group, _)| stack.records(group, "deduped")).sum();

    // The stall: the longest gap between orders reaching PAID, from the fault on.
    let paid_at: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT changed_at FROM order_status_history WHERE order_id = ANY($1) AND status = 'PAID' ORDER BY changed_at",
    )
    .bind(&ids)
    .fetch_all(&stack.api.pool)
    .await
    .unwrap();
    let mut last = fault;
    for at in paid_at.into_iter().filter(|at| *at >= fault) {
        let gap = (at - last).to_std().unwrap_or_default();
        if gap > report.stall {
            report.stall = gap;
            report.stall_from = (last - fault).to_std().unwrap_or_default();
        }
        last = at;
    }
    report
}

/// Events handled per consumer group (its dedupe rows), over every service database.
async fn handled(stack: &TestStack) -> BTreeMap<String, i64> {
    let mut pools = stack.service_pools.to_vec();
    pools.extend(stack.notifications.iter().chain(&stack.analytics).map(|extra| extra.pool.clone()));
    let mut handled = BTreeMap::new();
    for pool in &pools {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT consumer_group, count(*) FROM processed_events GROUP BY 1")
                .fetch_all(pool)
                .await
                .unwrap();
        for (group, count) in rows {
            let group = group.strip_prefix(&stack.broker.namespace).unwrap_or(&group).to_string();
            *handled.entry(group).or_default() += count;
        }
    }
    handled
}

/// Waits until the history has at least `count` operations.
pub async fn wait_for_ops(intake: &Intake, count: usize) {
    eventually(Duration::from_secs(120), &format!("{count} orders placed"), || async { intake.count() >= count }).await;
}

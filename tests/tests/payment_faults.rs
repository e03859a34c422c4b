//! The payment path through every provider fault the simulator injects (docs/failure-catalog.md §6–§7): once
//! the fault clears, every order is PAID or PAYMENT_FAILED, charged exactly once per the
//! provider's ledger (a declined order never approved), every refund given once, nothing
//! dead-lettered; an outage opens the circuit breaker (the provider sees a trickle, not a
//! storm) and it closes again; the provider's rate limit holds with two payment instances.

use std::time::Duration;

use orderflow_tests::{intake::eventually, stack::TestStack};
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(120);

/// Every fault mode. The stack's client gives up on a request after 2 s; `hang` and the
/// transient timeouts hold answers for 3 s.
fn every_fault() -> Vec<Value> {
    vec![
        json!({"mode": "down"}),
        json!({"mode": "unavailable"}),
        json!({"mode": "latency", "delay_ms": 300}),
        json!({"mode": "hang", "delay_ms": 3000}),
        json!({"mode": "fail_after_charge"}),
        json!({"mode": "error_payload"}),
        json!({"mode": "reset_after_charge"}),
        json!({"mode": "api_version_mismatch"}),
        json!({"transient_timeout_pct": 50, "delay_ms": 3000, "seed": 3}),
        json!({"rate_limit_per_sec": 1}),
    ]
}

fn order(customer: &str, sku: &str) -> Value {
    json!({
        "customer_id": customer,
        "currency": "EUR",
        "items": [{"sku": sku, "quantity": 1, "unit_price_minor": 1250}]
    })
}

async fn place(stack: &TestStack, key: &str, body: &Value) -> Uuid {
    let response = stack.api.post_order(Some(key), body).await;
    assert_eq!(response.status(), 202, "{key}");
    let body: Value = response.json().await.unwrap();
    body["order_id"].as_str().unwrap().parse().unwrap()
}

async fn place_all(stack: &TestStack, orders: impl Iterator<Item = (String, Value)>) -> Vec<Uuid> {
    futures::future::join_all(orders.map(|(key, body)| async move { place(stack, &key, &body).await })).await
}

fn assert_nothing_dead_lettered(stack: &TestStack) {
    assert_eq!(
        stack.records("payment", "dead_lettered"),
        0.0,
        "nothing dead-lettered: {}",
        stack.metrics_text("payment")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_provider_fault_ends_with_each_order_charged_once_and_no_charge_for_a_declined_one() {
    let stack = TestStack::spawn().await;
    let mut paid: Vec<Uuid> = Vec::new();
    let mut declined: Vec<Uuid> = Vec::new();
    for (n, fault) in every_fault().iter().enumerate() {
        let response = stack.simulator.faults(fault.clone()).await;
        assert_eq!(response.status(), 200, "{fault}");
        let orders = (0..3).map(|i| (format!("fault-{n}-{i}"), order(&format!("cust-{n}-{i}"), "SKU-1")));
        let placed = place_all(&stack, orders).await;
        let refused = place(&stack, &format!("fault-{n}-declined"), &order(&format!("decline-{n}"), "SKU-1")).await;
        // Let the payment service meet the fault, then clear it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        stack.simulator.faults(json!({"mode": "none"})).await;
        for order in &placed {
            stack.wait_for_status(*order, "PAID", WAIT).await;
        }
        stack.wait_for_status(refused, "PAYMENT_FAILED", WAIT).await;
        paid.extend(placed);
        declined.push(refused);
    }
    let ledger = stack.simulator.ledger().await;
    let entry = |order: &Uuid| {
        let key = orderflow_payment::charge_key(*order);
        let entries: Vec<_> = ledger.iter().filter(|e| e.idempotency_key == key).collect();
        assert_eq!(entries.len(), 1, "order {order}: one ledger entry under its key");
        entries[0].clone()
    };
    for order in &paid {
        assert_eq!(entry(order).status, "approved");
    }
    for order in &declined {
        assert_eq!(entry(order).status, "declined", "a declined order is never charged");
    }
    let charges = ledger.iter().filter(|e| e.kind == "charge").count();
    assert_eq!(charges, paid.len() + declined.len(), "no charge under any other key");
    let references: std::collections::HashSet<_> = ledger.iter().map(|e| e.reference.clone()).collect();
    assert_eq!(references.len(), charges, "no order charged under two keys");
    assert_nothing_dead_lettered(&stack);
    let metrics = stack.metrics_text("payment");
    let waited = orderflow_tools::drill::metric_sum(
        &metrics,
        "orderflow_consumer_records_total",
        &[r#"outcome="waited_for_dependency""#],
    );
    assert!(waited > 0.0, "the faults were met: {metrics}");
    assert!(metrics.contains(r#"operation="lookup",outcome="found""#), "ambiguous outcomes read the ledger: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_meets_every_fault_and_is_given_back_once() {
    let stack = TestStack::spawn().await;
    stack.stock(&[("GONE", 0)]).await;
    let mut refunded = Vec::new();
    for (n, fault) in every_fault().iter().enumerate() {
        // Charges go through; the refund the shortage triggers meets the fault.
        let mut fault = fault.clone();
        fault["scope"] = json!("refunds");
        let response = stack.simulator.faults(fault.clone()).await;
        assert_eq!(response.status(), 200, "{fault}");
        let orders = (0..2).map(|i| (format!("refund-{n}-{i}"), order(&format!("cust-{n}-{i}"), "GONE")));
        let placed = place_all(&stack, orders).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        stack.simulator.faults(json!({"mode": "none"})).await;
        for order in &placed {
            stack.wait_for_status(*order, "REFUNDED", WAIT).await;
        }
        refunded.extend(placed);
    }
    let ledger = stack.simulator.ledger().await;
    for order in &refunded {
        let charge = ledger.iter().find(|e| e.idempotency_key == orderflow_payment::charge_key(*order)).unwrap();
        let refunds: Vec<_> = ledger.iter().filter(|e| e.kind == "refund" && e.charge_id == Some(charge.id)).collect();
        assert_eq!(refunds.len(), 1, "order {order}: one refund");
        assert_eq!(refunds[0].idempotency_key, orderflow_payment::refund_key(*order));
        assert_eq!(refunds[0].amount_minor, charge.amount_minor);
    }
    assert_eq!(ledger.iter().filter(|e| e.kind == "refund").count(), refunded.len());
    assert_nothing_dead_lettered(&stack);
}

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_opens_the_breaker_so_the_provider_sees_a_trickle_and_it_closes_after() {
    let stack = TestStack::spawn().await;
    stack.simulator.faults(json!({"mode": "unavailable"})).await;
    let orders = (0..30).map(|i| (format!("outage-{i}"), order(&format!("cust-{i}"), "SKU-1")));
    let placed = place_all(&stack, orders).await;
    eventually(WAIT, "the breaker opens", || async {
        gauge(&stack.metrics_text("payment"), "orderflow_provider_breaker_state") == Some(2.0)
    })
    .await;
    // While it is open (probing after 200 ms, doubling to 2 s), 30 waiting orders on 12
    // partitions cost the provider a few probes, not a retry storm.
    let before = stack.simulator.stats().await.requests;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = stack.simulator.stats().await.requests - before;
    assert!(during <= 20, "{during} requests in 4 s of outage");
    stack.simulator.faults(json!({"mode": "none"})).await;
    for order in &placed {
        stack.wait_for_status(*order, "PAID", WAIT).await;
    }
    let metrics = stack.metrics_text("payment");
    assert_eq!(gauge(&metrics, "orderflow_provider_breaker_state"), Some(0.0), "closed again: {metrics}");
    assert!(metrics.contains(r#"orderflow_provider_breaker_transitions_total{to="open"}"#));
    assert!(metrics.contains(r#"orderflow_provider_breaker_transitions_total{to="closed"}"#));
    let ledger = stack.simulator.ledger().await;
    assert_eq!(ledger.len(), placed.len(), "each order charged once");
    assert_nothing_dead_lettered(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_payment_instances_share_the_provider_limit_and_never_exceed_it() {
    let mut stack = TestStack::spawn_without_payment().await;
    const LIMIT: u32 = 20;
    stack.simulator.faults(json!({"rate_limit_per_sec": LIMIT})).await;
    for _ in 0..2 {
        let mut provider = stack.provider_settings();
        provider.rate_limit_per_sec = Some(f64::from(LIMIT));
        stack.start_payment(provider).await;
    }
    // Both members hold partitions of `orders` before the load arrives.
    let group = stack.broker.group("payment");
    eventually(WAIT, "both instances assigned", || async {
        ["payment", "payment#2"].iter().all(|name| {
            stack.metrics_text(name).contains(&format!(r#"orderflow_consumer_lag{{group="{group}",partition="#))
        })
    })
    .await;
    let orders = (0..120).map(|i| (format!("limit-{i}"), order(&format!("cust-{i}"), "SKU-1")));
    let placed = place_all(&stack, orders).await;
    for order in &placed {
        stack.wait_for_status(*order, "PAID", WAIT).await;
    }
    let stats = stack.simulator.stats().await;
    assert_eq!(stats.rate_limited, 0, "the provider never had to refuse a request: {stats:?}");
    assert!(stats.peak_per_second() <= u64::from(LIMIT), "{stats:?}");
    assert_eq!(stack.simulator.ledger().await.len(), placed.len());
    // Both instances charged (the bucket is shared, not one instance's).
    for name in ["payment", "payment#2"] {
        let metrics = stack.metrics_text(name);
        assert!(
            metrics.contains(r#"orderflow_provider_requests_total{operation="charge",outcome="approved"}"#),
            "{name}"
        );
        assert_eq!(gauge(&metrics, "orderflow_provider_rate_limit_per_second"), Some(f64::from(LIMIT)));
    }
}

/// The oldest open transaction on the payments database, in seconds, sampled every 50 ms until
/// `stop`: the longest any transaction stayed open while the test ran.
async fn longest_transaction(pool: sqlx::PgPool, mut stop: tokio::sync::watch::Receiver<bool>) -> f64 {
    let mut longest: f64 = 0.0;
    while !*stop.borrow() {
        let age: Option<f64> = sqlx::query_scalar(
            "SELECT max(EXTRACT(EPOCH FROM clock_timestamp() - xact_start))::float8 FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        longest = longest.max(age.unwrap_or(0.0));
        let _ = tokio::time::timeout(Duration::from_millis(50), stop.changed()).await;
    }
    longest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_at_4s_latency_holds_no_transaction_and_no_connection_so_every_order_settles_without_a_pool_timeout()
{
    let mut stack = TestStack::spawn_without_payment().await;
    stack.simulator.faults(json!({"mode": "latency", "delay_ms": 4000})).await;
    // Three connections, given up on after 1 s: a transaction held across one 4 s call per
    // busy partition would time the pool out at once.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(1))
        .connect(&stack.payments_db.url)
        .await
        .unwrap();
    let mut provider = stack.provider_settings();
    provider.attempt_timeout = Duration::from_secs(10);
    provider.deadline = Duration::from_secs(90);
    stack.start_payment_on(provider, pool).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(longest_transaction(stack.payments_db.pool().await, stopped));

    // Three orders per partition of `orders` (12), placed at once: every partition busy.
    let orders = (0..36).map(|i| (format!("slow-{i}"), order(&format!("cust-{i}"), "SKU-1")));
    let placed = place_all(&stack, orders).await;
    for order in &placed {
        stack.wait_for_status(*order, "PAID", Duration::from_secs(180)).await;
    }
    stop.send(true).unwrap();
    let longest = sampler.await.unwrap();

    assert!(longest < 2.0, "a transaction stayed open {longest:.1}s, across a 4 s provider call");
    let waits = stack.records("payment", "waited_for_dependency");
    assert_eq!(waits, 0.0, "no record waited for a dependency (a pool timeout is one)");
    let ledger = stack.simulator.ledger().await;
    assert_eq!(ledger.len(), placed.len(), "one charge per order");
    assert_nothing_dead_lettered(&stack);
}

/// The shared bucket under many callers: two instances (two `SharedRateLimit`s on one database)
/// with 64 callers each, taking slots for three seconds. No one-second window holds more than
/// the limit, none beyond the schedule's slots over the run, and the slots do go
/// out (at least half of them even on a busy host: a booked slot is lost only when its caller
/// comes for it more than 50 ms late).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shared_bucket_books_slots_for_many_callers_and_never_passes_the_limit() {
    use orderflow_payment::resilience::{REFILL_SHARE, SharedRateLimit};
    use std::{sync::Arc, time::Instant};
    const LIMIT: f64 = 200.0;
    let db = orderflow_tests::TestDatabase::create().await;
    let pool = db.pool().await;
    orderflow_payment::migrate(&pool).await.unwrap();
    let buckets = [
        Arc::new(SharedRateLimit::new(pool.clone(), "provider", LIMIT).await.unwrap()),
        Arc::new(SharedRateLimit::new(pool.clone(), "provider", LIMIT).await.unwrap()),
    ];
    let began = Instant::now();
    let until = began + Duration::from_secs(3);
    let mut callers = Vec::new();
    for bucket in &buckets {
        for _ in 0..64 {
            let bucket = bucket.clone();
            callers.push(tokio::spawn(async move {
                let mut granted = Vec::new();
                while Instant::now() < until {
                    if bucket.acquire(Instant::now() + Duration::from_secs(2)).await.is_ok() {
                        granted.push(began.elapsed().as_secs_f64());
                    }
                }
                granted
            }));
        }
    }
    let mut grants: Vec<f64> = Vec::new();
    for caller in callers {
        grants.extend(caller.await.unwrap());
    }
    grants.sort_by(f64::total_cmp);
    // Every one-second window starting at a grant.
    let busiest = (0..grants.len()).map(|i| grants[i..].iter().take_while(|t| **t < grants[i] + 1.0).count()).max();
    // Slots are booked at 92% of the limit; a caller wakes for its slot a little late on a busy
    // host, which the other 8% absorbs.
    assert!(busiest.unwrap() <= LIMIT as usize, "{busiest:?} grants in one second, limit {LIMIT}");
    // One slot every 1 / (92% of the limit) from the bucket's making to the last grant: none
    // beyond, and most of them used.
    let last = grants.last().copied().unwrap_or_default();
    let possible = last * LIMIT * REFILL_SHARE + 1.0;
    println!("{} grants in {last:.2} s of {possible:.0} slots; busiest second {busiest:?}", grants.len());
    assert!(grants.len() as f64 <= possible + 1.0, "{} grants in {last:.2} s", grants.len());
    assert!(
        grants.len() as f64 >= 0.5 * possible,
        "{} grants in {last:.2} s of {possible}: slots went unused",
        grants.len()
    );
}

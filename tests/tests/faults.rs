//! Faults provoked, invariants checked against the providers' ledgers and the databases
//! (docs/failure-catalog.md §3, §5, §8, §9, §12): the relays' and consumers' databases cut for
//! 15 s under load; payment SIGKILLed between the provider's charge and its commit; a consumer
//! SIGSTOPped past its session timeout and resumed; an optimistic-concurrency conflict on an
//! order's status; a duplicate and a stale event replayed late; multi-SKU orders locking in
//! opposite orders in batches of 100.

use std::time::Duration;

use chrono::Utc;
use orderflow_schemas::events::{DeclineReason, Money, OrderLine, OrderPaid, PaymentAuthorized, PaymentDeclined};
use orderflow_tests::{
    Process, binary,
    broker::header,
    intake::{eventually, sample_order},
    proxy::Fault,
    stack::TestStack,
};
use serde_json::Value;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(120);

async fn place(stack: &TestStack, key: &str) -> Uuid {
    let response = stack.api.post_order(Some(key), &sample_order(key)).await;
    assert_eq!(response.status(), 202, "{key}");
    let body: Value = response.json().await.unwrap();
    body["order_id"].as_str().unwrap().parse().unwrap()
}

/// Every order PAID once: one approved charge each in the provider's ledger, version 2 (one
/// transition), nothing dead-lettered, every outbox drained.
async fn assert_each_paid_once(stack: &TestStack, orders: &[Uuid]) {
    for order in orders {
        stack.wait_for_status(*order, "PAID", WAIT).await;
    }
    let ledger = stack.simulator.ledger().await;
    let mut charged: Vec<String> =
        ledger.iter().filter(|e| e.status == "approved").map(|e| e.reference.clone()).collect();
    charged.sort();
    let mut wanted: Vec<String> = orders.iter().map(Uuid::to_string).collect();
    wanted.sort();
    assert_eq!(charged, wanted, "each order charged exactly once");
    let versions: Vec<i32> = sqlx::query_scalar("SELECT version FROM orders WHERE order_id = ANY($1)")
        .bind(orders)
        .fetch_all(&stack.api.pool)
        .await
        .unwrap();
    assert!(versions.iter().all(|v| *v == 2), "one transition each: {versions:?}");
    for pool in [&stack.api.pool, &stack.payments, &stack.inventory] {
        eventually(WAIT, "the outbox drained", || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox").fetch_one(pool).await.unwrap() == 0
        })
        .await;
    }
    let letters = stack.broker.dead_letters();
    assert!(
        letters.is_empty(),
        "nothing dead-lettered: {:?}",
        letters.iter().map(|(t, l)| (t, &l.error_message)).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn databases_cut_for_15s_under_load_then_back_every_order_is_paid_once_and_stock_is_exact() {
    let stack = TestStack::spawn_behind_db_proxy().await;
    let proxy = stack.db_proxy.as_ref().unwrap();
    let stock_before = stack.available("SKU-1").await;
    // Orders keep coming for 24 s (order-api writes directly); the relays' and consumers'
    // Postgres is cut from 5 s to 20 s: open connections reset, new ones refused.
    let load = async {
        let mut orders = Vec::new();
        for i in 0..60 {
            orders.push(place(&stack, &format!("cut-{i}")).await);
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        orders
    };
    let cut = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = proxy.accepted();
        proxy.set(Fault::Cut);
        tokio::time::sleep(Duration::from_secs(15)).await;
        // What order-api accepted meanwhile waited in its outbox: the relay could not reach it.
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&stack.api.pool).await.unwrap();
        proxy.set(Fault::None);
        (before, waiting)
    };
    let (orders, (accepted_before_cut, waiting_in_outbox)) = tokio::join!(load, cut);
    assert!(waiting_in_outbox > 10, "the cut held the relay back: {waiting_in_outbox} events waiting");
    assert_each_paid_once(&stack, &orders).await;
    assert!(proxy.accepted() > accepted_before_cut, "the services reconnected after the cut");
    // sample_order takes 2 × SKU-1 per order.
    eventually(WAIT, "stock taken once per order", || async {
        stack.available("SKU-1").await == stock_before - 2 * orders.len() as i32
    })
    .await;
}

fn payment_process(stack: &TestStack) -> Process {
    Process::spawn(
        stack
            .service_command(binary("payment"))
            .env("ORDERFLOW_PAYMENTS_DATABASE_URL", &stack.payments_db.url)
            .env("ORDERFLOW_PROVIDER_URL", &stack.simulator.url)
            .env("ORDERFLOW_PROVIDER_API_KEY", &stack.simulator.api_key)
            .env("ORDERFLOW_PROVIDER_TIMEOUT_MS", "10000")
            .env("ORDERFLOW_PROVIDER_DEADLINE_MS", "30000"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_sigkilled_between_the_charge_and_its_commit_resumes_under_the_same_key_and_charges_once() {
    let stack = TestStack::spawn_without_payment().await;
    // The provider charges, then holds its answer for 6 s: the kill lands after the charge and
    // before anything about it is committed.
    stack.simulator.faults(serde_json::json!({"mode": "hang", "delay_ms": 6000})).await;
    let mut payment = payment_process(&stack);
    let orders = vec![place(&stack, "kill-1").await, place(&stack, "kill-2").await, place(&stack, "kill-3").await];
    eventually(WAIT, "the provider to have charged", || async { !stack.simulator.ledger().await.is_empty() }).await;
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM provider_calls WHERE status = 'PENDING'")
        .fetch_one(&stack.payments)
        .await
        .unwrap();
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments").fetch_one(&stack.payments).await.unwrap();
    assert!(
        pending > 0 && payments == 0,
        "charged, intent committed, outcome not: {pending} pending, {payments} payments"
    );
    payment.0.kill().unwrap();
    payment.0.wait().unwrap();
    stack.simulator.faults(serde_json::json!({"mode": "none"})).await;
    // Restarted at once, as a pod is.
    let _restarted = payment_process(&stack);
    assert_each_paid_once(&stack, &orders).await;
    let calls: Vec<(String, i32)> = sqlx::query_as("SELECT status, count(*)::int FROM provider_calls GROUP BY status")
        .fetch_all(&stack.payments)
        .await
        .unwrap();
    assert_eq!(calls, vec![("APPROVED".to_string(), 3)], "every intent completed under its first key");
}

fn inventory_process(stack: &TestStack) -> Process {
    Process::spawn(
        stack
            .service_command(env!("CARGO_BIN_EXE_inventory-under-test"))
            .env("ORDERFLOW_INVENTORY_DATABASE_URL", &stack.inventory_db.url)
            .env("ORDERFLOW_TRANSACTION_IDLE_LIMIT_SECS", "5"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_sigstopped_past_its_session_timeout_and_resumed_changes_nothing_and_stock_is_exact() {
    let stack = TestStack::spawn_without_inventory().await;
    stack.stock(&[("SKU-1", 1_000_000), ("SKU-2", 1_000_000)]).await;
    let (zombie, _other) = (inventory_process(&stack), inventory_process(&stack));
    let placing = (0..80).map(|i| {
        let (stack, key) = (&stack, format!("zombie-{i}"));
        async move { place(stack, &key).await }
    });
    let orders: Vec<Uuid> = futures::future::join_all(placing).await;
    let reserved = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM reservations").fetch_one(&stack.inventory).await.unwrap()
    };
    eventually(WAIT, "the first reservations", || async { reserved().await >= 10 }).await;
    // Frozen for twice its 10 s session: the group gives its partitions to the other member,
    // and the server ends the zombie's transaction when it idles past the runtime's limit.
    assert!(zombie.signal("STOP"));
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(zombie.signal("CONT"));
    eventually(WAIT, "every paid order's stock decided", || async { reserved().await == orders.len() as i64 }).await;
    // The resumed zombie's late work and late commits change nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reserved().await, orders.len() as i64);
    assert_eq!(stack.available("SKU-1").await, 1_000_000 - 2 * orders.len() as i32, "each order took its stock once");
    assert_eq!(stack.available("SKU-2").await, 1_000_000 - orders.len() as i32);
    for order in &orders {
        stack.wait_for_status(*order, "PAID", WAIT).await;
    }
}

fn authorized(order: Uuid, amount: i64) -> PaymentAuthorized {
    PaymentAuthorized {
        order_id: order,
        payment_id: orderflow_payment::payment_id(order),
        provider_reference: format!("ch-{order}"),
        amount: Money { amount_minor: amount, currency: "EUR".into() },
        authorized_at: Utc::now(),
    }
}

/// The event types of the order's records on `orders` (by key), once the topic is quiet.
async fn records_of(stack: &TestStack, order: Uuid, at_least: usize) -> Vec<String> {
    let key = order.to_string();
    let all = stack.broker.read_all("orders", at_least, Duration::from_secs(3)).await;
    all.iter().filter(|m| orderflow_tests::broker::key(m) == key).filter_map(|m| header(m, "event_type")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_optimistic_concurrency_conflict_on_an_orders_status_loses_no_update_and_the_first_decision_stands() {
    let stack = TestStack::spawn_without_payment().await;
    let order = place(&stack, "race-1").await;
    // A concurrent writer holds the order's row; order-service reads version 1 and waits on
    // the row to move it to PAID.
    let mut writer = stack.api.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM orders WHERE order_id = $1 FOR UPDATE").bind(order).execute(&mut *writer).await.unwrap();
    stack.publish(&[authorized(order, 2 * 1250 + 499)]).await;
    let api = stack.api.pool.clone();
    eventually(WAIT, "order-service waiting on the row", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&api)
        .await
        .unwrap()
            == 1
    })
    .await;
    // The writer decides first: the payment failed (version 2), and commits.
    sqlx::query("UPDATE orders SET status = 'PAYMENT_FAILED', version = 2 WHERE order_id = $1")
        .bind(order)
        .execute(&mut *writer)
        .await
        .unwrap();
    sqlx::query("INSERT INTO order_status_history (order_id, version, status) VALUES ($1, 2, 'PAYMENT_FAILED')")
        .bind(order)
        .execute(&mut *writer)
        .await
        .unwrap();
    writer.commit().await.unwrap();
    // order-service's update finds version 2, runs again, sees the order is no longer pending
    // and leaves it: no lost update, no second transition, no OrderPaid.
    eventually(WAIT, "the PaymentAuthorized handled", || async { stack.records("order-service", "processed") >= 1.0 })
        .await;
    let view: Value = stack.api.get(&format!("/orders/{order}")).await.json().await.unwrap();
    assert_eq!((view["status"].as_str(), view["version"].as_i64()), (Some("PAYMENT_FAILED"), Some(2)));
    assert_eq!(view["history"].as_array().unwrap().len(), 2);
    assert_eq!(records_of(&stack, order, 1).await, vec!["OrderPlaced"], "no OrderPaid");
    assert!(stack.broker.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_and_a_stale_event_replayed_late_move_no_state_backwards() {
    let stack = TestStack::spawn().await;
    let order = place(&stack, "late-1").await;
    stack.wait_for_status(order, "PAID", WAIT).await;
    let before: Value = stack.api.get(&format!("/orders/{order}")).await.json().await.unwrap();
    // Late: a duplicate PaymentAuthorized (new event id: a producer retry) and a stale
    // PaymentDeclined for the same order (an older decision delivered after the newer one).
    stack.publish(&[authorized(order, 2 * 1250 + 499)]).await;
    let declined = PaymentDeclined {
        order_id: order,
        payment_id: orderflow_payment::payment_id(order),
        reason: DeclineReason::CardDeclined,
        message: Some("late".into()),
        declined_at: Utc::now() - chrono::TimeDelta::minutes(5),
    };
    stack.publish(&[declined]).await;
    // The original PaymentAuthorized and the two late events.
    eventually(WAIT, "the late events handled", || async { stack.records("order-service", "processed") >= 3.0 }).await;
    let after: Value = stack.api.get(&format!("/orders/{order}")).await.json().await.unwrap();
    assert_eq!(after["status"], "PAID");
    assert_eq!(after["version"], before["version"]);
    assert_eq!(after["history"], before["history"]);
    let events = records_of(&stack, order, 2).await;
    assert_eq!(events, vec!["OrderPlaced", "OrderPaid"], "no second OrderPaid, no OrderPaymentFailed");
    assert_eq!(stack.simulator.ledger().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_multi_sku_orders_in_opposite_order_in_batches_of_100_never_deadlock_and_stock_is_exact() {
    let stack = TestStack::spawn_without_payment().await;
    stack.stock(&[("SKU-A", 500), ("SKU-B", 500), ("SKU-C", 500)]).await;
    // 900 paid orders, each for one unit of three SKUs, listed in opposite orders; 12
    // partitions' batches of up to 100 each lock all three: only 500 can be served.
    let skus = [["SKU-A", "SKU-B", "SKU-C"], ["SKU-C", "SKU-B", "SKU-A"], ["SKU-B", "SKU-A", "SKU-C"]];
    let paid: Vec<OrderPaid> = (0..900)
        .map(|i| OrderPaid {
            order_id: Uuid::new_v4(),
            payment_id: Uuid::new_v4(),
            customer_id: format!("c-{i}"),
            lines: skus[i % 3]
                .iter()
                .map(|s| OrderLine { sku: s.to_string(), quantity: 1, unit_price_minor: 100 })
                .collect(),
            amount: Money { amount_minor: 300, currency: "EUR".into() },
            paid_at: Utc::now(),
        })
        .collect();
    let deadlocks = || async {
        sqlx::query_scalar::<_, i64>("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(&stack.inventory)
            .await
            .unwrap()
    };
    let deadlocks_before = deadlocks().await;
    stack.publish(&paid).await;
    let decided = || async {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT outcome, count(*) FROM reservations GROUP BY outcome ORDER BY outcome",
        )
        .fetch_all(&stack.inventory)
        .await
        .unwrap()
    };
    eventually(WAIT, "every order decided", || async { decided().await.iter().map(|(_, n)| n).sum::<i64>() == 900 })
        .await;
    assert_eq!(decided().await, vec![("RESERVED".to_string(), 500), ("SHORTAGE".to_string(), 400)]);
    for sku in ["SKU-A", "SKU-B", "SKU-C"] {
        assert_eq!(stack.available(sku).await, 0, "{sku}: exactly what was reserved, never below zero");
    }
    assert_eq!(deadlocks().await, deadlocks_before, "no deadlock");
}

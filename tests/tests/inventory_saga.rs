//! Inventory and the saga on the whole stack: concurrent orders for the last unit, a crash of
//! the inventory process mid-batch, and redelivered OrderPaid events.

use std::time::Duration;

use chrono::Utc;
use orderflow_schemas::events::{Event, Money, OrderLine, OrderPaid};
use orderflow_tests::{Process, broker::header, intake::eventually, stack::TestStack};
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::FutureRecord,
};
use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);

fn order_for(customer: &str, sku: &str, quantity: i32) -> serde_json::Value {
    json!({
        "customer_id": customer,
        "currency": "EUR",
        "items": [{"sku": sku, "quantity": quantity, "unit_price_minor": 1000}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_orders_for_the_last_unit_one_is_served_and_the_other_cancelled_and_refunded_once() {
    let stack = TestStack::spawn().await;
    stack.stock(&[("LAST-ONE", 1)]).await;
    let (alice, bob) = (order_for("alice", "LAST-ONE", 1), order_for("bob", "LAST-ONE", 1));
    let (a, b) = tokio::join!(stack.api.post_order(Some("last-a"), &alice), stack.api.post_order(Some("last-b"), &bob));
    let mut ids = Vec::new();
    for response in [a, b] {
        assert_eq!(response.status(), 202);
        let body: serde_json::Value = response.json().await.unwrap();
        ids.push(body["order_id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    eventually(WAIT, "one order refunded", || async {
        let statuses = [stack.status(ids[0]).await, stack.status(ids[1]).await];
        statuses.contains(&"REFUNDED".to_string()) && statuses.contains(&"PAID".to_string())
    })
    .await;
    assert_eq!(stack.available("LAST-ONE").await, 0, "the unit went to exactly one order");
    let refunded = if stack.status(ids[0]).await == "REFUNDED" { ids[0] } else { ids[1] };

    // The ledger: two charges, one refund, for the cancelled order's charge, under its own key.
    let ledger = stack.simulator.ledger().await;
    let refunds: Vec<_> = ledger.iter().filter(|e| e.kind == "refund").collect();
    assert_eq!(ledger.iter().filter(|e| e.kind == "charge").count(), 2);
    assert_eq!(refunds.len(), 1, "{ledger:?}");
    assert_eq!(refunds[0].idempotency_key, orderflow_payment::refund_key(refunded));
    let charge = ledger.iter().find(|e| e.idempotency_key == orderflow_payment::charge_key(refunded)).unwrap();
    assert_eq!((refunds[0].charge_id, refunds[0].amount_minor), (Some(charge.id), charge.amount_minor));
    let history: Vec<String> =
        sqlx::query_scalar("SELECT status FROM order_status_history WHERE order_id = $1 ORDER BY version")
            .bind(refunded)
            .fetch_all(&stack.api.pool)
            .await
            .unwrap();
    assert_eq!(history, ["PAID", "CANCELLED", "REFUNDED"]);

    // The OrderCancelled is redelivered (re-published under a new event id): no second refund.
    let cancelled =
        stack.broker.find("orders", WAIT, |m| header(m, "event_type").as_deref() == Some("OrderCancelled")).await;
    let new_id = Uuid::now_v7().to_string();
    let mut headers = OwnedHeaders::new();
    for h in rdkafka::message::Headers::iter(rdkafka::Message::headers(&cancelled).unwrap()) {
        let value = if h.key == "event_id" { Some(new_id.as_bytes()) } else { h.value };
        headers = headers.insert(Header { key: h.key, value });
    }
    let key = refunded.to_string();
    let orders = stack.broker.topic("orders");
    let record =
        FutureRecord::to(&orders).key(&key).payload(rdkafka::Message::payload(&cancelled).unwrap()).headers(headers);
    stack.broker.producer().send(record, WAIT).await.unwrap();
    eventually(WAIT, "the redelivered cancellation to be handled", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM processed_events WHERE event_id = $1")
            .bind(new_id.parse::<Uuid>().unwrap())
            .fetch_one(&stack.payments)
            .await
            .unwrap()
            == 1
    })
    .await;
    assert_eq!(stack.simulator.ledger().await.iter().filter(|e| e.kind == "refund").count(), 1);
}

/// Publishes `count` OrderPaid events for distinct orders, one unit of `sku` each, and as many
/// again re-published under new event ids (an upstream replay).
async fn publish_paid(stack: &TestStack, sku: &str, count: usize) -> Vec<Uuid> {
    let codec = orderflow_schemas::EventCodec::new(stack.api.registry.anonymous(), Duration::from_secs(5)).unwrap();
    let producer = stack.broker.producer();
    let mut orders = Vec::new();
    let mut sends = Vec::new();
    for copy in 0..2 {
        for i in 0..count {
            if copy == 0 {
                orders.push(Uuid::new_v4());
            }
            let paid = OrderPaid {
                order_id: orders[i],
                payment_id: Uuid::new_v4(),
                customer_id: format!("c-{i}"),
                lines: vec![OrderLine { sku: sku.into(), quantity: 1, unit_price_minor: 100 }],
                amount: Money { amount_minor: 100, currency: "EUR".into() },
                paid_at: Utc::now(),
            };
            let payload = codec.encode_event(&paid).await.unwrap();
            let (id, key) = (Uuid::now_v7().to_string(), paid.key());
            let headers = OwnedHeaders::new()
                .insert(Header { key: "event_id", value: Some(&id) })
                .insert(Header { key: "event_type", value: Some(OrderPaid::NAME) });
            let orders = stack.broker.topic("orders");
            let record = FutureRecord::to(&orders).key(&key).payload(&payload).headers(headers);
            sends.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
    }
    for send in sends {
        send.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    orders
}

async fn reservations(stack: &TestStack) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM reservations").fetch_one(&stack.inventory).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkilled_inventory_process_restarted_takes_each_order_exactly_once() {
    // Inventory runs only as the process under test here.
    let stack = TestStack::spawn_without_inventory().await;
    stack.stock(&[("KILL-SKU", 100_000)]).await;
    let orders = publish_paid(&stack, "KILL-SKU", 600).await;
    let spawn = || {
        Process::spawn(
            stack
                .service_command(env!("CARGO_BIN_EXE_inventory-under-test"))
                .env("ORDERFLOW_INVENTORY_DATABASE_URL", &stack.inventory_db.url),
        )
    };
    let mut child = spawn();
    eventually(WAIT, "the process to be mid-way", || async { reservations(&stack).await >= 150 }).await;
    child.0.kill().expect("SIGKILL");
    child.0.wait().unwrap();
    let at_kill = reservations(&stack).await;
    // Restarted at once, as Kubernetes restarts a pod: the new member joins while the dead one
    // is still in its session; the group rebalances when that session expires and the new
    // member takes every partition.
    let _restarted = spawn();
    eventually(WAIT, "every order reserved", || async { reservations(&stack).await == orders.len() as i64 }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(at_kill < orders.len() as i64, "the kill landed mid-batch ({at_kill} of {})", orders.len());
    assert_eq!(reservations(&stack).await, orders.len() as i64);
    assert_eq!(stack.available("KILL-SKU").await, 100_000 - orders.len() as i32, "each order took its unit once");
}

//! The walking skeleton end to end on real parts: order-api → orders outbox → relay → Kafka →
//! payment (provider simulator) → payments outbox → relay → Kafka → order-service → status.

use std::time::Duration;

use orderflow_tests::{
    broker::{header, key},
    intake::{eventually, sample_order},
    stack::TestStack,
};
use rdkafka::{
    Message,
    message::{Header, Headers, OwnedHeaders},
    producer::FutureRecord,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn an_accepted_order_reaches_paid_and_a_declined_card_reaches_payment_failed() {
    let stack = TestStack::spawn().await;
    let paid = stack.api.place("k-paid").await;
    let response = stack.api.post_order(Some("k-declined"), &sample_order("decline-42")).await;
    assert_eq!(response.status(), 202);
    let declined: uuid::Uuid = response.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().parse().unwrap();

    stack.wait_for_status(paid, "PAID", WAIT).await;
    stack.wait_for_status(declined, "PAYMENT_FAILED", WAIT).await;

    let order: Value = stack.api.get(&format!("/orders/{paid}")).await.json().await.unwrap();
    let history: Vec<&str> =
        order["history"].as_array().unwrap().iter().map(|h| h["status"].as_str().unwrap()).collect();
    assert_eq!(history, vec!["PENDING_PAYMENT", "PAID"]);
    assert_eq!(order["version"], 2);

    let ledger = stack.simulator.ledger().await;
    assert_eq!(ledger.len(), 2);
    let charge = ledger.iter().find(|e| e.reference == paid.to_string()).unwrap();
    assert_eq!((charge.status.as_str(), charge.amount_minor), ("approved", 2 * 1250 + 499));
    let refused = ledger.iter().find(|e| e.reference == declined.to_string()).unwrap();
    assert_eq!(refused.decline_code.as_deref(), Some("card_declined"));

    // The lifecycle events followed: OrderPlaced then OrderPaid on the order's key.
    let events = stack.broker.read_distinct("orders", 4, WAIT, |m| header(m, "event_id").unwrap()).await;
    let paid_events: Vec<String> =
        events.iter().filter(|m| key(m) == paid.to_string()).map(|m| header(m, "event_type").unwrap()).collect();
    assert_eq!(paid_events, vec!["OrderPlaced", "OrderPaid"]);
    let failed: Vec<String> =
        events.iter().filter(|m| key(m) == declined.to_string()).map(|m| header(m, "event_type").unwrap()).collect();
    assert_eq!(failed, vec!["OrderPlaced", "OrderPaymentFailed"]);
}

#[tokio::test]
async fn an_order_placed_event_delivered_twice_is_charged_once() {
    let stack = TestStack::spawn().await;
    let order = stack.api.place("k-dup").await;
    stack.wait_for_status(order, "PAID", WAIT).await;

    // Re-deliver the very same record (same event id), and a re-published copy (new event id).
    let placed = stack.broker.read("orders", 1, WAIT).await.remove(0);
    let producer = stack.broker.producer();
    for new_event_id in [None, Some(uuid::Uuid::new_v4().to_string())] {
        let mut headers = OwnedHeaders::new();
        for h in placed.headers().unwrap().iter() {
            let value = match (&new_event_id, h.key) {
                (Some(id), "event_id") => Some(id.as_bytes()),
                _ => h.value,
            };
            headers = headers.insert(Header { key: h.key, value });
        }
        let orders = stack.broker.topic("orders");
        let record =
            FutureRecord::to(&orders).key(placed.key().unwrap()).payload(placed.payload().unwrap()).headers(headers);
        producer.send(record, Duration::from_secs(10)).await.unwrap();
    }
    // Both copies are consumed (the group's committed offset passes them) ...
    let marker = stack.api.place("k-after").await;
    stack.wait_for_status(marker, "PAID", WAIT).await;
    // ... and the provider charged the first order exactly once.
    let charges: Vec<_> =
        stack.simulator.ledger().await.into_iter().filter(|e| e.reference == order.to_string()).collect();
    assert_eq!(charges.len(), 1, "{charges:?}");
    let (group, topic) = (stack.broker.group("payment"), stack.broker.topic("orders"));
    let metrics = stack.metrics_text("payment");
    assert!(
        metrics.contains(&format!(
            r#"orderflow_consumer_records_total{{group="{group}",outcome="deduped",topic="{topic}"}} 1"#
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(r#"orderflow_consumer_handler_seconds_count{{group="{group}",topic="{topic}"}}"#)),
        "{metrics}"
    );
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE order_id = $1")
        .bind(order)
        .fetch_one(&stack.payments)
        .await
        .unwrap();
    assert_eq!(payments, 1);
    assert_eq!(stack.status(order).await, "PAID");
}

#[tokio::test]
async fn many_orders_flow_through_and_each_is_charged_once() {
    let stack = TestStack::spawn().await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let customer = if i % 5 == 0 { format!("decline-{i}") } else { format!("c-{i}") };
        let response = stack.api.post_order(Some(&format!("bulk-{i}")), &sample_order(&customer)).await;
        ids.push(response.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap());
    }
    eventually(WAIT, "every order settled", || async {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PENDING_PAYMENT'")
            .fetch_one(&stack.api.pool)
            .await
            .unwrap();
        pending == 0
    })
    .await;
    let ledger = stack.simulator.ledger().await;
    assert_eq!(ledger.len(), 40);
    let paid: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PAID'")
        .fetch_one(&stack.api.pool)
        .await
        .unwrap();
    assert_eq!(paid, 32);
    assert_eq!(ledger.iter().filter(|e| e.status == "approved").count(), 32);
    // payment keeps dedupe rows only for what it handles (OrderPlaced), not for every event on `orders`.
    let dedupe_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE consumer_group = $1")
        .bind(stack.broker.group("payment"))
        .fetch_one(&stack.payments)
        .await
        .unwrap();
    assert_eq!(dedupe_rows, 40);

    // Lag per partition, read from the broker: every event on `orders` (40 placed, 32 paid,
    // 8 payment-failed) is committed by the payment group in the end.
    let group_label = format!(r#"group="{}""#, stack.broker.group("payment"));
    let topic_label = format!(r#"topic="{}""#, stack.broker.topic("orders"));
    let sum = |text: &str, metric: &str| -> i64 {
        text.lines()
            .filter(|l| l.starts_with(metric) && l.contains(&group_label))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
            .sum()
    };
    eventually(WAIT, "payment's lag to reach zero on every partition", || {
        let text = stack.metrics_text("payment");
        let done = sum(&text, "orderflow_consumer_high_watermark") == 80 && sum(&text, "orderflow_consumer_lag{") == 0;
        async move { done }
    })
    .await;
    let text = stack.metrics_text("payment");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("orderflow_consumer_lag{") && l.contains(&topic_label)).count(),
        12,
        "one series per partition of orders (the group's retry topic has its own)"
    );
}

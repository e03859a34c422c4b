//! Notifications on the whole stack, checked against the email/SMS provider's ledger: one
//! message per order and kind under redelivery, lost answers and outages; never a confirmation
//! for an order that was not paid.

use std::time::Duration;

use orderflow_tests::{broker::header, intake::eventually, stack::TestStack};
use orderflow_tools::drill::metric_sum;
use rdkafka::{
    Message,
    message::{Header, Headers, OwnedHeaders},
    producer::FutureRecord,
};
use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);

async fn messages_for(stack: &TestStack, order: Uuid) -> Vec<orderflow_notification_simulator::Delivered> {
    let ledger = stack.notifier.as_ref().unwrap().ledger().await;
    ledger.into_iter().filter(|m| m.reference == order.to_string()).collect()
}

async fn status(stack: &TestStack, order: Uuid, kind: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM notifications WHERE order_id = $1 AND kind = $2")
        .bind(order)
        .bind(kind)
        .fetch_optional(&stack.notifications.as_ref().unwrap().pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_order_paid_sends_one_confirmation_by_email() {
    let mut stack = TestStack::spawn().await;
    stack.start_notifications(Duration::from_secs(2)).await;
    let order = stack.api.place("mail-1").await;
    eventually(WAIT, "the confirmation", || async {
        status(&stack, order, "order_confirmed").await.as_deref() == Some("SENT")
    })
    .await;

    // The same OrderPaid re-published under a new event id: the dedupe store lets it through,
    // the (order, kind) row does not.
    let paid = stack
        .broker
        .find("orders", WAIT, |m| {
            header(m, "event_type").as_deref() == Some("OrderPaid") && m.key() == Some(order.to_string().as_bytes())
        })
        .await;
    let new_id = Uuid::now_v7().to_string();
    let mut headers = OwnedHeaders::new();
    for h in paid.headers().unwrap().iter() {
        let value = if h.key == "event_id" { Some(new_id.as_bytes()) } else { h.value };
        headers = headers.insert(Header { key: h.key, value });
    }
    let key = order.to_string();
    let orders = stack.broker.topic("orders");
    let record = FutureRecord::to(&orders).key(&key).payload(paid.payload().unwrap()).headers(headers);
    stack.broker.producer().send(record, WAIT).await.unwrap();
    let pool = stack.notifications.as_ref().unwrap().pool.clone();
    eventually(WAIT, "the duplicate to be handled", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM processed_events WHERE event_id = $1")
            .bind(new_id.parse::<Uuid>().unwrap())
            .fetch_one(&pool)
            .await
            .unwrap()
            == 1
    })
    .await;
    let messages = messages_for(&stack, order).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!((messages[0].channel.as_str(), messages[0].template.as_str()), ("email", "order_confirmed"));
    assert_eq!(messages[0].recipient, "c-1@example.com");
    assert_eq!(messages[0].requests, 1, "the duplicate never reached the provider");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_answers_and_an_outage_still_give_exactly_one_message_and_nothing_is_dead_lettered() {
    let mut stack = TestStack::spawn().await;
    stack.start_notifications(Duration::from_millis(500)).await;
    let notifier = stack.notifier.as_ref().unwrap();

    let sent = |order: Uuid| {
        let stack = &stack;
        async move {
            eventually(WAIT, "the confirmation sent", || async {
                status(stack, order, "order_confirmed").await.as_deref() == Some("SENT")
            })
            .await;
            let messages = messages_for(stack, order).await;
            assert_eq!(messages.len(), 1, "one message for {order}: {messages:?}");
        }
    };

    // The provider delivers, then answers too late for the client: the retry must not send twice.
    notifier.faults(json!({"mode": "slow", "delay_ms": 1500})).await;
    let slow = stack.api.place("slow-answer").await;
    eventually(WAIT, "a retry under the same key", || async {
        messages_for(&stack, slow).await.first().is_some_and(|m| m.requests >= 2)
    })
    .await;
    notifier.faults(json!({"mode": "none"})).await;
    sent(slow).await;

    // Delivered, then a 500: same again.
    notifier.faults(json!({"mode": "fail_after_send"})).await;
    let failing = stack.api.place("fail-after-send").await;
    eventually(WAIT, "a retry after the 500", || async {
        messages_for(&stack, failing).await.first().is_some_and(|m| m.requests >= 2)
    })
    .await;
    notifier.faults(json!({"mode": "none"})).await;
    sent(failing).await;

    // Down: nothing delivered, the intent waits as PENDING until the provider is back.
    notifier.faults(json!({"mode": "unavailable"})).await;
    let down = stack.api.place("while-down").await;
    eventually(WAIT, "the intent while the provider is down", || async {
        status(&stack, down, "order_confirmed").await.as_deref() == Some("PENDING")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(messages_for(&stack, down).await.is_empty());
    notifier.faults(json!({"mode": "none"})).await;
    sent(down).await;

    let metrics = stack.metrics_text("notifications");
    let outcome = |o: &str| metric_sum(&metrics, "orderflow_consumer_records_total", &[&format!(r#"outcome="{o}""#)]);
    assert_eq!(outcome("dead_lettered"), 0.0, "nothing dead-lettered: {metrics}");
    assert!(outcome("waited_for_dependency") > 0.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declined_order_gets_a_payment_failed_message_and_never_a_confirmation() {
    let mut stack = TestStack::spawn().await;
    stack.start_notifications(Duration::from_secs(2)).await;
    let body = json!({
        "customer_id": "decline-me",
        "currency": "EUR",
        "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_minor": 100}]
    });
    let response = stack.api.post_order(Some("declined-1"), &body).await;
    assert_eq!(response.status(), 202);
    let order: Uuid =
        response.json::<serde_json::Value>().await.unwrap()["order_id"].as_str().unwrap().parse().unwrap();
    eventually(WAIT, "the payment-failed message", || async {
        status(&stack, order, "payment_failed").await.as_deref() == Some("SENT")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let messages = messages_for(&stack, order).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(
        (messages[0].channel.as_str(), messages[0].template.as_str()),
        ("sms", "payment_failed"),
        "no address: SMS"
    );
    assert_eq!(status(&stack, order, "order_confirmed").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_throttling_provider_is_asked_again_only_after_its_retry_after_and_each_message_goes_once() {
    let mut stack = TestStack::spawn().await;
    stack.start_notifications(Duration::from_secs(5)).await;
    let notifier = stack.notifier.as_ref().unwrap();
    notifier.faults(json!({"mode": "throttled", "retry_after_secs": 2})).await;
    let mut orders = Vec::new();
    for i in 0..20 {
        orders.push(stack.api.place(&format!("throttled-{i}")).await);
    }
    eventually(WAIT, "the provider refusing", || async { notifier.throttled().await.len() >= 5 }).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    notifier.faults(json!({"mode": "none"})).await;
    for order in &orders {
        eventually(WAIT, "every confirmation sent", || async {
            status(&stack, *order, "order_confirmed").await.as_deref() == Some("SENT")
        })
        .await;
        assert_eq!(messages_for(&stack, *order).await.len(), 1, "one message for {order}");
    }
    // Each key asked again only after the 2 s it was told to wait.
    let mut refused: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for t in notifier.throttled().await {
        refused.entry(t.idempotency_key).or_default().push(t.at_ms);
    }
    let gaps: Vec<i64> = refused.values().flat_map(|at| at.windows(2).map(|w| w[1] - w[0])).collect();
    assert!(!gaps.is_empty(), "some key was refused twice: {refused:?}");
    assert!(gaps.iter().all(|gap| *gap >= 1_950), "asked again before Retry-After: {gaps:?}");
    let metrics = stack.metrics_text("notifications");
    let outcome = |o: &str| metric_sum(&metrics, "orderflow_consumer_records_total", &[&format!(r#"outcome="{o}""#)]);
    assert_eq!(outcome("dead_lettered"), 0.0, "nothing dead-lettered: {metrics}");
}

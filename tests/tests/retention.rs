//! Retention (README, "The consumer runtime"): dedupe rows and payment's provider-call records past the
//! horizon are pruned in batches while the consumer goes on (recent rows and calls still
//! pending stay); a replay older than the horizon — its dedupe rows gone — is absorbed by the
//! business keys: no second charge, no second message, no second reservation, no new event.

use std::time::Duration;

use chrono::Utc;
use orderflow_tests::{intake::eventually, stack::TestStack};
use rdkafka::{Message, producer::FutureRecord};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

async fn count(pool: &sqlx::PgPool, sql: &str, group: &str) -> i64 {
    sqlx::query_scalar(sql).bind(group).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_past_the_horizon_are_pruned_in_batches_while_payment_goes_on_and_recent_ones_stay() {
    let mut stack = TestStack::spawn_without_payment().await;
    stack.retention = Some((Duration::from_secs(24 * 3600), Duration::from_millis(200)));
    let group = stack.broker.group("payment");
    // A month of history: 20,000 dedupe rows (ten batches) and 3,000 completed provider calls;
    // one call still PENDING from then (a crash never resumed) must stay.
    sqlx::query(
        "INSERT INTO processed_events (consumer_group, event_id, topic, kafka_partition, kafka_offset, processed_at)
         SELECT $1, gen_random_uuid(), 'orders', 0, g, now() - interval '30 days' FROM generate_series(1, 20000) g",
    )
    .bind(&group)
    .execute(&stack.payments)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO provider_calls (idempotency_key, order_id, operation, amount_minor, currency, status, reference,
                                     created_at, completed_at)
         SELECT 'old-' || g, gen_random_uuid(), 'charge', 100, 'EUR', 'APPROVED', 'ch-' || g,
                now() - interval '30 days', now() - interval '30 days' FROM generate_series(1, 3000) g
         UNION ALL
         SELECT 'old-pending', gen_random_uuid(), 'charge', 100, 'EUR', 'PENDING', NULL, now() - interval '30 days', NULL",
    )
    .execute(&stack.payments)
    .await
    .unwrap();
    let provider = stack.provider_settings();
    stack.start_payment(provider).await;

    let mut orders = Vec::new();
    for i in 0..30 {
        orders.push(stack.api.place(&format!("prune-{i}")).await);
    }
    for order in &orders {
        stack.wait_for_status(*order, "PAID", WAIT).await;
    }
    let payments = stack.payments.clone();
    let old =
        "SELECT count(*) FROM processed_events WHERE consumer_group = $1 AND processed_at < now() - interval '1 day'";
    eventually(WAIT, "the month-old rows pruned", || async {
        count(&payments, old, &group).await == 0
            && count(
                &payments,
                "SELECT count(*) FROM provider_calls WHERE idempotency_key LIKE 'old-%' AND $1 <> ''",
                &group,
            )
            .await
                == 1
    })
    .await;
    let recent = count(&payments, "SELECT count(*) FROM processed_events WHERE consumer_group = $1", &group).await;
    assert_eq!(recent, 30, "this run's dedupe rows stay");
    let pending: String = sqlx::query_scalar("SELECT status FROM provider_calls WHERE idempotency_key = 'old-pending'")
        .fetch_one(&payments)
        .await
        .unwrap();
    assert_eq!(pending, "PENDING");
    let calls: i64 = sqlx::query_scalar("SELECT count(*) FROM provider_calls WHERE idempotency_key LIKE 'order-%'")
        .fetch_one(&payments)
        .await
        .unwrap();
    assert_eq!(calls, 30, "this run's provider calls stay");
    let metrics = stack.metrics_text("payment");
    let pruned = |table: &str| {
        orderflow_tools::drill::metric_sum(
            &metrics,
            "orderflow_consumer_pruned_rows_total",
            &[&format!(r#"table="{table}""#)],
        )
    };
    assert_eq!((pruned("processed_events"), pruned("provider_calls")), (20_000.0, 3_000.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_older_than_the_horizon_is_absorbed_by_the_business_keys() {
    let mut stack = TestStack::spawn().await;
    stack.start_notifications(Duration::from_secs(5)).await;
    let stock_before = stack.available("SKU-1").await;
    let order = stack.api.place("replay-1").await;
    stack.wait_for_status(order, "PAID", WAIT).await;
    let notifications = stack.notifications.as_ref().unwrap().pool.clone();
    let sent = "SELECT count(*) FROM notifications WHERE status = 'SENT' AND $1 <> ''";
    eventually(WAIT, "the confirmation sent", || async { count(&notifications, sent, "x").await == 1 }).await;
    let inventory = stack.inventory.clone();
    eventually(WAIT, "the stock reserved", || async {
        count(&inventory, "SELECT count(*) FROM reservations WHERE $1 <> ''", "x").await == 1
    })
    .await;

    // The horizon passes: every group's dedupe rows go, and payment's call records.
    for (pool, group) in [
        (&stack.payments, "payment"),
        (&inventory, "inventory"),
        (&notifications, "notifications"),
        (&stack.api.pool, "order-service"),
    ] {
        let pruned = orderflow_consumer_runtime::retention::prune_dedupe(pool, &stack.broker.group(group), Utc::now())
            .await
            .unwrap();
        assert!(pruned > 0, "{group} had dedupe rows");
    }
    sqlx::query("DELETE FROM provider_calls").execute(&stack.payments).await.unwrap();

    // The order's records on `orders` (OrderPlaced, OrderPaid) published again as they were.
    let records = stack.broker.read("orders", 2, WAIT).await;
    let producer = stack.broker.producer();
    let topic = stack.broker.topic("orders");
    let mut ids = Vec::new();
    for record in &records {
        let headers = record.headers().unwrap().clone();
        ids.push(orderflow_tests::broker::header(record, "event_id").unwrap().parse::<Uuid>().unwrap());
        let replay =
            FutureRecord::to(&topic).key(record.key().unwrap()).payload(record.payload().unwrap()).headers(headers);
        producer.send(replay, Duration::from_secs(10)).await.unwrap();
    }
    // Handled again (the dedupe rows are back), not skipped.
    let handled = "SELECT count(*) FROM processed_events WHERE event_id = ANY($1)";
    for (pool, wanted) in [(&stack.payments, 1), (&inventory, 1), (&notifications, 2)] {
        eventually(WAIT, "the replay handled", || async {
            sqlx::query_scalar::<_, i64>(handled).bind(&ids).fetch_one(pool).await.unwrap() == wanted
        })
        .await;
    }

    let charges = stack.simulator.ledger().await;
    assert_eq!(charges.len(), 1, "charged once: {charges:?}");
    let messages = stack.notifier.as_ref().unwrap().ledger().await;
    assert_eq!(messages.len(), 1, "one confirmation: {messages:?}");
    assert_eq!(stack.available("SKU-1").await, stock_before - 2, "stock taken once");
    let order_view: serde_json::Value = stack.api.get(&format!("/orders/{order}")).await.json().await.unwrap();
    assert_eq!(order_view["version"], 2, "the order did not move again");
    // No new event: `payments` holds the one PaymentAuthorized.
    let authorized = stack.broker.read("payments", 1, WAIT).await;
    assert_eq!(authorized.len(), 1);
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&stack.payments).await.unwrap();
    assert_eq!(outbox, 0, "payment wrote no event for the replay");
}

//! Poison goes to the consumer group's DLT at once with its reason, the partition moves on, and
//! the DLT tool lists and replays what is there.

use std::time::Duration;

use orderflow_consumer_runtime::dlt_tools::{self, Selection};
use orderflow_tests::{broker::header, intake::eventually, stack::TestStack};
use rdkafka::{
    Message,
    message::{Header, Headers, OwnedHeaders},
    producer::FutureRecord,
};

const WAIT: Duration = Duration::from_secs(60);

async fn processed(stack: &TestStack, event_id: &str) -> bool {
    let id: uuid::Uuid = event_id.parse().unwrap();
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM processed_events WHERE consumer_group = $1 AND event_id = $2")
        .bind(stack.broker.group("payment"))
        .bind(id)
        .fetch_one(&stack.payments)
        .await
        .unwrap()
        == 1
}

#[tokio::test]
async fn a_poison_message_goes_to_the_dlt_and_the_partition_moves_on() {
    let stack = TestStack::spawn().await;
    let order = stack.api.place("k-1").await;
    stack.wait_for_status(order, "PAID", WAIT).await;
    let placed = stack.broker.read("orders", 1, WAIT).await.remove(0);
    let producer = stack.broker.producer();
    let key = "same-partition-key";

    // Poison first, then a valid record, on one key (so one partition).
    let poison_id = uuid::Uuid::new_v4().to_string();
    let poison_headers = OwnedHeaders::new()
        .insert(Header { key: "event_id", value: Some(&poison_id) })
        .insert(Header { key: "event_type", value: Some("OrderPlaced") });
    let orders = stack.broker.topic("orders");
    let poison = FutureRecord::to(&orders).key(key).payload(&b"{\"not\": \"avro\"}"[..]).headers(poison_headers);
    producer.send(poison, WAIT).await.unwrap();
    let valid_id = uuid::Uuid::new_v4().to_string();
    let mut headers = OwnedHeaders::new();
    for h in placed.headers().unwrap().iter() {
        let value = if h.key == "event_id" { Some(valid_id.as_bytes()) } else { h.value };
        headers = headers.insert(Header { key: h.key, value });
    }
    producer
        .send(FutureRecord::to(&orders).key(key).payload(placed.payload().unwrap()).headers(headers), WAIT)
        .await
        .unwrap();

    eventually(WAIT, "the record after the poison to be handled", || processed(&stack, &valid_id)).await;
    assert!(!processed(&stack, &poison_id).await, "poison is not recorded as processed");

    let letters = dlt_tools::read(&stack.broker.settings(), &stack.broker.topic("orders.payment.DLT")).unwrap();
    assert_eq!(letters.len(), 1);
    let dead = &letters[0];
    assert_eq!(dead.error_class, "bad_magic_byte");
    assert_eq!(dead.original_topic, Some(stack.broker.topic("orders")));
    assert_eq!(dead.event_id.as_deref(), Some(poison_id.as_str()));
    assert_eq!(dead.message.key(), Some(key.as_bytes()), "the original key is kept");
    assert_eq!(dead.message.payload(), Some(&b"{\"not\": \"avro\"}"[..]), "the original value is kept");
    for name in [
        "dlt_original_partition",
        "dlt_original_offset",
        "dlt_consumer_group",
        "dlt_first_failure_at",
        "dlt_last_failure_at",
    ] {
        assert!(header(&dead.message, name).is_some(), "{name}");
    }
    assert!(dead.error_message.contains("magic byte"), "{}", dead.error_message);
    let metrics = stack.metrics_text("payment");
    assert!(
        metrics.contains(&format!(
            r#"orderflow_consumer_records_total{{group="{}",outcome="dead_lettered",topic="{}"}} 1"#,
            stack.broker.group("payment"),
            stack.broker.topic("orders")
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_record_without_an_event_id_is_dead_lettered_and_replay_sends_it_back_to_its_topic() {
    let stack = TestStack::spawn().await;
    stack.broker.send_raw("orders", "k", b"no headers at all").await;
    let settings = stack.broker.settings();
    let dlt = stack.broker.topic("orders.payment.DLT");
    let mut letters = Vec::new();
    eventually(WAIT, "the DLT record", || {
        letters = dlt_tools::read(&settings, &dlt).unwrap_or_default();
        let found = !letters.is_empty();
        async move { found }
    })
    .await;
    assert_eq!(letters[0].error_class, "missing_event_id");

    let nothing = Selection { error_class: Some("no_such_class".into()), ..Default::default() };
    assert_eq!(dlt_tools::replay(&settings, &dlt, &nothing).await.unwrap(), 0);
    let by_class = Selection { error_class: Some("missing_event_id".into()), ..Default::default() };
    assert_eq!(dlt_tools::replay(&settings, &dlt, &by_class).await.unwrap(), 1);
    // Still poison: it comes back to the DLT, with its reason, and nothing else is disturbed.
    eventually(WAIT, "the replayed record to be dead-lettered again", || {
        let count = dlt_tools::read(&settings, &dlt).map(|l| l.len()).unwrap_or(0);
        async move { count == 2 }
    })
    .await;
}

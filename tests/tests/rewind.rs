//! Replay by time (`orderflow-dlt rewind`): a stopped group rewound by an hour reads that hour
//! again — and only that hour — and every side effect still happened once (dedupe); the group
//! catches up; Kafka's own `kafka-consumer-groups --describe` agrees with the tool before and
//! after; a dry run changes nothing; a group with live members is refused, naming them.

use std::{collections::HashMap, process::Command, time::Duration};

use chrono::Utc;
use orderflow_consumer_runtime::rewind;
use orderflow_schemas::events::{Event, Money, OrderLine, OrderPlaced};
use orderflow_tests::{binary, intake::eventually, stack::TestStack};
use orderflow_tools::kafka_cli::describe_group;
use rdkafka::{
    Message,
    message::{Header, OwnedHeaders},
    producer::FutureRecord,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);

/// OrderPlaced events whose records were written `age` ago (their CreateTime), as if the
/// traffic of two hours ago: a rewind by one hour must not reach them.
async fn publish_aged(stack: &TestStack, count: usize, age: chrono::Duration) -> Vec<Uuid> {
    let (codec, producer) = (stack.codec(), stack.broker.producer());
    let topic = stack.broker.topic("orders");
    let mut orders = Vec::new();
    for i in 0..count {
        let event = OrderPlaced {
            order_id: Uuid::new_v4(),
            customer_id: format!("aged-{i}"),
            lines: vec![OrderLine { sku: "SKU-1".into(), quantity: 1, unit_price_minor: 1250 }],
            total: Money { amount_minor: 1250, currency: "EUR".into() },
            placed_at: Utc::now() - age,
            customer_email: None,
        };
        let payload = codec.encode_event(&event).await.unwrap();
        let id = Uuid::now_v7().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "event_id", value: Some(&id) })
            .insert(Header { key: "event_type", value: Some(OrderPlaced::NAME) });
        let key = event.key();
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload(&payload)
            .headers(headers)
            .timestamp((Utc::now() - age).timestamp_millis());
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
        orders.push(event.order_id);
    }
    orders
}

/// `orderflow-dlt` against the stack's broker and namespace.
fn dlt_tool(stack: &TestStack, args: &[&str]) -> std::process::Output {
    Command::new(binary("orderflow-dlt"))
        .env("ORDERFLOW_KAFKA_BOOTSTRAP", &stack.broker.bootstrap)
        .env("ORDERFLOW_KAFKA_NAMESPACE", &stack.broker.namespace)
        .args(args)
        .output()
        .unwrap()
}

/// The group's committed offset per partition of `orders`, as Kafka's own tool reports it.
fn kafka_says(stack: &TestStack, group: &str) -> HashMap<i32, Option<i64>> {
    let topic = stack.broker.topic("orders");
    describe_group(&stack.broker.bootstrap, group)
        .unwrap()
        .into_iter()
        .filter(|p| p.topic == topic)
        .map(|p| (p.partition, p.current_offset))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_rewound_by_an_hour_reads_that_hour_again_and_charges_nobody_twice() {
    let mut stack = TestStack::spawn_without_payment().await;
    let aged = publish_aged(&stack, 5, chrono::Duration::hours(2)).await;
    let provider = stack.provider_settings();
    stack.start_payment(provider).await;
    let payment = stack.parts.pop().unwrap();
    let mut orders = Vec::new();
    for i in 0..20 {
        orders.push(stack.api.place(&format!("rewind-{i}")).await);
    }
    for order in &orders {
        stack.wait_for_status(*order, "PAID", WAIT).await;
    }
    let charged = |ledger: &[orderflow_payment_simulator::LedgerEntry]| {
        let mut by_order: HashMap<String, usize> = HashMap::new();
        for entry in ledger.iter().filter(|e| e.status == "approved") {
            *by_order.entry(entry.reference.clone()).or_default() += 1;
        }
        by_order
    };
    eventually(WAIT, "the aged orders charged too", || async {
        charged(&stack.simulator.ledger().await).len() == orders.len() + aged.len()
    })
    .await;
    let group = stack.broker.group("payment");
    let kafka = stack.broker.settings();
    let topic = stack.broker.topic("orders");
    eventually(WAIT, "payment committed everything", || async {
        let plan = rewind::plan(&kafka, &group, &topic, &rewind::Target::Offsets(Default::default())).unwrap();
        plan.moves.iter().all(|m| m.committed.unwrap_or(m.low) == m.high)
    })
    .await;

    // With the group running: shown, then refused, naming its member.
    let refused = dlt_tool(&stack, &["rewind", "payment", "--to", "1h", "--execute"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("live member(s)"), "{said}");
    payment.stop().await;

    // What an hour back means here: every record of the 20 orders, none of the aged ones.
    let cutoff = Utc::now() - chrono::Duration::hours(1);
    let records = stack.broker.read_all("orders", 45, Duration::from_secs(3)).await;
    let recent = records.iter().filter(|r| r.timestamp().to_millis().is_some_and(|t| t >= cutoff.timestamp_millis()));
    let recent = recent.count() as i64;
    assert_eq!(recent, records.len() as i64 - aged.len() as i64, "the aged records are older than the hour");

    let before = kafka_says(&stack, &group);
    let dry = dlt_tool(&stack, &["rewind", "payment", "--to", "1h"]);
    let shown = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    assert!(shown.contains(&format!("{recent} records to read again")), "{shown}");
    assert!(shown.contains("dry run: nothing changed"), "{shown}");
    assert_eq!(kafka_says(&stack, &group), before, "a dry run changes nothing");
    let plan = rewind::plan(&kafka, &group, &topic, &"1h".parse().unwrap()).unwrap();
    for m in &plan.moves {
        assert_eq!(
            before.get(&m.partition).copied().flatten(),
            m.committed,
            "the tool and Kafka agree, p{}",
            m.partition
        );
    }

    let done = dlt_tool(&stack, &["rewind", "payment", "--to", "1h", "--execute"]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let after = kafka_says(&stack, &group);
    for m in &plan.moves {
        assert_eq!(
            after.get(&m.partition).copied().flatten(),
            Some(m.target),
            "Kafka sees the rewind, p{}",
            m.partition
        );
    }

    // Back up: it reads the hour again, deduped, and catches up; nobody is charged twice.
    let provider = stack.provider_settings();
    let name = stack.start_payment(provider).await;
    eventually(WAIT, "the group caught up", || async {
        let plan = rewind::plan(&kafka, &group, &topic, &rewind::Target::Offsets(Default::default())).unwrap();
        plan.moves.iter().all(|m| m.committed.unwrap_or(m.low) == m.high)
    })
    .await;
    assert_eq!(stack.records(&name, "deduped"), orders.len() as f64, "every OrderPlaced of the hour read again");
    assert_eq!(stack.records(&name, "processed"), 0.0, "nothing handled a second time");
    let ledger = charged(&stack.simulator.ledger().await);
    assert_eq!(ledger.len(), orders.len() + aged.len());
    assert!(ledger.values().all(|n| *n == 1), "one charge per order: {ledger:?}");
}

//! CDC instead of the relay (`connect/`): Debezium in a real Kafka Connect worker publishes the
//! orders outbox as the relay would and every consumer handles it; the relay refuses a table
//! Debezium captures, and its prune mode keeps the table small only once a replication slot
//! holds the WAL.

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::Duration,
};

use chrono::Utc;
use orderflow_outbox::{OutboxEvent, cdc};
use orderflow_tests::{
    TestDatabase, binary,
    broker::{header, key},
    intake::{eventually, sample_order},
    stack::TestStack,
};
use rdkafka::{
    Message,
    message::{Headers, OwnedMessage},
    producer::FutureRecord,
};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);

async fn outbox_db() -> (TestDatabase, PgPool) {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    orderflow_outbox::migrate(&pool).await.unwrap();
    (db, pool)
}

/// `n` rows created `age` ago.
async fn seed(pool: &PgPool, n: usize, age: Duration) {
    let mut tx = pool.begin().await.unwrap();
    for _ in 0..n {
        let event = OutboxEvent {
            event_id: Uuid::now_v7(),
            topic: "orders".into(),
            key: Uuid::new_v4().to_string(),
            event_type: "OrderPlaced".into(),
            schema_version: 1,
            payload: vec![0, 0, 0, 0, 1],
            traceparent: None,
            occurred_at: Utc::now(),
        };
        orderflow_outbox::enqueue(&mut tx, &event).await.unwrap();
    }
    sqlx::query("update outbox set created_at = now() - make_interval(secs => $1) where created_at > now() - interval '1 minute'")
        .bind(age.as_secs_f64())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from outbox").fetch_one(pool).await.unwrap()
}

/// A temporary logical slot (what Debezium makes), gone when `conn` closes, even on a panic.
async fn temporary_slot(db: &TestDatabase) -> Option<PgConnection> {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let wal_level: String = sqlx::query_scalar("show wal_level").fetch_one(&mut conn).await.unwrap();
    if wal_level != "logical" {
        eprintln!(
            "wal_level is {wal_level}, not logical (scripts/lib.sh starts its cluster with logical): slot cases not run"
        );
        return None;
    }
    let name = format!("oft_slot_{}", Uuid::new_v4().simple());
    sqlx::query("select pg_create_logical_replication_slot($1, 'pgoutput', true)")
        .bind(&name)
        .execute(&mut conn)
        .await
        .unwrap();
    Some(conn)
}

#[tokio::test]
async fn the_relay_refuses_a_table_that_cdc_captures() {
    let (db, pool) = outbox_db().await;
    assert!(cdc::ensure_not_captured(&pool).await.is_ok());
    sqlx::query("create publication dbz_publication for table outbox").execute(&pool).await.unwrap();
    assert_eq!(cdc::publications_covering_outbox(&pool).await.unwrap(), vec!["dbz_publication".to_string()]);

    // The real binary stops before it touches the broker (there is none at port 1).
    let output = Command::new(binary("outbox-relay"))
        .env("ORDERFLOW_OUTBOX_DATABASE_URL", &db.url)
        .env("ORDERFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:1")
        .env("ORDERFLOW_METRICS_LISTEN", "127.0.0.1:0")
        .env_remove("ORDERFLOW_RELAY_MODE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the relay started on a captured table");
    assert!(stderr.contains("captured for CDC (publication dbz_publication)"), "{stderr}");
    assert!(stderr.contains("ORDERFLOW_RELAY_MODE=prune"), "the error says what to do: {stderr}");
}

#[tokio::test]
async fn prune_keeps_every_row_until_a_slot_holds_the_wal_then_only_old_ones_go() {
    let (db, pool) = outbox_db().await;
    seed(&pool, 30, Duration::from_secs(7200)).await;
    seed(&pool, 5, Duration::ZERO).await;

    // No slot: a connector created later would snapshot these rows, so none may go.
    assert_eq!(cdc::prune(&pool, Duration::from_secs(3600), 1000).await.unwrap(), None);
    assert_eq!(rows(&pool).await, 35);

    let Some(slot) = temporary_slot(&db).await else { return };
    // Batches of 20: two rounds take the 30 old rows; the 5 young ones stay.
    assert_eq!(cdc::prune(&pool, Duration::from_secs(3600), 20).await.unwrap(), Some(20));
    assert_eq!(cdc::prune(&pool, Duration::from_secs(3600), 20).await.unwrap(), Some(10));
    assert_eq!(cdc::prune(&pool, Duration::from_secs(3600), 20).await.unwrap(), Some(0));
    assert_eq!(rows(&pool).await, 5);
    slot.close().await.unwrap();
}

#[tokio::test]
async fn the_relay_binary_in_prune_mode_deletes_old_rows_and_publishes_nothing() {
    let (db, pool) = outbox_db().await;
    let Some(slot) = temporary_slot(&db).await else { return };
    sqlx::query("create publication dbz_publication for table outbox").execute(&pool).await.unwrap();
    seed(&pool, 50, Duration::from_secs(600)).await;
    seed(&pool, 3, Duration::ZERO).await;
    let mut child = Command::new(binary("outbox-relay"))
        .env("ORDERFLOW_OUTBOX_DATABASE_URL", &db.url)
        .env("ORDERFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:1")
        .env("ORDERFLOW_METRICS_LISTEN", "127.0.0.1:0")
        .env("ORDERFLOW_RELAY_MODE", "prune")
        .env("ORDERFLOW_RELAY_PRUNE_AFTER_SECS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(30), "the pruner deletes the 50 old rows", || async { rows(&pool).await == 3 })
        .await;
    assert!(child.try_wait().unwrap().is_none(), "the pruner exited");
    // The young rows are still there a poll later.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rows(&pool).await, 3);
    let _ = child.kill();
    let _ = child.wait();
    slot.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debezium_publishes_the_orders_outbox_as_the_relay_does_and_every_consumer_handles_it() {
    let stack = TestStack::spawn_all_with_cdc().await;
    let connect = stack.connect.as_ref().unwrap();
    // Orders accepted by order-api: their OrderPlaced rows reach `orders` through Debezium.
    let mut paid = Vec::new();
    for i in 0..20 {
        paid.push(stack.api.place(&format!("cdc-{i}")).await);
    }
    let response = stack.api.post_order(Some("cdc-declined"), &sample_order("decline-42")).await;
    assert_eq!(response.status(), 202);
    let declined: Uuid =
        response.json::<serde_json::Value>().await.unwrap()["order_id"].as_str().unwrap().parse().unwrap();
    for order in &paid {
        stack.wait_for_status(*order, "PAID", WAIT).await;
    }
    stack.wait_for_status(declined, "PAYMENT_FAILED", WAIT).await;

    // What Debezium wrote: per order OrderPlaced then its outcome (order-service's event, from
    // the same outbox), on the order's key, framed Avro the codec decodes.
    let records = stack.broker.read_distinct("orders", 2 * 21, WAIT, |m| header(m, "event_id").unwrap()).await;
    let codec = stack.codec();
    for order in paid.iter().chain([&declined]) {
        let mine: Vec<&OwnedMessage> = records.iter().filter(|m| key(m) == order.to_string()).collect();
        let types: Vec<String> = mine.iter().map(|m| header(m, "event_type").unwrap()).collect();
        let outcome = if *order == declined { "OrderPaymentFailed" } else { "OrderPaid" };
        assert_eq!(types, vec!["OrderPlaced", outcome], "{order}: its events in order, on its key");
        for record in &mine {
            let decoded = codec.decode(record.payload().unwrap()).await.unwrap();
            assert_eq!(decoded.event_type, header(record, "event_type").unwrap());
        }
    }
    // The relay's headers, every one (the payments relay of this stack wrote these).
    let relayed = stack.broker.read("payments", 1, WAIT).await.remove(0);
    let names = |m: &OwnedMessage| -> BTreeSet<String> {
        m.headers().map(|h| h.iter().map(|h| h.key.to_string()).collect()).unwrap_or_default()
    };
    let (relay_names, cdc_names) = (names(&relayed), names(&records[0]));
    assert!(relay_names.is_subset(&cdc_names), "the relay's headers {relay_names:?}, Debezium's {cdc_names:?}");
    eprintln!("headers only Debezium adds: {:?}", cdc_names.difference(&relay_names).collect::<Vec<_>>());
    // A key lands on the partition the platform's producers (the relay) would give it.
    stack.broker.create_topic("probe", 12).await;
    let (probe, producer) = (stack.broker.topic("probe"), stack.broker.producer());
    for record in records.iter().take(10) {
        let sent = FutureRecord::to(&probe).key(record.key().unwrap()).payload("probe");
        let partition = producer.send(sent, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap().partition;
        assert_eq!(record.partition(), partition, "{}: Debezium's partition and the relay's", key(record));
    }
    // Every consumer group handled what it got, none dead-lettered anything.
    for group in [
        orderflow_payment::GROUP,
        orderflow_inventory::GROUP,
        orderflow_notifications::GROUP,
        orderflow_analytics::GROUP,
    ] {
        assert!(stack.records(group, "processed") > 0.0, "{group} handled nothing");
        assert_eq!(stack.records(group, "dead_lettered"), 0.0, "{group} dead-lettered a record");
    }
    assert!(stack.broker.dead_letters().is_empty(), "nothing in any DLT");

    // The relay refuses the table Debezium captures (the connector's own publication).
    let output = Command::new(binary("outbox-relay"))
        .env("ORDERFLOW_OUTBOX_DATABASE_URL", &stack.api.db.url)
        .env("ORDERFLOW_KAFKA_BOOTSTRAP", &stack.broker.bootstrap)
        .env("ORDERFLOW_METRICS_LISTEN", "127.0.0.1:0")
        .env_remove("ORDERFLOW_RELAY_MODE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the relay started on a table Debezium captures");
    assert!(stderr.contains("captured for CDC (publication orderflow_outbox)"), "{stderr}");
    assert!(connect.status().await.unwrap()["tasks"][0]["state"] == "RUNNING", "{}", connect.log_tail());
}

//! The outbox relay against a real broker: headers and keys, per-order order with two relays,
//! a SIGKILLed relay process, and a broker outage while orders keep being accepted.

use std::{collections::HashMap, process::Command, time::Duration};

use chrono::Utc;
use orderflow_outbox::{OutboxEvent, RelaySettings};
use orderflow_tests::{
    TestDatabase,
    broker::{TestBroker, header, key},
    intake::{TestApi, TestRelay, eventually, quick_relay},
};
use rdkafka::Message;
use sqlx::PgPool;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

async fn unpublished(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn accepted_orders_are_published_keyed_by_order_id_with_their_headers() {
    let broker = TestBroker::spawn();
    broker.create_topic("orders", 12).await;
    let api = TestApi::spawn().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(api.place(&format!("k{i}")).await);
    }
    let relay = TestRelay::spawn(&api.pool, &broker, quick_relay());
    let messages = broker.read("orders", 20, WAIT).await;
    for message in &messages {
        let order_id: Uuid = key(message).parse().unwrap();
        assert!(ids.contains(&order_id));
        assert_eq!(header(message, "event_type").as_deref(), Some("OrderPlaced"));
        assert_eq!(header(message, "schema_version").as_deref(), Some("2"));
        assert!(header(message, "event_id").unwrap().parse::<Uuid>().is_ok());
        assert!(header(message, "occurred_at").is_some());
        assert_eq!(message.payload().unwrap()[0], 0, "Confluent framing");
    }
    eventually(WAIT, "rows marked published", || async { unpublished(&api.pool).await == 0 }).await;
    relay.stop().await;
}

/// Writes `per_key` events for each of `keys` keys, interleaved, with the sequence as payload.
async fn seed_sequences(pool: &PgPool, topic: &str, keys: usize, per_key: usize) -> Vec<String> {
    let names: Vec<String> = (0..keys).map(|_| Uuid::new_v4().to_string()).collect();
    for seq in 0..per_key {
        let mut tx = pool.begin().await.unwrap();
        for name in &names {
            let event = OutboxEvent {
                event_id: Uuid::now_v7(),
                topic: topic.into(),
                key: name.clone(),
                event_type: "Sequence".into(),
                schema_version: 1,
                payload: (seq as u32).to_be_bytes().to_vec(),
                traceparent: None,
                occurred_at: Utc::now(),
            };
            orderflow_outbox::enqueue(&mut tx, &event).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    names
}

fn assert_in_order_per_key(messages: &[rdkafka::message::OwnedMessage], keys: usize, per_key: usize) {
    let mut seen: HashMap<String, Vec<u32>> = HashMap::new();
    for message in messages {
        let seq = u32::from_be_bytes(message.payload().unwrap().try_into().unwrap());
        seen.entry(key(message)).or_default().push(seq);
    }
    assert_eq!(seen.len(), keys);
    for (k, sequence) in seen {
        // Duplicates may appear (at-least-once); the first sighting of each must be in order.
        let mut firsts = Vec::new();
        for s in sequence {
            if !firsts.contains(&s) {
                firsts.push(s);
            }
        }
        assert_eq!(firsts, (0..per_key as u32).collect::<Vec<_>>(), "key {k} out of order");
    }
}

#[tokio::test]
async fn two_relays_share_the_work_and_keep_each_orders_events_in_order() {
    let broker = TestBroker::spawn();
    broker.create_topic("sequences", 12).await;
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    orderflow_outbox::migrate(&pool).await.unwrap();
    let (keys, per_key) = (100, 8);
    seed_sequences(&pool, "sequences", keys, per_key).await;
    let small_batches = RelaySettings { batch_size: 37, ..quick_relay() };
    let first = TestRelay::spawn(&pool, &broker, small_batches.clone());
    let second = TestRelay::spawn(&pool, &broker, small_batches);
    let messages = broker.read_distinct("sequences", keys * per_key, WAIT, identity).await;
    assert_in_order_per_key(&messages, keys, per_key);
    eventually(WAIT, "all marked", || async { unpublished(&pool).await == 0 }).await;
    first.stop().await;
    second.stop().await;
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn identity(message: &rdkafka::message::OwnedMessage) -> String {
    format!("{}/{:?}", key(message), message.payload())
}

#[tokio::test]
async fn a_relay_killed_mid_batch_loses_nothing_once_restarted() {
    let broker = TestBroker::spawn();
    broker.create_topic("sequences", 12).await;
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    orderflow_outbox::migrate(&pool).await.unwrap();
    let (keys, per_key) = (500, 6);
    seed_sequences(&pool, "sequences", keys, per_key).await;
    let spawn = || {
        Command::new(orderflow_tests::binary("outbox-relay"))
            .env("ORDERFLOW_OUTBOX_DATABASE_URL", &db.url)
            .env("ORDERFLOW_KAFKA_BOOTSTRAP", &broker.bootstrap)
            .env("ORDERFLOW_KAFKA_NAMESPACE", &broker.namespace)
            .env("ORDERFLOW_RELAY_BATCH", "250")
            .env("ORDERFLOW_RELAY_POLL_MS", "50")
            .env("ORDERFLOW_METRICS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map(KillOnDrop)
            .unwrap()
    };
    let relay = spawn();
    eventually(WAIT, "the relay to be part-way", || async {
        let left = unpublished(&pool).await;
        left < (keys * per_key) as i64 && left > 0
    })
    .await;
    drop(relay); // SIGKILL, mid-run
    let left = unpublished(&pool).await;
    assert!(left > 0, "killed before the end");
    let restarted = spawn();
    let messages = broker.read_distinct("sequences", keys * per_key, WAIT, identity).await;
    assert_in_order_per_key(&messages, keys, per_key);
    eventually(WAIT, "all marked after restart", || async { unpublished(&pool).await == 0 }).await;
    drop(restarted);
}

#[tokio::test]
async fn orders_are_accepted_while_the_broker_is_down_and_published_after_it_returns() {
    // This test kills its broker: one of its own.
    let mut broker = TestBroker::spawn_own();
    broker.create_topic("orders", 12).await;
    let api = TestApi::spawn().await;
    let relay = TestRelay::spawn(&api.pool, &broker, RelaySettings { batch_size: 50, ..quick_relay() });
    api.place("before").await;
    eventually(WAIT, "first order published", || async { unpublished(&api.pool).await == 0 }).await;

    broker.kill();
    for i in 0..30 {
        api.place(&format!("during-{i}")).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(unpublished(&api.pool).await, 30, "nothing is marked while the broker is down");

    broker.start();
    eventually(WAIT, "the backlog drains", || async { unpublished(&api.pool).await == 0 }).await;
    let messages = broker.read_distinct("orders", 31, WAIT, key).await;
    let distinct: std::collections::HashSet<String> = messages.iter().map(key).collect();
    assert_eq!(distinct.len(), 31, "every accepted order reached the topic");
    relay.stop().await;
}

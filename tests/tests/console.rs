//! The ops console's health view, on a real broker and real databases: each group's lag per
//! partition with its skew, the outboxes' backlog, served as a page (escaped, with its own
//! assets and a strict content policy) and as JSON; a broker or database that is down is named
//! on the page, which still shows what it can.

use std::time::Duration;

use orderflow_console::ConsoleSettings;
use orderflow_lag_exporter::broker_view::ReaderSettings;
use orderflow_tests::{Running, TestDatabase, broker::TestBroker, http, intake::eventually};
use rdkafka::producer::FutureRecord;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;

const WAIT: Duration = Duration::from_secs(60);

/// A console on a port of its own, reading `broker` (as `kafka`) and `outboxes`.
async fn console(
    kafka: orderflow_platform::kafka::KafkaSettings,
    outboxes: Vec<(String, sqlx::PgPool)>,
) -> (String, Running) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let settings = ConsoleSettings {
        reader: ReaderSettings {
            kafka,
            groups: vec!["audit".into()],
            triage_group: None,
            timeout: Duration::from_secs(2),
        },
        outboxes,
        interval: Duration::from_millis(300),
    };
    let running =
        Running::spawn(move |stop| orderflow_console::run(settings, listener, prometheus::Registry::new(), stop));
    (url, running)
}

async fn health(url: &str) -> Value {
    http().get(format!("{url}/api/health")).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_lag_per_partition_its_skew_and_the_outbox_backlog_are_on_the_page() {
    let broker = TestBroker::spawn();
    broker.create_topic("orders", 3).await;
    // 10, 10 and 40 records on the three partitions; the group has committed the start of each.
    let (producer, topic) = (broker.producer(), broker.topic("orders"));
    for (partition, count) in [(0, 10), (1, 10), (2, 40)] {
        for i in 0..count {
            let key = format!("k{i}");
            let record = FutureRecord::to(&topic).partition(partition).key(&key).payload("x");
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
        }
        broker.commit("audit", "orders", partition, 0);
    }
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    orderflow_outbox::migrate(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, message_key, event_type, schema_version, payload, occurred_at, created_at)
         SELECT gen_random_uuid(), 'orders', 'k', 'OrderPlaced', 1, '\\x00', now(), now() - interval '90 seconds'
         FROM generate_series(1, 7)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (url, running) = console(broker.settings(), vec![("orders".into(), pool)]).await;

    let group = broker.group("audit");
    eventually(WAIT, "the group's lag read", || async {
        health(&url).await["groups"].as_array().unwrap().iter().any(|g| g["name"] == group.as_str() && g["lag"] == 60)
    })
    .await;
    let body = health(&url).await;
    let audit = body["groups"].as_array().unwrap().iter().find(|g| g["name"] == group.as_str()).unwrap().clone();
    assert_eq!(audit["skew"], 4.0, "worst 40 over median 10: {audit}");
    let lags: Vec<i64> = audit["partitions"].as_array().unwrap().iter().map(|p| p["lag"].as_i64().unwrap()).collect();
    assert_eq!(lags, vec![10, 10, 40]);
    assert!(audit["lag_seconds"].as_f64().unwrap() >= 0.0, "the oldest unconsumed record's age: {audit}");
    let outbox = &body["outboxes"][0];
    assert_eq!((outbox["name"].as_str(), outbox["pending"].as_i64()), (Some("orders"), Some(7)));
    assert!(outbox["oldest_seconds"].as_f64().unwrap() >= 90.0, "{outbox}");

    // The page: the same figures, its own assets, no inline script allowed.
    let page = http().get(format!("{url}/")).send().await.unwrap();
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!("data-group=\"{group}\"")), "{html}");
    assert!(html.contains("<td>60</td>") && html.contains("<td>4.0</td>"), "lag and skew on the page: {html}");
    assert!(html.contains("data-outbox=\"orders\"><td>orders</td><td>7</td>"), "{html}");
    assert!(!html.contains("<script>"), "no inline script: {html}");
    for asset in ["/static/console.css", "/static/console.js"] {
        let response = http().get(format!("{url}{asset}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
    }
    let fragment = http().get(format!("{url}/fragments/health")).send().await.unwrap().text().await.unwrap();
    assert!(fragment.contains("Consumer groups") && !fragment.contains("<html"), "{fragment}");
    running.stop().await;
}

#[tokio::test]
async fn a_broker_and_a_database_that_are_down_are_named_and_the_rest_still_shows() {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    orderflow_outbox::migrate(&pool).await.unwrap();
    // Nothing listens on port 1; the database pool is lazy, as the console's are.
    let unreachable = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy("postgres://u:secret-pw@127.0.0.1:1/x")
        .unwrap();
    let kafka = orderflow_platform::kafka::KafkaSettings::new("127.0.0.1:1");
    let (url, running) = console(kafka, vec![("orders".into(), pool), ("payments".into(), unreachable)]).await;
    eventually(WAIT, "the databases read", || async {
        health(&url).await["outboxes"].as_array().is_some_and(|o| o.len() == 2)
    })
    .await;
    let body = health(&url).await;
    assert_eq!(body["outboxes"][0]["pending"], 0, "the reachable outbox: {body}");
    assert!(body["outboxes"][1]["error"].is_string(), "the unreachable one named: {body}");
    let html = http().get(format!("{url}/")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("The broker has not been read yet") || html.contains("Kafka:"), "{html}");
    assert!(html.contains("data-outbox=\"payments\"") && html.contains("unreachable"), "{html}");
    assert!(!html.contains("secret-pw"), "no password on the page");
    let ready = http().get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready before the broker was read");
    running.stop().await;
}

//! The ops console on a real broker and real databases: each group's lag per partition with its
//! skew, the outboxes' backlog, served as a page (escaped, with its own assets and a strict
//! content policy) and as JSON; a broker or database that is down is named on the page, which
//! still shows what it can; dead letters listed by topic and class, one opened with its reasons
//! and its payload decoded via the registry — or as hex when it is poison, markup and all shown
//! as text.

use std::time::Duration;

use orderflow_console::ConsoleSettings;
use orderflow_consumer_runtime::dlt_tools::{self, TRIAGE_GROUP};
use orderflow_lag_exporter::broker_view::ReaderSettings;
use orderflow_tests::{
    Running, TestDatabase,
    broker::TestBroker,
    consumer::{Plan, RuntimeBed},
    http,
    intake::eventually,
};
use rdkafka::{
    Message,
    message::{Header, OwnedHeaders},
    producer::FutureRecord,
};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;

const WAIT: Duration = Duration::from_secs(60);

/// A console on a port of its own, reading `broker` (as `kafka`) and `outboxes`.
async fn console(
    kafka: orderflow_platform::kafka::KafkaSettings,
    outboxes: Vec<(String, sqlx::PgPool)>,
) -> (String, Running) {
    console_with(kafka, outboxes, None).await
}

/// As [`console`], decoding dead letters with `codec`.
async fn console_with(
    kafka: orderflow_platform::kafka::KafkaSettings,
    outboxes: Vec<(String, sqlx::PgPool)>,
    codec: Option<std::sync::Arc<orderflow_schemas::EventCodec>>,
) -> (String, Running) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let settings = ConsoleSettings {
        reader: ReaderSettings {
            kafka,
            groups: vec!["audit".into()],
            triage_group: Some(TRIAGE_GROUP.into()),
            timeout: Duration::from_secs(2),
        },
        codec,
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

async fn page(url: &str) -> (u16, String) {
    let response = http().get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_by_class_one_opened_decoded_poison_shown_as_escaped_hex_and_triage_clears_the_count() {
    let bed = RuntimeBed::spawn(1).await;
    // A record its handler keeps refusing (one attempt allowed), and two poison records: one
    // whose bytes are markup, with markup in a header too, and 100 kB of binary.
    let refused = bed.publish("k-refused", 1).await[0];
    bed.script.plan(refused, Plan::AlwaysRetry);
    let producer = bed.broker.producer();
    let markup = "<script>alert('payload')</script>";
    let big = vec![0xffu8; 100_000];
    for (key, payload) in [("k-markup", markup.as_bytes()), ("k-big", &big[..])] {
        let id = uuid::Uuid::now_v7().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "event_id", value: Some(&id) })
            .insert(Header { key: "note", value: Some("<img src=x onerror=alert('header')>") });
        let record = FutureRecord::to(&bed.topic).key(key).payload(payload).headers(headers);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
    let mut settings = bed.settings();
    settings.max_attempts = 1;
    let consumer = bed.start(settings);
    eventually(WAIT, "three records dead-lettered", || async { bed.broker.dead_letters().len() == 3 }).await;
    consumer.stop().await;

    let (url, running) = console_with(bed.broker.settings(), vec![], Some(bed.codec.clone())).await;
    let dlt = bed.dlt_topic();
    eventually(WAIT, "the DLT on the health page", || async {
        let body = health(&url).await;
        body["dead_letters"].as_array().unwrap().iter().any(|t| t["topic"] == dlt.as_str() && t["untriaged"] == 3)
    })
    .await;
    let (status, html) = page(&format!("{url}/")).await;
    assert_eq!(status, 200);
    assert!(html.contains(&format!("href=\"/dead-letters/{dlt}\"")), "{html}");

    // The topic: by class, each record linked.
    let (status, topic_html) = page(&format!("{url}/dead-letters/{dlt}")).await;
    assert_eq!(status, 200, "{topic_html}");
    assert!(
        topic_html.contains("data-class=\"retries_exhausted\"><td>retries_exhausted</td><td>1</td>"),
        "{topic_html}"
    );
    assert!(topic_html.contains("data-class=\"bad_magic_byte\"><td>bad_magic_byte</td><td>2</td>"), "{topic_html}");
    let letters = dlt_tools::read(&bed.broker.settings(), &dlt).unwrap();
    let offset_of = |key: &str| letters.iter().find(|d| d.message.key() == Some(key.as_bytes())).unwrap().offset;

    // The refused record: its reasons and its payload decoded through the registry.
    let (status, refused_html) = page(&format!("{url}/dead-letters/{dlt}/0/{}", offset_of("k-refused"))).await;
    assert_eq!(status, 200, "{refused_html}");
    assert!(refused_html.contains("dlt_error_class</th><td>retries_exhausted"), "{refused_html}");
    assert!(
        refused_html.contains("OrderPlaced (schema id") && refused_html.contains("&quot;sku&quot;: &quot;SKU-1&quot;"),
        "{refused_html}"
    );

    // Poison: markup shown as text, bytes as hex, never as markup.
    let (_, markup_html) = page(&format!("{url}/dead-letters/{dlt}/0/{}", offset_of("k-markup"))).await;
    assert!(markup_html.contains("Not decoded") && markup_html.contains("3c 73 63 72 69 70 74"), "{markup_html}");
    assert!(markup_html.contains("&lt;img src=x onerror=alert(&#39;header&#39;)&gt;"), "{markup_html}");
    for html in [&html, &topic_html, &refused_html, &markup_html] {
        assert!(!html.contains("<script>alert") && !html.contains("<img src=x"), "markup got through: {html}");
    }
    let (_, big_html) = page(&format!("{url}/dead-letters/{dlt}/0/{}", offset_of("k-big"))).await;
    assert!(big_html.contains(&format!("… {} bytes more", 100_000 - 4_096)), "cut, and says how much");
    assert!(big_html.len() < 60_000, "a 100 kB payload renders as a page of {} bytes", big_html.len());

    // What the console does not know is not read; an offset past the end is a clear 404.
    assert_eq!(page(&format!("{url}/dead-letters/{}", bed.topic)).await.0, 404, "only DLTs");
    assert_eq!(page(&format!("{url}/dead-letters/{dlt}/0/999")).await.0, 404);

    // Triage (orderflow-dlt's way) clears the count.
    dlt_tools::mark_triaged(&bed.broker.settings(), &dlt, None).unwrap();
    eventually(WAIT, "nothing untriaged", || async {
        let body = health(&url).await;
        body["dead_letters"].as_array().unwrap().iter().any(|t| t["topic"] == dlt.as_str() && t["untriaged"] == 0)
    })
    .await;
    running.stop().await;
}

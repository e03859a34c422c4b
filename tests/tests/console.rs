//! The ops console on a real broker and real databases: each group's lag per partition with its
//! skew, the outboxes' backlog, served as a page (escaped, with its own assets and a strict
//! content policy) and as JSON; a broker or database that is down is named on the page, which
//! still shows what it can; dead letters listed by topic and class, one opened with its reasons
//! and its payload decoded via the registry — or as hex when it is poison, markup and all shown
//! as text. Replay and triage: only a signed-in operator, only after a preview that says how
//! many and where to, only from the console's own form, each step in the audit log.

use std::time::Duration;

use orderflow_console::ConsoleSettings;
use orderflow_consumer_runtime::dlt_tools::{self, TRIAGE_GROUP};
use orderflow_lag_exporter::broker_view::ReaderSettings;
use orderflow_platform::users_file::{UsersFile, hash};
use orderflow_tests::{
    Running, TestDatabase,
    broker::TestBroker,
    consumer::{Plan, RuntimeBed},
    http,
    intake::eventually,
    stack::TestStack,
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
    console_with(kafka, outboxes, None, None).await
}

/// As [`console`], decoding dead letters with `codec`.
async fn console_with(
    kafka: orderflow_platform::kafka::KafkaSettings,
    outboxes: Vec<(String, sqlx::PgPool)>,
    codec: Option<std::sync::Arc<orderflow_schemas::EventCodec>>,
    operators: Option<UsersFile>,
) -> (String, Running) {
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
        operators,
        stores: Default::default(),
        trace_url: None,
    };
    serve(settings).await
}

/// A console reading `kafka` and `stores` (its outboxes and its payment guards), read-only.
async fn console_on(
    kafka: orderflow_platform::kafka::KafkaSettings,
    stores: orderflow_console::story::Stores,
) -> (String, Running) {
    let settings = ConsoleSettings {
        reader: ReaderSettings {
            kafka,
            groups: vec![],
            triage_group: Some(TRIAGE_GROUP.into()),
            timeout: Duration::from_secs(5),
        },
        codec: None,
        outboxes: vec![],
        interval: Duration::from_millis(300),
        operators: None,
        stores,
        trace_url: Some("http://traces.example/trace/{trace_id}".into()),
    };
    serve(settings).await
}

/// Runs a console with `settings` on a port of its own: its address and the running task.
async fn serve(settings: ConsoleSettings) -> (String, Running) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
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

    let (url, running) = console_with(bed.broker.settings(), vec![], Some(bed.codec.clone()), None).await;
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

/// An operators file: `ana` (operator, password `ana-pw`) and `bo` (viewer, `bo-pw`).
async fn operators() -> (UsersFile, tempfile_path::Path) {
    let path = tempfile_path::Path::new();
    let text = format!("ana:{}\nbo:{}:viewer\n", hash("ana-pw", 4).unwrap(), hash("bo-pw", 4).unwrap());
    std::fs::write(&path.0, text).unwrap();
    (UsersFile::open(path.0.clone(), orderflow_console::operate::ROLES).await.unwrap(), path)
}

mod tempfile_path {
    /// A file removed when dropped.
    pub struct Path(pub std::path::PathBuf);

    impl Path {
        pub fn new() -> Path {
            Path(std::env::temp_dir().join(format!("orderflow-operators-{}", uuid::Uuid::new_v4().simple())))
        }
    }

    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A confirmation (`POST /operate/<action>`) of `form`, signed in as the operator `ana`.
async fn confirm_as_ana(url: &str, action: &str, form: &[(&str, String)]) -> reqwest::Response {
    let request = http().post(format!("{url}/operate/{action}")).basic_auth("ana", Some("ana-pw"));
    request.form(form).send().await.unwrap()
}

/// The value of `<input … name="name" value="…">` in `html`.
fn field(html: &str, name: &str) -> String {
    let at = html.find(&format!("name=\"{name}\" value=\"")).unwrap_or_else(|| panic!("no {name} field: {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_and_triage_need_an_operator_ask_first_refuse_forged_forms_and_are_audited() {
    let bed = RuntimeBed::spawn(1).await;
    let refused = bed.publish("k-refused", 1).await[0];
    bed.script.plan(refused, Plan::AlwaysRetry);
    let mut settings = bed.settings();
    settings.max_attempts = 1;
    let consumer = bed.start(settings);
    eventually(WAIT, "the record dead-lettered", || async { bed.broker.dead_letters().len() == 1 }).await;
    consumer.stop().await;

    let (users, _file) = operators().await;
    let (url, running) = console_with(bed.broker.settings(), vec![], Some(bed.codec.clone()), Some(users)).await;
    let dlt = bed.dlt_topic();
    eventually(WAIT, "the DLT known", || async {
        health(&url).await["dead_letters"].as_array().unwrap().iter().any(|t| t["topic"] == dlt.as_str())
    })
    .await;
    let preview = format!("{url}/operate/replay?topic={dlt}&class=retries_exhausted");

    // Reading is open; acting needs an operator.
    let anonymous = http().get(&preview).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic realm="));
    let viewer = http().get(&preview).basic_auth("bo", Some("bo-pw")).send().await.unwrap();
    assert_eq!(viewer.status(), 403);
    assert!(viewer.text().await.unwrap().contains("bo is a viewer"));
    let wrong = http().get(&preview).basic_auth("ana", Some("nope")).send().await.unwrap();
    assert_eq!(wrong.status(), 401);

    // The preview says how many and where to.
    let html = http().get(&preview).basic_auth("ana", Some("ana-pw")).send().await.unwrap().text().await.unwrap();
    assert!(
        html.contains("data-count=\"1\"") && html.contains(&format!("to <strong>{} (1)</strong>", bed.topic)),
        "{html}"
    );
    let token = field(&html, "token");
    let confirm = |token: &str, expected: &str| {
        let form = [("topic", dlt.as_str()), ("class", "retries_exhausted"), ("expected", expected), ("token", token)];
        http().post(format!("{url}/operate/replay")).basic_auth("ana", Some("ana-pw")).form(&form)
    };
    // A forged form: no token, another site's origin, a count that no longer matches.
    assert_eq!(confirm("", "1").send().await.unwrap().status(), 403, "no token");
    let cross = confirm(&token, "1").header("origin", "https://evil.example").send().await.unwrap();
    assert_eq!(cross.status(), 403, "another origin");
    let stale = confirm(&token, "2").send().await.unwrap();
    assert_eq!(stale.status(), 409);
    assert!(stale.text().await.unwrap().contains("nothing was replayed"));
    let viewer_post = http()
        .post(format!("{url}/operate/replay"))
        .basic_auth("bo", Some("bo-pw"))
        .form(&[("topic", dlt.as_str()), ("class", "retries_exhausted"), ("expected", "1"), ("token", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(viewer_post.status(), 403, "a viewer with an operator's token");
    assert_eq!(bed.effects(refused).await, 0);

    // The cause fixed, the replay confirmed: the record is processed, once.
    bed.script.plan(refused, Plan::FailTimes(0));
    let done = confirm(&token, "1").send().await.unwrap();
    assert_eq!(done.status(), 200);
    assert!(done.text().await.unwrap().contains("Done: replay of 1 record"));
    // A consumer of its own settings (a metrics registry is registered once).
    let consumer = bed.start(bed.settings());
    eventually(WAIT, "the replayed record handled", || async { bed.effects(refused).await == 1 }).await;
    consumer.stop().await;

    // Triage: the preview's count, then the health page's untriaged count cleared.
    let triage = format!("{url}/operate/triage?topic={dlt}");
    let html = http().get(&triage).basic_auth("ana", Some("ana-pw")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("data-count=\"1\""), "{html}");
    let form = [
        ("topic", dlt.clone()),
        ("marks", field(&html, "marks")),
        ("expected", "1".into()),
        ("token", field(&html, "token")),
    ];
    let done = confirm_as_ana(&url, "triage", &form).await;
    assert_eq!(done.status(), 200);
    assert!(done.text().await.unwrap().contains("Done: triage of 1 record"));
    eventually(WAIT, "nothing untriaged", || async {
        health(&url).await["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["topic"] == dlt.as_str() && t["untriaged"] == 0)
    })
    .await;

    // The audit log: who did what, started and done, on the audit page and the topic's.
    let audit = page(&format!("{url}/audit")).await.1;
    for expected in ["<td>ana</td><td>replay</td>", "<td>ana</td><td>triage</td>", "<td>started</td>", "<td>done</td>"]
    {
        assert!(audit.contains(expected), "{expected} in {audit}");
    }
    assert_eq!(audit.matches("<td>ana</td>").count(), 4, "two actions, two steps each: {audit}");
    let topic_page = page(&format!("{url}/dead-letters/{dlt}")).await.1;
    assert!(topic_page.contains("class retries_exhausted to"), "{topic_page}");
    running.stop().await;

    // Without an operators file the console is read-only.
    let (url, running) = console_with(bed.broker.settings(), vec![], None, None).await;
    eventually(WAIT, "the DLT known", || async {
        health(&url).await["dead_letters"].as_array().unwrap().iter().any(|t| t["topic"] == dlt.as_str())
    })
    .await;
    let refused =
        http().get(format!("{url}/operate/triage?topic={dlt}")).basic_auth("ana", Some("ana-pw")).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("read-only"));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_browser_a_poisoned_record_shows_under_its_class_replays_once_fixed_and_triage_clears_it() {
    let bed = RuntimeBed::spawn(1).await;
    let refused = bed.publish("k-refused", 1).await[0];
    bed.script.plan(refused, Plan::AlwaysRetry);
    // Poison whose header and payload are markup that would set `window.__pwned` if it ran.
    let id = uuid::Uuid::now_v7().to_string();
    let headers = OwnedHeaders::new()
        .insert(Header { key: "event_id", value: Some(&id) })
        .insert(Header { key: "note", value: Some("<img src=x onerror=\"window.__pwned=1\">") });
    let payload = "<script>window.__pwned=1</script>";
    let record = FutureRecord::to(&bed.topic).key("k-poison").payload(payload).headers(headers);
    bed.broker.producer().send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    let mut settings = bed.settings();
    settings.max_attempts = 1;
    let consumer = bed.start(settings);
    eventually(WAIT, "two records dead-lettered", || async { bed.broker.dead_letters().len() == 2 }).await;
    consumer.stop().await;
    let dlt = bed.dlt_topic();
    let letters = dlt_tools::read(&bed.broker.settings(), &dlt).unwrap();
    let offset_of = |key: &str| letters.iter().find(|d| d.message.key() == Some(key.as_bytes())).unwrap().offset;

    // The cause is fixed and the consumer runs again; only a replay brings the record back.
    bed.script.plan(refused, Plan::FailTimes(0));
    let consumer = bed.start(bed.settings());
    let (users, _file) = operators().await;
    let (url, running) = console_with(bed.broker.settings(), vec![], Some(bed.codec.clone()), Some(users)).await;
    orderflow_tests::browser::run(
        "dead_letters.cjs",
        serde_json::json!({
            "url": url, "user": "ana", "password": "ana-pw", "dlt": dlt, "topic": bed.topic,
            "class": "retries_exhausted", "dead_letters": 2, "group": bed.group(),
            "refused_offset": offset_of("k-refused"), "poison_offset": offset_of("k-poison"),
        }),
    )
    .await;
    eventually(WAIT, "the replayed record handled", || async { bed.effects(refused).await == 1 }).await;
    consumer.stop().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_browser_the_story_of_a_paid_and_of_a_cancelled_and_refunded_order_shows_every_step() {
    let stack = TestStack::spawn_all_on(TestBroker::spawn()).await;
    stack.stock(&[("LAST-ONE", 1)]).await;
    // Two orders for the last unit, one customer: one is served, the other cancelled and refunded.
    let customer = format!("cust-{}", uuid::Uuid::new_v4().simple());
    let order = |n: u32| {
        serde_json::json!({"customer_id": customer, "currency": "EUR",
            "items": [{"sku": "LAST-ONE", "quantity": 1, "unit_price_minor": 1000 + n}]})
    };
    // Each carries the checkout's trace (order-api continues it).
    let post = |key: &'static str, body: Value| {
        let trace =
            format!("00-{}-{}-01", uuid::Uuid::new_v4().simple(), &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let request = stack.api.http.post(format!("{}/orders", stack.api.url));
        request.header("Idempotency-Key", key).header("traceparent", trace).json(&body).send()
    };
    let (a, b) = tokio::join!(post("story-a", order(1)), post("story-b", order(2)));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut ids = Vec::new();
    for response in [a, b] {
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        ids.push(body["order_id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap());
    }
    eventually(WAIT, "one order paid, the other refunded", || async {
        let mut statuses = [stack.status(ids[0]).await, stack.status(ids[1]).await];
        statuses.sort();
        statuses == ["PAID", "REFUNDED"]
    })
    .await;
    let (paid, refunded) = if stack.status(ids[0]).await == "PAID" { (ids[0], ids[1]) } else { (ids[1], ids[0]) };
    let refunded_total = if refunded == ids[0] { "1001" } else { "1002" };
    let notifications = stack.notifications.as_ref().unwrap().pool.clone();
    let analytics = stack.analytics.as_ref().unwrap().pool.clone();
    eventually(WAIT, "the notifications sent and the facts recorded", || async {
        let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE status = 'SENT'")
            .fetch_one(&notifications)
            .await
            .unwrap();
        let cancelled: i64 = sqlx::query_scalar("SELECT count(*) FROM order_facts WHERE cancelled_at IS NOT NULL")
            .fetch_one(&analytics)
            .await
            .unwrap();
        sent == 3 && cancelled == 1
    })
    .await;

    let stores = orderflow_console::story::Stores {
        orders: Some(stack.api.pool.clone()),
        payments: Some(stack.payments.clone()),
        inventory: Some(stack.inventory.clone()),
        notifications: Some(notifications),
        analytics: Some(analytics),
    };
    let (url, running) = console_on(stack.broker.settings(), stores).await;
    // The running payment instance's guard, as it reports it.
    eventually(WAIT, "the payment instance's guard", || async {
        let body = health(&url).await;
        body["payment_guards"][0]["instance"] == "payment" && body["payment_guards"][0]["breaker"] == "closed"
    })
    .await;
    let payment_group = stack.broker.group(orderflow_payment::GROUP);
    orderflow_tests::browser::run(
        "story.cjs",
        serde_json::json!({
            "url": url, "customer": customer, "paid": paid, "refunded": refunded,
            "trace_prefix": "http://traces\\.example/trace/",
            "refunded_story": {
                "order": ["REFUNDED", customer, refunded_total],
                "history": ["PAID", "CANCELLED", "REFUNDED"],
                "events": ["OrderPlaced", "PaymentAuthorized", "OrderPaid", "InventoryShortage", "OrderCancelled",
                           "PaymentRefunded", payment_group],
                "payment": ["REFUNDED"],
                "provider": ["charge", "refund", "APPROVED"],
                "stock": ["SHORTAGE"],
                "notifications": ["order_confirmed", "order_cancelled", "SENT"],
                "analytics": [refunded_total],
            },
            "paid_story": {
                "order": ["PAID"],
                "history": ["PAID"],
                "events": ["OrderPlaced", "PaymentAuthorized", "OrderPaid"],
                "payment": ["AUTHORIZED"],
                "provider": ["charge", "APPROVED"],
                "stock": ["RESERVED"],
                "notifications": ["order_confirmed", "SENT"],
            },
        }),
    )
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_payment_instances_breaker_and_window_show_from_the_payments_database() {
    let broker = TestBroker::spawn();
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    orderflow_payment::migrate(&pool).await.unwrap();
    // An instance whose provider does not answer (nothing listens on port 1): after two
    // failed calls its circuit opens.
    let mut provider = orderflow_payment::ProviderSettings::new("http://127.0.0.1:1");
    provider.breaker.failure_threshold = 2;
    provider.breaker.open_for = Duration::from_secs(600);
    provider.attempt_timeout = Duration::from_millis(300);
    provider.deadline = Duration::from_millis(600);
    let client =
        orderflow_payment::PaymentProviderClient::new(provider, &prometheus::Registry::new(), None).await.unwrap();
    client.report_to(pool.clone(), "payment-a".into());
    let stores = orderflow_console::story::Stores { payments: Some(pool.clone()), ..Default::default() };
    let (url, running) = console_on(broker.settings(), stores).await;
    eventually(WAIT, "the instance's closed breaker", || async {
        health(&url).await["payment_guards"][0]["breaker"] == "closed"
    })
    .await;
    let body = health(&url).await;
    let guard = &body["payment_guards"][0];
    assert_eq!((guard["instance"].as_str(), guard["window_size"].as_i64()), (Some("payment-a"), Some(1)), "{body}");
    assert_eq!(guard["window_max"], 64);

    for n in 0..3 {
        let _ = client.charge(&format!("k-{n}"), 100, "EUR", "c", "r").await;
    }
    eventually(WAIT, "the open breaker", || async { health(&url).await["payment_guards"][0]["breaker"] == "open" })
        .await;
    let html = page(&format!("{url}/")).await.1;
    assert!(html.contains("data-instance=\"payment-a\" class=\"breaker-open\""), "{html}");
    // The instance gone: its row ages and the page says it has gone silent.
    drop(client);
    sqlx::query("UPDATE provider_health SET updated_at = now() - interval '1 minute'").execute(&pool).await.unwrap();
    eventually(WAIT, "the instance silent", || async { page(&format!("{url}/")).await.1.contains("silent for") }).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rewind_is_previewed_refused_while_the_group_lives_confirmed_once_stopped_and_audited() {
    use orderflow_consumer_runtime::rewind::{self, Target};
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let broker = TestBroker::spawn();
    broker.create_topic("orders", 2).await;
    let (producer, topic) = (broker.producer(), broker.topic("orders"));
    for partition in [0, 1] {
        for i in 0..5 {
            let record = FutureRecord::to(&topic).partition(partition).key("k").payload("x");
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
            let _ = i;
        }
        broker.commit("audit", "orders", partition, 5);
    }
    let group = broker.group("audit");
    let (users, _file) = operators().await;
    let (url, running) = console_with(broker.settings(), vec![], None, Some(users)).await;
    eventually(WAIT, "the group known", || async {
        health(&url).await["groups"].as_array().unwrap().iter().any(|g| g["name"] == group.as_str())
    })
    .await;
    let (status, group_html) = page(&format!("{url}/groups/{group}")).await;
    assert_eq!(status, 200);
    assert!(
        group_html.contains("action=\"/operate/rewind\"")
            && group_html.contains(&format!("<option value=\"{topic}\">"))
    );
    let preview = format!("{url}/operate/rewind?group={group}&topic={topic}&to=earliest");
    let get = |u: String| async move {
        let response = http().get(u).basic_auth("ana", Some("ana-pw")).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };

    // A live member: the preview names it and offers no button.
    let member: BaseConsumer = broker.settings().consumer("live-member", &group).create().unwrap();
    member.subscribe(&[&topic]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let polling = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = member.poll(Duration::from_millis(100));
            }
        })
    };
    eventually(WAIT, "the live member named", || async { get(preview.clone()).await.1.contains("data-members=\"1\"") })
        .await;
    assert!(!get(preview.clone()).await.1.contains("action=\"/operate/rewind\" class=\"confirm\""));
    // The member's joining was a rebalance the console saw, and it is listed on the group's page.
    let group_of =
        |body: Value| body["groups"].as_array().unwrap().iter().find(|g| g["name"] == group.as_str()).cloned();
    eventually(WAIT, "the join seen", || async { group_of(health(&url).await).is_some_and(|g| g["rebalances"] == 1) })
        .await;
    let html = page(&format!("{url}/groups/{group}")).await.1;
    assert!(html.contains("data-rebalances=\"1\"") && html.contains("<li>live-member@"), "{html}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    polling.join().unwrap();
    eventually(WAIT, "the leave seen", || async { group_of(health(&url).await).is_some_and(|g| g["rebalances"] == 2) })
        .await;

    // Stopped: the preview says 10 records read again; the confirmation moves the offsets.
    eventually(WAIT, "the member gone", || async { get(preview.clone()).await.1.contains("data-count=\"10\"") }).await;
    let html = get(preview.clone()).await.1;
    let form = [
        ("group", group.clone()),
        ("topic", topic.clone()),
        ("to", field(&html, "to")),
        ("expected", "10".into()),
        ("token", field(&html, "token")),
    ];
    assert_eq!(field(&html, "to"), "0:0,1:0", "the preview's targets, not a time to look up again");
    let done = confirm_as_ana(&url, "rewind", &form).await;
    assert_eq!(done.status(), 200);
    assert!(done.text().await.unwrap().contains("Done: rewind of 10 records"));
    let now = rewind::plan(&broker.settings(), &group, &topic, &Target::Earliest).unwrap();
    assert!(now.moves.iter().all(|m| m.committed == Some(0)), "{:?}", now.moves);
    // The same confirmation again: the offsets moved, nothing is read again twice.
    let again = confirm_as_ana(&url, "rewind", &form).await;
    assert_eq!(again.status(), 409);
    let audit = page(&format!("{url}/groups/{group}")).await.1;
    assert!(audit.contains("<td>ana</td><td>rewind</td>") && audit.contains("<td>done</td>"), "{audit}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orders_story_shows_its_dead_lettered_event_and_names_the_databases_it_could_not_read() {
    let bed = RuntimeBed::spawn(1).await;
    let order = uuid::Uuid::new_v4().to_string();
    let refused = bed.publish(&order, 1).await[0];
    bed.script.plan(refused, Plan::AlwaysRetry);
    let mut settings = bed.settings();
    settings.max_attempts = 1;
    let consumer = bed.start(settings);
    eventually(WAIT, "the event dead-lettered", || async { bed.broker.dead_letters().len() == 1 }).await;
    consumer.stop().await;
    // No orders database: the story reads Kafka from the topics' start and says what it lacks.
    let unreachable = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy("postgres://u:secret-pw@127.0.0.1:1/x")
        .unwrap();
    let stores = orderflow_console::story::Stores { payments: Some(unreachable), ..Default::default() };
    let (url, running) = console_on(bed.broker.settings(), stores).await;
    let (status, html) = page(&format!("{url}/orders/{order}")).await;
    assert_eq!(status, 200, "{html}");
    let dlt = bed.dlt_topic();
    assert!(html.contains(&format!("<a href=\"/dead-letters/{dlt}/0/0\">{dlt}</a>")), "the DLT record linked: {html}");
    assert!(html.contains("retries_exhausted: scripted: always fails"), "{html}");
    assert!(html.contains(&format!("<td>{}</td>", bed.topic)), "the original event too: {html}");
    assert!(html.contains("the orders database is not configured"), "{html}");
    assert!(html.contains("the payments database"), "{html}");
    assert!(!html.contains("secret-pw"), "no password on the page");
    // Not an order id: a clear 400; a customer search without the orders database says so.
    assert_eq!(page(&format!("{url}/orders/not-a-uuid")).await.0, 400);
    assert!(page(&format!("{url}/orders?q=cust-1")).await.1.contains("orders database is not configured"));
    let found = http().get(format!("{url}/orders?q={order}")).send().await.unwrap();
    assert_eq!(found.url().path(), format!("/orders/{order}"), "an order id typed in the search opens its story");
    running.stop().await;

    // The registry down (nothing listens on port 1): the record's page says so, shows its
    // reasons and its bytes.
    let codec = orderflow_schemas::EventCodec::new("http://127.0.0.1:1", Duration::from_secs(2)).unwrap();
    let (url, running) = console_with(bed.broker.settings(), vec![], Some(std::sync::Arc::new(codec)), None).await;
    eventually(WAIT, "the DLT known", || async {
        health(&url).await["dead_letters"].as_array().unwrap().iter().any(|t| t["topic"] == dlt.as_str())
    })
    .await;
    let (status, html) = page(&format!("{url}/dead-letters/{dlt}/0/0")).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Not decoded:") && html.contains("registry_unavailable"), "{html}");
    assert!(html.contains("dlt_error_class</th><td>retries_exhausted") && html.contains("000000  00"), "{html}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_page_says_which_partitions_are_paused_and_what_their_workers_wait_for() {
    let bed = RuntimeBed::spawn(1).await;
    let mut settings = bed.settings();
    settings.partition_queue = 2;
    settings.batch_size = 1;
    let consumer = bed.start(settings);
    // One record handled and committed (the group is known by its commits), then the
    // dependency stays down: the partition waits, its queue fills, it pauses.
    let first = bed.publish("k", 1).await[0];
    eventually(WAIT, "the first record committed", || async {
        bed.effects(first).await == 1 && bed.committed(0) == Some(1)
    })
    .await;
    bed.script.plan_all(Some(Plan::UnavailableTimes(1_000_000)));
    bed.publish("k", 12).await;
    let stores = orderflow_console::story::Stores { inventory: Some(bed.pool.clone()), ..Default::default() };
    let (url, running) = console_on(bed.broker.settings(), stores).await;
    let group = bed.group();
    eventually(WAIT, "the paused partition and its reason on the group's page", || async {
        let (status, html) = page(&format!("{url}/groups/{group}")).await;
        status == 200
            && html.contains(&format!(
                "{} [0]: waiting for a dependency that is down: scripted: dependency down",
                bed.topic
            ))
            && html.contains("<td class=\"paused\"><ul>")
    })
    .await;
    // Stopped, the instance removes its report.
    consumer.stop().await;
    eventually(WAIT, "the instance gone", || async {
        page(&format!("{url}/groups/{group}")).await.1.contains("No instance of this group has reported")
    })
    .await;
    running.stop().await;
}

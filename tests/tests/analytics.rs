//! Analytics under shuffled and duplicated delivery: the aggregates equal an independent count
//! of what was published, and a recount of the facts, and are served over HTTP.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use orderflow_schemas::{
    EventCodec,
    events::{
        CancelReason, DeclineReason, Event, InventoryShortage, MissingStock, Money, OrderCancelled, OrderLine,
        OrderPaid, OrderPaymentFailed, OrderPlaced,
    },
};
use orderflow_tests::{Running, TestDatabase, broker::TestBroker, intake::eventually, registry::TestRegistry};
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::FutureRecord,
};
use serde_json::Value;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);

/// A framed event with its type and key.
struct Outgoing {
    key: String,
    event_type: &'static str,
    payload: Vec<u8>,
}

async fn frame<E: Event>(codec: &EventCodec, event: &E) -> Outgoing {
    Outgoing { key: event.key(), event_type: E::NAME, payload: codec.encode_event(event).await.unwrap() }
}

/// A topic of the test's own, a registry, and the analytics database.
struct Bed {
    broker: TestBroker,
    /// `orders`, as the broker knows it.
    topic: String,
    _registry: TestRegistry,
    _db: TestDatabase,
    pool: sqlx::PgPool,
    codec: Arc<EventCodec>,
}

impl Bed {
    async fn spawn(partitions: i32) -> Bed {
        let broker = TestBroker::spawn();
        broker.create_topic("orders", partitions).await;
        let topic = broker.topic("orders");
        let registry = TestRegistry::spawn().await;
        let db = TestDatabase::create().await;
        let pool = db.pool().await;
        orderflow_analytics::migrate(&pool).await.unwrap();
        let codec = Arc::new(EventCodec::new(registry.access(), Duration::from_secs(5)).unwrap());
        Bed { broker, topic, _registry: registry, _db: db, pool, codec }
    }
}

#[derive(Default, Debug, PartialEq, Eq)]
struct Expected {
    placed: i64,
    paid: i64,
    payment_failed: i64,
    shortage: i64,
    cancelled: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aggregates_equal_a_recount_after_shuffled_and_duplicated_delivery() {
    let Bed { broker, topic, _registry, _db, pool, codec } = Bed::spawn(6).await;

    // 60 orders over about four minutes: a quarter fail payment; every fifth paid one is short
    // of stock and cancelled.
    let base: DateTime<Utc> = "2026-11-25T08:00:00Z".parse().unwrap();
    let minute = |t: DateTime<Utc>| t.duration_trunc(TimeDelta::minutes(1)).unwrap();
    let mut expected: BTreeMap<DateTime<Utc>, Expected> = BTreeMap::new();
    let mut revenue: BTreeMap<(DateTime<Utc>, String), i64> = BTreeMap::new();
    let mut outgoing = Vec::new();
    for i in 0..60i64 {
        let order_id = Uuid::new_v4();
        let placed_at = base + TimeDelta::seconds(i * 4);
        let currency = if i % 2 == 0 { "EUR" } else { "USD" };
        let total = Money { amount_minor: 1000 + i * 7, currency: currency.into() };
        let line = OrderLine { sku: "A".into(), quantity: 1, unit_price_minor: total.amount_minor };
        let placed = OrderPlaced {
            order_id,
            customer_id: format!("c-{i}"),
            lines: vec![line.clone()],
            total: total.clone(),
            placed_at,
            customer_email: None,
        };
        outgoing.push(frame(&codec, &placed).await);
        expected.entry(minute(placed_at)).or_default().placed += 1;
        let settled_at = placed_at + TimeDelta::seconds(25);
        if i % 4 == 3 {
            let failed = OrderPaymentFailed {
                order_id,
                payment_id: Uuid::new_v4(),
                customer_id: placed.customer_id.clone(),
                reason: DeclineReason::CardDeclined,
                message: None,
                failed_at: settled_at,
            };
            outgoing.push(frame(&codec, &failed).await);
            expected.entry(minute(settled_at)).or_default().payment_failed += 1;
            continue;
        }
        let paid = OrderPaid {
            order_id,
            payment_id: Uuid::new_v4(),
            customer_id: placed.customer_id.clone(),
            lines: vec![line],
            amount: total.clone(),
            paid_at: settled_at,
        };
        let payload = codec.encode(OrderPaid::schema(), paid.to_avro().unwrap()).await.unwrap();
        outgoing.push(Outgoing { key: paid.key(), event_type: OrderPaid::NAME, payload });
        expected.entry(minute(settled_at)).or_default().paid += 1;
        *revenue.entry((minute(settled_at), currency.to_string())).or_default() += total.amount_minor;
        if i % 5 == 0 {
            let short_at = settled_at + TimeDelta::seconds(3);
            let missing = vec![MissingStock { sku: "A".into(), requested: 1, available: 0 }];
            outgoing.push(frame(&codec, &InventoryShortage { order_id, missing, detected_at: short_at }).await);
            let cancelled = OrderCancelled {
                order_id,
                customer_id: placed.customer_id.clone(),
                reason: CancelReason::InventoryShortage,
                refund_required: true,
                cancelled_at: short_at,
            };
            outgoing.push(frame(&codec, &cancelled).await);
            expected.entry(minute(short_at)).or_default().shortage += 1;
            expected.entry(minute(short_at)).or_default().cancelled += 1;
        }
    }
    // Every event twice, under two event ids, in a shuffled order (a later step of an order
    // often arrives before its OrderPlaced).
    let mut deliveries: Vec<usize> = (0..outgoing.len()).chain(0..outgoing.len()).collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..deliveries.len()).rev() {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        deliveries.swap(i, (state >> 33) as usize % (i + 1));
    }
    let producer = broker.producer();
    for index in &deliveries {
        let event = &outgoing[*index];
        let id = Uuid::now_v7().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "event_id", value: Some(&id) })
            .insert(Header { key: "event_type", value: Some(event.event_type) });
        let record = FutureRecord::to(&topic).key(&event.key).payload(&event.payload).headers(headers);
        producer.send(record, WAIT).await.unwrap();
    }

    let mut settings =
        orderflow_consumer_runtime::ConsumerSettings::new(orderflow_analytics::GROUP, &["orders"], broker.settings());
    settings.lag_interval = Duration::from_millis(200);
    let (p, c) = (pool.clone(), codec.clone());
    let _consumer = Running::spawn(move |stop| {
        orderflow_consumer_runtime::run(settings, p, c, orderflow_analytics::AnalyticsHandler, stop)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let routes = orderflow_analytics::http::router(pool.clone());
    let _http = Running::spawn(move |stop| async move {
        axum::serve(listener, routes).with_graceful_shutdown(stop).await?;
        Ok(())
    });

    let processed = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM processed_events").fetch_one(&pool).await.unwrap()
    };
    eventually(WAIT, "every delivery handled", || async { processed().await == deliveries.len() as i64 }).await;

    let range = orderflow_analytics::Range::all();
    let (counts, stored_revenue) = orderflow_analytics::aggregates(&pool, range).await.unwrap();
    let got: BTreeMap<DateTime<Utc>, Expected> = counts
        .iter()
        .map(|c| {
            let figures = Expected {
                placed: c.placed,
                paid: c.paid,
                payment_failed: c.payment_failed,
                shortage: c.shortage,
                cancelled: c.cancelled,
            };
            (c.minute, figures)
        })
        .collect();
    assert_eq!(got, expected, "per-minute counts equal what was published, once each");
    let got_revenue: BTreeMap<(DateTime<Utc>, String), i64> =
        stored_revenue.iter().map(|r| ((r.minute, r.currency.clone()), r.revenue_minor)).collect();
    assert_eq!(got_revenue, revenue, "revenue per minute and currency");
    assert_eq!(orderflow_analytics::recount(&pool, range).await.unwrap(), (counts, stored_revenue), "recount");

    // The HTTP side.
    let check: Value =
        orderflow_tests::http().get(format!("{url}/aggregates/check")).send().await.unwrap().json().await.unwrap();
    assert_eq!(check["consistent"], true, "{check}");
    let window = "from=2026-11-25T08:00:00Z&to=2026-11-25T09:00:00Z";
    let body: Value =
        orderflow_tests::http().get(format!("{url}/aggregates?{window}")).send().await.unwrap().json().await.unwrap();
    let minutes = body["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), expected.len());
    let placed: i64 = minutes.iter().map(|m| m["placed"].as_i64().unwrap()).sum();
    assert_eq!(placed, 60);
    assert!(minutes.iter().any(|m| m["payment_failure_rate"].as_f64().is_some_and(|r| r > 0.0)), "{body}");
    let funnel: Value =
        orderflow_tests::http().get(format!("{url}/funnel?{window}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(funnel["placed"], 60);
    assert_eq!(funnel["paid"], 45);
    assert_eq!(funnel["stocked"], 45 - expected.values().map(|e| e.shortage).sum::<i64>());
    let bad = orderflow_tests::http().get(format!("{url}/aggregates?from=yesterday")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("RFC 3339"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amounts_past_the_order_contract_are_dead_lettered_at_once_and_the_partition_goes_on() {
    // Two OrderPaid of 2^62 minor units in one minute and currency, framed by a producer that
    // skips the contract (as Confluent's serializer would): valid Avro longs whose sum would
    // overflow the minute's bigint revenue (SQLSTATE 22003). Before, every database error was
    // "unavailable" and the partition waited for ever behind the second one; now both break
    // the order contract and go to the DLT before any statement runs.
    let Bed { broker, topic, _registry, _db, pool, codec } = Bed::spawn(1).await;

    let at: DateTime<Utc> = "2026-11-25T10:00:05Z".parse().unwrap();
    let mut outgoing = Vec::new();
    let mut after = Vec::new();
    for (i, amount) in [1i64 << 62, 1 << 62, 500, 700, 900].into_iter().enumerate() {
        let order_id = Uuid::new_v4();
        let total = Money { amount_minor: amount, currency: "EUR".into() };
        let paid = OrderPaid {
            order_id,
            payment_id: Uuid::new_v4(),
            customer_id: format!("c-{i}"),
            lines: vec![OrderLine { sku: "A".into(), quantity: 1, unit_price_minor: amount }],
            amount: total,
            paid_at: at + TimeDelta::seconds(i as i64),
        };
        if i >= 2 {
            after.push(order_id);
        }
        let payload = codec.encode(OrderPaid::schema(), paid.to_avro().unwrap()).await.unwrap();
        outgoing.push(Outgoing { key: paid.key(), event_type: OrderPaid::NAME, payload });
    }
    let producer = broker.producer();
    let mut ids = Vec::new();
    for event in &outgoing {
        let id = Uuid::now_v7().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "event_id", value: Some(&id) })
            .insert(Header { key: "event_type", value: Some(event.event_type) });
        ids.push(id.clone());
        let record = FutureRecord::to(&topic).key(&event.key).payload(&event.payload).headers(headers).partition(0);
        producer.send(record, WAIT).await.unwrap();
    }

    let mut settings =
        orderflow_consumer_runtime::ConsumerSettings::new(orderflow_analytics::GROUP, &["orders"], broker.settings());
    settings.max_attempts = 3;
    settings.backoff_base = Duration::from_millis(50);
    settings.backoff_cap = Duration::from_millis(200);
    let (p, c) = (pool.clone(), codec.clone());
    let _consumer = Running::spawn(move |stop| {
        orderflow_consumer_runtime::run(settings, p, c, orderflow_analytics::AnalyticsHandler, stop)
    });

    // The records behind the overflow on the same partition are counted.
    let facts = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM order_facts WHERE order_id = ANY($1)")
            .bind(&after)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    eventually(WAIT, "the orders after the overflow counted", || async { facts().await == 3 }).await;
    let kafka = broker.settings();
    let dlt = broker.topic("orders.analytics.DLT");
    let mut letters = Vec::new();
    eventually(WAIT, "both overflowing records in the DLT", || {
        letters = orderflow_consumer_runtime::dlt_tools::read(&kafka, &dlt).unwrap_or_default();
        let found = letters.len() >= 2;
        async move { found }
    })
    .await;
    assert_eq!(letters.len(), 2, "only the two events past the contract are refused");
    for (dead, id) in letters.iter().zip(&ids) {
        assert_eq!(dead.error_class, "contract_violation", "{}", dead.error_message);
        assert!(dead.error_message.contains("/amount/amount_minor"), "{}", dead.error_message);
        assert_eq!(dead.attempts.as_deref(), Some("1"), "poison is not tried again");
        assert_eq!(orderflow_tests::broker::header(&dead.message, "event_id").as_deref(), Some(id.as_str()));
    }

    let range = orderflow_analytics::Range::all();
    let (counts, revenue) = orderflow_analytics::aggregates(&pool, range).await.unwrap();
    assert_eq!(revenue.iter().map(|r| r.revenue_minor).sum::<i64>(), 500 + 700 + 900);
    assert_eq!(orderflow_analytics::recount(&pool, range).await.unwrap(), (counts, revenue), "recount");
}

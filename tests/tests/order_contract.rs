//! One order contract from the edge to the last consumer: random intake bodies within every
//! limit of `orderflow_schemas::contract` — boundary values weighted in, free lines, duplicate
//! SKUs, unicode ids, any currency — go through the whole pipeline (order-api, relays, payment,
//! inventory, order-service, notifications, analytics), and no record of theirs is ever
//! dead-lettered. The seed is printed; `ORDERFLOW_CONTRACT_SEED=<n>` replays a run.

use std::time::Duration;

use orderflow_schemas::contract::{
    MAX_EMAIL_CHARS, MAX_ID_CHARS, MAX_LINES, MAX_QUANTITY, MAX_TOTAL_MINOR, MAX_UNIT_PRICE_MINOR,
};
use orderflow_tests::{intake::eventually, stack::TestStack};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Value, json};
use uuid::Uuid;

const ORDERS: usize = 40;
const WAIT: Duration = Duration::from_secs(180);
/// SKUs with plenty of stock; any other SKU is short, so some paid orders are refunded.
const STOCKED: [&str; 4] = ["P-1", "P-2", "P-3", "P-4"];

/// Characters ids are drawn from: ASCII, accents, CJK, an emoji, inner spaces.
const ALPHABET: &[char] =
    &['a', 'Z', '0', '9', '-', '_', '.', ' ', 'é', 'ß', 'Ω', '東', '京', '🛒', '\'', '"', '\\', '/'];

fn id(rng: &mut StdRng, max: usize) -> String {
    let len = *[1, max, rng.random_range(1..=max)].choose(rng).unwrap();
    let mut s: String = (0..len).map(|_| *ALPHABET.choose(rng).unwrap()).collect();
    if s.trim().is_empty() {
        s.replace_range(..1, "x");
    }
    s
}

fn boundary(rng: &mut StdRng, min: i64, max: i64) -> i64 {
    match rng.random_range(0..4) {
        0 => min,
        1 => max,
        _ => rng.random_range(min..=max),
    }
}

/// A body the contract accepts: each line within its limits, the total from 1 to the cap.
fn body(rng: &mut StdRng) -> Value {
    let lines = *[1, MAX_LINES, rng.random_range(1..=8)].choose(rng).unwrap();
    let mut items: Vec<(String, i64, i64)> = (0..lines)
        .map(|_| {
            let sku =
                if rng.random_bool(0.7) { STOCKED.choose(rng).unwrap().to_string() } else { id(rng, MAX_ID_CHARS) };
            (sku, boundary(rng, 1, MAX_QUANTITY), boundary(rng, 0, MAX_UNIT_PRICE_MINOR))
        })
        .collect();
    let total: i128 = items.iter().map(|(_, q, p)| i128::from(*q) * i128::from(*p)).sum();
    if total > i128::from(MAX_TOTAL_MINOR) {
        // Scale the prices down until the total fits (each stays within its own limit).
        for (_, _, price) in &mut items {
            *price = (i128::from(*price) * i128::from(MAX_TOTAL_MINOR) / total) as i64;
        }
    }
    if items.iter().all(|(_, _, p)| *p == 0) {
        items[0].2 = 1;
    }
    let customer = match rng.random_range(0..6) {
        0 => format!("decline-{}", id(rng, 20)),
        1 => format!("nofunds-{}", id(rng, 20)),
        _ => id(rng, MAX_ID_CHARS),
    };
    let email = match rng.random_range(0..3) {
        0 => Value::Null,
        1 => json!(format!("{}@example.com", "a".repeat(MAX_EMAIL_CHARS - "@example.com".len()))),
        _ => json!(format!("buyer.{}@shop.example", rng.random_range(0..1000))),
    };
    let currency: String = (0..3).map(|_| rng.random_range(b'A'..=b'Z') as char).collect();
    json!({
        "customer_id": customer,
        "customer_email": email,
        "currency": currency,
        "items": items.into_iter().map(|(sku, quantity, price)| json!({"sku": sku, "quantity": quantity, "unit_price_minor": price})).collect::<Vec<_>>(),
    })
}

/// The orders at the exact edges of the contract, whatever the seed.
fn edges() -> Vec<Value> {
    let line = |quantity: i64, price: i64| json!({"sku": "P-1", "quantity": quantity, "unit_price_minor": price});
    vec![
        json!({"customer_id": "edge-max", "currency": "EUR", "items": [line(100, MAX_TOTAL_MINOR / 100)]}),
        json!({"customer_id": "edge-one", "currency": "EUR", "items": [line(1, 1), line(MAX_QUANTITY, 0)]}),
        json!({"customer_id": "e".repeat(MAX_ID_CHARS), "currency": "JPY",
            "items": (0..MAX_LINES).map(|_| line(MAX_QUANTITY, 1)).collect::<Vec<_>>()}),
    ]
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_valid_orders_through_the_whole_pipeline_are_never_dead_lettered() {
    let seed = std::env::var("ORDERFLOW_CONTRACT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("ORDERFLOW_CONTRACT_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stack = TestStack::spawn().await;
    stack.start_notifications(Duration::from_secs(5)).await;
    stack.start_analytics().await;
    stack.stock(&STOCKED.map(|sku| (sku, i32::MAX / 2))).await;

    let mut bodies = edges();
    bodies.extend((0..ORDERS).map(|_| body(&mut rng)));
    let mut orders = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let response = stack.api.post_order(Some(&format!("contract-{seed}-{i}")), body).await;
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, 202, "seed {seed}: a body within the contract was refused: {answer}\n{body}");
        orders.push(answer["order_id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    let n = orders.len() as i64;

    // Every order settled everywhere: a final status, a stock decision for every paid order,
    // every message sent, every step counted. Only then is "no dead letter" a finding.
    let api = stack.api.pool.clone();
    eventually(WAIT, "every order in a final status", || async {
        count(&api, "SELECT count(*) FROM orders WHERE status IN ('PAID', 'PAYMENT_FAILED', 'REFUNDED')").await == n
    })
    .await;
    let (inventory, notifications) = (stack.inventory.clone(), stack.notifications.as_ref().unwrap().pool.clone());
    let analytics = stack.analytics.as_ref().unwrap().pool.clone();
    eventually(WAIT, "every paid order's stock decided, message sent and step counted", || async {
        let paid = count(&api, "SELECT count(*) FROM orders WHERE status = 'PAID'").await;
        let failed = count(&api, "SELECT count(*) FROM orders WHERE status = 'PAYMENT_FAILED'").await;
        let refunded = count(&api, "SELECT count(*) FROM orders WHERE status = 'REFUNDED'").await;
        let decided = count(&inventory, "SELECT count(*) FROM reservations").await;
        let sent = count(&notifications, "SELECT count(*) FROM notifications WHERE status = 'SENT'").await;
        let (counts, _) = orderflow_analytics::aggregates(&analytics, orderflow_analytics::Range::all()).await.unwrap();
        let steps: (i64, i64, i64, i64) = counts
            .iter()
            .fold((0, 0, 0, 0), |(p, d, f, c), m| (p + m.placed, d + m.paid, f + m.payment_failed, c + m.cancelled));
        decided == paid + refunded
            && sent == paid + failed + 2 * refunded
            && steps == (n, paid + refunded, failed, refunded)
    })
    .await;

    let letters = stack.broker.dead_letters();
    let described: Vec<String> =
        letters.iter().map(|(topic, l)| format!("{topic}: {} {}", l.error_class, l.error_message)).collect();
    assert!(letters.is_empty(), "seed {seed}: valid orders were dead-lettered:\n{}", described.join("\n"));
    let outcomes = count(&api, "SELECT count(DISTINCT status) FROM orders").await;
    assert!(outcomes >= 2, "seed {seed}: the run should reach more than one final status");
}

//! Shared by the demo and the benchmark: sample orders and an order-api client.

pub mod connect;
pub mod consumer_bench;
pub mod drill;
pub mod issuer;
pub mod kafka_cli;
pub mod payment_bench;

use rand::{Rng, seq::IndexedRandom};
use serde_json::{Value, json};

/// The SKUs sample orders buy (`scripts/lib.sh` stocks each for the demo).
pub const SKUS: [&str; 8] =
    ["TEE-BLK-M", "TEE-WHT-L", "MUG-CLASSIC", "CAP-NAVY", "SOCK-3PK", "HOODIE-GRY-S", "BAG-TOTE", "PIN-ENAMEL"];

/// A plausible order; `decline_share` of them come from customers the simulator declines.
pub fn sample_order(rng: &mut impl Rng, decline_share: f64) -> Value {
    let customer = if rng.random_bool(decline_share) {
        format!("decline-{}", rng.random_range(1000..9999))
    } else {
        format!("cust-{}", rng.random_range(10_000..99_999))
    };
    let lines: Vec<Value> = (0..rng.random_range(1..4))
        .map(|_| {
            json!({
                "sku": SKUS.choose(rng).unwrap(),
                "quantity": rng.random_range(1..4),
                "unit_price_minor": rng.random_range(199..9_999),
            })
        })
        .collect();
    json!({ "customer_id": customer, "customer_email": format!("{customer}@example.com"), "currency": "EUR", "items": lines })
}

/// Hands `record` to the producer, waiting while its local queue is full; the returned future
/// resolves with the broker's acknowledgement.
pub async fn send_queued(
    producer: &rdkafka::producer::FutureProducer,
    mut record: rdkafka::producer::FutureRecord<'_, String, [u8]>,
) -> rdkafka::producer::DeliveryFuture {
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return delivery,
            Err((_, returned)) => {
                record = returned;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
    }
}

/// Posts one order with a fresh Idempotency-Key; returns the HTTP status (0 when no answer).
pub async fn post_order(http: &reqwest::Client, api: &str, body: &Value) -> u16 {
    http.post(format!("{api}/orders"))
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

//! The small drain drill (docs/failure-catalog.md §8 at test scale; the full 50,000-order drill is
//! `scripts/drill.sh`): 2,000 orders pile up while the provider is down; two payment instances
//! start into the outage, then the provider comes back. The backlog drains with the provider's
//! limit never exceeded, no order charged twice, nothing dead-lettered, none left pending.

use std::time::{Duration, Instant};

use futures::StreamExt;
use orderflow_tests::{intake::eventually, stack::TestStack};
use orderflow_tools::drill::{DrillReport, duplicate_charges};
use serde_json::json;

const ORDERS: u64 = 2_000;
const LIMIT: u32 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_drains_after_an_outage_at_the_providers_limit_with_two_instances() {
    let mut stack = TestStack::spawn_without_payment().await;
    let stock: Vec<(&str, i32)> = orderflow_tools::SKUS.iter().map(|sku| (*sku, 10_000_000)).collect();
    stack.stock(&stock).await;
    let down = stack.simulator.faults(json!({"mode": "down", "rate_limit_per_sec": LIMIT})).await;
    assert_eq!(down.status(), 200);

    // The backlog: every order accepted while payments cannot happen.
    let api = &stack.api;
    let placed: Vec<u16> = futures::stream::iter(0..ORDERS)
        .map(|i| async move {
            let body = orderflow_tools::sample_order(&mut rand::rng(), 0.02);
            api.post_order(Some(&format!("drill-{i}")), &body).await.status().as_u16()
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(placed.iter().all(|s| *s == 202), "every order accepted");
    eventually(Duration::from_secs(120), "the backlog is in Kafka", || async {
        stack.api.count("SELECT count(*) FROM outbox").await == 0
    })
    .await;

    // Two instances start into the outage; their breakers open.
    let mut instances = Vec::new();
    for _ in 0..2 {
        let mut provider = stack.provider_settings();
        provider.rate_limit_per_sec = Some(f64::from(LIMIT));
        instances.push(stack.start_payment(provider).await);
    }
    eventually(Duration::from_secs(60), "a breaker opens", || async {
        instances.iter().any(|name| stack.metrics_text(name).contains(r#"breaker_transitions_total{to="open"}"#))
    })
    .await;

    let up = stack.simulator.faults(json!({"rate_limit_per_sec": LIMIT})).await;
    assert_eq!(up.status(), 200);
    let started = Instant::now();
    let start_second = chrono::Utc::now().timestamp();
    eventually(Duration::from_secs(300), "every order has its payment", || async {
        let payments: i64 =
            sqlx::query_scalar("SELECT count(*) FROM payments").fetch_one(&stack.payments).await.unwrap();
        payments as u64 == ORDERS
    })
    .await;
    let drain_secs = started.elapsed().as_secs_f64();
    eventually(Duration::from_secs(300), "no order left pending", || async {
        stack.api.count("SELECT count(*) FROM orders WHERE status = 'PENDING_PAYMENT'").await == 0
    })
    .await;
    let mut report = DrillReport {
        orders: ORDERS,
        instances: instances.len(),
        limit: f64::from(LIMIT),
        drain_secs,
        settled_secs: started.elapsed().as_secs_f64(),
        ..Default::default()
    };
    report.provider_view(&stack.simulator.stats().await, start_second, chrono::Utc::now().timestamp());
    for name in &instances {
        report.add_instance_metrics(&stack.metrics_text(name));
    }
    report.duplicate_charges = duplicate_charges(&stack.simulator.ledger().await);
    println!("{report}");

    assert_eq!(report.duplicate_charges, 0);
    assert_eq!(report.rate_limited, 0, "the provider never refused a request");
    assert!(report.peak_rps <= u64::from(LIMIT), "peak {} req/s", report.peak_rps);
    assert_eq!(report.dead_lettered, 0, "the outage paused consumption; it burnt nothing into the DLT");
    assert!(report.breaker_openings >= 1);
    let charges = stack.simulator.ledger().await.into_iter().filter(|e| e.kind == "charge").count();
    assert_eq!(charges as u64, ORDERS, "every order charged (or declined) once");
}

//! The payment path through every provider fault the simulator injects: once the fault clears,
//! every order is PAID and charged exactly once per the provider's ledger, and nothing was
//! dead-lettered.

use std::time::Duration;

use orderflow_tests::{intake::eventually, stack::TestStack};
use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_provider_fault_ends_with_each_order_paid_and_charged_once() {
    let stack = TestStack::spawn().await;
    // The stack's payment client gives up after 2 s; `hang` holds answers for 3 s.
    let faults = [
        json!({"mode": "unavailable"}),
        json!({"mode": "latency", "delay_ms": 300}),
        json!({"mode": "hang", "delay_ms": 3000}),
        json!({"mode": "fail_after_charge"}),
        json!({"mode": "error_payload"}),
        json!({"mode": "api_version_mismatch"}),
        json!({"transient_timeout_pct": 50, "delay_ms": 3000, "seed": 3}),
        json!({"rate_limit_per_sec": 1}),
    ];
    let mut orders: Vec<Uuid> = Vec::new();
    for (n, fault) in faults.iter().enumerate() {
        let response = stack.simulator.faults(fault.clone()).await;
        assert_eq!(response.status(), 200, "{fault}");
        let keys: Vec<String> = (0..3).map(|i| format!("fault-{n}-{i}")).collect();
        let placed: Vec<Uuid> = futures::future::join_all(keys.iter().map(|k| stack.api.place(k))).await;
        // Let the payment service meet the fault, then clear it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        stack.simulator.faults(json!({"mode": "none"})).await;
        for order in &placed {
            stack.wait_for_status(*order, "PAID", WAIT).await;
        }
        orders.extend(placed);
    }
    let ledger = stack.simulator.ledger().await;
    for order in &orders {
        let key = orderflow_payment::charge_key(*order);
        let charges = ledger.iter().filter(|e| e.idempotency_key == key).count();
        assert_eq!(charges, 1, "order {order} charged once");
    }
    assert_eq!(ledger.iter().filter(|e| e.kind == "charge").count(), orders.len(), "no other charge");
    eventually(WAIT, "payment metrics", || async { !stack.metrics_text("payment").is_empty() }).await;
    let metrics = stack.metrics_text("payment");
    assert!(!metrics.contains(r#"outcome="dead_lettered""#), "nothing dead-lettered: {metrics}");
    assert!(metrics.contains(r#"outcome="waited_for_dependency""#), "the faults were met: {metrics}");
}

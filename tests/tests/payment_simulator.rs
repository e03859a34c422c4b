//! The payment-provider simulator's faults, each checked against its ledger: what the caller
//! sees, and whether the charge happened.

use std::time::{Duration, Instant};

use orderflow_tests::stack::TestSimulator;
use serde_json::{Value, json};

fn charge_body(customer: &str) -> Value {
    json!({ "amount_minor": 1250, "currency": "EUR", "customer": customer, "reference": "order-x" })
}

async fn charge(
    sim: &TestSimulator,
    key: &str,
    timeout: Duration,
) -> Result<(u16, Value, Option<String>), reqwest::Error> {
    let client = orderflow_http::client().timeout(timeout).build().unwrap();
    let response = client
        .post(format!("{}/v1/charges", sim.url))
        .bearer_auth(&sim.api_key)
        .header("Idempotency-Key", key)
        .json(&charge_body("cust-1"))
        .send()
        .await?;
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    Ok((status, response.json().await.unwrap_or(Value::Null), retry_after))
}

async fn charged(sim: &TestSimulator, key: &str) -> usize {
    sim.ledger().await.iter().filter(|e| e.idempotency_key == key).count()
}

const SHORT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn each_fault_mode_answers_as_documented_and_the_ledger_says_whether_money_moved() {
    let sim = TestSimulator::spawn().await;

    assert_eq!(sim.faults(json!({"mode": "unavailable"})).await.status(), 200);
    let (status, _, _) = charge(&sim, "k-unavailable", SHORT).await.unwrap();
    assert_eq!((status, charged(&sim, "k-unavailable").await), (503, 0));

    sim.faults(json!({"mode": "api_version_mismatch"})).await;
    let (status, body, _) = charge(&sim, "k-version", SHORT).await.unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("api_version_mismatch")));
    assert_eq!(charged(&sim, "k-version").await, 0);

    sim.faults(json!({"mode": "fail_after_charge"})).await;
    let (status, _, _) = charge(&sim, "k-500", SHORT).await.unwrap();
    assert_eq!((status, charged(&sim, "k-500").await), (500, 1), "a 500 that charged");

    sim.faults(json!({"mode": "error_payload"})).await;
    let (status, body, _) = charge(&sim, "k-payload", SHORT).await.unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (200, Some("processing_error")));
    assert_eq!(charged(&sim, "k-payload").await, 1, "a 200 with an error body that charged");

    sim.faults(json!({"mode": "latency", "delay_ms": 300})).await;
    let started = Instant::now();
    let (status, _, _) = charge(&sim, "k-slow", SHORT).await.unwrap();
    assert!(status == 200 && started.elapsed() >= Duration::from_millis(300));

    sim.faults(json!({"mode": "hang", "delay_ms": 2000})).await;
    let timed_out = charge(&sim, "k-hang", Duration::from_millis(300)).await;
    assert!(timed_out.is_err_and(|e| e.is_timeout()), "the client gives up");
    assert_eq!(charged(&sim, "k-hang").await, 1, "the charge happened behind the hang");

    // Back to normal: the same keys give the stored results, never a second charge.
    sim.faults(json!({"mode": "none"})).await;
    for key in ["k-500", "k-payload", "k-hang"] {
        let (status, body, _) = charge(&sim, key, SHORT).await.unwrap();
        assert_eq!((status, body["status"].as_str()), (200, Some("approved")), "{key}");
        assert_eq!(charged(&sim, key).await, 1, "{key}");
    }
    let (status, _, _) = charge(&sim, "k-unavailable", SHORT).await.unwrap();
    assert_eq!((status, charged(&sim, "k-unavailable").await), (200, 1));
}

#[tokio::test]
async fn transient_timeouts_follow_the_seed_and_the_rate_limit_answers_429_with_retry_after() {
    let sim = TestSimulator::spawn().await;
    let pattern = |run: &'static str| {
        let sim = &sim;
        async move {
            // A hung request answers after 3 s; the client waits 800 ms, far more than a normal
            // answer takes even on a loaded machine.
            sim.faults(json!({"transient_timeout_pct": 30.0, "delay_ms": 3000, "seed": 7})).await;
            let mut timeouts = Vec::new();
            for i in 0..20 {
                let outcome = charge(sim, &format!("{run}-{i}"), Duration::from_millis(800)).await;
                timeouts.push(outcome.is_err());
            }
            timeouts
        }
    };
    let first = pattern("a").await;
    let second = pattern("b").await;
    assert_eq!(first, second, "the same seed, the same requests time out");
    let share = first.iter().filter(|t| **t).count();
    assert!((2..=12).contains(&share), "about 30% of 20 time out, got {share}");

    let bad = sim.faults(json!({"transient_timeout_pct": 150.0, "delay_ms": 10})).await;
    assert_eq!(bad.status(), 400, "an impossible share is refused");
    sim.faults(json!({"rate_limit_per_sec": 5})).await;
    let started = std::time::Instant::now();
    let answers = futures::future::join_all((0..12).map(|i| {
        let key = format!("rl-{i}");
        let sim = &sim;
        async move { charge(sim, &key, SHORT).await.unwrap() }
    }))
    .await;
    // At most 5 per one-second window; a busy machine may spread the 12 over more windows, so
    // the bound counts the windows they touched (not a timing assertion).
    let windows = started.elapsed().as_secs() as usize + 2;
    let limited: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    assert!(12 - limited.len() <= 5 * windows, "at most 5 per second get through: {answers:?}");
    assert!(!limited.is_empty() || 5 * windows >= 12, "the limit refused none: {answers:?}");
    assert!(limited.iter().all(|a| a.2.as_deref() == Some("1")), "Retry-After: 1");
    let keys_charged = sim.ledger().await.iter().filter(|e| e.idempotency_key.starts_with("rl-")).count();
    assert_eq!(keys_charged, 12 - limited.len(), "a 429 charges nothing");
}

#[tokio::test]
async fn down_refuses_connections_and_a_reset_after_the_charge_leaves_the_charge_in_the_ledger() {
    let sim = TestSimulator::spawn().await;
    // A client with a pooled keep-alive connection, as the payment service has.
    let (status, _, _) = charge(&sim, "k-before", SHORT).await.unwrap();
    assert_eq!(status, 200);

    assert_eq!(sim.faults(json!({"mode": "down"})).await.status(), 200);
    let refused = charge(&sim, "k-down", SHORT).await.expect_err("the port is closed");
    assert!(refused.is_connect(), "connection refused, not a timeout: {refused:?}");
    assert_eq!(charged(&sim, "k-down").await, 0);
    sim.faults(json!({"mode": "none"})).await;
    let (status, _, _) = charge(&sim, "k-after-down", SHORT).await.unwrap();
    assert_eq!(status, 200, "the port is open again");

    sim.faults(json!({"mode": "reset_after_charge"})).await;
    let reset = charge(&sim, "k-reset", SHORT).await.expect_err("no answer");
    assert!(!reset.is_timeout(), "a reset, not a timeout: {reset:?}");
    assert_eq!(charged(&sim, "k-reset").await, 1, "the charge happened before the reset");

    // Scope: a refund-only fault leaves charges alone.
    sim.faults(json!({"mode": "unavailable", "scope": "refunds"})).await;
    let (status, _, _) = charge(&sim, "k-scoped", SHORT).await.unwrap();
    assert_eq!(status, 200);

    let stats = sim.stats().await;
    assert_eq!(stats.requests, 4, "every request that reached the API (not the refused one): {stats:?}");
    assert_eq!(stats.rate_limited, 0);
}

#[tokio::test]
async fn the_api_port_serves_only_the_providers_api_to_holders_of_its_key_and_unknown_modes_are_refused() {
    let sim = TestSimulator::spawn().await;
    let http = orderflow_tests::http();
    // Whoever can charge cannot see the ledger or make the provider fail.
    for (method, path) in
        [("PUT", "/admin/faults"), ("GET", "/admin/faults"), ("GET", "/ledger"), ("GET", "/admin/stats")]
    {
        let request = http.request(method.parse().unwrap(), format!("{}{path}", sim.url));
        let request = if method == "PUT" { request.json(&json!({"mode": "down"})) } else { request };
        assert_eq!(request.send().await.unwrap().status(), 404, "{method} {path} on the API port");
    }
    assert_eq!(orderflow_tests::http().get(format!("{}/healthz", sim.url)).send().await.unwrap().status(), 200);
    // The provider's API wants its key: none, or another, is a 401 and charges nothing.
    for key in [None, Some("sk_test_not_ours")] {
        let request = http.post(format!("{}/v1/charges", sim.url)).header("Idempotency-Key", "no-key");
        let request = match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        let response = request.json(&charge_body("cust-1")).send().await.unwrap();
        assert_eq!(response.status(), 401, "{key:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    assert_eq!(charged(&sim, "no-key").await, 0);
    let response = sim.faults(json!({"mode": "bogus"})).await;
    assert_eq!(response.status(), 400, "an unknown mode is a clear error");
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("unknown variant"), "{body}");
}

#[test]
fn both_simulators_admin_ports_listen_on_loopback_unless_told_otherwise() {
    for (binary, flag, default) in [
        ("payment-simulator", "--admin-listen", "127.0.0.1:8089"),
        ("notification-simulator", "--admin-listen", "127.0.0.1:8092"),
    ] {
        let help = std::process::Command::new(orderflow_tests::binary(binary)).arg("--help").output().unwrap();
        let help = String::from_utf8(help.stdout).unwrap();
        let line = help.lines().skip_while(|l| !l.contains(flag)).take(6).collect::<Vec<_>>().join(" ");
        assert!(line.contains(&format!("[default: {default}]")), "{binary}: {line}");
    }
}

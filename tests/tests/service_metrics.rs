//! What the services tell Prometheus, on the real stack: order-api's rate, latency and status per
//! route (route templates, never an order id), each relay's published events and backlog, and
//! the accept → paid latency.

use std::time::Duration;

use orderflow_tests::{
    consumer::metric,
    intake::{TestApi, eventually, sample_order},
    stack::TestStack,
};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_shows_in_the_apis_routes_the_relays_counts_and_the_accept_to_paid_latency() {
    let stack = TestStack::spawn_without_inventory().await;
    let order = stack.api.place("metrics-1").await;
    stack.wait_for_status(order, "PAID", WAIT).await;
    assert_eq!(stack.api.get(&format!("/orders/{order}")).await.status(), 200);
    assert_eq!(stack.api.get("/nowhere").await.status(), 404);

    let api = stack.api.get("/metrics").await.text().await.unwrap();
    let requests = |method: &str, route: &str, status: u16| {
        metric(
            &api,
            &format!(
                r#"orderflow_http_requests_total{{method="{method}",route="{route}",service="order-api",status="{status}"}}"#
            ),
        )
    };
    assert_eq!(requests("POST", "/orders", 202), 1.0, "{api}");
    assert!(requests("GET", "/orders/{order_id}", 200) >= 1.0, "{api}");
    assert_eq!(requests("GET", "unmatched", 404), 1.0, "{api}");
    assert!(!api.contains(&order.to_string()), "an order id never becomes a label");
    assert!(
        metric(&api, r#"orderflow_http_request_seconds_count{method="POST",route="/orders",service="order-api"}"#)
            >= 1.0
    );

    // The registry counts its requests per route template too (the codec looked schemas up).
    let registry =
        stack.api.http.get(format!("{}/metrics", stack.api.registry.url)).send().await.unwrap().text().await.unwrap();
    let registry_requests: f64 = registry
        .lines()
        .filter(|l| l.starts_with("orderflow_http_requests_total{") && l.contains(r#"service="registry""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(registry_requests >= 1.0, "{registry}");
    assert!(!registry.contains("route=\"/subjects/orders-"), "subjects stay out of route labels: {registry}");

    let service = stack.metrics_text("order-service");
    assert_eq!(metric(&service, "orderflow_order_accept_to_paid_seconds_count"), 1.0, "{service}");
    assert!(metric(&service, "orderflow_order_accept_to_paid_seconds_sum") > 0.0);

    // The orders outbox held OrderPlaced then OrderPaid; both published, nothing left.
    let relay = &stack.relays[0].registry;
    eventually(WAIT, "both events published and the backlog sampled empty", || async {
        let text = orderflow_platform::metrics::render(relay);
        metric(&text, r#"orderflow_outbox_published_total{outbox="orders"}"#) == 2.0
            && text.contains(r#"orderflow_outbox_pending_rows{outbox="orders"} 0"#)
            && text.contains(r#"orderflow_outbox_oldest_age_seconds{outbox="orders"} 0"#)
    })
    .await;
}

#[tokio::test]
async fn an_outbox_nobody_relays_shows_its_backlog_and_its_age() {
    let api = TestApi::spawn().await;
    for i in 0..3 {
        let response = api.post_order(Some(&format!("unrelayed-{i}")), &sample_order("c-1")).await;
        assert_eq!(response.status(), 202);
    }
    let registry = prometheus::Registry::new();
    let metrics = orderflow_outbox::RelayMetrics::register(&registry, "orders").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sampler = tokio::spawn(metrics.sample_backlog(api.pool.clone(), Duration::from_millis(100)));
    eventually(WAIT, "three rows waiting, the oldest for a while", || async {
        let text = orderflow_platform::metrics::render(&registry);
        metric(&text, r#"orderflow_outbox_pending_rows{outbox="orders"}"#) == 3.0
            && metric(&text, r#"orderflow_outbox_oldest_age_seconds{outbox="orders"}"#) >= 0.3
    })
    .await;
    sampler.abort();
}

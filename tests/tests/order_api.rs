//! order-api over real HTTP on a real Postgres: intake, idempotency, validation, limits, status.

use orderflow_order_api::ApiSettings;
use orderflow_tests::intake::{TestApi, TestIssuer, sample_order};
use serde_json::{Value, json};

#[tokio::test]
async fn an_accepted_order_answers_202_and_commits_the_order_with_its_outbox_event() {
    let api = TestApi::spawn().await;
    let response = api.post_order(Some("k-1"), &sample_order("c-1")).await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "PENDING_PAYMENT");
    assert_eq!(body["status_url"], location);
    assert_eq!(api.count("SELECT count(*) FROM orders").await, 1);
    assert_eq!(
        api.count("SELECT count(*) FROM outbox WHERE event_type = 'OrderPlaced' AND published_at IS NULL").await,
        1
    );

    let order: Value = api.get(&location).await.json().await.unwrap();
    assert_eq!(order["status"], "PENDING_PAYMENT");
    assert_eq!(order["total_minor"], 2 * 1250 + 499);
    assert_eq!(order["history"][0]["status"], "PENDING_PAYMENT");
    assert_eq!(order["items"][1]["sku"], "SKU-2");
}

#[tokio::test]
async fn one_key_sent_twice_gives_one_order_and_the_same_answer() {
    let api = TestApi::spawn().await;
    let first = api.post_order(Some("same"), &sample_order("c-1")).await;
    let first_body: Value = first.json().await.unwrap();
    let second = api.post_order(Some("same"), &sample_order("c-1")).await;
    assert_eq!(second.status(), 202);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.json::<Value>().await.unwrap(), first_body);
    assert_eq!(api.count("SELECT count(*) FROM orders").await, 1);
    assert_eq!(api.count("SELECT count(*) FROM outbox").await, 1);

    let other_body = api.post_order(Some("same"), &sample_order("c-2")).await;
    assert_eq!(other_body.status(), 422);
    let problem: Value = other_body.json().await.unwrap();
    assert!(problem["type"].as_str().unwrap().ends_with("idempotency-key-reused"));
    assert_eq!(api.count("SELECT count(*) FROM orders").await, 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_order() {
    let api = TestApi::spawn().await;
    let body = sample_order("c-1");
    let requests = (0..20).map(|_| api.post_order(Some("race"), &body));
    let responses = futures::future::join_all(requests).await;
    let mut ids = std::collections::HashSet::new();
    for response in responses {
        assert_eq!(response.status(), 202);
        ids.insert(response.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(api.count("SELECT count(*) FROM orders").await, 1);
    assert_eq!(api.count("SELECT count(*) FROM outbox").await, 1);
}

async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn bad_requests_get_a_problem_naming_the_field_and_nothing_is_stored() {
    let api = TestApi::spawn().await;
    let (status, body) = problem(api.post_order(None, &sample_order("c")).await).await;
    assert_eq!(status, 400);
    assert!(body["detail"].as_str().unwrap().contains("Idempotency-Key"));

    let raw = api
        .http
        .post(format!("{}/orders", api.url))
        .header("Idempotency-Key", "x")
        .header("content-type", "application/json");
    let (status, _) = problem(raw.body("{\"customer_id\":").send().await.unwrap()).await;
    assert_eq!(status, 400);

    let mut invalid = sample_order("c");
    invalid["status"] = json!("PAID");
    invalid["items"][0]["quantity"] = json!(0);
    invalid["gift_wrap"] = json!(true);
    let (status, body) = problem(api.post_order(Some("k"), &invalid).await).await;
    assert_eq!(status, 422);
    let fields: Vec<&str> = body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, vec!["/gift_wrap", "/status", "/items/0/quantity"]);

    let text = api.http.post(format!("{}/orders", api.url)).header("Idempotency-Key", "t").body("customer=1");
    assert_eq!(problem(text.send().await.unwrap()).await.0, 415);

    let mut huge = sample_order("c");
    huge["customer_id"] = json!("x".repeat(100 * 1024));
    assert_eq!(problem(api.post_order(Some("big"), &huge).await).await.0, 413);
    assert_eq!(api.count("SELECT count(*) FROM orders").await, 0);
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let api = TestApi::spawn_with(ApiSettings { client_rate: 1.0, client_burst: 2.0, ..Default::default() }).await;
    for i in 0..2 {
        assert_eq!(api.post_order(Some(&format!("r{i}")), &sample_order("c")).await.status(), 202);
    }
    let limited = api.post_order(Some("r2"), &sample_order("c")).await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    let other_client =
        orderflow_tests::intake::client_with(&api.issuer.token(&TestIssuer::grant("shop-2", "orders:write")))
            .post(format!("{}/orders", api.url))
            .header("Idempotency-Key", "o")
            .json(&sample_order("c"));
    assert_eq!(other_client.send().await.unwrap().status(), 202);
}

#[tokio::test]
async fn status_lookups_name_unknown_and_malformed_ids() {
    let api = TestApi::spawn().await;
    assert_eq!(problem(api.get("/orders/not-a-uuid").await).await.0, 400);
    assert_eq!(problem(api.get(&format!("/orders/{}", uuid::Uuid::new_v4())).await).await.0, 404);
}

#[tokio::test]
async fn readiness_follows_postgres_and_health_does_not() {
    let api = TestApi::spawn().await;
    orderflow_tests::intake::eventually(std::time::Duration::from_secs(10), "ready", || async {
        api.get("/readyz").await.status() == 200
    })
    .await;
    sqlx::query(&format!("ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS false", api.db.name))
        .execute(&admin().await)
        .await
        .unwrap();
    sqlx::query(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'", api.db.name))
        .execute(&admin().await)
        .await
        .unwrap();
    orderflow_tests::intake::eventually(std::time::Duration::from_secs(10), "not ready", || async {
        api.get("/readyz").await.status() == 503
    })
    .await;
    assert_eq!(api.get("/healthz").await.status(), 200);
    let refused = api.post_order(Some("while-down"), &sample_order("c")).await;
    assert_eq!(refused.status(), 503, "no 2xx unless committed");
    sqlx::query(&format!("ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS true", api.db.name))
        .execute(&admin().await)
        .await
        .unwrap();
    orderflow_tests::intake::eventually(std::time::Duration::from_secs(10), "ready again", || async {
        api.get("/readyz").await.status() == 200
    })
    .await;
    assert_eq!(api.post_order(Some("while-down"), &sample_order("c")).await.status(), 202, "the retry succeeds");
}

async fn admin() -> sqlx::PgPool {
    sqlx::PgPool::connect(&orderflow_tests::admin_url()).await.unwrap()
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_its_errors() {
    let api = TestApi::spawn().await;
    let doc: Value = api.get("/openapi.json").await.json().await.unwrap();
    for (path, method) in [
        ("/orders", "post"),
        ("/orders/{order_id}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} missing");
    }
    for status in ["202", "400", "413", "415", "422", "429", "503"] {
        assert!(doc["paths"]["/orders"]["post"]["responses"][status].is_object(), "POST /orders {status}");
    }
}

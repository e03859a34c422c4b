//! `GET /orders/{id}?wait_for=…` (docs/failure-catalog.md §9, eventual consistency, eventual consistency a client can live with):
//! many waiters are woken by the order's change through LISTEN/NOTIFY, not by their timeouts; a
//! wait that times out answers with the order as it is; waiters are bounded per instance (503
//! with Retry-After beyond); a lost LISTEN connection still wakes them once it is back.

use std::time::{Duration, Instant};

use orderflow_order_api::ApiSettings;
use orderflow_tests::intake::{TestApi, eventually};
use serde_json::Value;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

async fn api(max_waiters: usize) -> (TestApi, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let settings = ApiSettings { max_waiters, registry: registry.clone(), ..Default::default() };
    (TestApi::spawn_with(settings).await, registry)
}

fn waiting(registry: &prometheus::Registry) -> i64 {
    registry
        .gather()
        .iter()
        .find(|f| f.name() == "orderflow_api_order_waiters")
        .map(|f| f.get_metric()[0].get_gauge().get_value() as i64)
        .unwrap_or(0)
}

/// What order-service does when an order moves on: the status, the version, the history row.
async fn move_order(api: &TestApi, order: Uuid, status: &str) {
    let mut tx = api.pool.begin().await.unwrap();
    let version: i32 = sqlx::query_scalar(
        "UPDATE orders SET status = $2, version = version + 1 WHERE order_id = $1 RETURNING version",
    )
    .bind(order)
    .bind(status)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query("INSERT INTO order_status_history (order_id, version, status) VALUES ($1, $2, $3)")
        .bind(order)
        .bind(version)
        .bind(status)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// A waiting GET: its status, `Orderflow-Wait` header, body and how long it took.
async fn wait(api: &TestApi, order: Uuid, query: &str) -> (u16, Option<String>, Value, Duration) {
    let started = Instant::now();
    let response = api.get(&format!("/orders/{order}?{query}")).await;
    let status = response.status().as_u16();
    let outcome = response.headers().get("orderflow-wait").map(|v| v.to_str().unwrap().to_string());
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let mut body: Value = response.json().await.unwrap();
    if let Some(retry_after) = retry_after {
        body["retry_after"] = retry_after.into();
    }
    (status, outcome, body, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_waiters_are_woken_by_the_change_not_by_their_timeout() {
    let (api, registry) = api(1000).await;
    let orders = [api.place("w-1").await, api.place("w-2").await, api.place("w-3").await];
    let waiters: Vec<_> = (0..200)
        .map(|i| {
            let (api, order) = (&api, orders[i % orders.len()]);
            async move { wait(api, order, "wait_for=PAID,PAYMENT_FAILED,CANCELLED&timeout=30s").await }
        })
        .collect();
    let waiters = futures::future::join_all(waiters);
    let change = async {
        eventually(WAIT, "200 requests waiting", || async { waiting(&registry) == 200 }).await;
        for (order, status) in orders.iter().zip(["PAID", "PAYMENT_FAILED", "PAID"]) {
            move_order(&api, *order, status).await;
        }
        Instant::now()
    };
    let (answers, changed_at) = tokio::join!(waiters, change);
    for (i, (status, outcome, body, _)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(outcome.as_deref(), Some("reached"), "waiter {i}: {body}");
        assert_eq!(body["version"], 2);
        assert_eq!(body["history"].as_array().unwrap().len(), 2);
    }
    // Woken by the change: every answer came long before the 30 s timeout.
    let slowest = answers.iter().map(|a| a.3).max().unwrap();
    assert!(changed_at.elapsed() < Duration::from_secs(10), "{slowest:?}");
    assert_eq!(waiting(&registry), 0, "every place given back");
}

#[tokio::test]
async fn a_wait_that_times_out_answers_with_the_order_as_it_is_and_a_reached_one_at_once() {
    let (api, _) = api(1000).await;
    let order = api.place("t-1").await;
    let (status, outcome, body, took) = wait(&api, order, "wait_for=REFUNDED&timeout=700ms").await;
    assert_eq!((status, outcome.as_deref()), (200, Some("timed-out")));
    assert_eq!(body["status"], "PENDING_PAYMENT");
    assert!(took >= Duration::from_millis(700), "{took:?}");
    let (status, outcome, body, _) = wait(&api, order, "newer_than=0&timeout=30s").await;
    assert_eq!((status, outcome.as_deref(), body["version"].as_i64()), (200, Some("reached"), Some(1)));
    // No wait parameters: the plain lookup, without the header.
    let (_, outcome, _, _) = wait(&api, order, "").await;
    assert_eq!(outcome, None);
}

#[tokio::test]
async fn bad_wait_parameters_and_unknown_orders_get_a_problem_at_once() {
    let (api, _) = api(1000).await;
    let order = api.place("b-1").await;
    for (query, says) in [
        ("wait_for=SHIPPED", "PENDING_PAYMENT, PAID"),
        ("wait_for=PAID&timeout=5m", "timeout"),
        ("wait_for=PAID&timeout=31s", "at most 30s"),
        ("newer_than=x", "newer_than"),
        ("timeout=5s", "needs wait_for"),
    ] {
        let (status, _, body, _) = wait(&api, order, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["type"], "https://orderflow.dev/problems/invalid-query", "{query}");
        assert!(body["detail"].as_str().unwrap().contains(says), "{query}: {body}");
    }
    let (status, _, _, took) = wait(&api, Uuid::now_v7(), "wait_for=PAID&timeout=30s").await;
    assert_eq!(status, 404);
    assert!(took < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_past_the_bound_get_503_with_retry_after_and_places_come_back() {
    let (api, registry) = api(5).await;
    let order = api.place("bound-1").await;
    let held: Vec<_> = (0..5).map(|_| wait(&api, order, "wait_for=PAID&timeout=30s")).collect();
    let held = futures::future::join_all(held);
    let refused = async {
        eventually(WAIT, "5 requests waiting", || async { waiting(&registry) == 5 }).await;
        let refused = wait(&api, order, "wait_for=PAID&timeout=30s").await;
        move_order(&api, order, "PAID").await;
        refused
    };
    let (held, (status, _, body, took)) = tokio::join!(held, refused);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "https://orderflow.dev/problems/too-many-waiters");
    assert_eq!(body["retry_after"], "1");
    assert!(took < Duration::from_secs(5), "refused at once, not after a wait: {took:?}");
    assert!(held.iter().all(|(s, o, _, _)| *s == 200 && o.as_deref() == Some("reached")));
    eventually(WAIT, "places given back", || async { waiting(&registry) == 0 }).await;
    let (status, outcome, _, _) = wait(&api, order, "wait_for=PAID&timeout=30s").await;
    assert_eq!((status, outcome.as_deref()), (200, Some("reached")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_listen_connection_still_wakes_the_waiters_once_it_is_back() {
    let (api, registry) = api(1000).await;
    let order = api.place("lost-1").await;
    let waiters: Vec<_> = (0..20).map(|_| wait(&api, order, "wait_for=CANCELLED&timeout=30s")).collect();
    let waiters = futures::future::join_all(waiters);
    let admin = sqlx::PgPool::connect(&orderflow_tests::admin_url()).await.unwrap();
    let cut = async {
        eventually(WAIT, "20 requests waiting", || async { waiting(&registry) == 20 }).await;
        let killed: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%' AND pg_terminate_backend(pid)",
        )
        .bind(&api.db.name)
        .fetch_all(&admin)
        .await
        .unwrap();
        assert_eq!(killed.len(), 1, "order-api holds one LISTEN connection");
        // The change lands while the listener may still be reconnecting.
        move_order(&api, order, "CANCELLED").await;
    };
    let (answers, ()) = tokio::join!(waiters, cut);
    for (status, outcome, body, took) in answers {
        assert_eq!((status, outcome.as_deref()), (200, Some("reached")), "{body}");
        assert!(took < Duration::from_secs(25), "woken, not timed out: {took:?}");
    }
}

//! order-api's routes: intake, status, health, and the OpenAPI document.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, sync::atomic::Ordering};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::Utc;
use orderflow_outbox::OutboxEvent;
use orderflow_schemas::events::{Money, OrderPlaced};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    AppState, openapi, order_request,
    problem::ApiError,
    store::{self, Intake, NewOrder},
    waiters::WaitFor,
};

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{order_id}", get(get_order))
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(ready))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .with_state(state)
}

fn client_of(headers: &HeaderMap, peer: SocketAddr) -> String {
    headers
        .get("x-client-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| peer.ip().to_string(), str::to_string)
}

fn idempotency_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    let raw = headers.get("idempotency-key").ok_or(ApiError::MissingIdempotencyKey)?;
    let key = raw.to_str().map_err(|_| ApiError::InvalidIdempotencyKey)?;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::InvalidIdempotencyKey);
    }
    Ok(key)
}

/// A W3C traceparent to carry along, if the caller sent a valid one.
fn traceparent(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    orderflow_platform::trace::is_traceparent(value).then(|| value.to_ascii_lowercase())
}

/// `POST /orders` in its own span: a child of the caller's `traceparent`, or a new trace. The
/// order and its OrderPlaced event carry this span's traceparent, so every consumer continues it.
async fn create_order(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let span = tracing::info_span!(
        "order intake",
        otel.name = "POST /orders",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/orders",
        trace_id = tracing::field::Empty,
    );
    orderflow_platform::trace::continue_trace(&span, traceparent(&headers).as_deref());
    accept_order(state, peer, headers, body).instrument(span).await
}

async fn accept_order(
    state: Arc<AppState>,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if let Err(wait) = state.limiter.check(&client_of(&headers, peer)) {
        return Err(ApiError::RateLimited(wait.as_secs().max(1)));
    }
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(state.settings.max_body_bytes),
        _ => ApiError::MalformedJson(rejection.body_text()),
    })?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let key = idempotency_key(&headers)?;
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let request = order_request::parse(&json).map_err(ApiError::InvalidOrder)?;
    let normalized = serde_json::to_vec(&request).map_err(|e| ApiError::Unavailable(e.into()))?;
    let fingerprint = Sha256::digest(&normalized);

    let order_id = Uuid::now_v7();
    let now = Utc::now();
    let placed = OrderPlaced {
        order_id,
        customer_id: request.customer_id.clone(),
        lines: request.items.clone(),
        total: Money { amount_minor: request.total_minor(), currency: request.currency.clone() },
        placed_at: now,
        customer_email: request.customer_email.clone(),
    };
    let payload = state.codec.encode_event(&placed).await.map_err(|e| ApiError::Unavailable(e.into()))?;
    let trace = orderflow_platform::trace::traceparent_of(&tracing::Span::current()).or_else(|| traceparent(&headers));
    let placed_event = OutboxEvent::of(&placed, payload, trace.as_deref());
    let order = NewOrder {
        order_id,
        idempotency_key: key,
        fingerprint: &fingerprint,
        request: &request,
        traceparent: trace.as_deref(),
        placed_event,
    };
    let (accepted, replayed) = match store::accept(&state.pool, order).await? {
        Intake::New(a) => (a, false),
        Intake::Replayed(a) => (a, true),
    };
    if !replayed {
        state.accepted.fetch_add(1, Ordering::Relaxed);
    }
    let mut response = (StatusCode::ACCEPTED, Json(&accepted)).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&accepted.status_url) {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The order; with `wait_for` / `newer_than`, as soon as it gets there, or as it is at the
/// timeout (`Orderflow-Wait: reached | timed-out`).
async fn get_order(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let order_id = Uuid::parse_str(&raw).map_err(|_| ApiError::InvalidOrderId(raw))?;
    let Some(wait) = WaitFor::parse(&query).map_err(ApiError::InvalidQuery)? else {
        let order = store::find(&state.pool, order_id).await?.ok_or(ApiError::OrderNotFound(order_id))?;
        return Ok(Json(order).into_response());
    };
    let Some(subscription) = state.watch.subscribe(order_id) else {
        state.waits.with_label_values(&["refused"]).inc();
        return Err(ApiError::TooManyWaiters(state.settings.max_waiters));
    };
    let deadline = tokio::time::Instant::now() + wait.timeout;
    loop {
        // Registered before the read, so a change committed after it still wakes this request.
        let changed = subscription.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let order = store::find(&state.pool, order_id).await?.ok_or(ApiError::OrderNotFound(order_id))?;
        let reached = wait.reached(&order.status, order.version);
        if reached || tokio::time::Instant::now() >= deadline || state.watch.is_closed() {
            let outcome = if reached { "reached" } else { "timed-out" };
            state.waits.with_label_values(&[&outcome.replace('-', "_")]).inc();
            let mut response = Json(order).into_response();
            response.headers_mut().insert("orderflow-wait", HeaderValue::from_static(outcome));
            return Ok(response);
        }
        tokio::select! {
            () = &mut changed => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let database =
        tokio::time::timeout(std::time::Duration::from_secs(2), sqlx::query("SELECT 1").execute(&state.pool))
            .await
            .is_ok_and(|r| r.is_ok());
    let schemas = state.schemas_ready.load(Ordering::Relaxed);
    let status = if database && schemas { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "database": database, "schemas": schemas }))).into_response()
}

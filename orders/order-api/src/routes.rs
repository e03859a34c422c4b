//! order-api's routes: intake, status, health, and the OpenAPI document.

use std::{collections::HashMap, sync::Arc, sync::atomic::Ordering};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State, rejection::BytesRejection},
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
    AppState,
    auth::{AuthError, Principal, scopes},
    openapi, order_request,
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

/// The caller behind the request's bearer token, within its rate. Nothing is read or written
/// for a request that fails here.
async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let authorization = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| ApiError::Unauthenticated(AuthError::NotBearer))?),
    };
    let principal = Principal::verify(&state.verifier, authorization).await?;
    let limited = state.limiter.check(&principal.subject);
    state.limited_callers.set(state.limiter.callers() as i64);
    if let Err(wait) = limited {
        return Err(ApiError::RateLimited(wait.as_secs_f64().ceil().max(1.0) as u64));
    }
    Ok(principal)
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
    accept_order(state, headers, body).instrument(span).await
}

async fn accept_order(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let principal = caller(&state, &headers).await?;
    if !principal.has(scopes::WRITE) {
        return Err(ApiError::Forbidden(format!("placing orders needs the {} scope", scopes::WRITE)));
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
    if let Some(customer) = principal.customer_id.as_deref().filter(|c| *c != request.customer_id) {
        return Err(ApiError::Forbidden(format!("this token places orders only for customer {customer:?}")));
    }
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
        caller: &principal.subject,
        idempotency_key: key,
        fingerprint: &fingerprint,
        request: &request,
        traceparent: trace.as_deref(),
        placed_event,
    };
    let legacy_keys = state.legacy_keys.load(Ordering::Relaxed);
    let (accepted, replayed) = match store::accept(&state.pool, order, legacy_keys).await? {
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
    headers: HeaderMap,
    Path(raw): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let principal = caller(&state, &headers).await?;
    let order_id = Uuid::parse_str(&raw).map_err(|_| ApiError::InvalidOrderId(raw))?;
    // Another customer's order looks exactly like a missing one, so ids cannot be probed.
    let visible = |order: Option<store::OrderView>| {
        order.filter(|o| principal.may_read(&o.customer_id)).ok_or(ApiError::OrderNotFound(order_id))
    };
    let Some(wait) = WaitFor::parse(&query).map_err(ApiError::InvalidQuery)? else {
        let order = visible(store::find(&state.pool, order_id).await?)?;
        return Ok(Json(order).into_response());
    };
    visible(store::find(&state.pool, order_id).await?)?;
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
        let order = visible(store::find(&state.pool, order_id).await?)?;
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
    let keys = state.verifier.ready();
    let status = if database && schemas && keys { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "database": database, "schemas": schemas, "keys": keys }))).into_response()
}

//! A stand-in for the external payment provider, built like one: charges and refunds are
//! idempotent per `Idempotency-Key` (same key and body → the stored result, never a second
//! charge; same key, other body → 422), and every outcome lands in a ledger that tests read as
//! their oracle (`GET /ledger`, `GET /v1/charges/{key}`).
//!
//! Declines are decided by the customer: ids starting `decline` are declined (`card_declined`),
//! `nofunds` → `insufficient_funds`. Everything else is approved.
//!
//! Faults and a rate limit are switched at runtime: see [`faults`].

pub mod faults;
mod server;

pub use server::{ApiOptions, run};

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

pub const API_VERSION: &str = "2026-01";

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    orderflow_platform::migrations::run(sqlx::migrate!("./migrations"), pool, "payment simulator").await
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChargeRequest {
    pub amount_minor: i64,
    pub currency: String,
    pub customer: String,
    /// The merchant's reference (orderflow sends the order id).
    pub reference: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    pub charge_id: Uuid,
    pub amount_minor: i64,
    pub reference: String,
}

/// A ledger entry as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerEntry {
    pub idempotency_key: String,
    pub kind: String,
    pub id: Uuid,
    pub status: String,
    pub decline_code: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    pub customer: Option<String>,
    pub reference: String,
    pub charge_id: Option<Uuid>,
}

#[derive(Debug, thiserror::Error)]
enum ProviderError {
    #[error("Idempotency-Key header is required")]
    MissingKey,
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("Idempotency-Key reused with a different request")]
    KeyReused,
    #[error("not found")]
    NotFound,
    #[error("internal error")]
    Internal(#[from] sqlx::Error),
    #[error("service unavailable (simulated)")]
    Unavailable,
    #[error("unsupported API version; this provider speaks {API_VERSION}")]
    ApiVersionMismatch,
    #[error("internal error after processing (simulated)")]
    AfterProcessing,
    #[error("rate limit exceeded")]
    RateLimited(u64),
    #[error("a valid API key is required (Authorization: Bearer <key>)")]
    Unauthorized,
}

impl IntoResponse for ProviderError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ProviderError::MissingKey | ProviderError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ProviderError::KeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            ProviderError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ProviderError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ProviderError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ProviderError::ApiVersionMismatch => (StatusCode::BAD_REQUEST, "api_version_mismatch"),
            ProviderError::AfterProcessing => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ProviderError::RateLimited(seconds) => {
                let body = json!({ "error": { "code": "rate_limited", "message": self.to_string() } });
                let headers = [("retry-after", seconds.to_string())];
                return (StatusCode::TOO_MANY_REQUESTS, headers, Json(body)).into_response();
            }
            ProviderError::Internal(e) => {
                tracing::error!(error = %e, "ledger failure");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        (status, Json(json!({ "error": { "code": code, "message": self.to_string() } }))).into_response()
    }
}

fn key(headers: &HeaderMap) -> Result<String, ProviderError> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .map(str::to_string)
        .ok_or(ProviderError::MissingKey)
}

fn decide(customer: &str) -> (&'static str, Option<&'static str>) {
    if customer.starts_with("decline") {
        ("declined", Some("card_declined"))
    } else if customer.starts_with("nofunds") {
        ("declined", Some("insufficient_funds"))
    } else {
        ("approved", None)
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    pool: PgPool,
    faults: Arc<Mutex<faults::FaultState>>,
    /// True while the API port is closed (`down`).
    down: Arc<watch::Sender<bool>>,
    /// When set, the API answers only requests with `Authorization: Bearer <key>`.
    api_key: Option<Arc<str>>,
}

/// The provider's API: what a payment client may call (with the API key, when one is set).
pub(crate) fn api_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/charges", post(charge))
        .route("/v1/charges/{key}", get(entry_by_key))
        .route("/v1/refunds", post(refund))
        .route("/v1/refunds/{key}", get(entry_by_key))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_api_key))
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .with_state(state)
}

/// 401 for a request without the API key, as a real provider answers.
async fn require_api_key(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ProviderError> {
    if let Some(key) = &state.api_key {
        let sent = request.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let expected = format!("Bearer {key}");
        // Compared by digest, so the time taken says nothing about how much of the key matched.
        let digest = |s: &str| Sha256::digest(s.as_bytes());
        if sent.map(digest) != Some(digest(&expected)) {
            return Err(ProviderError::Unauthorized);
        }
    }
    Ok(next.run(request).await)
}

/// The admin port's routes: the API, and the ledger, faults and stats a test or drill drives.
pub(crate) fn admin_router(state: AppState) -> Router {
    api_router(state.clone()).merge(
        Router::new()
            .route("/ledger", get(ledger))
            .route("/admin/faults", get(get_faults).put(set_faults))
            .route("/admin/stats", get(get_stats).delete(reset_stats))
            .with_state(state),
    )
}

async fn get_faults(State(state): State<AppState>) -> Json<faults::Faults> {
    Json(state.faults.lock().expect("faults lock").faults)
}

async fn set_faults(State(state): State<AppState>, body: axum::body::Bytes) -> Result<Response, ProviderError> {
    let faults: faults::Faults = serde_json::from_slice(&body).map_err(|e| ProviderError::Invalid(e.to_string()))?;
    faults.validate().map_err(ProviderError::Invalid)?;
    let down = faults.mode == faults::FaultMode::Down;
    state.faults.lock().expect("faults lock").switch(faults);
    state.down.send_replace(down);
    tracing::info!(?faults, "faults switched");
    Ok(Json(faults).into_response())
}

async fn get_stats(State(state): State<AppState>) -> Json<faults::Stats> {
    Json(state.faults.lock().expect("faults lock").stats.clone())
}

async fn reset_stats(State(state): State<AppState>) -> StatusCode {
    state.faults.lock().expect("faults lock").stats = faults::Stats::default();
    StatusCode::NO_CONTENT
}

/// Resets the connection a request came on (`reset_after_charge`).
#[derive(Clone)]
pub(crate) struct ConnectionReset(pub(crate) Arc<Notify>);

/// Serves a charge or refund through the configured faults.
async fn with_faults(
    state: &AppState,
    refund: bool,
    reset: Option<ConnectionReset>,
    serve: impl Future<Output = Result<Response, ProviderError>>,
) -> Result<Response, ProviderError> {
    use faults::{FaultMode, Plan};
    let (plan, delay) = {
        let mut faults = state.faults.lock().expect("faults lock");
        (faults.plan(refund), Duration::from_millis(faults.faults.delay_ms))
    };
    let (mode, hang_after) = match plan {
        Plan::RateLimited(seconds) => return Err(ProviderError::RateLimited(seconds)),
        Plan::Serve { mode, hang_after } => (mode, hang_after),
    };
    match mode {
        FaultMode::Unavailable => return Err(ProviderError::Unavailable),
        FaultMode::ApiVersionMismatch => return Err(ProviderError::ApiVersionMismatch),
        FaultMode::Latency => tokio::time::sleep(delay).await,
        _ => {}
    }
    let answer = serve.await?;
    if let Some(hang) = hang_after {
        tokio::time::sleep(hang).await;
    }
    match mode {
        FaultMode::FailAfterCharge => Err(ProviderError::AfterProcessing),
        FaultMode::ResetAfterCharge => match reset {
            Some(ConnectionReset(reset)) => {
                reset.notify_one();
                // The connection is gone before this answer could be written.
                std::future::pending().await
            }
            None => Err(ProviderError::AfterProcessing),
        },
        FaultMode::ErrorPayload => {
            let body = json!({ "error": { "code": "processing_error", "message": "simulated error payload" } });
            Ok((StatusCode::OK, Json(body)).into_response())
        }
        _ => Ok(answer),
    }
}

async fn charge(
    State(state): State<AppState>,
    reset: Option<axum::Extension<ConnectionReset>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ProviderError> {
    with_faults(&state, false, reset.map(|r| r.0), charge_now(&state.pool, headers, body)).await
}

async fn charge_now(pool: &PgPool, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, ProviderError> {
    let key = key(&headers)?;
    let request: ChargeRequest = serde_json::from_slice(&body).map_err(|e| ProviderError::Invalid(e.to_string()))?;
    if request.amount_minor <= 0 || request.currency.len() != 3 {
        return Err(ProviderError::Invalid("amount_minor must be positive and currency a 3-letter code".into()));
    }
    let (status, decline_code) = decide(&request.customer);
    let hash = Sha256::digest(serde_json::to_vec(&request).unwrap_or_default()).to_vec();
    let mut conn = pool.acquire().await?;
    let entry = LedgerEntry {
        idempotency_key: key,
        kind: "charge".into(),
        id: Uuid::new_v4(),
        status: status.into(),
        decline_code: decline_code.map(str::to_string),
        amount_minor: request.amount_minor,
        currency: request.currency,
        customer: Some(request.customer),
        reference: request.reference,
        charge_id: None,
    };
    record(&mut conn, entry, &hash).await
}

async fn refund(
    State(state): State<AppState>,
    reset: Option<axum::Extension<ConnectionReset>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ProviderError> {
    with_faults(&state, true, reset.map(|r| r.0), refund_now(&state.pool, headers, body)).await
}

async fn refund_now(pool: &PgPool, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, ProviderError> {
    let key = key(&headers)?;
    let request: RefundRequest = serde_json::from_slice(&body).map_err(|e| ProviderError::Invalid(e.to_string()))?;
    // The charge row is locked while refunds are summed, so two refunds under different keys
    // cannot together give back more than was charged.
    let mut tx = pool.begin().await?;
    let charge = sqlx::query(
        "SELECT amount_minor, currency, status FROM provider_ledger WHERE id = $1 AND kind = 'charge' FOR UPDATE",
    )
    .bind(request.charge_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ProviderError::Invalid(format!("no charge {}", request.charge_id)))?;
    let (charged, currency, status): (i64, String, String) = (charge.get(0), charge.get(1), charge.get(2));
    if status != "approved" || request.amount_minor <= 0 || request.amount_minor > charged {
        return Err(ProviderError::Invalid("refund must be positive, at most the approved charge".into()));
    }
    let refunded: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(amount_minor), 0)::bigint FROM provider_ledger
         WHERE kind = 'refund' AND charge_id = $1 AND idempotency_key <> $2",
    )
    .bind(request.charge_id)
    .bind(&key)
    .fetch_one(&mut *tx)
    .await?;
    if refunded + request.amount_minor > charged {
        return Err(ProviderError::Invalid(format!(
            "refund of {} exceeds what is left of the charge ({} of {charged} already refunded)",
            request.amount_minor, refunded
        )));
    }
    let hash = Sha256::digest(serde_json::to_vec(&request).unwrap_or_default()).to_vec();
    let entry = LedgerEntry {
        idempotency_key: key,
        kind: "refund".into(),
        id: Uuid::new_v4(),
        status: "refunded".into(),
        decline_code: None,
        amount_minor: request.amount_minor,
        currency,
        customer: None,
        reference: request.reference,
        charge_id: Some(request.charge_id),
    };
    let answer = record(&mut tx, entry, &hash).await?;
    tx.commit().await?;
    Ok(answer)
}

/// Stores `entry` under its key unless the key exists: then the stored result (same request)
/// or 422 (other request). Concurrent requests with one key meet at the primary key.
async fn record(conn: &mut PgConnection, entry: LedgerEntry, hash: &[u8]) -> Result<Response, ProviderError> {
    sqlx::query(
        "INSERT INTO provider_ledger (idempotency_key, kind, request_hash, id, status, decline_code, amount_minor, currency,
                                      customer, reference, charge_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(&entry.idempotency_key)
    .bind(&entry.kind)
    .bind(hash)
    .bind(entry.id)
    .bind(&entry.status)
    .bind(&entry.decline_code)
    .bind(entry.amount_minor)
    .bind(&entry.currency)
    .bind(&entry.customer)
    .bind(&entry.reference)
    .bind(entry.charge_id)
    .execute(&mut *conn)
    .await?;
    let (stored, stored_hash) = find(conn, &entry.idempotency_key).await?.ok_or(ProviderError::NotFound)?;
    if stored_hash != hash || stored.kind != entry.kind {
        return Err(ProviderError::KeyReused);
    }
    Ok(Json(json!({
        "id": stored.id, "status": stored.status, "decline_code": stored.decline_code,
        "amount_minor": stored.amount_minor, "currency": stored.currency, "api_version": API_VERSION,
    }))
    .into_response())
}

async fn find(conn: &mut PgConnection, key: &str) -> Result<Option<(LedgerEntry, Vec<u8>)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT idempotency_key, kind, id, status, decline_code, amount_minor, currency, customer, reference, charge_id, request_hash
         FROM provider_ledger WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (entry_of(&r), r.get(10))))
}

fn entry_of(r: &sqlx::postgres::PgRow) -> LedgerEntry {
    LedgerEntry {
        idempotency_key: r.get(0),
        kind: r.get(1),
        id: r.get(2),
        status: r.get(3),
        decline_code: r.get(4),
        amount_minor: r.get(5),
        currency: r.get(6),
        customer: r.get(7),
        reference: r.get(8),
        charge_id: r.get(9),
    }
}

/// A ledger read by key: counted against the rate limit, and failing with the provider when it
/// is unavailable (or slow).
async fn entry_by_key(State(state): State<AppState>, Path(key): Path<String>) -> Result<Response, ProviderError> {
    let (limited, mode, delay) = {
        let mut faults = state.faults.lock().expect("faults lock");
        let mode = if faults.faults.scope == faults::Scope::All { faults.faults.mode } else { faults::FaultMode::None };
        (faults.admit(), mode, Duration::from_millis(faults.faults.delay_ms))
    };
    if let Some(seconds) = limited {
        return Err(ProviderError::RateLimited(seconds));
    }
    match mode {
        faults::FaultMode::Unavailable => return Err(ProviderError::Unavailable),
        faults::FaultMode::Latency => tokio::time::sleep(delay).await,
        _ => {}
    }
    let (entry, _) = find(&mut *state.pool.acquire().await?, &key).await?.ok_or(ProviderError::NotFound)?;
    Ok(Json(entry).into_response())
}

async fn ledger(State(state): State<AppState>) -> Result<Response, ProviderError> {
    let pool = &state.pool;
    let rows = sqlx::query(
        "SELECT idempotency_key, kind, id, status, decline_code, amount_minor, currency, customer, reference, charge_id
         FROM provider_ledger ORDER BY created_at, idempotency_key",
    )
    .fetch_all(pool)
    .await?;
    Ok(Json(rows.iter().map(entry_of).collect::<Vec<_>>()).into_response())
}

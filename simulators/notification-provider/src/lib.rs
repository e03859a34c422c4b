//! A stand-in for the external email/SMS provider, built like one: a message is accepted with an
//! `Idempotency-Key` (same key and body → the stored result, the customer gets one message; same
//! key, other body → 422), and every delivered message lands in a ledger that tests read as their
//! oracle (`GET /ledger`, `GET /v1/messages/{key}`).
//!
//! Faults are switched at runtime (`PUT /admin/faults`), per test:
//! - `unavailable`: 503, nothing delivered (the provider is down);
//! - `fail_after_send`: the message is delivered, then the answer is a 500 (the sender cannot
//!   tell it went out);
//! - `slow`: the message is delivered, then the answer waits `delay_ms` (longer than the
//!   sender's timeout: the answer is lost);
//! - `throttled`: 429 with `Retry-After: <retry_after_secs>`, nothing delivered; every refused
//!   request is listed at `GET /admin/throttled` (key and time), so a test can check that the
//!   sender waited as asked.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
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
use sqlx::{PgPool, Row};
use tokio::{net::TcpListener, sync::RwLock};
use uuid::Uuid;

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    orderflow_platform::migrations::run(sqlx::migrate!("./migrations"), pool, "notification simulator").await
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    /// `email` or `sms`.
    pub channel: String,
    /// An email address or a phone number / customer handle.
    pub to: String,
    /// Which message: `order_confirmed`, `payment_failed`, `order_cancelled`, ...
    pub template: String,
    /// The merchant's reference (orderflow sends the order id).
    pub reference: String,
}

/// A delivered message as the ledger shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Delivered {
    pub idempotency_key: String,
    pub id: Uuid,
    pub channel: String,
    pub recipient: String,
    pub template: String,
    pub reference: String,
    /// How often this key was requested (retries included); delivered once regardless.
    pub requests: i32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultMode {
    #[default]
    None,
    Unavailable,
    FailAfterSend,
    Slow,
    Throttled,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    pub mode: FaultMode,
    /// For `slow`: how long the answer waits after delivery.
    #[serde(default)]
    pub delay_ms: u64,
    /// For `throttled`: the `Retry-After` asked for, in seconds.
    #[serde(default = "one_second")]
    pub retry_after_secs: u64,
}

fn one_second() -> u64 {
    1
}

/// A request refused with 429.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Throttled {
    pub idempotency_key: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
}

#[derive(Clone)]
struct AppState {
    pool: PgPool,
    faults: Arc<RwLock<Faults>>,
    throttled: Arc<std::sync::Mutex<Vec<Throttled>>>,
}

#[derive(Debug, thiserror::Error)]
enum ProviderError {
    #[error("Idempotency-Key header is required (1 to 255 characters)")]
    MissingKey,
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("Idempotency-Key reused with a different request")]
    KeyReused,
    #[error("not found")]
    NotFound,
    #[error("service unavailable (simulated outage)")]
    Unavailable,
    #[error("internal error")]
    Internal(#[from] sqlx::Error),
    #[error("internal error after delivery (simulated)")]
    AfterSend,
    #[error("too many requests; retry after {0} s")]
    Throttled(u64),
}

impl IntoResponse for ProviderError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ProviderError::MissingKey | ProviderError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ProviderError::KeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            ProviderError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ProviderError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ProviderError::AfterSend => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ProviderError::Throttled(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ProviderError::Internal(e) => {
                tracing::error!(error = %e, "ledger failure");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let mut response =
            (status, Json(json!({ "error": { "code": code, "message": self.to_string() } }))).into_response();
        if let ProviderError::Throttled(seconds) = self {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// The provider's API (what a sender may call) and the admin routes (the API, and the ledger,
/// faults and throttled requests a test drives), sharing one state.
pub fn routers(pool: PgPool) -> (Router, Router) {
    let state = AppState { pool, faults: Arc::default(), throttled: Arc::default() };
    let api = Router::new()
        .route("/v1/messages", post(send))
        .route("/v1/messages/{key}", get(by_key))
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .with_state(state.clone());
    let admin = api.clone().merge(
        Router::new()
            .route("/ledger", get(ledger))
            .route("/admin/faults", get(faults).put(set_faults))
            .route("/admin/throttled", get(throttled))
            .with_state(state),
    );
    (api, admin)
}

/// Serves the API on `listener` (over HTTPS with `tls`) and, when given, the admin routes on
/// `admin`, plain HTTP (whoever reaches it can make the provider fail: it listens on loopback
/// unless told otherwise).
pub async fn run(
    listener: TcpListener,
    admin: Option<TcpListener>,
    pool: PgPool,
    tls: Option<std::sync::Arc<orderflow_http::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, admin = ?admin.as_ref().map(|a| a.local_addr()), "notification simulator listening");
    let (api, admin_routes) = routers(pool);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let admin = admin.map(|admin| {
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            axum::serve(admin, admin_routes).with_graceful_shutdown(shutdown).await
        })
    });
    let served = match tls {
        Some(tls) => {
            let listener = orderflow_http::TlsListener::new(listener, tls);
            axum::serve(listener, api).with_graceful_shutdown(shutdown).await
        }
        None => axum::serve(listener, api).with_graceful_shutdown(shutdown).await,
    }
    .context("serving the simulator");
    stop.send_replace(true);
    if let Some(admin) = admin {
        admin.await.context("the admin server")?.context("serving the admin port")?;
    }
    served
}

async fn send(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ProviderError> {
    let faults = *state.faults.read().await;
    if faults.mode == FaultMode::Unavailable {
        return Err(ProviderError::Unavailable);
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .map(str::to_string)
        .ok_or(ProviderError::MissingKey)?;
    if faults.mode == FaultMode::Throttled {
        let at_ms = chrono::Utc::now().timestamp_millis();
        state.throttled.lock().expect("throttled lock").push(Throttled { idempotency_key: key, at_ms });
        return Err(ProviderError::Throttled(faults.retry_after_secs));
    }
    let request: MessageRequest = serde_json::from_slice(&body).map_err(|e| ProviderError::Invalid(e.to_string()))?;
    if !matches!(request.channel.as_str(), "email" | "sms") {
        return Err(ProviderError::Invalid(format!("channel must be email or sms, not {:?}", request.channel)));
    }
    if request.to.trim().is_empty() || request.template.trim().is_empty() {
        return Err(ProviderError::Invalid("to and template are required".into()));
    }
    let hash = Sha256::digest(serde_json::to_vec(&request).unwrap_or_default()).to_vec();
    // Deliver once per key; a repeat only counts the request.
    let row = sqlx::query(
        "INSERT INTO message_ledger (idempotency_key, request_hash, id, channel, recipient, template, reference)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (idempotency_key) DO UPDATE SET requests = message_ledger.requests + 1
         RETURNING id, request_hash, (xmax = 0) AS delivered_now",
    )
    .bind(&key)
    .bind(&hash)
    .bind(Uuid::new_v4())
    .bind(&request.channel)
    .bind(&request.to)
    .bind(&request.template)
    .bind(&request.reference)
    .fetch_one(&state.pool)
    .await?;
    let (id, stored_hash, delivered_now): (Uuid, Vec<u8>, bool) = (row.get(0), row.get(1), row.get(2));
    if stored_hash != hash {
        return Err(ProviderError::KeyReused);
    }
    match faults.mode {
        FaultMode::FailAfterSend => return Err(ProviderError::AfterSend),
        FaultMode::Slow => tokio::time::sleep(Duration::from_millis(faults.delay_ms)).await,
        FaultMode::None | FaultMode::Unavailable | FaultMode::Throttled => {}
    }
    let status = if delivered_now { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({ "id": id, "status": "delivered", "duplicate": !delivered_now }))).into_response())
}

const COLUMNS: &str = "idempotency_key, id, channel, recipient, template, reference, requests";

fn delivered_of(r: &sqlx::postgres::PgRow) -> Delivered {
    Delivered {
        idempotency_key: r.get(0),
        id: r.get(1),
        channel: r.get(2),
        recipient: r.get(3),
        template: r.get(4),
        reference: r.get(5),
        requests: r.get(6),
    }
}

async fn by_key(State(state): State<AppState>, Path(key): Path<String>) -> Result<Response, ProviderError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM message_ledger WHERE idempotency_key = $1"))
        .bind(key)
        .fetch_optional(&state.pool)
        .await?
        .ok_or(ProviderError::NotFound)?;
    Ok(Json(delivered_of(&row)).into_response())
}

async fn ledger(State(state): State<AppState>) -> Result<Response, ProviderError> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM message_ledger ORDER BY created_at, idempotency_key"))
        .fetch_all(&state.pool)
        .await?;
    Ok(Json(rows.iter().map(delivered_of).collect::<Vec<_>>()).into_response())
}

async fn throttled(State(state): State<AppState>) -> Json<Vec<Throttled>> {
    Json(state.throttled.lock().expect("throttled lock").clone())
}

async fn faults(State(state): State<AppState>) -> Json<Faults> {
    Json(*state.faults.read().await)
}

async fn set_faults(State(state): State<AppState>, body: axum::body::Bytes) -> Result<Response, ProviderError> {
    let faults: Faults = serde_json::from_slice(&body).map_err(|e| ProviderError::Invalid(e.to_string()))?;
    *state.faults.write().await = faults;
    tracing::info!(?faults, "faults switched");
    Ok(Json(faults).into_response())
}

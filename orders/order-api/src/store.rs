//! Orders in Postgres: the idempotent insert of an order with its OrderPlaced outbox row (one
//! transaction), and the read model behind `GET /orders/{id}`.

use chrono::{DateTime, Utc};
use orderflow_outbox::OutboxEvent;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use orderflow_orders::OrderStatus;

use crate::order_request::OrderRequest;

const PENDING_PAYMENT: &str = OrderStatus::PendingPayment.as_str();

/// Why the store did not do what was asked; the routes say what that means over HTTP.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("this idempotency key was already used with a different request body")]
    KeyReused,
    #[error("the orders database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("an order's lines do not serialize: {0}")]
    Encoding(#[from] serde_json::Error),
}

/// The answer to an accepted order; a replay with the same key gets the same one.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub order_id: Uuid,
    pub status: &'static str,
    pub status_url: String,
}

impl Accepted {
    fn for_order(order_id: Uuid) -> Self {
        Accepted { order_id, status: PENDING_PAYMENT, status_url: format!("/orders/{order_id}") }
    }
}

pub enum Intake {
    New(Accepted),
    Replayed(Accepted),
}

/// Everything needed to write one new order.
pub struct NewOrder<'a> {
    pub order_id: Uuid,
    /// Who placed it (the token's subject): its idempotency keys are its own.
    pub caller: &'a str,
    pub idempotency_key: &'a str,
    pub fingerprint: &'a [u8],
    pub request: &'a OrderRequest,
    pub traceparent: Option<&'a str>,
    pub placed_event: OutboxEvent,
}

/// Whether orders accepted before idempotency keys belonged to callers remain (migration 2003):
/// while they do, [`accept`] also looks a key up among them. None are ever added again.
pub async fn has_keys_without_caller(pool: &PgPool) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orders WHERE caller = '')").fetch_one(pool).await?)
}

/// Inserts the order and its OrderPlaced event in one transaction, unless its caller used the
/// key: then the earlier answer (same body) or [`StoreError::KeyReused`] (other body).
/// Concurrent requests with one key meet at the unique index: one inserts, the others wait
/// for its commit and replay. With `legacy_keys`, a key of an order accepted before keys had
/// callers is found by key alone.
pub async fn accept(pool: &PgPool, order: NewOrder<'_>, legacy_keys: bool) -> Result<Intake, StoreError> {
    if legacy_keys && let Some(earlier) = earlier_answer(pool, "", &order).await? {
        return earlier;
    }
    let mut tx = pool.begin().await?;
    let lines = serde_json::to_value(&order.request.items)?;
    let inserted = sqlx::query(
        "INSERT INTO orders (order_id, idempotency_key, request_fingerprint, customer_id, customer_email, currency,
                             lines, total_minor, status, traceparent, caller)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (caller, idempotency_key) DO NOTHING",
    )
    .bind(order.order_id)
    .bind(order.idempotency_key)
    .bind(order.fingerprint)
    .bind(&order.request.customer_id)
    .bind(&order.request.customer_email)
    .bind(&order.request.currency)
    .bind(lines)
    .bind(order.request.total_minor())
    .bind(PENDING_PAYMENT)
    .bind(order.traceparent)
    .bind(order.caller)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        return earlier_answer(pool, order.caller, &order)
            .await?
            .ok_or_else(|| StoreError::Database(sqlx::Error::Protocol("a conflicting order vanished".into())))?;
    }
    orderflow_outbox::enqueue(&mut tx, &order.placed_event).await?;
    tx.commit().await?;
    Ok(Intake::New(Accepted::for_order(order.order_id)))
}

/// The answer already given for `caller`'s use of the order's key, if any: a replay (same
/// body) or [`StoreError::KeyReused`].
async fn earlier_answer(
    pool: &PgPool,
    caller: &str,
    order: &NewOrder<'_>,
) -> Result<Option<Result<Intake, StoreError>>, StoreError> {
    let row =
        sqlx::query("SELECT order_id, request_fingerprint FROM orders WHERE caller = $1 AND idempotency_key = $2")
            .bind(caller)
            .bind(order.idempotency_key)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|row| {
        let fingerprint: Vec<u8> = row.get(1);
        if fingerprint != order.fingerprint {
            Err(StoreError::KeyReused)
        } else {
            Ok(Intake::Replayed(Accepted::for_order(row.get(0))))
        }
    }))
}

#[derive(Debug, Serialize)]
pub struct StatusChange {
    pub version: i32,
    pub status: String,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct OrderView {
    pub order_id: Uuid,
    pub customer_id: String,
    pub customer_email: Option<String>,
    pub currency: String,
    pub items: Value,
    pub total_minor: i64,
    pub status: String,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The trace the order was accepted in (every event about it continues it): a support
    /// engineer's way from an order to its trace.
    pub trace_id: Option<String>,
    pub history: Vec<StatusChange>,
}

pub async fn find(pool: &PgPool, order_id: Uuid) -> Result<Option<OrderView>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT customer_id, customer_email, currency, lines, total_minor, status, version, created_at, updated_at,
                traceparent
         FROM orders WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let created_at: DateTime<Utc> = row.get(7);
    let mut history = vec![StatusChange { version: 1, status: PENDING_PAYMENT.into(), reason: None, at: created_at }];
    let changes = sqlx::query(
        "SELECT version, status, reason, changed_at FROM order_status_history WHERE order_id = $1 ORDER BY version",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?;
    history.extend(changes.into_iter().map(|r| StatusChange {
        version: r.get(0),
        status: r.get(1),
        reason: r.get(2),
        at: r.get(3),
    }));
    Ok(Some(OrderView {
        order_id,
        customer_id: row.get(0),
        customer_email: row.get(1),
        currency: row.get(2),
        items: row.get(3),
        total_minor: row.get(4),
        status: row.get(5),
        version: row.get(6),
        created_at,
        updated_at: row.get(8),
        trace_id: row
            .get::<Option<String>, _>(9)
            .as_deref()
            .and_then(orderflow_platform::trace::trace_id_of)
            .map(str::to_string),
        history,
    }))
}

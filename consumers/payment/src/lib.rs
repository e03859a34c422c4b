//! The payment service (group `payment`): on OrderPlaced, charge the order once through the
//! provider and publish PaymentAuthorized or PaymentDeclined via the payments outbox; on
//! OrderCancelled with `refund_required` (the inventory-shortage saga), refund the charge once
//! under its own key (`order-<id>-refund`) and publish PaymentRefunded.
//!
//! No transaction is open while the provider is called (`Handler::call_out`): the call's intent
//! is committed to `provider_calls` under an idempotency key derived from the order
//! (`order-<id>-charge`), the provider is called, and its outcome committed; then the runtime's
//! transaction applies the outcome — the payment row, its event, the dedupe row. A crash
//! between the charge and any commit redelivers the event, the call is made again under the
//! same key, the provider answers with its stored result, and the customer is charged once.
//! However slow the provider, no consumer connection waits on it. An ambiguous answer (timeout, 5xx) is
//! resolved by reading the provider's ledger under the same key, or retried later with the same
//! key — never with a new one. Breaker, adaptive window, shared rate limit and retry budget: see
//! [`resilience`].

pub mod provider;
pub mod resilience;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use orderflow_consumer_runtime::{ConsumedEvent, Failure, Handler};
use orderflow_schemas::{
    EventCodec,
    events::{
        DeclineReason, Event, Money, OrderCancelled, OrderPlaced, PaymentAuthorized, PaymentDeclined, PaymentRefunded,
    },
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use provider::{ChargeError, ChargeOutcome, PaymentProviderClient, ProviderSettings};

pub const GROUP: &str = "payment";
/// The topics the group reads.
pub const TOPICS: [&str; 1] = [orderflow_schemas::topics::ORDERS];

/// Payment ids are derived from the order, so every attempt names the same payment.
const PAYMENT_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7266_6c6f_772d_7061_796d_656e);

pub fn payment_id(order_id: Uuid) -> Uuid {
    Uuid::new_v5(&PAYMENT_NAMESPACE, order_id.as_bytes())
}

pub fn charge_key(order_id: Uuid) -> String {
    format!("order-{order_id}-charge")
}

pub fn refund_key(order_id: Uuid) -> String {
    format!("order-{order_id}-refund")
}

/// Applies the payments, outbox and dedupe migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    orderflow_outbox::migrate(pool).await?;
    orderflow_consumer_runtime::migrate(pool).await?;
    orderflow_platform::migrations::run(sqlx::migrate!("./migrations"), pool, "payments").await
}

pub struct PaymentHandler {
    pub provider: PaymentProviderClient,
    pub codec: Arc<EventCodec>,
}

fn decline_reason(code: &str) -> DeclineReason {
    match code {
        "card_declined" => DeclineReason::CardDeclined,
        "insufficient_funds" => DeclineReason::InsufficientFunds,
        "expired_card" => DeclineReason::ExpiredCard,
        "fraudulent" | "fraud_suspected" => DeclineReason::FraudSuspected,
        _ => DeclineReason::Unknown,
    }
}

/// A provider call's recorded outcome.
enum Outcome {
    Approved(String),
    Declined(String),
}

impl PaymentHandler {
    /// Outside any transaction: commits the call's intent under `key`, calls the provider if the
    /// outcome is not recorded yet, and commits the outcome. Run again after a crash, it calls
    /// again under the same key and the provider answers with its first result.
    async fn call_once<F, Fut>(
        &self,
        pool: &PgPool,
        key: &str,
        operation: &str,
        order_id: Uuid,
        amount: &Money,
        call: F,
    ) -> Result<(), Failure>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Outcome, ChargeError>>,
    {
        // The intent and the call's status in one round trip: PENDING as just inserted, or the
        // status of the call recorded before.
        let status: Option<String> = sqlx::query_scalar(
            "WITH intent AS (
                 INSERT INTO provider_calls (idempotency_key, order_id, operation, amount_minor, currency, status)
                 VALUES ($1, $2, $3, $4, $5, 'PENDING') ON CONFLICT (idempotency_key) DO NOTHING RETURNING status)
             SELECT status FROM intent UNION ALL SELECT status FROM provider_calls WHERE idempotency_key = $1 LIMIT 1",
        )
        .bind(key)
        .bind(order_id)
        .bind(operation)
        .bind(amount.amount_minor)
        .bind(&amount.currency)
        .fetch_optional(pool)
        .await?;
        let status = match status {
            Some(status) => status,
            // A concurrent duplicate inserted it after this statement's snapshot was taken.
            None => {
                sqlx::query_scalar("SELECT status FROM provider_calls WHERE idempotency_key = $1")
                    .bind(key)
                    .fetch_one(pool)
                    .await?
            }
        };
        if status != "PENDING" {
            return Ok(());
        }
        let (status, reference, decline) = match call().await.map_err(provider_failure)? {
            Outcome::Approved(reference) => ("APPROVED", Some(reference), None),
            Outcome::Declined(code) => ("DECLINED", None, Some(code)),
        };
        sqlx::query(
            "UPDATE provider_calls SET status = $2, reference = $3, decline_code = $4, completed_at = now()
             WHERE idempotency_key = $1 AND status = 'PENDING'",
        )
        .bind(key)
        .bind(status)
        .bind(reference)
        .bind(decline)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// The outcome `call_once` recorded under `key`; a `Retry` when there is none yet.
    async fn outcome(tx: &mut PgConnection, key: &str) -> Result<Outcome, Failure> {
        let row: Option<CallRow> =
            sqlx::query_as("SELECT status, reference, decline_code FROM provider_calls WHERE idempotency_key = $1")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
        Self::recorded(key, row)
    }

    /// A call's row (status, reference, decline code) as its outcome.
    fn recorded(key: &str, row: Option<CallRow>) -> Result<Outcome, Failure> {
        match row {
            Some((status, Some(reference), _)) if status == "APPROVED" => Ok(Outcome::Approved(reference)),
            Some((status, _, code)) if status == "DECLINED" => Ok(Outcome::Declined(code.unwrap_or_default())),
            _ => Err(Failure::Retry(format!("no outcome recorded for provider call {key}"))),
        }
    }

    async fn call_charge(&self, pool: &PgPool, order: &OrderPlaced) -> Result<(), Failure> {
        // The business key: an order with a payment is never charged again, whatever its event
        // id and however long after (its dedupe row and call record may be pruned by then).
        let paid: Option<i32> = sqlx::query_scalar("SELECT 1 FROM payments WHERE order_id = $1")
            .bind(order.order_id)
            .fetch_optional(pool)
            .await?;
        if paid.is_some() {
            return Ok(());
        }
        let key = charge_key(order.order_id);
        self.call_once(pool, &key, "charge", order.order_id, &order.total, || async {
            let outcome = self
                .provider
                .charge(
                    &key,
                    order.total.amount_minor,
                    &order.total.currency,
                    &order.customer_id,
                    &order.order_id.to_string(),
                )
                .await?;
            Ok(match outcome {
                ChargeOutcome::Approved { provider_reference } => Outcome::Approved(provider_reference),
                ChargeOutcome::Declined { code } => Outcome::Declined(code),
            })
        })
        .await
    }

    /// In the transaction: the payment row and its event, from the recorded charge.
    async fn apply_charge(
        &self,
        tx: &mut PgConnection,
        event: &ConsumedEvent,
        order: OrderPlaced,
    ) -> Result<(), Failure> {
        let payment_id = payment_id(order.order_id);
        let key = charge_key(order.order_id);
        // Whether the order has a payment, and the charge's recorded outcome, in one round trip.
        let (paid, status, reference, code): (bool, Option<String>, Option<String>, Option<String>) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM payments WHERE order_id = $1), c.status, c.reference, c.decline_code
             FROM (SELECT 1) AS one LEFT JOIN provider_calls c ON c.idempotency_key = $2",
        )
        .bind(order.order_id)
        .bind(&key)
        .fetch_one(&mut *tx)
        .await?;
        if paid {
            // This order was paid for under another event id (a re-published OrderPlaced, a
            // replay past the horizon): nothing more to do.
            return Ok(());
        }
        let outcome = Self::recorded(&key, status.map(|status| (status, reference, code)))?;
        let (status, reference, decline) = match &outcome {
            Outcome::Approved(reference) => ("AUTHORIZED", Some(reference.clone()), None),
            Outcome::Declined(code) => ("DECLINED", None, Some(code.clone())),
        };
        let inserted = sqlx::query(
            "INSERT INTO payments (payment_id, order_id, status, amount_minor, currency, provider_reference, decline_reason, idempotency_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(payment_id)
        .bind(order.order_id)
        .bind(status)
        .bind(order.total.amount_minor)
        .bind(&order.total.currency)
        .bind(&reference)
        .bind(&decline)
        .bind(&key)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            // A concurrent duplicate inserted it first.
            return Ok(());
        }
        let now = Utc::now();
        match outcome {
            Outcome::Approved(provider_reference) => {
                let authorized = PaymentAuthorized {
                    order_id: order.order_id,
                    payment_id,
                    provider_reference,
                    amount: order.total,
                    authorized_at: now,
                };
                Ok(orderflow_outbox::enqueue_event(tx, &self.codec, &authorized, event.traceparent()).await?)
            }
            Outcome::Declined(code) => {
                let declined = PaymentDeclined {
                    order_id: order.order_id,
                    payment_id,
                    reason: decline_reason(&code),
                    message: Some(format!("provider declined: {}", code.chars().take(100).collect::<String>())),
                    declined_at: now,
                };
                Ok(orderflow_outbox::enqueue_event(tx, &self.codec, &declined, event.traceparent()).await?)
            }
        }
    }
}

/// A provider call's recorded status, reference and decline code.
type CallRow = (String, Option<String>, Option<String>);

fn provider_failure(e: ChargeError) -> Failure {
    match e {
        ChargeError::Ambiguous(m) => Failure::Unavailable(format!("provider: {m}")),
        ChargeError::RateLimited(wait) => Failure::Backpressure { reason: "provider rate limit (429)".into(), wait },
        ChargeError::HeldBack { reason, wait } => {
            Failure::Backpressure { reason: format!("provider call held back: {reason}"), wait }
        }
        ChargeError::Rejected(m) => Failure::dead("provider_rejected", m),
        ChargeError::Misconfigured(m) => {
            // Every order would fail the same way: wait (the partition pauses) instead of
            // dead-lettering the whole stream; the log says what to fix.
            tracing::error!(reason = %m, "the payment provider refuses our configuration; waiting for a fix");
            Failure::Unavailable(format!("provider misconfigured: {m}"))
        }
    }
}

impl PaymentHandler {
    /// Outside any transaction: gives an authorized payment back, once, under its own key. No
    /// payment, a declined one or one already refunded: nothing to call.
    async fn call_refund(&self, pool: &PgPool, cancelled: &OrderCancelled) -> Result<(), Failure> {
        let payment: Option<(String, i64, String, Option<String>)> = sqlx::query_as(
            "SELECT status, amount_minor, currency, provider_reference FROM payments WHERE order_id = $1",
        )
        .bind(cancelled.order_id)
        .fetch_optional(pool)
        .await?;
        let Some((status, amount_minor, currency, Some(charge_id))) = payment else {
            tracing::info!(order_id = %cancelled.order_id, "cancelled order has no charge to refund");
            return Ok(());
        };
        if status != "AUTHORIZED" {
            return Ok(());
        }
        let key = refund_key(cancelled.order_id);
        let amount = Money { amount_minor, currency };
        let order = cancelled.order_id.to_string();
        self.call_once(pool, &key, "refund", cancelled.order_id, &amount, || async {
            Ok(Outcome::Approved(self.provider.refund(&key, &charge_id, amount_minor, &order).await?))
        })
        .await
    }

    /// In the transaction: the payment marked refunded and PaymentRefunded, from the recorded
    /// refund.
    async fn apply_refund(
        &self,
        tx: &mut PgConnection,
        event: &ConsumedEvent,
        cancelled: OrderCancelled,
    ) -> Result<(), Failure> {
        let payment: Option<(Uuid, String, i64, String)> = sqlx::query_as(
            "SELECT payment_id, status, amount_minor, currency FROM payments WHERE order_id = $1 FOR UPDATE",
        )
        .bind(cancelled.order_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((payment_id, status, amount_minor, currency)) = payment else { return Ok(()) };
        if status != "AUTHORIZED" {
            return Ok(());
        }
        let Outcome::Approved(reference) = Self::outcome(tx, &refund_key(cancelled.order_id)).await? else {
            return Err(Failure::Retry("the refund was declined".into()));
        };
        sqlx::query(
            "UPDATE payments SET status = 'REFUNDED', refund_reference = $2, refunded_at = now() WHERE payment_id = $1",
        )
        .bind(payment_id)
        .bind(&reference)
        .execute(&mut *tx)
        .await?;
        let refunded = PaymentRefunded {
            order_id: cancelled.order_id,
            payment_id,
            refund_reference: reference,
            amount: Money { amount_minor, currency },
            refunded_at: Utc::now(),
        };
        Ok(orderflow_outbox::enqueue_event(tx, &self.codec, &refunded, event.traceparent()).await?)
    }
}

impl Handler for PaymentHandler {
    /// Placed orders are charged; cancelled ones refunded.
    fn handles(&self, event_type: &str) -> bool {
        event_type == OrderPlaced::NAME || event_type == OrderCancelled::NAME
    }

    fn calls_out(&self, event_type: &str) -> bool {
        self.handles(event_type)
    }

    /// The provider calls, each committed as intent then outcome, with no transaction open.
    async fn call_out(&self, pool: &PgPool, event: &ConsumedEvent) -> Result<(), Failure> {
        if event.event_type() == OrderCancelled::NAME {
            let cancelled = event.decode::<OrderCancelled>()?;
            return match cancelled.refund_required {
                true => self.call_refund(pool, &cancelled).await,
                false => Ok(()),
            };
        }
        self.call_charge(pool, &event.decode::<OrderPlaced>()?).await
    }

    /// Completed provider calls past the horizon (the payments rows keep what they decided);
    /// a call still PENDING is kept until it completes.
    async fn prune(&self, pool: &PgPool, before: DateTime<Utc>) -> sqlx::Result<Vec<(&'static str, u64)>> {
        let deleted = orderflow_consumer_runtime::retention::in_batches(|limit| async move {
            let result = sqlx::query(
                "DELETE FROM provider_calls WHERE idempotency_key IN (
                     SELECT idempotency_key FROM provider_calls
                     WHERE status <> 'PENDING' AND completed_at < $1 ORDER BY completed_at LIMIT $2)",
            )
            .bind(before)
            .bind(limit)
            .execute(pool)
            .await?;
            Ok(result.rows_affected())
        })
        .await?;
        Ok(vec![("provider_calls", deleted)])
    }

    /// The recorded outcome applied: the payment row, its event, with the dedupe row.
    async fn handle(&self, tx: &mut PgConnection, event: &ConsumedEvent) -> Result<(), Failure> {
        if event.event_type() == OrderCancelled::NAME {
            let cancelled = event.decode::<OrderCancelled>()?;
            if !cancelled.refund_required {
                return Ok(());
            }
            return self.apply_refund(tx, event, cancelled).await;
        }
        self.apply_charge(tx, event, event.decode::<OrderPlaced>()?).await
    }
}

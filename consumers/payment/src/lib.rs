//! The payment service (group `payment`): on OrderPlaced, charge the order once through the
//! provider and publish PaymentAuthorized or PaymentDeclined via the payments outbox; on
//! OrderCancelled with `refund_required` (the inventory-shortage saga), refund the charge once
//! under its own key (`order-<id>-refund`) and publish PaymentRefunded.
//!
//! The provider call happens inside the runtime's transaction, after the dedupe row is claimed,
//! with an idempotency key derived from the order (`order-<id>-charge`): a crash after the
//! charge and before the commit redelivers the event, the retry gets the provider's stored
//! result for that key, and the customer is charged once. An ambiguous answer (timeout, 5xx) is
//! resolved by reading the provider's ledger under the same key, or retried later with the same
//! key — never with a new one. Breaker, adaptive window, shared rate limit and retry budget: see
//! [`resilience`].

pub mod provider;
pub mod resilience;

use std::sync::Arc;

use chrono::Utc;
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

impl PaymentHandler {
    async fn charge(&self, tx: &mut PgConnection, event: &ConsumedEvent, order: OrderPlaced) -> Result<(), Failure> {
        let payment_id = payment_id(order.order_id);
        let key = charge_key(order.order_id);
        let outcome = self
            .provider
            .charge(
                &key,
                order.total.amount_minor,
                &order.total.currency,
                &order.customer_id,
                &order.order_id.to_string(),
            )
            .await
            .map_err(provider_failure)?;
        let (status, reference, decline) = match &outcome {
            ChargeOutcome::Approved { provider_reference } => ("AUTHORIZED", Some(provider_reference.clone()), None),
            ChargeOutcome::Declined { code } => ("DECLINED", None, Some(code.clone())),
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
            // This order was paid for under another event id (a re-published OrderPlaced).
            return Ok(());
        }
        let now = Utc::now();
        match outcome {
            ChargeOutcome::Approved { provider_reference } => {
                let authorized = PaymentAuthorized {
                    order_id: order.order_id,
                    payment_id,
                    provider_reference,
                    amount: order.total,
                    authorized_at: now,
                };
                Ok(orderflow_outbox::enqueue_event(tx, &self.codec, &authorized, event.traceparent()).await?)
            }
            ChargeOutcome::Declined { code } => {
                let declined = PaymentDeclined {
                    order_id: order.order_id,
                    payment_id,
                    reason: decline_reason(&code),
                    message: Some(format!("provider declined: {code}")),
                    declined_at: now,
                };
                Ok(orderflow_outbox::enqueue_event(tx, &self.codec, &declined, event.traceparent()).await?)
            }
        }
    }
}

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
    /// Gives an authorized payment back, once. No payment, a declined one or one already
    /// refunded: nothing to do.
    async fn refund(
        &self,
        tx: &mut PgConnection,
        event: &ConsumedEvent,
        cancelled: OrderCancelled,
    ) -> Result<(), Failure> {
        let payment: Option<(Uuid, String, i64, String, Option<String>)> = sqlx::query_as(
            "SELECT payment_id, status, amount_minor, currency, provider_reference FROM payments WHERE order_id = $1 FOR UPDATE",
        )
        .bind(cancelled.order_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((payment_id, status, amount_minor, currency, Some(charge_id))) = payment else {
            tracing::info!(order_id = %cancelled.order_id, "cancelled order has no charge to refund");
            return Ok(());
        };
        if status != "AUTHORIZED" {
            return Ok(());
        }
        let reference = self
            .provider
            .refund(&refund_key(cancelled.order_id), &charge_id, amount_minor, &cancelled.order_id.to_string())
            .await
            .map_err(provider_failure)?;
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

    async fn handle(&self, tx: &mut PgConnection, event: &ConsumedEvent) -> Result<(), Failure> {
        let invalid = |e: orderflow_schemas::CodecError| Failure::dead("invalid_event", e.to_string());
        if event.event_type() == OrderCancelled::NAME {
            let cancelled = OrderCancelled::from_avro(&event.decoded.value).map_err(invalid)?;
            if !cancelled.refund_required {
                return Ok(());
            }
            return self.refund(tx, event, cancelled).await;
        }
        let order = OrderPlaced::from_avro(&event.decoded.value).map_err(invalid)?;
        if order.total.amount_minor <= 0 {
            return Err(Failure::dead("invalid_event", "an order total must be positive"));
        }
        self.charge(tx, event, order).await
    }
}

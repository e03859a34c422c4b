//! order-service (group `order-service`): applies payment outcomes to orders and announces the
//! result. PaymentAuthorized → PAID + OrderPaid; PaymentDeclined → PAYMENT_FAILED +
//! OrderPaymentFailed. The status change, its history row, the event (orders outbox) and the
//! dedupe record commit together.
//!
//! The saga's middle step: InventoryShortage for a PAID order → CANCELLED + OrderCancelled
//! (`refund_required`), which the payment service refunds; PaymentRefunded → REFUNDED.
//!
//! Concurrency is optimistic: the update names the version it read, and a lost race is retried.
//! A payment outcome for an order that already left PENDING_PAYMENT changes nothing.

use std::sync::Arc;

use orderflow_consumer_runtime::{ConsumedEvent, Failure, Handler};
use orderflow_orders::OrderStatus;
use orderflow_schemas::{
    EventCodec,
    events::{
        CancelReason, Event, InventoryShortage, OrderCancelled, OrderLine, OrderPaid, OrderPaymentFailed,
        PaymentAuthorized, PaymentDeclined, PaymentRefunded,
    },
    topics,
};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

pub const GROUP: &str = "order-service";
/// The topics order-service reads: payment outcomes, and inventory's verdicts on `orders`.
pub const TOPICS: [&str; 2] = [topics::PAYMENTS, topics::ORDERS];

/// Orders, outbox and dedupe migrations (order-service shares the orders database).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    orderflow_orders::migrate(pool).await?;
    orderflow_consumer_runtime::migrate(pool).await
}

pub struct OrderStatusHandler {
    pub codec: Arc<EventCodec>,
    /// From `POST /orders` accepting the order to the order becoming PAID.
    accept_to_paid: prometheus::Histogram,
}

impl OrderStatusHandler {
    pub fn new(codec: Arc<EventCodec>, registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let accept_to_paid = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "orderflow_order_accept_to_paid_seconds",
                "From the order's acceptance (202) to its PAID status, end to end through Kafka and the provider",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0]),
        )?;
        registry.register(Box::new(accept_to_paid.clone()))?;
        Ok(OrderStatusHandler { codec, accept_to_paid })
    }
}

struct CurrentOrder {
    status: String,
    version: i32,
    customer_id: String,
    lines: Vec<OrderLine>,
    created_at: chrono::DateTime<chrono::Utc>,
}

async fn load(tx: &mut PgConnection, order_id: Uuid) -> Result<CurrentOrder, Failure> {
    let row = sqlx::query("SELECT status, version, customer_id, lines, created_at FROM orders WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Failure::dead("unknown_order", format!("no order {order_id}")))?;
    let lines: serde_json::Value = row.get(3);
    Ok(CurrentOrder {
        status: row.get(0),
        version: row.get(1),
        customer_id: row.get(2),
        lines: serde_json::from_value(lines).map_err(|e| Failure::dead("corrupt_order", e.to_string()))?,
        created_at: row.get(4),
    })
}

/// Moves the order to `status` if it still has `version`; false when someone else moved it.
async fn transition(
    tx: &mut PgConnection,
    order_id: Uuid,
    version: i32,
    status: OrderStatus,
    reason: Option<&str>,
) -> Result<bool, Failure> {
    let updated = sqlx::query(
        "UPDATE orders SET status = $1, version = version + 1, updated_at = now() WHERE order_id = $2 AND version = $3",
    )
    .bind(status.as_str())
    .bind(order_id)
    .bind(version)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    sqlx::query("INSERT INTO order_status_history (order_id, version, status, reason) VALUES ($1, $2, $3, $4)")
        .bind(order_id)
        .bind(version + 1)
        .bind(status.as_str())
        .bind(reason)
        .execute(&mut *tx)
        .await?;
    Ok(true)
}

/// Moves an order from `from` to `status`; `None` when it is not in `from` (a replayed or late
/// event changes nothing), a conflict (run again at once) when another writer moved it meanwhile.
async fn settle(
    tx: &mut PgConnection,
    order_id: Uuid,
    from: OrderStatus,
    status: OrderStatus,
    reason: Option<&str>,
) -> Result<Option<CurrentOrder>, Failure> {
    let order = load(tx, order_id).await?;
    if order.status != from.as_str() {
        return Ok(None);
    }
    if !transition(tx, order_id, order.version, status, reason).await? {
        // Lost the race with another writer: run again at once, from the order as it is now.
        return Err(Failure::Conflict(format!("order {order_id} changed concurrently")));
    }
    Ok(Some(order))
}

impl Handler for OrderStatusHandler {
    fn handles(&self, event_type: &str) -> bool {
        [PaymentAuthorized::NAME, PaymentDeclined::NAME, InventoryShortage::NAME, PaymentRefunded::NAME]
            .contains(&event_type)
    }

    async fn handle(&self, tx: &mut PgConnection, event: &ConsumedEvent) -> Result<(), Failure> {
        use OrderStatus::{Cancelled, Paid, PaymentFailed, PendingPayment as pending, Refunded};
        match event.event_type() {
            InventoryShortage::NAME => {
                let shortage = event.decode::<InventoryShortage>()?;
                let skus: Vec<&str> = shortage.missing.iter().map(|m| m.sku.as_str()).collect();
                let reason = format!("inventory shortage: {}", skus.join(", "));
                let Some(order) = settle(tx, shortage.order_id, Paid, Cancelled, Some(&reason)).await? else {
                    return Ok(());
                };
                let cancelled = OrderCancelled {
                    order_id: shortage.order_id,
                    customer_id: order.customer_id,
                    reason: CancelReason::InventoryShortage,
                    refund_required: true,
                    cancelled_at: shortage.detected_at,
                };
                return Ok(orderflow_outbox::enqueue_event(tx, &self.codec, &cancelled, event.traceparent()).await?);
            }
            PaymentRefunded::NAME => {
                let refunded = event.decode::<PaymentRefunded>()?;
                settle(tx, refunded.order_id, Cancelled, Refunded, Some(&refunded.refund_reference)).await?;
                return Ok(());
            }
            _ => {}
        }
        if event.event_type() == PaymentAuthorized::NAME {
            let paid = event.decode::<PaymentAuthorized>()?;
            let Some(order) = settle(tx, paid.order_id, pending, Paid, None).await? else { return Ok(()) };
            let waited = (chrono::Utc::now() - order.created_at).to_std().unwrap_or_default();
            self.accept_to_paid.observe(waited.as_secs_f64());
            let announcement = OrderPaid {
                order_id: paid.order_id,
                payment_id: paid.payment_id,
                customer_id: order.customer_id,
                lines: order.lines,
                amount: paid.amount,
                paid_at: paid.authorized_at,
            };
            Ok(orderflow_outbox::enqueue_event(tx, &self.codec, &announcement, event.traceparent()).await?)
        } else {
            let declined = event.decode::<PaymentDeclined>()?;
            let Some(order) =
                settle(tx, declined.order_id, pending, PaymentFailed, declined.message.as_deref()).await?
            else {
                return Ok(());
            };
            let announcement = OrderPaymentFailed {
                order_id: declined.order_id,
                payment_id: declined.payment_id,
                customer_id: order.customer_id,
                reason: declined.reason,
                message: declined.message,
                failed_at: declined.declined_at,
            };
            Ok(orderflow_outbox::enqueue_event(tx, &self.codec, &announcement, event.traceparent()).await?)
        }
    }
}

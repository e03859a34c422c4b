//! The analytics service (group `analytics`): per-minute aggregates of the order lifecycle —
//! orders placed, paid, payment failed, short of stock, cancelled; paid revenue per currency;
//! payment failure rate; the funnel placed → paid → stocked — kept in Postgres and served over
//! HTTP (`GET /aggregates`, `GET /funnel`, `GET /aggregates/check`).
//!
//! Duplicates and disorder are harmless by construction: every event sets one fact of its order
//! (`order_facts`) only if that fact is not set yet, at the event's own time, and bumps the
//! aggregate of that minute in the same transaction — so an event counts once however often it
//! arrives, an OrderPaid before its OrderPlaced lands in the right minutes, and the aggregates
//! always equal a recount of the facts.

use chrono::{DateTime, Duration, Utc};
use orderflow_consumer_runtime::{ConsumedEvent, Failure, Handler};
use orderflow_schemas::events::{
    Event, InventoryShortage, Money, OrderCancelled, OrderPaid, OrderPaymentFailed, OrderPlaced,
};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub mod http;

pub const GROUP: &str = "analytics";
/// The topics the group reads.
pub const TOPICS: [&str; 1] = [orderflow_schemas::topics::ORDERS];

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    orderflow_consumer_runtime::migrate(pool).await?;
    orderflow_platform::migrations::run(sqlx::migrate!("./migrations"), pool, "analytics").await
}

/// A lifecycle step: its fact column in `order_facts` and its counter in `minute_counts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Placed,
    Paid,
    PaymentFailed,
    Shortage,
    Cancelled,
}

impl Step {
    fn time_column(self) -> &'static str {
        match self {
            Step::Placed => "placed_at",
            Step::Paid => "paid_at",
            Step::PaymentFailed => "payment_failed_at",
            Step::Shortage => "shortage_at",
            Step::Cancelled => "cancelled_at",
        }
    }

    fn amount_column(self) -> Option<&'static str> {
        match self {
            Step::Placed => Some("placed_total_minor"),
            Step::Paid => Some("paid_amount_minor"),
            _ => None,
        }
    }

    fn counter(self) -> &'static str {
        match self {
            Step::Placed => "placed",
            Step::Paid => "paid",
            Step::PaymentFailed => "payment_failed",
            Step::Shortage => "shortage",
            Step::Cancelled => "cancelled",
        }
    }
}

/// Sets the step's fact if it is not set yet; then (only then) counts it in its minute.
async fn record(
    tx: &mut PgConnection,
    order_id: Uuid,
    step: Step,
    at: DateTime<Utc>,
    money: Option<&Money>,
) -> Result<(), Failure> {
    let t = step.time_column();
    let with_money = step.amount_column().zip(money);
    let sql = match with_money {
        Some((a, _)) => format!(
            "INSERT INTO order_facts (order_id, {t}, {a}, currency) VALUES ($1, $2, $3, $4)
             ON CONFLICT (order_id) DO UPDATE
                SET {t} = EXCLUDED.{t}, {a} = EXCLUDED.{a}, currency = COALESCE(order_facts.currency, EXCLUDED.currency)
             WHERE order_facts.{t} IS NULL"
        ),
        None => format!(
            "INSERT INTO order_facts (order_id, {t}) VALUES ($1, $2)
             ON CONFLICT (order_id) DO UPDATE SET {t} = EXCLUDED.{t} WHERE order_facts.{t} IS NULL"
        ),
    };
    let mut query = sqlx::query(&sql).bind(order_id).bind(at);
    if let Some((_, money)) = with_money {
        query = query.bind(money.amount_minor).bind(&money.currency);
    }
    let first = query.execute(&mut *tx).await?.rows_affected() == 1;
    if !first {
        return Ok(());
    }
    let counter = step.counter();
    sqlx::query(&format!(
        "INSERT INTO minute_counts (minute, {counter}) VALUES (date_trunc('minute', $1::timestamptz), 1)
         ON CONFLICT (minute) DO UPDATE SET {counter} = minute_counts.{counter} + 1"
    ))
    .bind(at)
    .execute(&mut *tx)
    .await?;
    if let (Step::Paid, Some(money)) = (step, money) {
        sqlx::query(
            "INSERT INTO minute_revenue (minute, currency, paid_orders, revenue_minor)
             VALUES (date_trunc('minute', $1::timestamptz), $2, 1, $3)
             ON CONFLICT (minute, currency) DO UPDATE
                SET paid_orders = minute_revenue.paid_orders + 1, revenue_minor = minute_revenue.revenue_minor + $3",
        )
        .bind(at)
        .bind(&money.currency)
        .bind(money.amount_minor)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

pub struct AnalyticsHandler;

impl Handler for AnalyticsHandler {
    fn handles(&self, event_type: &str) -> bool {
        [OrderPlaced::NAME, OrderPaid::NAME, OrderPaymentFailed::NAME, InventoryShortage::NAME, OrderCancelled::NAME]
            .contains(&event_type)
    }

    async fn handle(&self, tx: &mut PgConnection, event: &ConsumedEvent) -> Result<(), Failure> {
        match event.event_type() {
            OrderPlaced::NAME => {
                let e = event.decode::<OrderPlaced>()?;
                record(tx, e.order_id, Step::Placed, e.placed_at, Some(&e.total)).await
            }
            OrderPaid::NAME => {
                let e = event.decode::<OrderPaid>()?;
                record(tx, e.order_id, Step::Paid, e.paid_at, Some(&e.amount)).await
            }
            OrderPaymentFailed::NAME => {
                let e = event.decode::<OrderPaymentFailed>()?;
                record(tx, e.order_id, Step::PaymentFailed, e.failed_at, None).await
            }
            InventoryShortage::NAME => {
                let e = event.decode::<InventoryShortage>()?;
                record(tx, e.order_id, Step::Shortage, e.detected_at, None).await
            }
            OrderCancelled::NAME => {
                let e = event.decode::<OrderCancelled>()?;
                record(tx, e.order_id, Step::Cancelled, e.cancelled_at, None).await
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct MinuteCounts {
    pub minute: DateTime<Utc>,
    pub placed: i64,
    pub paid: i64,
    pub payment_failed: i64,
    pub shortage: i64,
    pub cancelled: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct MinuteRevenue {
    pub minute: DateTime<Utc>,
    pub currency: String,
    pub paid_orders: i64,
    pub revenue_minor: i64,
}

/// A time range, `[from, to)`.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Range {
    /// Everything: for whole-table checks.
    pub fn all() -> Range {
        let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap_or_default();
        // Postgres timestamps end in 294276 AD; this is far enough.
        Range { from: at(0), to: at(253_402_300_799) }
    }

    pub fn last(window: Duration) -> Range {
        let now = Utc::now();
        Range { from: now - window, to: now + Duration::minutes(1) }
    }
}

/// The stored per-minute counts and revenue.
pub async fn aggregates(pool: &PgPool, range: Range) -> sqlx::Result<(Vec<MinuteCounts>, Vec<MinuteRevenue>)> {
    let counts = sqlx::query_as(
        "SELECT minute, placed, paid, payment_failed, shortage, cancelled FROM minute_counts
         WHERE minute >= $1 AND minute < $2 ORDER BY minute",
    )
    .bind(range.from)
    .bind(range.to)
    .fetch_all(pool)
    .await?;
    let revenue = sqlx::query_as(
        "SELECT minute, currency, paid_orders, revenue_minor FROM minute_revenue
         WHERE minute >= $1 AND minute < $2 ORDER BY minute, currency",
    )
    .bind(range.from)
    .bind(range.to)
    .fetch_all(pool)
    .await?;
    Ok((counts, revenue))
}

/// The same figures recounted from the per-order facts.
pub async fn recount(pool: &PgPool, range: Range) -> sqlx::Result<(Vec<MinuteCounts>, Vec<MinuteRevenue>)> {
    let counts = sqlx::query_as(
        "WITH steps AS (
            SELECT date_trunc('minute', placed_at) AS minute, 'placed' AS step FROM order_facts WHERE placed_at IS NOT NULL
            UNION ALL SELECT date_trunc('minute', paid_at), 'paid' FROM order_facts WHERE paid_at IS NOT NULL
            UNION ALL SELECT date_trunc('minute', payment_failed_at), 'payment_failed' FROM order_facts WHERE payment_failed_at IS NOT NULL
            UNION ALL SELECT date_trunc('minute', shortage_at), 'shortage' FROM order_facts WHERE shortage_at IS NOT NULL
            UNION ALL SELECT date_trunc('minute', cancelled_at), 'cancelled' FROM order_facts WHERE cancelled_at IS NOT NULL)
         SELECT minute,
                count(*) FILTER (WHERE step = 'placed') AS placed,
                count(*) FILTER (WHERE step = 'paid') AS paid,
                count(*) FILTER (WHERE step = 'payment_failed') AS payment_failed,
                count(*) FILTER (WHERE step = 'shortage') AS shortage,
                count(*) FILTER (WHERE step = 'cancelled') AS cancelled
         FROM steps WHERE minute >= $1 AND minute < $2 GROUP BY minute ORDER BY minute",
    )
    .bind(range.from)
    .bind(range.to)
    .fetch_all(pool)
    .await?;
    let revenue = sqlx::query_as(
        "SELECT date_trunc('minute', paid_at) AS minute, currency, count(*) AS paid_orders,
                sum(paid_amount_minor)::bigint AS revenue_minor
         FROM order_facts WHERE paid_at IS NOT NULL AND date_trunc('minute', paid_at) >= $1 AND date_trunc('minute', paid_at) < $2
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(range.from)
    .bind(range.to)
    .fetch_all(pool)
    .await?;
    Ok((counts, revenue))
}

/// Orders through each step of the funnel in the range (by the minute each step happened).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Funnel {
    pub placed: i64,
    pub paid: i64,
    /// Paid and not short of stock.
    pub stocked: i64,
    pub payment_failed: i64,
    pub cancelled: i64,
}

pub fn funnel(counts: &[MinuteCounts]) -> Funnel {
    let sum = |f: fn(&MinuteCounts) -> i64| counts.iter().map(f).sum::<i64>();
    let (paid, shortage) = (sum(|c| c.paid), sum(|c| c.shortage));
    Funnel {
        placed: sum(|c| c.placed),
        paid,
        stocked: paid - shortage,
        payment_failed: sum(|c| c.payment_failed),
        cancelled: sum(|c| c.cancelled),
    }
}

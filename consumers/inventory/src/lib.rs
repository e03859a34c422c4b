//! The inventory service (group `inventory`): on OrderPaid, reserve every line of the order —
//! all lines or none, once per order, stock never below zero.
//!
//! Lines are decremented in SKU order (two orders sharing SKUs lock them in the same order, so
//! they never deadlock) with `UPDATE … WHERE available >= qty`. The row lock serializes
//! concurrent orders for the same SKU: of two orders for the last unit, the second finds
//! `available = 0`, its decrements so far are rolled back to a savepoint, and it publishes
//! InventoryShortage; order-service then cancels it and payment refunds it (the saga).
//!
//! "Once per order" is the `reservations` row, claimed first: a re-published OrderPaid (another
//! event id, so the dedupe store lets it through) finds the decision already made.

pub mod cli;

use std::{collections::BTreeMap, sync::Arc};

use chrono::Utc;
use orderflow_consumer_runtime::{ConsumedEvent, Failure, Handler};
use orderflow_schemas::{
    EventCodec,
    events::{Event, InventoryShortage, MissingStock, OrderPaid},
};
use sqlx::{PgConnection, PgPool};

pub const GROUP: &str = "inventory";
/// The topics the group reads.
pub const TOPICS: [&str; 1] = [orderflow_schemas::topics::ORDERS];

/// Stock, reservations, outbox and dedupe migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    orderflow_outbox::migrate(pool).await?;
    orderflow_consumer_runtime::migrate(pool).await?;
    orderflow_platform::migrations::run(sqlx::migrate!("./migrations"), pool, "inventory").await
}

/// Sets the available quantity of each SKU (creating it), as an operator seeds or corrects
/// stock.
pub async fn set_stock(pool: &PgPool, levels: &[(String, i32)]) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for (sku, available) in levels {
        anyhow::ensure!(*available >= 0, "stock for {sku} cannot be negative ({available})");
        sqlx::query(
            "INSERT INTO stock (sku, available) VALUES ($1, $2)
             ON CONFLICT (sku) DO UPDATE SET available = EXCLUDED.available, updated_at = now()",
        )
        .bind(sku)
        .bind(available)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Every SKU and its available quantity, by SKU.
pub async fn stock_levels(pool: &PgPool) -> sqlx::Result<Vec<(String, i32)>> {
    sqlx::query_as("SELECT sku, available FROM stock ORDER BY sku").fetch_all(pool).await
}

pub struct InventoryHandler {
    pub codec: Arc<EventCodec>,
}

/// Takes every wanted quantity or nothing. `Err(missing)` lists what was short.
async fn reserve(
    tx: &mut PgConnection,
    wanted: &BTreeMap<String, i32>,
) -> Result<Result<(), Vec<MissingStock>>, sqlx::Error> {
    sqlx::query("SAVEPOINT reserve").execute(&mut *tx).await?;
    for (sku, quantity) in wanted {
        let taken = sqlx::query(
            "UPDATE stock SET available = available - $2, updated_at = now() WHERE sku = $1 AND available >= $2",
        )
        .bind(sku)
        .bind(quantity)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if taken == 0 {
            sqlx::query("ROLLBACK TO SAVEPOINT reserve").execute(&mut *tx).await?;
            let skus: Vec<&String> = wanted.keys().collect();
            let available: BTreeMap<String, i32> =
                sqlx::query_as("SELECT sku, available FROM stock WHERE sku = ANY($1)")
                    .bind(&skus)
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .collect();
            let missing = wanted
                .iter()
                .filter_map(|(sku, requested)| {
                    let available = available.get(sku).copied().unwrap_or(0);
                    (available < *requested).then(|| MissingStock {
                        sku: sku.clone(),
                        requested: *requested,
                        available,
                    })
                })
                .collect();
            return Ok(Err(missing));
        }
    }
    sqlx::query("RELEASE SAVEPOINT reserve").execute(&mut *tx).await?;
    Ok(Ok(()))
}

impl Handler for InventoryHandler {
    fn handles(&self, event_type: &str) -> bool {
        event_type == OrderPaid::NAME
    }

    /// Locks every SKU the batch touches, in SKU order, before any order takes stock: the
    /// batches of two partitions then wait for each other instead of deadlocking.
    async fn prepare_batch(&self, tx: &mut PgConnection, events: &[ConsumedEvent]) -> Result<(), Failure> {
        let mut skus: Vec<String> = events
            .iter()
            .filter_map(|e| e.decode::<OrderPaid>().ok())
            .flat_map(|paid| paid.lines.into_iter().map(|l| l.sku))
            .collect();
        skus.sort();
        skus.dedup();
        sqlx::query("SELECT 1 FROM stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE")
            .bind(&skus)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn handle(&self, tx: &mut PgConnection, event: &ConsumedEvent) -> Result<(), Failure> {
        let paid = event.decode::<OrderPaid>()?;
        // The contract bounds lines and quantities, so a SKU's sum fits.
        let mut wanted: BTreeMap<String, i32> = BTreeMap::new();
        for line in &paid.lines {
            *wanted.entry(line.sku.clone()).or_default() += line.quantity;
        }
        // Claim the decision for this order; a concurrent claim waits on the row, then sees it.
        let lines = serde_json::to_value(&wanted).unwrap_or_default();
        let claimed = sqlx::query(
            "INSERT INTO reservations (order_id, outcome, lines) VALUES ($1, 'RESERVED', $2) ON CONFLICT DO NOTHING",
        )
        .bind(paid.order_id)
        .bind(&lines)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            tracing::debug!(order_id = %paid.order_id, "reservation already decided");
            return Ok(());
        }
        let Err(missing) = reserve(tx, &wanted).await? else { return Ok(()) };
        tracing::info!(order_id = %paid.order_id, ?missing, "inventory shortage");
        sqlx::query("UPDATE reservations SET outcome = 'SHORTAGE' WHERE order_id = $1")
            .bind(paid.order_id)
            .execute(&mut *tx)
            .await?;
        let shortage = InventoryShortage { order_id: paid.order_id, missing, detected_at: Utc::now() };
        Ok(orderflow_outbox::enqueue_event(tx, &self.codec, &shortage, event.traceparent()).await?)
    }
}

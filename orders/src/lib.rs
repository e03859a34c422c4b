//! The orders domain's core, shared by its two services:
//!
//! - `orders/order-api/` (`order-api`): REST intake and an order's status (`GET /orders/{id}`);
//! - `orders/order-service/` (`order-service`): moves an order's status on payment and stock
//!   outcomes and emits the next lifecycle event.
//!
//! Both write the orders database: the `orders` table and its history (`migrations/`), and its
//! outbox (`orderflow_outbox`). [`OrderStatus`] is the one definition of a status.

pub mod status;

use sqlx::PgPool;
pub use status::OrderStatus;

/// Applies the outbox and the orders migrations (idempotent).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    orderflow_outbox::migrate(pool).await?;
    orderflow_platform::migrations::run(sqlx::migrate!("./migrations"), pool, "orders").await
}

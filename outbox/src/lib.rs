//! The transactional outbox.
//!
//! A service writes its business change and the events announcing it in one Postgres
//! transaction ([`enqueue`]); the [`relay`] publishes them to Kafka afterwards. So an event is
//! never lost (it is committed with the change) and never invented (a rolled-back change takes
//! its events with it). Payloads are framed at the source (Confluent wire format, schema id
//! included), so the relay — or Debezium, see `connect/` — copies bytes and needs no registry.

pub mod cdc;
pub mod metrics;
pub mod relay;

use chrono::{DateTime, Utc};
use orderflow_schemas::{CodecError, EventCodec, events::Event};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use metrics::RelayMetrics;
pub use relay::{OutboxRelay, RelaySettings};

/// Applies the outbox migration (idempotent; shares the database with the owner's tables).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    orderflow_platform::migrations::run(sqlx::migrate!("./migrations"), pool, "outbox").await
}

/// An event to publish.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub event_id: Uuid,
    pub topic: String,
    /// Partitioning key; every event of one order uses the order id.
    pub key: String,
    pub event_type: String,
    pub schema_version: i32,
    /// Confluent-framed Avro bytes.
    pub payload: Vec<u8>,
    pub traceparent: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

impl OutboxEvent {
    /// The outbox row for a typed event whose framed `payload` is already encoded.
    pub fn of<E: Event>(event: &E, payload: Vec<u8>, traceparent: Option<&str>) -> Self {
        OutboxEvent {
            event_id: Uuid::now_v7(),
            topic: E::schema().topic.clone(),
            key: event.key(),
            event_type: E::NAME.into(),
            schema_version: E::VERSION as i32,
            payload,
            traceparent: traceparent.map(str::to_string),
            occurred_at: Utc::now(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Encodes a typed event and writes it inside the caller's transaction.
pub async fn enqueue_event<E: Event>(
    conn: &mut PgConnection,
    codec: &EventCodec,
    event: &E,
    traceparent: Option<&str>,
) -> Result<(), EnqueueError> {
    let payload = codec.encode_event(event).await?;
    enqueue(conn, &OutboxEvent::of(event, payload, traceparent)).await?;
    Ok(())
}

/// Writes `event` inside the caller's transaction.
pub async fn enqueue(conn: &mut PgConnection, event: &OutboxEvent) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, message_key, event_type, schema_version, payload, traceparent, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(event.event_id)
    .bind(&event.topic)
    .bind(&event.key)
    .bind(&event.event_type)
    .bind(event.schema_version)
    .bind(&event.payload)
    .bind(&event.traceparent)
    .bind(event.occurred_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Rows not yet acknowledged by the broker, and the age of the oldest in seconds.
pub async fn backlog(pool: &PgPool) -> sqlx::Result<(i64, f64)> {
    sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await
}

//! The notifications service (group `notifications`): OrderPaid → "order confirmed",
//! OrderPaymentFailed → "payment failed", OrderCancelled → "order cancelled", by email when the
//! order carried an address (OrderPlaced v2), else by SMS to the customer.
//!
//! Exactly one message per (order, kind), under redelivery, re-published events and provider
//! timeouts: the intent (recipient and idempotency key `order-<id>-<kind>`) is committed first,
//! the provider is called with that key — a retry after a lost answer is the same request
//! under the same key, which the provider delivers once — and SENT commits with the dedupe row.
//! A confirmation is only ever sent for OrderPaid, so never before the order is paid. A provider
//! that is down or times out is `Unavailable`: the partition waits, nothing is dead-lettered.

use std::time::Duration;

use orderflow_consumer_runtime::{ConsumedEvent, Failure, Handler};
use orderflow_schemas::events::{Event, OrderCancelled, OrderPaid, OrderPaymentFailed, OrderPlaced};
use serde::Deserialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;
use uuid::Uuid;

pub const GROUP: &str = "notifications";

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    orderflow_consumer_runtime::migrate(pool).await?;
    orderflow_platform::migrations::run(sqlx::migrate!("./migrations"), pool, "notifications").await
}

pub fn message_key(order_id: Uuid, kind: &str) -> String {
    format!("order-{order_id}-{kind}")
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// No answer, a timeout or a 5xx: the message may have gone out; ask again with the same key.
    #[error("provider unavailable or answer lost: {0}")]
    Unavailable(String),
    /// A 4xx retrying cannot fix.
    #[error("provider rejected the message: {0}")]
    Rejected(String),
}

#[derive(Clone)]
pub struct NotificationClient {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Answer {
    id: Uuid,
}

impl NotificationClient {
    pub fn new(base: &str, timeout: Duration) -> Self {
        let http = reqwest::Client::builder().timeout(timeout).no_proxy().build().expect("HTTP client");
        NotificationClient { base: base.trim_end_matches('/').into(), http }
    }

    /// Sends one message; returns the provider's message id.
    pub async fn send(
        &self,
        key: &str,
        channel: &str,
        to: &str,
        template: &str,
        reference: &str,
    ) -> Result<Uuid, SendError> {
        let body = json!({ "channel": channel, "to": to, "template": template, "reference": reference });
        // One span per request, a child of the record's; the provider gets its traceparent.
        let span = tracing::info_span!(
            "provider request",
            otel.name = format!("notification {channel}"),
            otel.kind = "client",
            http.request.method = "POST",
            template,
        );
        let mut request =
            self.http.post(format!("{}/v1/messages", self.base)).header("Idempotency-Key", key).json(&body);
        if let Some(traceparent) = orderflow_platform::trace::traceparent_of(&span) {
            request = request.header("traceparent", traceparent);
        }
        let response = request.send().instrument(span).await.map_err(|e| SendError::Unavailable(e.to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| SendError::Unavailable(e.to_string()))?;
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(SendError::Unavailable(format!("{status}: {text}")));
        }
        if !status.is_success() {
            return Err(SendError::Rejected(format!("{status}: {text}")));
        }
        let answer: Answer = serde_json::from_str(&text)
            .map_err(|e| SendError::Unavailable(format!("unreadable answer {text:?}: {e}")))?;
        Ok(answer.id)
    }
}

pub struct NotificationHandler {
    pub provider: NotificationClient,
    /// For committing intents outside the consumer's transaction. It must be a pool of its own,
    /// not the consumer's: a handler holds a consumer connection (its transaction) while it
    /// writes the intent, and with one shared pool every connection could be held by a handler
    /// waiting for another one.
    pub intents: PgPool,
}

/// The message kind and the order an event is about, for the events that notify.
fn notification_of(event: &ConsumedEvent) -> Result<Option<(&'static str, Uuid, String)>, Failure> {
    let invalid = |e: orderflow_schemas::CodecError| Failure::dead("invalid_event", e.to_string());
    let value = &event.decoded.value;
    Ok(match event.event_type() {
        OrderPaid::NAME => {
            let paid = OrderPaid::from_avro(value).map_err(invalid)?;
            Some(("order_confirmed", paid.order_id, paid.customer_id))
        }
        OrderPaymentFailed::NAME => {
            let failed = OrderPaymentFailed::from_avro(value).map_err(invalid)?;
            Some(("payment_failed", failed.order_id, failed.customer_id))
        }
        OrderCancelled::NAME => {
            let cancelled = OrderCancelled::from_avro(value).map_err(invalid)?;
            Some(("order_cancelled", cancelled.order_id, cancelled.customer_id))
        }
        _ => None,
    })
}

impl NotificationHandler {
    async fn notify(
        &self,
        tx: &mut PgConnection,
        kind: &str,
        order_id: Uuid,
        customer_id: String,
    ) -> Result<(), Failure> {
        let email: Option<String> = sqlx::query_scalar("SELECT email FROM contacts WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
        let (channel, recipient) = match email {
            Some(address) => ("email", address),
            None => ("sms", customer_id),
        };
        let key = message_key(order_id, kind);
        // The intent, durable before the provider hears of it.
        sqlx::query(
            "INSERT INTO notifications (order_id, kind, channel, recipient, idempotency_key, status)
             VALUES ($1, $2, $3, $4, $5, 'PENDING') ON CONFLICT (order_id, kind) DO NOTHING",
        )
        .bind(order_id)
        .bind(kind)
        .bind(channel)
        .bind(&recipient)
        .bind(&key)
        .execute(&self.intents)
        .await?;
        let (status, channel, recipient, key): (String, String, String, String) = sqlx::query_as(
            "SELECT status, channel, recipient, idempotency_key FROM notifications
             WHERE order_id = $1 AND kind = $2 FOR UPDATE",
        )
        .bind(order_id)
        .bind(kind)
        .fetch_one(&mut *tx)
        .await?;
        if status == "SENT" {
            return Ok(());
        }
        let message_id =
            self.provider.send(&key, &channel, &recipient, kind, &order_id.to_string()).await.map_err(|e| match e {
                SendError::Unavailable(m) => Failure::Unavailable(format!("notification provider: {m}")),
                SendError::Rejected(m) => Failure::dead("provider_rejected", m),
            })?;
        sqlx::query(
            "UPDATE notifications SET status = 'SENT', provider_message_id = $3, sent_at = now()
             WHERE order_id = $1 AND kind = $2",
        )
        .bind(order_id)
        .bind(kind)
        .bind(message_id)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

impl Handler for NotificationHandler {
    fn handles(&self, event_type: &str) -> bool {
        [OrderPlaced::NAME, OrderPaid::NAME, OrderPaymentFailed::NAME, OrderCancelled::NAME].contains(&event_type)
    }

    async fn handle(&self, tx: &mut PgConnection, event: &ConsumedEvent) -> Result<(), Failure> {
        if event.event_type() == OrderPlaced::NAME {
            let placed = OrderPlaced::from_avro(&event.decoded.value)
                .map_err(|e| Failure::dead("invalid_event", e.to_string()))?;
            sqlx::query(
                "INSERT INTO contacts (order_id, customer_id, email) VALUES ($1, $2, $3) ON CONFLICT (order_id) DO NOTHING",
            )
            .bind(placed.order_id)
            .bind(&placed.customer_id)
            .bind(&placed.customer_email)
            .execute(&mut *tx)
            .await?;
            return Ok(());
        }
        let Some((kind, order_id, customer_id)) = notification_of(event)? else { return Ok(()) };
        self.notify(tx, kind, order_id, customer_id).await
    }
}

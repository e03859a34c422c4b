//! The notifications service (group `notifications`): OrderPaid → "order confirmed",
//! OrderPaymentFailed → "payment failed", OrderCancelled → "order cancelled", by email when the
//! order carried an address (OrderPlaced v2), else by SMS to the customer.
//!
//! Exactly one message per (order, kind), under redelivery, re-published events and provider
//! timeouts: outside any transaction (`Handler::call_out`), the intent (recipient and
//! idempotency key `order-<id>-<kind>`) is committed first, the provider is called with that
//! key — a retry after a lost answer is the same request under the same key, which the provider
//! delivers once — and SENT is committed; the dedupe row commits after it.
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
/// The topics the group reads.
pub const TOPICS: [&str; 1] = [orderflow_schemas::topics::ORDERS];

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
    /// A 429: ask again after the provider's `Retry-After` (1 s when it names none; at most
    /// 5 minutes), not before.
    #[error("provider throttles us; retry after {0:?}")]
    Throttled(Duration),
    /// A 4xx retrying cannot fix.
    #[error("provider rejected the message: {0}")]
    Rejected(String),
}

/// The wait a 429 asks for: `Retry-After` in seconds (an HTTP date counts from now), 1 s
/// without one, capped at 5 minutes.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    let value = headers.get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::trim);
    let wait = match value {
        Some(v) => v.parse::<u64>().map(Duration::from_secs).ok().or_else(|| {
            let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
            (at.to_utc() - chrono::Utc::now()).to_std().ok()
        }),
        None => None,
    };
    wait.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(300))
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
    /// A client of the provider at `base` (HTTPS verified against the system's roots, and the
    /// CA certificates in the PEM file `ca` when given).
    pub fn new(base: &str, timeout: Duration, ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let http = orderflow_http::client_trusting(ca)?.timeout(timeout).no_proxy().build()?;
        Ok(NotificationClient { base: base.trim_end_matches('/').into(), http })
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
        let response =
            request.send().instrument(span).await.map_err(|e| SendError::Unavailable(orderflow_http::describe(&e)))?;
        let status = response.status();
        if status.as_u16() == 429 {
            return Err(SendError::Throttled(retry_after(response.headers())));
        }
        let text = response.text().await.map_err(|e| SendError::Unavailable(e.to_string()))?;
        if status.is_server_error() {
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
}

/// The message kind and the order an event is about, for the events that notify.
fn notification_of(event: &ConsumedEvent) -> Result<Option<(&'static str, Uuid, String)>, Failure> {
    Ok(match event.event_type() {
        OrderPaid::NAME => {
            let paid = event.decode::<OrderPaid>()?;
            Some(("order_confirmed", paid.order_id, paid.customer_id))
        }
        OrderPaymentFailed::NAME => {
            let failed = event.decode::<OrderPaymentFailed>()?;
            Some(("payment_failed", failed.order_id, failed.customer_id))
        }
        OrderCancelled::NAME => {
            let cancelled = event.decode::<OrderCancelled>()?;
            Some(("order_cancelled", cancelled.order_id, cancelled.customer_id))
        }
        _ => None,
    })
}

impl NotificationHandler {
    /// Outside any transaction: the intent, the provider call, the outcome — each its own
    /// commit, so no connection waits on the provider.
    async fn notify(&self, pool: &PgPool, kind: &str, order_id: Uuid, customer_id: String) -> Result<(), Failure> {
        let email: Option<String> = sqlx::query_scalar("SELECT email FROM contacts WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(pool)
            .await?
            .flatten();
        let (channel, recipient) = match email {
            Some(address) => ("email", address),
            None => ("sms", customer_id),
        };
        // The intent, durable before the provider hears of it; a retry reads back the first
        // intent's recipient and key, so it is the same request.
        sqlx::query(
            "INSERT INTO notifications (order_id, kind, channel, recipient, idempotency_key, status)
             VALUES ($1, $2, $3, $4, $5, 'PENDING') ON CONFLICT (order_id, kind) DO NOTHING",
        )
        .bind(order_id)
        .bind(kind)
        .bind(channel)
        .bind(&recipient)
        .bind(message_key(order_id, kind))
        .execute(pool)
        .await?;
        let (status, channel, recipient, key): (String, String, String, String) = sqlx::query_as(
            "SELECT status, channel, recipient, idempotency_key FROM notifications WHERE order_id = $1 AND kind = $2",
        )
        .bind(order_id)
        .bind(kind)
        .fetch_one(pool)
        .await?;
        if status == "SENT" {
            return Ok(());
        }
        let message_id =
            self.provider.send(&key, &channel, &recipient, kind, &order_id.to_string()).await.map_err(|e| match e {
                SendError::Unavailable(m) => Failure::Unavailable(format!("notification provider: {m}")),
                SendError::Throttled(wait) => {
                    Failure::Backpressure { reason: "notification provider throttles (429)".into(), wait }
                }
                SendError::Rejected(m) => Failure::dead("provider_rejected", m),
            })?;
        sqlx::query(
            "UPDATE notifications SET status = 'SENT', provider_message_id = $3, sent_at = now()
             WHERE order_id = $1 AND kind = $2 AND status = 'PENDING'",
        )
        .bind(order_id)
        .bind(kind)
        .bind(message_id)
        .execute(pool)
        .await?;
        Ok(())
    }
}

impl Handler for NotificationHandler {
    fn handles(&self, event_type: &str) -> bool {
        [OrderPlaced::NAME, OrderPaid::NAME, OrderPaymentFailed::NAME, OrderCancelled::NAME].contains(&event_type)
    }

    fn calls_out(&self, event_type: &str) -> bool {
        self.handles(event_type)
    }

    /// OrderPlaced: where to reach the customer (committed here, so a later event of the same
    /// batch finds it); the others: the message, sent once.
    async fn call_out(&self, pool: &PgPool, event: &ConsumedEvent) -> Result<(), Failure> {
        if event.event_type() == OrderPlaced::NAME {
            let placed = event.decode::<OrderPlaced>()?;
            sqlx::query(
                "INSERT INTO contacts (order_id, customer_id, email) VALUES ($1, $2, $3) ON CONFLICT (order_id) DO NOTHING",
            )
            .bind(placed.order_id)
            .bind(&placed.customer_id)
            .bind(&placed.customer_email)
            .execute(pool)
            .await?;
            return Ok(());
        }
        let Some((kind, order_id, customer_id)) = notification_of(event)? else { return Ok(()) };
        self.notify(pool, kind, order_id, customer_id).await
    }

    /// The message was sent (by `call_out`): the dedupe row commits; nothing else to write.
    async fn handle(&self, tx: &mut PgConnection, event: &ConsumedEvent) -> Result<(), Failure> {
        let Some((kind, order_id, _)) = notification_of(event)? else { return Ok(()) };
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM notifications WHERE order_id = $1 AND kind = $2")
                .bind(order_id)
                .bind(kind)
                .fetch_optional(&mut *tx)
                .await?;
        match status.as_deref() {
            Some("SENT") => Ok(()),
            _ => Err(Failure::Retry(format!("the {kind} message for order {order_id} is not sent yet"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    use super::*;

    fn wait(value: Option<&str>) -> Duration {
        let mut headers = HeaderMap::new();
        if let Some(v) = value {
            headers.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        }
        retry_after(&headers)
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date_and_bounded() {
        assert_eq!(wait(Some("7")), Duration::from_secs(7));
        assert_eq!(wait(None), Duration::from_secs(1));
        assert_eq!(wait(Some("soon")), Duration::from_secs(1));
        assert_eq!(wait(Some("86400")), Duration::from_secs(300));
        let in_a_minute = (chrono::Utc::now() + chrono::TimeDelta::seconds(60)).to_rfc2822();
        let from_date = wait(Some(&in_a_minute));
        assert!(from_date > Duration::from_secs(50) && from_date <= Duration::from_secs(60), "{from_date:?}");
    }
}

//! An order's story, for the support ticket about one order: what each service's own database
//! says (the order and its status history; the payment, the provider's answers and the refund;
//! the stock reservation; the notifications; the analytics facts; records of it waiting in a
//! consumer's retry quarantine) beside its events on Kafka (`orders`, `payments`, and their retry
//! and dead-letter topics, found by the order id they are keyed by), each with its partition,
//! offset, time and the groups that processed it, and its trace id (linked to a trace UI when
//! one is configured). Search by order id, or by customer id (their orders, newest first).
//!
//! Each database is read on its own: one that is down or not configured is named and the rest
//! still shows. Kafka is read from a minute before the order was placed, at most
//! [`SCAN_PER_PARTITION`] records per partition.

use std::{collections::BTreeMap, fmt::Write, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Utc};
use orderflow_platform::kafka::KafkaSettings;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::Headers,
};
use sqlx::{PgPool, Row, postgres::PgRow};
use uuid::Uuid;

use crate::page::{esc, layout};

/// The most records read per partition for one story.
pub const SCAN_PER_PARTITION: i64 = 200_000;
/// How long before the order's placing the Kafka read starts (clock skew, the outbox's delay).
const SCAN_BEFORE_MS: i64 = 60_000;

/// The services' databases the story reads (each optional).
#[derive(Clone, Default)]
pub struct Stores {
    pub orders: Option<PgPool>,
    pub payments: Option<PgPool>,
    pub inventory: Option<PgPool>,
    pub notifications: Option<PgPool>,
    pub analytics: Option<PgPool>,
}

impl Stores {
    pub(crate) fn named(&self) -> [(&'static str, &Option<PgPool>); 5] {
        [
            ("orders", &self.orders),
            ("payments", &self.payments),
            ("inventory", &self.inventory),
            ("notifications", &self.notifications),
            ("analytics", &self.analytics),
        ]
    }
}

/// One event of the order on Kafka.
#[derive(Debug, Clone)]
pub struct Event {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub at: Option<DateTime<Utc>>,
    pub event_type: Option<String>,
    pub event_id: Option<String>,
    /// A dead letter's class and message.
    pub dead_letter: Option<(String, String)>,
}

/// The topics an order's events may be on: `orders`, `payments`, and their retry and DLT topics.
fn story_topics(all: &[String], kafka: &KafkaSettings) -> Vec<String> {
    let sources = [kafka.topic(orderflow_schemas::topics::ORDERS), kafka.topic(orderflow_schemas::topics::PAYMENTS)];
    all.iter()
        .filter(|t| {
            sources
                .iter()
                .any(|s| *t == s || (t.starts_with(&format!("{s}.")) && (t.ends_with(".retry") || t.ends_with(".DLT"))))
        })
        .cloned()
        .collect()
}

/// Reads the order's events (keyed by `key`) from `since_ms` on (blocking).
pub fn events(kafka: &KafkaSettings, key: &str, since_ms: i64) -> anyhow::Result<(Vec<Event>, Vec<String>)> {
    let group = kafka.group(&format!("console-story-{}", Uuid::new_v4().simple()));
    let consumer: BaseConsumer = kafka.consumer("orderflow-console", &group).create().context("creating a reader")?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(None, timeout).context("listing topics")?;
    let names: Vec<String> = metadata.topics().iter().map(|t| t.name().to_string()).collect();
    let topics = story_topics(&names, kafka);
    let mut wanted = TopicPartitionList::new();
    for topic in metadata.topics().iter().filter(|t| topics.iter().any(|n| n == t.name())) {
        for p in topic.partitions() {
            wanted.add_partition_offset(topic.name(), p.id(), Offset::Offset(since_ms))?;
        }
    }
    let starts = consumer.offsets_for_times(wanted, timeout).context("finding offsets by time")?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for e in starts.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
        let start = match e.offset() {
            Offset::Offset(o) => o.max(low),
            _ => high,
        };
        if start < high {
            ends.insert((e.topic().to_string(), e.partition()), high.min(start + SCAN_PER_PARTITION));
            assignment.add_partition_offset(e.topic(), e.partition(), Offset::Offset(start))?;
        }
    }
    consumer.assign(&assignment)?;
    let mut found = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "reading the order's topics took longer than 30 s");
        let Some(received) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = received.context("reading the order's topics")?;
        let at = (m.topic().to_string(), m.partition());
        if ends.get(&at).is_some_and(|end| m.offset() + 1 >= *end) {
            ends.remove(&at);
            // Past the cap: stop reading that partition.
            let _ = consumer.incremental_unassign(&{
                let mut one = TopicPartitionList::new();
                one.add_partition(m.topic(), m.partition());
                one
            });
        }
        if m.key() != Some(key.as_bytes()) {
            continue;
        }
        let header = |name: &str| -> Option<String> {
            m.headers()?.iter().find(|h| h.key == name)?.value.map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let dead_letter = header(orderflow_schemas::headers::dlt::ERROR_CLASS)
            .map(|class| (class, header(orderflow_schemas::headers::dlt::ERROR_MESSAGE).unwrap_or_default()));
        found.push(Event {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            at: m.timestamp().to_millis().and_then(DateTime::from_timestamp_millis),
            event_type: header(orderflow_schemas::headers::EVENT_TYPE),
            event_id: header(orderflow_schemas::headers::EVENT_ID),
            dead_letter,
        });
    }
    found.sort_by_key(|e| (e.at, e.topic.clone(), e.offset));
    Ok((found, topics))
}

/// A database's answer: rows, or why there are none to show.
type Rows = Result<Vec<PgRow>, String>;

async fn rows(pool: &Option<PgPool>, name: &str, sql: &str, id: Uuid, timeout: Duration) -> Rows {
    let Some(pool) = pool else { return Err(format!("the {name} database is not configured")) };
    match tokio::time::timeout(timeout, sqlx::query(sql).bind(id).fetch_all(pool)).await {
        Ok(Ok(rows)) => Ok(rows),
        // sqlx names the failure, never the URL's password.
        Ok(Err(error)) => Err(format!("the {name} database: {error}")),
        Err(_) => Err(format!("the {name} database did not answer within {timeout:?}")),
    }
}

/// A row's columns as text (NULL as "–"), by the names asked for.
fn cells(row: &PgRow, columns: &[&str]) -> Vec<String> {
    columns
        .iter()
        .map(|c| {
            if let Ok(v) = row.try_get::<Option<String>, _>(*c) {
                return v.unwrap_or_else(|| "–".into());
            }
            if let Ok(v) = row.try_get::<Option<i64>, _>(*c) {
                return v.map_or("–".into(), |v| v.to_string());
            }
            if let Ok(v) = row.try_get::<Option<i32>, _>(*c) {
                return v.map_or("–".into(), |v| v.to_string());
            }
            if let Ok(v) = row.try_get::<Option<DateTime<Utc>>, _>(*c) {
                return v.map_or("–".into(), |v| v.format("%Y-%m-%d %H:%M:%S%.3f").to_string());
            }
            if let Ok(v) = row.try_get::<Option<Uuid>, _>(*c) {
                return v.map_or("–".into(), |v| v.to_string());
            }
            if let Ok(v) = row.try_get::<Option<serde_json::Value>, _>(*c) {
                return v.map_or("–".into(), |v| v.to_string());
            }
            "?".into()
        })
        .collect()
}

/// A section: a heading, and the rows as a table (or what is missing and why).
fn section(html: &mut String, id: &str, title: &str, answer: &Rows, columns: &[(&str, &str)], none: &str) {
    let _ = write!(html, "<section class=\"story\" id=\"{id}\"><h3>{}</h3>", esc(title));
    match answer {
        Err(why) => {
            let _ = write!(html, "<p class=\"warn\">{}</p>", esc(why));
        }
        Ok(rows) if rows.is_empty() => {
            let _ = write!(html, "<p class=\"meta\">{}</p>", esc(none));
        }
        Ok(rows) => {
            html.push_str("<table><thead><tr>");
            for (_, label) in columns {
                let _ = write!(html, "<th>{}</th>", esc(label));
            }
            html.push_str("</tr></thead><tbody>");
            let names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
            for row in rows {
                html.push_str("<tr>");
                for cell in cells(row, &names) {
                    let _ = write!(html, "<td>{}</td>", esc(&cell));
                }
                html.push_str("</tr>");
            }
            html.push_str("</tbody></table>");
        }
    }
    html.push_str("</section>");
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0')).then_some(id)
}

/// The search form, shown above every story.
pub fn search_form(value: &str) -> String {
    format!(
        "<form method=\"get\" action=\"/orders\" class=\"search\"><label>Order id or customer id \
         <input name=\"q\" size=\"40\" value=\"{}\" autofocus></label> <button type=\"submit\">Find</button></form>",
        esc(value)
    )
}

/// `/orders?q=`: an order id opens its story; anything else lists that customer's orders.
pub async fn search(stores: &Stores, q: &str, timeout: Duration) -> Result<String, String> {
    let q = q.trim();
    if let Ok(id) = q.parse::<Uuid>() {
        return Err(format!("/orders/{id}"));
    }
    let mut html = format!("<h2>Orders</h2>{}", search_form(q));
    if q.is_empty() {
        html.push_str("<p class=\"meta\">Type an order id, or a customer id for their orders, newest first.</p>");
        return Ok(layout("Orders", &html));
    }
    let Some(pool) = &stores.orders else {
        let _ =
            write!(html, "<p class=\"warn\">The orders database is not configured: customers cannot be searched.</p>");
        return Ok(layout("Orders", &html));
    };
    let sql = "SELECT order_id, status, total_minor, currency, created_at FROM orders WHERE customer_id = $1 \
               ORDER BY created_at DESC LIMIT 100";
    match tokio::time::timeout(timeout, sqlx::query(sql).bind(q).fetch_all(pool)).await {
        Ok(Ok(rows)) if rows.is_empty() => {
            let _ = write!(html, "<p class=\"meta\">No order of customer {}.</p>", esc(q));
        }
        Ok(Ok(rows)) => {
            let _ = write!(
                html,
                "<p class=\"meta\">{} order(s) of customer {}, newest first.</p><table class=\"orders\"><thead><tr>\
                 <th>Order</th><th>Status</th><th>Total</th><th>Placed (UTC)</th></tr></thead><tbody>",
                rows.len(),
                esc(q)
            );
            for row in &rows {
                let c = cells(row, &["order_id", "status", "total_minor", "currency", "created_at"]);
                let _ = write!(
                    html,
                    "<tr data-order=\"{id}\"><td><a href=\"/orders/{id}\">{id}</a></td><td>{}</td><td>{} {}</td><td>{}</td></tr>",
                    esc(&c[1]),
                    esc(&c[2]),
                    esc(&c[3]),
                    esc(&c[4]),
                    id = esc(&c[0]),
                );
            }
            html.push_str("</tbody></table>");
        }
        Ok(Err(error)) => {
            let _ = write!(html, "<p class=\"warn\">The orders database: {}</p>", esc(&error.to_string()));
        }
        Err(_) => {
            let _ = write!(html, "<p class=\"warn\">The orders database did not answer within {timeout:?}.</p>");
        }
    }
    Ok(layout("Orders", &html))
}

/// `/orders/<id>`: the whole story.
pub async fn story(
    stores: &Stores,
    kafka: &KafkaSettings,
    id: Uuid,
    trace_url: Option<&str>,
    timeout: Duration,
) -> String {
    let order = rows(
        &stores.orders,
        "orders",
        "SELECT order_id, customer_id, status, version, total_minor, currency, lines, traceparent, caller, created_at, \
         updated_at FROM orders WHERE order_id = $1",
        id,
        timeout,
    );
    let history = rows(
        &stores.orders,
        "orders",
        "SELECT version, status, reason, changed_at FROM order_status_history WHERE order_id = $1 ORDER BY version",
        id,
        timeout,
    );
    let payment = rows(
        &stores.payments,
        "payments",
        "SELECT status, amount_minor, currency, provider_reference, decline_reason, refund_reference, created_at, \
         refunded_at FROM payments WHERE order_id = $1",
        id,
        timeout,
    );
    let calls = rows(
        &stores.payments,
        "payments",
        "SELECT operation, status, amount_minor, currency, reference, decline_code, idempotency_key, created_at, \
         completed_at FROM provider_calls WHERE order_id = $1 ORDER BY created_at",
        id,
        timeout,
    );
    let reservation = rows(
        &stores.inventory,
        "inventory",
        "SELECT outcome, lines, decided_at FROM reservations WHERE order_id = $1",
        id,
        timeout,
    );
    let notifications = rows(
        &stores.notifications,
        "notifications",
        "SELECT kind, channel, status, provider_message_id::text AS provider_message_id, created_at, sent_at \
         FROM notifications WHERE order_id = $1 ORDER BY created_at",
        id,
        timeout,
    );
    let facts = rows(
        &stores.analytics,
        "analytics",
        "SELECT placed_at, placed_total_minor, paid_at, paid_amount_minor, currency, payment_failed_at, shortage_at, \
         cancelled_at FROM order_facts WHERE order_id = $1",
        id,
        timeout,
    );
    let (order, history, payment, calls, reservation, notifications, facts) =
        tokio::join!(order, history, payment, calls, reservation, notifications, facts);

    let mut html = format!("{}<h2>Order {}</h2>", search_form(&id.to_string()), esc(&id.to_string()));
    let placed_ms = order
        .as_ref()
        .ok()
        .and_then(|rows| rows.first())
        .and_then(|row| row.try_get::<DateTime<Utc>, _>("created_at").ok().map(|t| t.timestamp_millis()));
    let traceparent = order
        .as_ref()
        .ok()
        .and_then(|rows| rows.first())
        .and_then(|row| row.try_get::<Option<String>, _>("traceparent").ok().flatten());
    if let Some(trace) = traceparent.as_deref().and_then(trace_id) {
        match trace_url {
            Some(template) => {
                let _ = write!(
                    html,
                    "<p class=\"trace\">Trace <a href=\"{}\" rel=\"noreferrer\">{}</a></p>",
                    esc(&template.replace("{trace_id}", trace)),
                    esc(trace)
                );
            }
            None => {
                let _ = write!(html, "<p class=\"trace\">Trace <code>{}</code></p>", esc(trace));
            }
        }
    }
    section(
        &mut html,
        "order",
        "Order",
        &order,
        &[
            ("customer_id", "Customer"),
            ("status", "Status"),
            ("version", "Version"),
            ("total_minor", "Total (minor)"),
            ("currency", "Currency"),
            ("caller", "Placed by"),
            ("created_at", "Placed (UTC)"),
            ("updated_at", "Updated (UTC)"),
        ],
        "No such order in the orders database.",
    );
    section(
        &mut html,
        "history",
        "Status history",
        &history,
        &[("version", "Version"), ("status", "Status"), ("reason", "Reason"), ("changed_at", "When (UTC)")],
        "No status change recorded.",
    );

    // Kafka, from a minute before the order was placed (or the topics' start when the orders
    // database does not know it).
    let since = placed_ms.map_or(0, |ms| ms - SCAN_BEFORE_MS);
    let (k, key) = (kafka.clone(), id.to_string());
    let events =
        tokio::task::spawn_blocking(move || events(&k, &key, since)).await.map_err(anyhow::Error::from).and_then(|r| r);
    let processed = match &events {
        Ok((events, _)) => processed_by(stores, events, timeout).await,
        Err(_) => BTreeMap::new(),
    };
    html.push_str("<section class=\"story\" id=\"events\"><h3>Events on Kafka</h3>");
    match &events {
        Err(error) => {
            let _ = write!(html, "<p class=\"warn\">Kafka: {}</p>", esc(&format!("{error:#}")));
        }
        Ok((events, topics)) if events.is_empty() => {
            let _ = write!(html, "<p class=\"meta\">No event of this order on {}.</p>", esc(&topics.join(", ")));
        }
        Ok((events, _)) => {
            html.push_str(
                "<table class=\"events\"><thead><tr><th>When (UTC)</th><th>Topic</th><th>Partition</th><th>Offset</th>\
                 <th>Event</th><th>Processed by</th></tr></thead><tbody>",
            );
            for e in events {
                let kind = esc(e.event_type.as_deref().unwrap_or("?"));
                let by = e.event_id.as_ref().and_then(|id| processed.get(id)).map(|g| g.join(", ")).unwrap_or_default();
                let topic = match &e.dead_letter {
                    Some((class, message)) => format!(
                        "<a href=\"/dead-letters/{t}/{p}/{o}\">{t}</a><br><small class=\"error\">{c}: {m}</small>",
                        t = esc(&e.topic),
                        p = e.partition,
                        o = e.offset,
                        c = esc(class),
                        m = esc(&message.chars().take(200).collect::<String>()),
                    ),
                    None => esc(&e.topic),
                };
                let _ = write!(
                    html,
                    "<tr data-event-type=\"{kind}\"><td>{at}</td><td>{topic}</td><td>{p}</td><td>{o}</td><td>{kind}<br>\
                     <small>{id}</small></td><td>{by}</td></tr>",
                    at = e.at.map_or("–".into(), |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()),
                    p = e.partition,
                    o = e.offset,
                    id = esc(e.event_id.as_deref().unwrap_or("")),
                    by = esc(&by),
                );
            }
            html.push_str("</tbody></table>");
        }
    }
    html.push_str("</section>");

    section(
        &mut html,
        "payment",
        "Payment",
        &payment,
        &[
            ("status", "Status"),
            ("amount_minor", "Amount (minor)"),
            ("currency", "Currency"),
            ("provider_reference", "Charge"),
            ("decline_reason", "Declined"),
            ("refund_reference", "Refund"),
            ("created_at", "Paid (UTC)"),
            ("refunded_at", "Refunded (UTC)"),
        ],
        "No payment recorded.",
    );
    section(
        &mut html,
        "provider",
        "The provider's answers",
        &calls,
        &[
            ("operation", "Call"),
            ("status", "Answer"),
            ("amount_minor", "Amount (minor)"),
            ("reference", "Reference"),
            ("decline_code", "Decline code"),
            ("idempotency_key", "Idempotency key"),
            ("created_at", "Asked (UTC)"),
            ("completed_at", "Answered (UTC)"),
        ],
        "No call to the provider.",
    );
    section(
        &mut html,
        "stock",
        "Stock reservation",
        &reservation,
        &[("outcome", "Outcome"), ("lines", "Lines"), ("decided_at", "Decided (UTC)")],
        "No reservation decided.",
    );
    section(
        &mut html,
        "notifications",
        "Notifications",
        &notifications,
        &[
            ("kind", "Kind"),
            ("channel", "Channel"),
            ("status", "Status"),
            ("provider_message_id", "Provider message"),
            ("created_at", "Queued (UTC)"),
            ("sent_at", "Sent (UTC)"),
        ],
        "No notification.",
    );
    section(
        &mut html,
        "analytics",
        "Analytics facts",
        &facts,
        &[
            ("placed_at", "Placed"),
            ("placed_total_minor", "Total (minor)"),
            ("paid_at", "Paid"),
            ("paid_amount_minor", "Paid (minor)"),
            ("payment_failed_at", "Payment failed"),
            ("shortage_at", "Shortage"),
            ("cancelled_at", "Cancelled"),
        ],
        "No fact recorded.",
    );
    html.push_str(&waiting(stores, id, timeout).await);
    layout(&format!("Order {id}"), &html)
}

/// Which consumer groups recorded each event as processed (their dedupe rows), by event id.
async fn processed_by(stores: &Stores, events: &[Event], timeout: Duration) -> BTreeMap<String, Vec<String>> {
    let ids: Vec<Uuid> = events.iter().filter_map(|e| e.event_id.as_deref()?.parse().ok()).collect();
    let mut by = BTreeMap::<String, Vec<String>>::new();
    for (_, pool) in stores.named() {
        let Some(pool) = pool else { continue };
        let read = sqlx::query_as::<_, (Uuid, String)>(
            "SELECT event_id, consumer_group FROM processed_events WHERE event_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(pool);
        // The orders database has no dedupe table of a consumer's: a failed read shows nothing.
        if let Ok(Ok(rows)) = tokio::time::timeout(timeout, read).await {
            for (id, group) in rows {
                by.entry(id.to_string()).or_default().push(group);
            }
        }
    }
    by
}

/// The order's records parked in a consumer's retry quarantine (key order's retries), if any.
async fn waiting(stores: &Stores, id: Uuid, timeout: Duration) -> String {
    let mut html = String::new();
    for (name, pool) in stores.named() {
        let Some(pool) = pool else { continue };
        let read = sqlx::query(
            "SELECT consumer_group, topic, kafka_partition, kafka_offset, attempts, last_error, due_at \
             FROM quarantined_records WHERE record_key = $1 ORDER BY parked_at",
        )
        .bind(id.to_string().into_bytes())
        .fetch_all(pool);
        let Ok(Ok(rows)) = tokio::time::timeout(timeout, read).await else { continue };
        for row in rows {
            let c =
                cells(&row, &["consumer_group", "topic", "kafka_partition", "kafka_offset", "last_error", "due_at"]);
            let attempts: i32 = row.try_get("attempts").unwrap_or_default();
            let _ = write!(
                html,
                "<tr><td>{name}</td><td>{}</td><td>{} [{}] {}</td><td>{attempts}</td><td>{}</td><td>{}</td></tr>",
                esc(&c[0]),
                esc(&c[1]),
                esc(&c[2]),
                esc(&c[3]),
                esc(&c[4]),
                esc(&c[5]),
            );
        }
    }
    if html.is_empty() {
        return String::new();
    }
    format!(
        "<section class=\"story\" id=\"waiting\"><h3>Waiting in a retry</h3><table><thead><tr><th>Database</th>\
         <th>Group</th><th>Record</th><th>Attempts</th><th>Last error</th><th>Next try (UTC)</th></tr></thead>\
         <tbody>{html}</tbody></table></section>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_of_a_traceparent_and_the_topics_of_a_story() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id("garbage"), None);
        let mut kafka = KafkaSettings::new("x:1");
        kafka.namespace = "t1.".into();
        let all: Vec<String> = [
            "t1.orders",
            "t1.orders.payment.retry",
            "t1.orders.payment.DLT",
            "t1.payments",
            "t1.other",
            "orders",
            "t1.orders.x",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            story_topics(&all, &kafka),
            ["t1.orders", "t1.orders.payment.retry", "t1.orders.payment.DLT", "t1.payments"]
        );
    }
}

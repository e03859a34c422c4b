//! Dead-letter triage, the reading part: every `*.DLT` topic with its records and how many are
//! untriaged; a topic's recent records grouped by error class; one record opened with its
//! headers, the `dlt_*` reasons and its payload decoded through the registry (or shown as hex
//! when it does not decode). Everything shown is escaped and long values are cut, so a record
//! crafted to break the page (markup, megabytes, binary) shows as text.

use std::{collections::BTreeMap, fmt::Write};

use orderflow_consumer_runtime::dlt_tools::DeadLetter;
use orderflow_lag_exporter::broker_view::Snapshot;
use orderflow_schemas::EventCodec;
use rdkafka::{
    Message,
    message::{Headers, OwnedMessage},
};
use serde::Serialize;

use crate::page::{esc, layout};

/// Records read per partition for a topic's page (its newest).
pub const RECENT_PER_PARTITION: i64 = 200;
/// The longest header value or message shown; the rest is cut and counted.
const LONGEST_TEXT: usize = 2_000;
/// The most payload bytes shown as hex.
const LONGEST_HEX: usize = 4_096;

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterTopic {
    pub topic: String,
    /// Records the topic holds now (end − start offsets).
    pub records: i64,
    /// Records past the triage group's commits.
    pub untriaged: i64,
}

/// The DLT topics of `snapshot`, with their size and what `triage_group` has not triaged.
pub fn topics(snapshot: &Snapshot, triage_group: Option<&str>) -> Vec<DeadLetterTopic> {
    let mut topics: BTreeMap<String, DeadLetterTopic> = BTreeMap::new();
    for p in snapshot.partitions.iter().filter(|p| p.topic.ends_with(".DLT")) {
        let entry = topics.entry(p.topic.clone()).or_insert_with(|| DeadLetterTopic {
            topic: p.topic.clone(),
            records: 0,
            untriaged: 0,
        });
        entry.records += p.high - p.low;
    }
    let triage = snapshot.groups.iter().find(|g| Some(g.name.as_str()) == triage_group);
    for p in triage.iter().flat_map(|g| &g.partitions) {
        if let Some(entry) = topics.get_mut(&p.topic) {
            entry.untriaged += p.lag;
        }
    }
    // A DLT the triage group has no view of yet: all of it is untriaged.
    if triage.is_none() {
        for entry in topics.values_mut() {
            entry.untriaged = entry.records;
        }
    }
    topics.into_values().collect()
}

/// The health page's dead-letter table.
pub fn summary_table(topics: &[DeadLetterTopic]) -> String {
    if topics.is_empty() {
        return "<p>No dead-letter topic yet.</p>".into();
    }
    let mut html = String::from(
        "<table class=\"dead-letters\"><thead><tr><th>Dead-letter topic</th><th>Records</th><th>Untriaged</th></tr></thead><tbody>",
    );
    for t in topics {
        let _ = write!(
            html,
            "<tr data-dlt=\"{topic}\"{class}><td><a href=\"/dead-letters/{path}\">{topic}</a></td><td>{records}</td><td>{untriaged}</td></tr>",
            topic = esc(&t.topic),
            path = esc(&t.topic),
            class = if t.untriaged > 0 { " class=\"untriaged\"" } else { "" },
            records = t.records,
            untriaged = t.untriaged,
        );
    }
    html.push_str("</tbody></table>");
    html
}

/// A topic's page: its records by error class, then each record.
pub fn topic_page(
    topic: &DeadLetterTopic,
    records: &[DeadLetter],
    audit: &Result<Vec<crate::audit::Entry>, String>,
) -> String {
    let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
    for record in records {
        *by_class.entry(record.error_class.as_str()).or_default() += 1;
    }
    let mut html = format!(
        "<h2>{name}</h2><p class=\"meta\">{records} records, {untriaged} untriaged; the newest {RECENT_PER_PARTITION} of each partition are listed.</p>",
        name = esc(&topic.topic),
        records = topic.records,
        untriaged = topic.untriaged,
    );
    html.push_str(
        "<h3>By error class</h3><table class=\"classes\"><thead><tr><th>Class</th><th>Records</th><th></th></tr></thead><tbody>",
    );
    for (class, count) in &by_class {
        let _ = write!(
            html,
            "<tr data-class=\"{c}\"><td>{c}</td><td>{count}</td><td><a href=\"/operate/replay?{q}\">replay this class…</a></td></tr>",
            c = esc(class),
            q = esc(&crate::page::query(&[("topic", &topic.topic), ("class", class)])),
        );
    }
    html.push_str("</tbody></table>");
    let classes: Vec<&str> = by_class.keys().copied().collect();
    html.push_str(&crate::operate::forms(&topic.topic, &classes));
    html.push_str(&crate::operate::recent_actions(audit));
    html.push_str("<h3>Records</h3>");
    html.push_str(
        "<table class=\"records\"><thead><tr><th>Partition</th><th>Offset</th><th>Event</th><th>Class</th><th>Reason</th>\
         <th>Attempts</th></tr></thead><tbody>",
    );
    for r in records {
        let _ = write!(
            html,
            "<tr data-offset=\"{p}-{o}\"><td>{p}</td><td><a href=\"/dead-letters/{t}/{p}/{o}\">{o}</a></td><td>{ty}<br><small>{id}</small></td>\
             <td>{class}</td><td>{reason}</td><td>{attempts}</td></tr>",
            p = r.partition,
            o = r.offset,
            t = esc(&topic.topic),
            ty = esc(r.event_type.as_deref().unwrap_or("?")),
            id = esc(r.event_id.as_deref().unwrap_or("no event id")),
            class = esc(&r.error_class),
            reason = esc(&cut(&r.error_message, 300)),
            attempts = esc(r.attempts.as_deref().unwrap_or("")),
        );
    }
    html.push_str("</tbody></table>");
    layout(&topic.topic, &html)
}

/// One record: its reasons, its other headers, its key and its payload.
pub async fn record_page(topic: &str, record: &DeadLetter, codec: Option<&EventCodec>) -> String {
    let message = &record.message;
    let mut reasons = String::new();
    let mut others = String::new();
    for h in message.headers().iter().flat_map(|h| h.iter()) {
        let value = h.value.map_or("(no value)".to_string(), |v| cut(&String::from_utf8_lossy(v), LONGEST_TEXT));
        let row = format!("<tr><th>{}</th><td>{}</td></tr>", esc(h.key), esc(&value));
        if h.key.starts_with(orderflow_schemas::headers::dlt::PREFIX) {
            reasons.push_str(&row);
        } else {
            others.push_str(&row);
        }
    }
    let key = message.key().map_or("(none)".to_string(), |k| cut(&String::from_utf8_lossy(k), LONGEST_TEXT));
    let payload = payload_html(message, codec).await;
    let body = format!(
        "<h2><a href=\"/dead-letters/{t}\">{t}</a> [{p}] offset {o}</h2>\
         <h3>Why it is here</h3><table class=\"reasons\">{reasons}</table>\
         <h3>Headers</h3><table class=\"headers\">{others}</table>\
         <h3>Key</h3><pre class=\"key\">{key}</pre><h3>Payload</h3>{payload}",
        t = esc(topic),
        p = record.partition,
        o = record.offset,
        key = esc(&key),
    );
    layout(&format!("{topic} [{}] {}", record.partition, record.offset), &body)
}

/// The payload decoded to JSON through the registry, or why not and its bytes in hex.
async fn payload_html(message: &OwnedMessage, codec: Option<&EventCodec>) -> String {
    let Some(bytes) = message.payload() else { return "<p>The record has no value.</p>".into() };
    let why = match codec {
        None => "no schema registry is configured".to_string(),
        Some(codec) => match codec.decode(bytes).await {
            Ok(decoded) => match serde_json::Value::try_from(decoded.value) {
                Ok(json) => {
                    let pretty = serde_json::to_string_pretty(&json).unwrap_or_default();
                    return format!(
                        "<p class=\"meta\">{} (schema id {}), decoded with the registry.</p><pre class=\"payload\">{}</pre>",
                        esc(&decoded.event_type),
                        decoded.schema_id,
                        esc(&cut(&pretty, 50_000))
                    );
                }
                Err(error) => format!("decoded, but not as JSON: {error}"),
            },
            Err(error) => format!("{} ({})", error, error.class()),
        },
    };
    format!("<p class=\"warn\">Not decoded: {}.</p><pre class=\"payload hex\">{}</pre>", esc(&why), hex(bytes))
}

/// `bytes` as hex, 32 to a line, cut at [`LONGEST_HEX`].
fn hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes[..bytes.len().min(LONGEST_HEX)].chunks(32).enumerate() {
        let _ = write!(out, "{:06x} ", i * 32);
        for b in chunk {
            let _ = write!(out, " {b:02x}");
        }
        out.push('\n');
    }
    if bytes.len() > LONGEST_HEX {
        let _ = write!(out, "… {} bytes more", bytes.len() - LONGEST_HEX);
    }
    out
}

/// `text` up to `longest` characters, saying how much was cut.
fn cut(text: &str, longest: usize) -> String {
    let count = text.chars().count();
    if count <= longest {
        return text.to_string();
    }
    let kept: String = text.chars().take(longest).collect();
    format!("{kept}… ({} characters more)", count - longest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_and_bytes_are_cut_and_say_how_much() {
        assert_eq!(cut("abcdef", 3), "abc… (3 characters more)");
        assert_eq!(cut("abc", 3), "abc");
        let shown = hex(&vec![0xab; LONGEST_HEX + 10]);
        assert!(shown.ends_with("… 10 bytes more"), "{shown}");
        assert!(hex(&[0, 255]).starts_with("000000  00 ff"));
    }
}

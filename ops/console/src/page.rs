//! The console's pages, rendered on the server. Every value from the broker, a database or a
//! record goes through [`esc`]: a header or a payload holding `<script>` shows as text.

use std::fmt::Write;

use crate::health::{GroupHealth, Health, OutboxHealth};

/// `text` safe inside HTML text and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `pairs` as a URL query (`a=1&b=x%20y`), every byte but the unreserved ones percent-encoded.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

/// A whole page: the shared head (styles and script served by the console itself, nothing from
/// elsewhere) around `body`.
pub fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · orderflow console</title><link rel=\"icon\" href=\"data:,\">\
         <link rel=\"stylesheet\" href=\"/static/console.css\">\
         <script src=\"/static/console.js\" defer></script></head>\n\
         <body><header><h1>orderflow console</h1><nav><a href=\"/\">Health</a><a href=\"/orders\">Orders</a><a href=\"/audit\">Audit</a></nav></header>\n\
         <main>{body}</main></body></html>\n",
        title = esc(title)
    )
}

/// The health page: the live section (re-fetched every few seconds by `console.js`).
pub fn health_page(health: &Health) -> String {
    layout(
        "Health",
        &format!("<section id=\"health\" data-refresh=\"/fragments/health\">{}</section>", health_fragment(health)),
    )
}

/// The health section alone.
pub fn health_fragment(health: &Health) -> String {
    let mut html = String::new();
    match health.read_at {
        None => html.push_str("<p class=\"warn\">The broker has not been read yet.</p>"),
        Some(at) => {
            let _ = write!(
                html,
                "<p class=\"meta\">Read from the broker at <time data-unix=\"{at}\">{at}</time> (Unix seconds).</p>"
            );
        }
    }
    if let Some(error) = &health.broker_error {
        let _ = write!(html, "<p class=\"error\">Kafka: {} — showing the last good read.</p>", esc(error));
    }
    html.push_str("<h2>Consumer groups</h2>");
    if health.groups.is_empty() {
        html.push_str("<p>No consumer group known yet.</p>");
    } else {
        html.push_str(
            "<table class=\"groups\"><thead><tr><th>Group</th><th>Members</th><th>Lag (records)</th>\
             <th>Lag (seconds)</th><th>Skew (worst ÷ median)</th><th>Commit</th></tr></thead><tbody>",
        );
        for group in &health.groups {
            html.push_str(&group_row(group));
        }
        html.push_str("</tbody></table>");
    }
    html.push_str("<h2>Payment provider guard</h2>");
    html.push_str(&guards_table(health));
    html.push_str("<h2>Dead letters</h2>");
    html.push_str(&crate::dead_letters::summary_table(&health.dead_letters));
    html.push_str("<h2>Outboxes</h2>");
    if health.outboxes.is_empty() {
        html.push_str("<p>No outbox database configured.</p>");
    } else {
        html.push_str("<table class=\"outboxes\"><thead><tr><th>Database</th><th>Pending rows</th><th>Oldest (seconds)</th></tr></thead><tbody>");
        for outbox in &health.outboxes {
            html.push_str(&outbox_row(outbox));
        }
        html.push_str("</tbody></table>");
    }
    html
}

/// An instance silent this long (it reports every 2 s) is marked as gone or stuck.
const SILENT_AFTER_SECS: f64 = 15.0;

/// Each payment instance's breaker and adaptive window.
fn guards_table(health: &Health) -> String {
    let mut html = String::new();
    if let Some(error) = &health.payment_guards_error {
        let _ = write!(html, "<p class=\"error\">{} — showing the last good read.</p>", esc(error));
    }
    if health.payment_guards.is_empty() {
        html.push_str("<p>No payment instance has reported (or the payments database is not configured).</p>");
        return html;
    }
    html.push_str(
        "<table class=\"guards\"><thead><tr><th>Instance</th><th>Breaker</th><th>Window (in flight / size / ceiling)</th>\
         <th>Reported</th></tr></thead><tbody>",
    );
    for g in &health.payment_guards {
        let silent = g.age_seconds >= SILENT_AFTER_SECS;
        let _ = write!(
            html,
            "<tr data-instance=\"{name}\" class=\"breaker-{breaker}{silent}\"><td>{name}</td><td>{breaker_text}</td>\
             <td>{in_flight} / {size} / {max}</td><td>{age}</td></tr>",
            name = esc(&g.instance),
            breaker = esc(&g.breaker),
            silent = if silent { " silent" } else { "" },
            breaker_text = esc(&g.breaker.replace('_', "-")),
            in_flight = g.in_flight,
            size = g.window_size,
            max = g.window_max,
            age = if silent {
                format!("silent for {:.0} s", g.age_seconds)
            } else {
                format!("{:.0} s ago", g.age_seconds)
            },
        );
    }
    html.push_str("</tbody></table>");
    html
}

/// A stall this long (a partition with lag whose commit has not moved) marks the group.
const STALLED_AFTER_SECS: f64 = 30.0;

fn group_row(group: &GroupHealth) -> String {
    let mut members = group.members.map_or("?".to_string(), |m| m.to_string());
    if group.state.as_deref().is_some_and(|s| s.contains("Rebalance")) {
        members.push_str(" (rebalancing)");
    }
    if group.rebalances > 0 {
        let _ = write!(members, " · {} rebalance(s)", group.rebalances);
    }
    let seconds = group.lag_seconds.map_or("–".to_string(), |s| format!("{s:.1}"));
    let skew = group.skew.map_or("–".to_string(), |s| format!("{s:.1}"));
    let (class, commit) = if group.stalled_seconds >= STALLED_AFTER_SECS {
        ("stalled", format!("stalled {:.0} s", group.stalled_seconds))
    } else if group.lag > 0 {
        ("moving", "moving".to_string())
    } else {
        ("idle", "caught up".to_string())
    };
    let mut partitions = String::new();
    for p in group.partitions.iter().filter(|p| p.lag > 0) {
        let _ = write!(
            partitions,
            "<li>{} [{}] at {}: {} behind{}</li>",
            esc(&p.topic),
            p.partition,
            p.committed,
            p.lag,
            p.lag_seconds.map_or(String::new(), |s| format!(", {s:.1} s")),
        );
    }
    let details = if partitions.is_empty() {
        String::new()
    } else {
        format!("<details><summary>partitions with lag</summary><ul>{partitions}</ul></details>")
    };
    format!(
        "<tr class=\"{class}\" data-group=\"{name}\"><td><a href=\"/groups/{name}\">{name}</a>{details}</td><td>{members}</td><td>{lag}</td><td>{seconds}</td>\
         <td>{skew}</td><td>{commit}</td></tr>",
        name = esc(&group.name),
        lag = group.lag,
    )
}

/// A group's own page: every partition it reads, its members, its recent operator actions, and
/// the rewind form.
pub fn group_page(
    group: &GroupHealth,
    instances: &(Vec<(String, crate::health::InstanceStatus)>, Vec<String>),
    audit: &Result<Vec<crate::audit::Entry>, String>,
) -> String {
    let mut members_list = String::new();
    for m in &group.member_ids {
        let _ = write!(members_list, "<li>{}</li>", esc(m));
    }
    let mut html = format!(
        "<h2>Group {name}</h2><p class=\"meta\">{members} member(s); {lag} records behind{seconds}.</p>\
         <p class=\"membership\" data-rebalances=\"{rebalances}\">Coordinator state: <strong>{state}</strong>; \
         {rebalances} rebalance(s) seen since the console started{last}.</p><ul class=\"members\">{members_list}</ul>\
         <table class=\"partitions\"><thead><tr><th>Topic</th><th>Partition</th><th>Committed</th><th>Lag</th>\
         <th>Lag (seconds)</th><th>Commit still for</th></tr></thead><tbody>",
        name = esc(&group.name),
        members = group.members.map_or("?".to_string(), |m| m.to_string()),
        lag = group.lag,
        seconds = group.lag_seconds.map_or(String::new(), |s| format!(", the oldest {s:.1} s old")),
        state = esc(group.state.as_deref().unwrap_or("unknown (the broker does not list groups)")),
        rebalances = group.rebalances,
        last = group.last_rebalance_seconds.map_or(String::new(), |s| format!(", the last {s:.0} s ago")),
    );
    for p in &group.partitions {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.topic),
            p.partition,
            p.committed,
            p.lag,
            p.lag_seconds.map_or("–".to_string(), |s| format!("{s:.1}")),
            if p.lag > 0 { format!("{:.0} s", p.still_seconds) } else { "–".to_string() },
        );
    }
    html.push_str("</tbody></table>");
    html.push_str(&instances_table(instances));
    let mut topics: Vec<&str> = group.partitions.iter().map(|p| p.topic.as_str()).collect();
    topics.sort_unstable();
    topics.dedup();
    html.push_str(&crate::rewind_page::rewind_form(&group.name, &topics));
    html.push_str(&crate::operate::recent_actions(audit));
    layout(&format!("Group {}", group.name), &html)
}

/// Each instance's partitions: how many it holds, which are paused and what each waits for.
fn instances_table((instances, errors): &(Vec<(String, crate::health::InstanceStatus)>, Vec<String>)) -> String {
    let mut html = String::from("<h3>Instances</h3>");
    for error in errors {
        let _ = write!(html, "<p class=\"warn\">{}</p>", esc(error));
    }
    if instances.is_empty() {
        html.push_str("<p class=\"meta\">No instance of this group has reported to a database the console reads.</p>");
        return html;
    }
    let describe = |list: &serde_json::Value| -> String {
        let items: Vec<String> = list
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let place = format!("{} [{}]", p["topic"].as_str().unwrap_or("?"), p["partition"]);
                match (p["waiting"].as_str(), p["since"].as_str()) {
                    (Some(why), Some(since)) => {
                        format!("<li>{}: waiting for {} (since {})</li>", esc(&place), esc(why), esc(since))
                    }
                    _ => format!("<li>{}: its queue is full, its worker is behind</li>", esc(&place)),
                }
            })
            .collect();
        if items.is_empty() { "–".into() } else { format!("<ul>{}</ul>", items.join("")) }
    };
    html.push_str(
        "<table class=\"instances\"><thead><tr><th>Instance</th><th>Database</th><th>Partitions</th><th>Paused, and why</th>\
         <th>Waiting (not paused yet)</th><th>Reported</th></tr></thead><tbody>",
    );
    for (db, i) in instances {
        let _ = write!(
            html,
            "<tr data-instance=\"{name}\"><td>{name}</td><td>{db}</td><td>{assigned}</td><td class=\"paused\">{paused}</td>\
             <td class=\"waiting\">{waiting}</td><td>{age:.0} s ago</td></tr>",
            name = esc(&i.instance),
            db = esc(db),
            assigned = i.assigned,
            paused = describe(&i.paused.0),
            waiting = describe(&i.waiting.0),
            age = i.age_seconds,
        );
    }
    html.push_str("</tbody></table>");
    html
}

fn outbox_row(outbox: &OutboxHealth) -> String {
    match (&outbox.error, outbox.pending, outbox.oldest_seconds) {
        (Some(error), _, _) => format!(
            "<tr class=\"error\" data-outbox=\"{name}\"><td>{name}</td><td colspan=\"2\">unreachable: {error}</td></tr>",
            name = esc(&outbox.name),
            error = esc(error)
        ),
        (None, pending, oldest) => format!(
            "<tr data-outbox=\"{name}\"><td>{name}</td><td>{pending}</td><td>{oldest:.1}</td></tr>",
            name = esc(&outbox.name),
            pending = pending.unwrap_or_default(),
            oldest = oldest.unwrap_or_default(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::PartitionHealth;

    #[test]
    fn a_query_encodes_everything_but_the_unreserved_bytes() {
        assert_eq!(query(&[("topic", "a.DLT"), ("class", "x y&z=<é>")]), "topic=a.DLT&class=x%20y%26z%3D%3C%C3%A9%3E");
    }

    #[test]
    fn markup_in_any_value_is_shown_as_text() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        let health = Health {
            read_at: Some(1),
            broker_error: Some("<img src=x onerror=alert(1)>".into()),
            groups: vec![GroupHealth {
                name: "<b>g</b>".into(),
                members: Some(1),
                state: Some("Stable".into()),
                member_ids: vec!["<i>m</i>".into()],
                rebalances: 0,
                last_rebalance_seconds: None,
                lag: 3,
                lag_seconds: Some(2.0),
                skew: None,
                stalled_seconds: 0.0,
                partitions: vec![PartitionHealth {
                    topic: "<t>".into(),
                    partition: 0,
                    committed: 1,
                    lag: 3,
                    lag_seconds: None,
                    still_seconds: 0.0,
                }],
            }],
            outboxes: vec![],
            dead_letters: vec![],
            payment_guards: vec![],
            payment_guards_error: None,
        };
        let html = health_page(&health);
        assert!(!html.contains("<img") && !html.contains("<b>g") && !html.contains("<t>"), "{html}");
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    }
}

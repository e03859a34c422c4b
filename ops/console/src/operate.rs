//! What an operator may change about dead letters: replay them and mark them triaged (a
//! group's rewind is in [`crate::rewind_page`]). Everything else the console serves is read-only.
//!
//! Each action is two steps: a preview (GET) that reads what the choice matches and says how
//! many records and where they go, and a confirmation (POST) that acts only if the choice still
//! matches that many — both behind an operator's sign-in, the POST with the preview's form token
//! and from the console's own origin ([`crate::access`]). Every action is written to the audit
//! log before it runs and again with its outcome ([`crate::audit`]).

use std::{collections::BTreeMap, fmt::Write};

use axum::{
    Form,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
};
use orderflow_consumer_runtime::dlt_tools::{self, DeadLetter, Selection, TriageMark};
use orderflow_platform::users_file::SignedIn;
use serde::Deserialize;

pub use crate::access::ROLES;
use crate::{
    Shared,
    access::Operators,
    audit::{AuditLog, Entry},
    page::{esc, layout},
};

/// Records listed in a replay preview.
const PREVIEW_ROWS: usize = 20;

pub(crate) fn bad_input(why: &str) -> Response {
    (StatusCode::BAD_REQUEST, Html(layout("Check the form", &format!("<p class=\"error\">{}</p>", esc(why)))))
        .into_response()
}

pub(crate) fn kafka_error(what: &str, error: &anyhow::Error) -> Response {
    let body = format!("<p class=\"error\">{}: {}</p>", esc(what), esc(&format!("{error:#}")));
    (StatusCode::SERVICE_UNAVAILABLE, Html(layout("Kafka unavailable", &body))).into_response()
}

/// The replay form's fields, as a browser sends them (empty means not chosen).
#[derive(Debug, Default, Deserialize)]
pub struct ReplayForm {
    pub topic: String,
    #[serde(default)]
    pub class: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub event_id: String,
    /// `yes`: everything in the topic (required when nothing else is chosen).
    #[serde(default)]
    pub all: String,
    /// The confirmation's: how many records the preview showed, and its token.
    #[serde(default)]
    pub expected: Option<i64>,
    #[serde(default)]
    pub token: String,
}

fn number<T: std::str::FromStr>(field: &str, raw: &str) -> Result<Option<T>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| format!("{field} must be a whole number ≥ 0, not {raw:?}"))
}

impl ReplayForm {
    /// The selection the form names, or what is wrong with it.
    pub fn selection(&self) -> Result<Selection, String> {
        let partition: Option<i32> = number("The partition", &self.partition)?;
        let from: Option<i64> = number("From (offset)", &self.from)?;
        let to: Option<i64> = number("To (offset)", &self.to)?;
        if partition.is_some_and(|p| p < 0) || from.is_some_and(|o| o < 0) || to.is_some_and(|o| o < 0) {
            return Err("Partitions and offsets are ≥ 0.".into());
        }
        let offsets = match (from, to) {
            (None, None) => None,
            (from, to) => Some((from.unwrap_or(0), to.unwrap_or(i64::MAX))),
        };
        if let Some((from, to)) = offsets
            && from > to
        {
            return Err(format!("The offset range {from}–{to} is empty: from must not be past to."));
        }
        let text = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        let selection =
            Selection { partition, offsets, event_id: text(&self.event_id), error_class: text(&self.class) };
        if selection.is_everything() && self.all != "yes" {
            return Err("Choose what to replay (a class, a partition, an offset range or an event id), or tick \
                        \"everything\"."
                .into());
        }
        Ok(selection)
    }

    /// The form's choice as hidden fields (for the confirmation).
    fn hidden(&self) -> String {
        [
            ("topic", &self.topic),
            ("class", &self.class),
            ("partition", &self.partition),
            ("from", &self.from),
            ("to", &self.to),
            ("event_id", &self.event_id),
            ("all", &self.all),
        ]
        .iter()
        .map(|(name, value)| format!("<input type=\"hidden\" name=\"{name}\" value=\"{}\">", esc(value)))
        .collect()
    }
}

/// A selection in words, for the page and the audit log.
pub fn describe(selection: &Selection) -> String {
    let mut parts = Vec::new();
    if let Some(class) = &selection.error_class {
        parts.push(format!("class {class}"));
    }
    if let Some(p) = selection.partition {
        parts.push(format!("partition {p}"));
    }
    match selection.offsets {
        Some((from, i64::MAX)) => parts.push(format!("offsets from {from}")),
        Some((from, to)) => parts.push(format!("offsets {from}–{to}")),
        None => {}
    }
    if let Some(id) = &selection.event_id {
        parts.push(format!("event id {id}"));
    }
    if parts.is_empty() { "every record".into() } else { parts.join(", ") }
}

/// Reads what `form` selects from its topic (a DLT the console knows).
async fn selected(shared: &Shared, form: &ReplayForm) -> Result<(Selection, Vec<DeadLetter>), Response> {
    if crate::known_topic(shared, &form.topic).is_none() {
        return Err(crate::not_found(&format!("No dead-letter topic {}", form.topic)));
    }
    let selection = form.selection().map_err(|why| bad_input(&why))?;
    let (kafka, topic, chosen) = (shared.kafka.clone(), form.topic.clone(), selection.clone());
    let read = tokio::task::spawn_blocking(move || dlt_tools::select(&kafka, &topic, &chosen)).await;
    match read.map_err(anyhow::Error::from).and_then(|r| r) {
        Ok(records) => Ok((selection, records)),
        Err(error) => Err(kafka_error(&format!("reading {}", form.topic), &error)),
    }
}

/// Where the records go, with how many each.
fn destinations(records: &[DeadLetter]) -> BTreeMap<String, usize> {
    let mut to = BTreeMap::new();
    for r in records {
        *to.entry(r.original_topic.clone().unwrap_or_else(|| "(no original topic)".into())).or_default() += 1;
    }
    to
}

fn destinations_text(records: &[DeadLetter]) -> String {
    destinations(records).iter().map(|(topic, n)| format!("{topic} ({n})")).collect::<Vec<_>>().join(", ")
}

/// GET `/operate/replay`: what the choice matches, and the button that replays it.
pub(crate) async fn replay_preview(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Query(form): Query<ReplayForm>,
) -> Response {
    let operator = match shared.operators.operator(&headers).await {
        Ok(operator) => operator,
        Err(refusal) => return refusal,
    };
    match selected(&shared, &form).await {
        Ok((selection, records)) => {
            Html(replay_page(&shared.operators, &operator, &form, &selection, &records, None)).into_response()
        }
        Err(response) => response,
    }
}

fn replay_page(
    operators: &Operators,
    operator: &SignedIn,
    form: &ReplayForm,
    selection: &Selection,
    records: &[DeadLetter],
    warning: Option<String>,
) -> String {
    let mut html = format!(
        "<h2>Replay from <a href=\"/dead-letters/{t}\">{t}</a></h2><p class=\"meta\">Signed in as {who}. Chosen: {what}.</p>",
        t = esc(&form.topic),
        who = esc(&operator.name),
        what = esc(&describe(selection)),
    );
    if let Some(warning) = warning {
        let _ = write!(html, "<p class=\"warn\">{}</p>", esc(&warning));
    }
    if records.is_empty() {
        html.push_str("<p class=\"confirm\" data-count=\"0\">No record matches: nothing to replay.</p>");
        return layout("Replay", &html);
    }
    let homeless = records.iter().filter(|r| r.original_topic.is_none()).count();
    let _ = write!(
        html,
        "<p class=\"confirm\" data-count=\"{n}\">Replay <strong>{n}</strong> record{s} to <strong>{to}</strong>? \
         Each consumer dedupes on the event id, so a record that was handled after all is skipped.</p>",
        n = records.len(),
        s = if records.len() == 1 { "" } else { "s" },
        to = esc(&destinations_text(records)),
    );
    html.push_str(
        "<table class=\"records\"><thead><tr><th>Partition</th><th>Offset</th><th>Event</th><th>Class</th><th>To</th></tr></thead><tbody>",
    );
    for r in records.iter().take(PREVIEW_ROWS) {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.partition,
            r.offset,
            esc(r.event_id.as_deref().unwrap_or("no event id")),
            esc(&r.error_class),
            esc(r.original_topic.as_deref().unwrap_or("?")),
        );
    }
    html.push_str("</tbody></table>");
    if records.len() > PREVIEW_ROWS {
        let _ = write!(html, "<p class=\"meta\">… and {} more.</p>", records.len() - PREVIEW_ROWS);
    }
    if homeless > 0 {
        let _ = write!(
            html,
            "<p class=\"error\">{homeless} of them carry no original-topic header, so they cannot be replayed: narrow the \
             choice.</p>"
        );
        return layout("Replay", &html);
    }
    let _ = write!(
        html,
        "<form method=\"post\" action=\"/operate/replay\" class=\"confirm\">{hidden}\
         <input type=\"hidden\" name=\"expected\" value=\"{n}\"><input type=\"hidden\" name=\"token\" value=\"{token}\">\
         <button type=\"submit\" class=\"danger\">Replay {n} record{s}</button> <a href=\"/dead-letters/{t}\">Cancel</a></form>",
        hidden = form.hidden(),
        n = records.len(),
        s = if records.len() == 1 { "" } else { "s" },
        token = esc(&operators.issue(&operator.name)),
        t = esc(&form.topic),
    );
    layout("Replay", &html)
}

/// POST `/operate/replay`: replays what the preview showed, if it still matches as many.
pub(crate) async fn replay_confirm(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<ReplayForm>,
) -> Response {
    let operator = match shared.operators.confirm(&headers, &form.token).await {
        Ok(operator) => operator,
        Err(refusal) => return refusal,
    };
    let (selection, records) = match selected(&shared, &form).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let count = records.len() as i64;
    if form.expected != Some(count) || count == 0 {
        let warning = format!(
            "The choice now matches {count} records, not the {} the preview showed: nothing was replayed. Check and \
             confirm again.",
            form.expected.map_or("?".to_string(), |n| n.to_string())
        );
        return (
            StatusCode::CONFLICT,
            Html(replay_page(&shared.operators, &operator, &form, &selection, &records, Some(warning))),
        )
            .into_response();
    }
    let what = format!("{} to {}", describe(&selection), destinations_text(&records));
    let started = Entry::started(&operator.name, "replay", &form.topic, what, count);
    let kafka = shared.kafka.clone();
    let topic = form.topic.clone();
    let result = act(&shared.audit, &started, async move {
        dlt_tools::replay_records(&kafka, &topic, &records).await.map(|n| n as i64)
    })
    .await;
    outcome_page(&started, &result, &format!("/dead-letters/{}", form.topic))
}

/// Runs `work` between its audit entries; an action the log cannot record does not run.
pub(crate) async fn act(
    audit: &AuditLog,
    started: &Entry,
    work: impl Future<Output = anyhow::Result<i64>>,
) -> Result<anyhow::Result<i64>, anyhow::Error> {
    audit.write(started).await?;
    let result = work.await;
    if let Err(error) = &result {
        tracing::warn!(action = %started.action, target = %started.target, error = format!("{error:#}"), "operator action failed");
    }
    if let Err(error) = audit.write(&started.finished(&result)).await {
        // The action ran; its outcome is in the service log at least.
        tracing::error!(action_id = %started.action_id, error = format!("{error:#}"), "the audit log did not take an outcome");
    }
    Ok(result)
}

pub(crate) fn outcome_page(
    started: &Entry,
    result: &Result<anyhow::Result<i64>, anyhow::Error>,
    back: &str,
) -> Response {
    let (status, body) = match result {
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "<p class=\"error\">Nothing was done: the audit log could not record the action ({}).</p>",
                esc(&format!("{error:#}"))
            ),
        ),
        Ok(Err(error)) => (
            StatusCode::BAD_GATEWAY,
            format!("<p class=\"error\">The {} failed: {}</p>", esc(&started.action), esc(&format!("{error:#}"))),
        ),
        Ok(Ok(count)) => (
            StatusCode::OK,
            format!(
                "<p class=\"done\" data-count=\"{count}\">Done: {action} of {count} record{s} ({what}).</p>",
                action = esc(&started.action),
                s = if *count == 1 { "" } else { "s" },
                what = esc(&started.what),
            ),
        ),
    };
    let body = format!(
        "<h2>{action} · {target}</h2>{body}<p class=\"meta\">Audit entry {id} by {who}.</p><p><a href=\"{back}\">Back</a></p>",
        action = esc(&started.action),
        target = esc(&started.target),
        id = esc(&started.action_id),
        who = esc(&started.who),
        back = esc(back),
    );
    (status, Html(layout(&started.action, &body))).into_response()
}

/// The triage form: the topic, and the last offset triaged (blank: everything now).
#[derive(Debug, Default, Deserialize)]
pub struct TriageForm {
    pub topic: String,
    #[serde(default)]
    pub through: String,
    /// The confirmation's: `partition:offset` marks the preview computed, its total and token.
    #[serde(default)]
    pub marks: String,
    #[serde(default)]
    pub expected: Option<i64>,
    #[serde(default)]
    pub token: String,
}

async fn plan(shared: &Shared, form: &TriageForm) -> Result<Vec<TriageMark>, Response> {
    if crate::known_topic(shared, &form.topic).is_none() {
        return Err(crate::not_found(&format!("No dead-letter topic {}", form.topic)));
    }
    let through: Option<i64> = number("Through (offset)", &form.through).map_err(|why| bad_input(&why))?;
    let (kafka, topic) = (shared.kafka.clone(), form.topic.clone());
    let read = tokio::task::spawn_blocking(move || dlt_tools::triage_plan(&kafka, &topic, through)).await;
    read.map_err(anyhow::Error::from)
        .and_then(|r| r)
        .map_err(|error| kafka_error(&format!("reading {}", form.topic), &error))
}

/// GET `/operate/triage`: how many records each partition would mark, and the button.
pub(crate) async fn triage_preview(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Query(form): Query<TriageForm>,
) -> Response {
    let operator = match shared.operators.operator(&headers).await {
        Ok(operator) => operator,
        Err(refusal) => return refusal,
    };
    let marks = match plan(&shared, &form).await {
        Ok(marks) => marks,
        Err(response) => return response,
    };
    let total: i64 = marks.iter().map(TriageMark::count).sum();
    let mut html = format!(
        "<h2>Mark triaged · <a href=\"/dead-letters/{t}\">{t}</a></h2><p class=\"meta\">Signed in as {who}. Through: {through}.</p>",
        t = esc(&form.topic),
        who = esc(&operator.name),
        through = if form.through.trim().is_empty() {
            "the current end".into()
        } else {
            format!("offset {}", esc(form.through.trim()))
        },
    );
    if total == 0 {
        html.push_str(
            "<p class=\"confirm\" data-count=\"0\">Nothing to mark: every record up to there is triaged.</p>",
        );
        return Html(layout("Mark triaged", &html)).into_response();
    }
    let _ = write!(
        html,
        "<p class=\"confirm\" data-count=\"{total}\">Mark <strong>{total}</strong> record{s} of {t} as triaged? They stop \
         counting as untriaged (and the dead-letter alert resolves); nothing is replayed or deleted.</p>\
         <table><thead><tr><th>Partition</th><th>Triaged up to now</th><th>After</th><th>Records</th></tr></thead><tbody>",
        s = if total == 1 { "" } else { "s" },
        t = esc(&form.topic),
    );
    for m in marks.iter().filter(|m| m.count() > 0) {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            m.partition,
            m.before,
            m.next,
            m.count()
        );
    }
    let encoded: Vec<String> =
        marks.iter().filter(|m| m.count() > 0).map(|m| format!("{}:{}", m.partition, m.next)).collect();
    let _ = write!(
        html,
        "</tbody></table><form method=\"post\" action=\"/operate/triage\" class=\"confirm\">\
         <input type=\"hidden\" name=\"topic\" value=\"{t}\"><input type=\"hidden\" name=\"marks\" value=\"{marks}\">\
         <input type=\"hidden\" name=\"expected\" value=\"{total}\"><input type=\"hidden\" name=\"token\" value=\"{token}\">\
         <button type=\"submit\" class=\"danger\">Mark {total} triaged</button> <a href=\"/dead-letters/{t}\">Cancel</a></form>",
        t = esc(&form.topic),
        marks = esc(&encoded.join(",")),
        token = esc(&shared.operators.issue(&operator.name)),
    );
    Html(layout("Mark triaged", &html)).into_response()
}

/// `partition:offset,…` as the preview wrote it.
fn parse_marks(raw: &str) -> Result<Vec<(i32, i64)>, String> {
    raw.split(',')
        .filter(|m| !m.trim().is_empty())
        .map(|m| {
            let (p, o) = m.trim().split_once(':').ok_or_else(|| format!("{m:?} is not partition:offset"))?;
            Ok((
                p.parse().map_err(|_| format!("{p:?} is not a partition"))?,
                o.parse().map_err(|_| format!("{o:?} is not an offset"))?,
            ))
        })
        .collect()
}

/// POST `/operate/triage`: commits the marks the preview showed.
pub(crate) async fn triage_confirm(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<TriageForm>,
) -> Response {
    let operator = match shared.operators.confirm(&headers, &form.token).await {
        Ok(operator) => operator,
        Err(refusal) => return refusal,
    };
    if crate::known_topic(&shared, &form.topic).is_none() {
        return crate::not_found(&format!("No dead-letter topic {}", form.topic));
    }
    let marks = match parse_marks(&form.marks) {
        Ok(marks) if !marks.is_empty() => marks,
        Ok(_) => return bad_input("No marks to commit: open the preview again."),
        Err(why) => return bad_input(&why),
    };
    let what =
        marks.iter().map(|(p, o)| format!("partition {p} up to offset {}", o - 1)).collect::<Vec<_>>().join(", ");
    let started = Entry::started(&operator.name, "triage", &form.topic, what, form.expected.unwrap_or(0));
    let (kafka, topic) = (shared.kafka.clone(), form.topic.clone());
    let result = act(&shared.audit, &started, async move {
        let before = {
            let (kafka, topic) = (kafka.clone(), topic.clone());
            tokio::task::spawn_blocking(move || dlt_tools::triage_plan(&kafka, &topic, Some(-1))).await??
        };
        let done = tokio::task::spawn_blocking(move || dlt_tools::commit_triage(&kafka, &topic, &marks)).await??;
        let moved: i64 = done
            .iter()
            .map(|(p, next)| next - before.iter().find(|m| m.partition == *p).map_or(*next, |m| m.before))
            .sum();
        Ok(moved)
    })
    .await;
    outcome_page(&started, &result, &format!("/dead-letters/{}", form.topic))
}

/// A page's "Recent actions" section: its audit entries, or why they cannot be read now.
pub fn recent_actions(audit: &Result<Vec<Entry>, String>) -> String {
    match audit {
        Ok(entries) => format!("<h3>Recent actions</h3>{}", audit_table(entries)),
        Err(error) => {
            format!("<h3>Recent actions</h3><p class=\"warn\">The audit log cannot be read now: {}</p>", esc(error))
        }
    }
}

/// The audit entries as a table (newest first).
pub fn audit_table(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "<p>No operator action recorded yet.</p>".into();
    }
    let mut html = String::from(
        "<table class=\"audit\"><thead><tr><th>When (UTC)</th><th>Who</th><th>Action</th><th>Target</th><th>What</th>\
         <th>Records</th><th>Outcome</th></tr></thead><tbody>",
    );
    for e in entries {
        let _ = write!(
            html,
            "<tr data-action=\"{id}\"><td>{at}</td><td>{who}</td><td>{action}</td><td>{target}</td><td>{what}</td><td>{count}</td><td>{outcome}</td></tr>",
            id = esc(&e.action_id),
            at = e.at.format("%Y-%m-%d %H:%M:%S"),
            who = esc(&e.who),
            action = esc(&e.action),
            target = esc(&e.target),
            what = esc(&e.what),
            count = e.count,
            outcome = esc(&e.outcome),
        );
    }
    html.push_str("</tbody></table>");
    html
}

/// The forms on a DLT's page: replay a choice, mark triaged through an offset.
pub fn forms(topic: &str, classes: &[&str]) -> String {
    let mut options = String::from("<option value=\"\">any class</option>");
    for class in classes {
        let _ = write!(options, "<option value=\"{c}\">{c}</option>", c = esc(class));
    }
    format!(
        "<h3>Act</h3><p class=\"meta\">Replay and triage need an operator's sign-in; each shows what it will do and asks \
         first.</p>\
         <form method=\"get\" action=\"/operate/replay\" class=\"replay\"><input type=\"hidden\" name=\"topic\" value=\"{t}\">\
         <label>Class <select name=\"class\">{options}</select></label> \
         <label>Partition <input name=\"partition\" size=\"3\" inputmode=\"numeric\"></label> \
         <label>Offsets <input name=\"from\" size=\"7\" inputmode=\"numeric\" placeholder=\"from\">–<input name=\"to\" size=\"7\" inputmode=\"numeric\" placeholder=\"to\"></label> \
         <label>Event id <input name=\"event_id\" size=\"36\"></label> \
         <label><input type=\"checkbox\" name=\"all\" value=\"yes\"> everything</label> \
         <button type=\"submit\">Preview replay…</button></form>\
         <form method=\"get\" action=\"/operate/triage\" class=\"triage\"><input type=\"hidden\" name=\"topic\" value=\"{t}\">\
         <label>Triaged through offset <input name=\"through\" size=\"7\" inputmode=\"numeric\" placeholder=\"the end\"></label> \
         <button type=\"submit\">Preview triage…</button></form>",
        t = esc(topic),
    )
}

/// The console's `/audit` page.
pub(crate) async fn audit_page(State(shared): State<Shared>) -> Response {
    let kafka = shared.kafka.clone();
    match tokio::task::spawn_blocking(move || AuditLog::recent(&kafka, 200))
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r)
    {
        Ok(entries) => Html(layout(
            "Audit",
            &format!(
                "<h2>Audit log</h2><p class=\"meta\">The newest 200 operator actions, newest first.</p>{}",
                audit_table(&entries)
            ),
        ))
        .into_response(),
        Err(error) => kafka_error("reading the audit log", &error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_form_names_a_selection_or_says_what_is_wrong() {
        let form = |class: &str, partition: &str, from: &str, to: &str, all: &str| ReplayForm {
            topic: "t".into(),
            class: class.into(),
            partition: partition.into(),
            from: from.into(),
            to: to.into(),
            all: all.into(),
            ..Default::default()
        };
        let chosen = form("schema_mismatch", "2", "10", "", "").selection().unwrap();
        assert_eq!(chosen.partition, Some(2));
        assert_eq!(chosen.offsets, Some((10, i64::MAX)));
        assert_eq!(describe(&chosen), "class schema_mismatch, partition 2, offsets from 10");
        assert!(form("", "", "", "", "").selection().unwrap_err().contains("Choose what to replay"));
        assert!(form("", "", "", "", "yes").selection().unwrap().is_everything());
        assert!(form("", "x", "", "", "").selection().unwrap_err().contains("The partition must be a whole number"));
        assert!(form("", "", "9", "3", "").selection().unwrap_err().contains("is empty"));
        assert_eq!(parse_marks("0:12, 3:7").unwrap(), vec![(0, 12), (3, 7)]);
        assert!(parse_marks("0-12").is_err());
    }
}

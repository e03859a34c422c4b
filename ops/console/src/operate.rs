//! What an operator may change: replay dead letters and mark them triaged. Everything else the
//! console serves is read-only.
//!
//! Access: every `/operate/*` page needs HTTP basic credentials of an `operator` from the users
//! file (`--operators-file`, the platform's bcrypt users file; a `viewer` may sign in and is
//! refused); without a file the console is read-only and says so. Each action is two steps: a
//! preview (GET) that reads what the choice matches and says how many records and where they
//! go, and a confirmation (POST) that acts only if the choice still matches that many. The POST
//! must carry the preview's form token (an HMAC of the operator's name and an expiry under a key
//! of this process, so another site cannot forge one) and must not come from another origin
//! (`Origin`, `Sec-Fetch-Site`). Every action is written to the audit log before it runs and
//! again with its outcome ([`crate::audit`]).

use std::{collections::BTreeMap, fmt::Write};

use axum::{
    Form,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use hmac::{Hmac, Mac};
use orderflow_consumer_runtime::{
    dlt_tools::{self, DeadLetter, Selection, TriageMark},
    rewind,
};
use orderflow_platform::users_file::{SignedIn, UsersFile};
use serde::Deserialize;
use sha2::Sha256;

use crate::{
    Shared,
    audit::{AuditLog, Entry},
    page::{esc, layout},
};

/// The roles of the operators file; a line without one is an operator.
pub const ROLES: &[&str] = &["operator", "viewer"];
/// How long a preview's form token stays good.
const TOKEN_SECS: i64 = 3600;
/// Records listed in a replay preview.
const PREVIEW_ROWS: usize = 20;

/// Who may act, and the key of the form tokens.
pub struct Operators {
    pub users: Option<UsersFile>,
    key: [u8; 32],
}

impl Operators {
    pub fn new(users: Option<UsersFile>) -> Operators {
        Operators { users, key: rand::random() }
    }

    /// The signed-in operator, or the response refusing the request.
    async fn operator(&self, headers: &HeaderMap) -> Result<SignedIn, Response> {
        let Some(users) = &self.users else {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "This console is read-only: it was started without an operators file (--operators-file), so nobody \
                 may replay, triage or rewind here.",
            ));
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(challenge("Sign in as an operator to replay, triage or rewind."));
        };
        let encoded = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
            .ok_or_else(|| challenge("The console accepts basic credentials only."))?;
        let signed_in = users.verify_basic(encoded).await.map_err(|refused| challenge(&refused.0))?;
        if signed_in.role != "operator" {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                &format!("{} is a {}: replay, triage and rewind need an operator.", signed_in.name, signed_in.role),
            ));
        }
        Ok(signed_in)
    }

    fn token(&self, user: &str, expires: i64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(user.as_bytes());
        mac.update(b"\0");
        mac.update(expires.to_string().as_bytes());
        let digest: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        format!("{expires}.{digest}")
    }

    /// A form token for `user`, good for an hour.
    fn issue(&self, user: &str) -> String {
        self.token(user, chrono::Utc::now().timestamp() + TOKEN_SECS)
    }

    /// Whether `token` was issued to `user` by this process and is still good.
    fn check(&self, user: &str, token: &str) -> bool {
        let Some((expires, _)) = token.split_once('.') else { return false };
        let Ok(expires) = expires.parse::<i64>() else { return false };
        // Equal length and every byte compared: the HMAC is the secret part.
        let expected = self.token(user, expires);
        expires >= chrono::Utc::now().timestamp()
            && expected.len() == token.len()
            && expected.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// The checks every POST passes before it acts: same origin, an operator, a good token.
    async fn confirm(&self, headers: &HeaderMap, token: &str) -> Result<SignedIn, Response> {
        if !same_origin(headers) {
            return Err(refuse(StatusCode::FORBIDDEN, "A change must come from the console's own pages."));
        }
        let operator = self.operator(headers).await?;
        if !self.check(&operator.name, token) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "The form's token is missing, expired or not yours: open the preview again and confirm from there.",
            ));
        }
        Ok(operator)
    }
}

/// Refuses a request another site's page sent (a browser says so in `Sec-Fetch-Site` and
/// `Origin`).
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let origin_host = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, rest)| rest);
    !host.is_empty() && origin_host == Some(host)
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, Html(layout("Not allowed", &format!("<p class=\"error\">{}</p>", esc(why))))).into_response()
}

fn challenge(why: &str) -> Response {
    let mut response = refuse(StatusCode::UNAUTHORIZED, why);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"orderflow console\", charset=\"UTF-8\""),
    );
    response
}

fn bad_input(why: &str) -> Response {
    (StatusCode::BAD_REQUEST, Html(layout("Check the form", &format!("<p class=\"error\">{}</p>", esc(why)))))
        .into_response()
}

fn kafka_error(what: &str, error: &anyhow::Error) -> Response {
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
async fn act(
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

fn outcome_page(started: &Entry, result: &Result<anyhow::Result<i64>, anyhow::Error>, back: &str) -> Response {
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

/// The rewind form: the group and topic (as the broker knows them) and where to.
#[derive(Debug, Default, Deserialize)]
pub struct RewindForm {
    pub group: String,
    pub topic: String,
    /// `earliest`, an RFC 3339 time, a duration back (`1h`), or `partition:offset,…`.
    #[serde(default)]
    pub to: String,
    /// The confirmation's: the records the preview said would be read again, and its token.
    #[serde(default)]
    pub expected: Option<i64>,
    #[serde(default)]
    pub token: String,
}

/// Plans the rewind `form` names, for a group and topic the console knows.
async fn rewind_plan(shared: &Shared, form: &RewindForm) -> Result<rewind::Plan, Response> {
    let known = {
        let health = shared.health.read().expect("health lock");
        health.groups.iter().any(|g| g.name == form.group && g.partitions.iter().any(|p| p.topic == form.topic))
    };
    if !known {
        return Err(crate::not_found(&format!("No group {} reading {}", form.group, form.topic)));
    }
    let target: rewind::Target = match form.to.trim() {
        "" => {
            return Err(bad_input(
                "Say where to: earliest, a time (2026-12-02T04:00:00Z), a duration back (1h) or offsets (0:120,3:77).",
            ));
        }
        to => to.parse().map_err(|e: anyhow::Error| bad_input(&format!("{e:#}")))?,
    };
    let (kafka, group, topic) = (shared.kafka.clone(), form.group.clone(), form.topic.clone());
    let planned = tokio::task::spawn_blocking(move || rewind::plan(&kafka, &group, &topic, &target)).await;
    planned
        .map_err(anyhow::Error::from)
        .and_then(|r| r)
        .map_err(|error| kafka_error(&format!("planning the rewind of {}", form.group), &error))
}

/// The plan's targets as offsets, so a confirmation moves to what the preview showed (a time
/// like `1h` would mean another moment by then).
fn plan_offsets(plan: &rewind::Plan) -> String {
    plan.moves.iter().map(|m| format!("{}:{}", m.partition, m.target)).collect::<Vec<_>>().join(",")
}

fn rewind_page(
    operators: &Operators,
    operator: &SignedIn,
    form: &RewindForm,
    plan: &rewind::Plan,
    warning: Option<&str>,
) -> String {
    let reread = plan.reread();
    let mut html = format!(
        "<h2>Rewind · <a href=\"/groups/{g}\">{g}</a> on {t}</h2><p class=\"meta\">Signed in as {who}. To: {to}.</p>",
        g = esc(&plan.group),
        t = esc(&plan.topic),
        who = esc(&operator.name),
        to = esc(form.to.trim()),
    );
    if let Some(warning) = warning {
        let _ = write!(html, "<p class=\"warn\">{}</p>", esc(warning));
    }
    html.push_str(
        "<table class=\"moves\"><thead><tr><th>Partition</th><th>Committed</th><th>To</th><th>Effect</th><th>Kept by the broker</th></tr></thead><tbody>",
    );
    for m in &plan.moves {
        let effect = match m.reread() {
            n if n > 0 => format!("reads {n} again"),
            0 => "unchanged".into(),
            n => format!("skips {}", -n),
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}..{}</td></tr>",
            m.partition,
            m.committed.map_or("none".into(), |c| c.to_string()),
            m.target,
            effect,
            m.low,
            m.high
        );
    }
    html.push_str("</tbody></table>");
    let skipped: i64 = plan.moves.iter().map(|m| m.reread()).filter(|n| *n < 0).map(|n| -n).sum();
    if !plan.members.is_empty() {
        let _ = write!(
            html,
            "<p class=\"error\" data-members=\"{n}\">The group has {n} live member(s) ({who}): they would go on from where they \
             are and commit over the rewind. Stop its instances (scale its Deployment to 0), then preview again.</p>",
            n = plan.members.len(),
            who = esc(&plan.members.join(", ")),
        );
        return layout("Rewind", &html);
    }
    if reread == 0 && skipped == 0 {
        html.push_str("<p class=\"confirm\" data-count=\"0\">Nothing moves.</p>");
        return layout("Rewind", &html);
    }
    let _ = write!(
        html,
        "<p class=\"confirm\" data-count=\"{reread}\">Rewind {g} on {t}: <strong>{reread}</strong> records read again{skips}? \
         Every consumer dedupes on the event id: what was handled right is skipped.</p>\
         <form method=\"post\" action=\"/operate/rewind\" class=\"confirm\">\
         <input type=\"hidden\" name=\"group\" value=\"{g}\"><input type=\"hidden\" name=\"topic\" value=\"{t}\">\
         <input type=\"hidden\" name=\"to\" value=\"{offsets}\"><input type=\"hidden\" name=\"expected\" value=\"{reread}\">\
         <input type=\"hidden\" name=\"token\" value=\"{token}\">\
         <button type=\"submit\" class=\"danger\">Rewind</button> <a href=\"/groups/{g}\">Cancel</a></form>",
        g = esc(&plan.group),
        t = esc(&plan.topic),
        skips = if skipped > 0 { format!(", {skipped} skipped") } else { String::new() },
        offsets = esc(&plan_offsets(plan)),
        token = esc(&operators.issue(&operator.name)),
    );
    layout("Rewind", &html)
}

/// GET `/operate/rewind`: what moving the group would do (the dry run), and the button.
pub(crate) async fn rewind_preview(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Query(form): Query<RewindForm>,
) -> Response {
    let operator = match shared.operators.operator(&headers).await {
        Ok(operator) => operator,
        Err(refusal) => return refusal,
    };
    match rewind_plan(&shared, &form).await {
        Ok(plan) => Html(rewind_page(&shared.operators, &operator, &form, &plan, None)).into_response(),
        Err(response) => response,
    }
}

/// POST `/operate/rewind`: commits the previewed offsets if they still read as many again.
pub(crate) async fn rewind_confirm(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<RewindForm>,
) -> Response {
    let operator = match shared.operators.confirm(&headers, &form.token).await {
        Ok(operator) => operator,
        Err(refusal) => return refusal,
    };
    let plan = match rewind_plan(&shared, &form).await {
        Ok(plan) => plan,
        Err(response) => return response,
    };
    if form.expected != Some(plan.reread()) {
        let warning = format!(
            "The group's offsets moved since the preview: this now reads {} records again, not {}. Nothing changed.",
            plan.reread(),
            form.expected.map_or("?".into(), |n| n.to_string())
        );
        return (StatusCode::CONFLICT, Html(rewind_page(&shared.operators, &operator, &form, &plan, Some(&warning))))
            .into_response();
    }
    let what = format!("{} to {}", plan.topic, plan_offsets(&plan));
    let started = Entry::started(&operator.name, "rewind", &plan.group, what, plan.reread());
    let (kafka, reread) = (shared.kafka.clone(), plan.reread());
    let back = format!("/groups/{}", plan.group);
    let result = act(&shared.audit, &started, async move {
        tokio::task::spawn_blocking(move || rewind::apply(&kafka, &plan)).await??;
        Ok(reread)
    })
    .await;
    outcome_page(&started, &result, &back)
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

/// The rewind form on a group's page, for each topic it reads.
pub fn rewind_form(group: &str, topics: &[&str]) -> String {
    let mut options = String::new();
    for topic in topics {
        let _ = write!(options, "<option value=\"{t}\">{t}</option>", t = esc(topic));
    }
    format!(
        "<h3>Rewind</h3><p class=\"meta\">Read records again from a time: the preview says how many per partition and \
         nothing changes until an operator confirms. A group with live members is refused (stop its instances first).</p>\
         <form method=\"get\" action=\"/operate/rewind\" class=\"rewind\"><input type=\"hidden\" name=\"group\" value=\"{g}\">\
         <label>Topic <select name=\"topic\">{options}</select></label> \
         <label>To <input name=\"to\" size=\"28\" placeholder=\"1h, 2026-12-02T04:00:00Z, earliest, 0:120\"></label> \
         <button type=\"submit\">Preview rewind…</button></form>",
        g = esc(group),
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
    fn a_form_token_is_the_operators_own_and_expires() {
        let operators = Operators::new(None);
        let token = operators.issue("ana");
        assert!(operators.check("ana", &token));
        assert!(!operators.check("bo", &token));
        assert!(!operators.check("ana", &token.replace('.', ".0")));
        assert!(!operators.check("ana", ""));
        let stale = operators.token("ana", chrono::Utc::now().timestamp() - 1);
        assert!(!operators.check("ana", &stale));
        assert!(!Operators::new(None).check("ana", &token), "another process's key");
    }

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

    #[test]
    fn a_post_from_another_site_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("console:8070"));
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://console:8070"));
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&headers), "a page with no origin of its own");
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://console:8070"));
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&headers));
    }
}

//! A group's rewind from the console: the dry run of `consumers/runtime/src/rewind.rs` as a
//! preview (per partition: committed → target, records read again or skipped; a group with live
//! members named and refused), confirmed with the preview's targets as offsets (a time like `1h`
//! would mean another moment by then), behind the same sign-in, token and audit log as the
//! dead-letter actions ([`crate::operate`]).

use std::fmt::Write;

use axum::{
    Form,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
};
use orderflow_consumer_runtime::rewind;
use orderflow_platform::users_file::SignedIn;
use serde::Deserialize;

use crate::{
    Shared,
    access::Operators,
    audit::Entry,
    operate::{act, bad_input, kafka_error, outcome_page},
    page::{esc, layout},
};

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

//! The aggregates over HTTP, beside `/metrics`:
//!
//! - `GET /aggregates?from=<RFC 3339>&to=<RFC 3339>` (default: the last hour): per minute, the
//!   orders placed / paid / payment failed / short of stock / cancelled, the payment failure
//!   rate, and paid revenue per currency;
//! - `GET /funnel?from=&to=`: placed → paid → stocked over the range;
//! - `GET /aggregates/check`: the stored aggregates against a recount of the per-order facts.

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;

use crate::{MinuteCounts, Range};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
}

fn problem(status: StatusCode, detail: String) -> Response {
    let body = json!({ "type": "about:blank", "title": status.canonical_reason(), "status": status.as_u16(), "detail": detail });
    (status, [(axum::http::header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
}

type RangeParams = Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>;

/// The requested range, or what is wrong with it.
fn range_of(params: RangeParams) -> Result<Range, String> {
    let Query(query) = params.map_err(|_| "the query parameters are from and to (RFC 3339 times)".to_string())?;
    let parse = |name: &str, raw: &Option<String>| -> Result<Option<DateTime<Utc>>, String> {
        raw.as_deref()
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.to_utc())
                    .map_err(|e| format!("{name}={v:?} is not an RFC 3339 time: {e}"))
            })
            .transpose()
    };
    let default = Range::last(Duration::hours(1));
    let range = Range {
        from: parse("from", &query.from)?.unwrap_or(default.from),
        to: parse("to", &query.to)?.unwrap_or(default.to),
    };
    if range.from >= range.to {
        return Err("from must be before to".into());
    }
    Ok(range)
}

fn unavailable(error: sqlx::Error) -> Response {
    tracing::warn!(%error, "analytics query failed");
    problem(StatusCode::SERVICE_UNAVAILABLE, "the analytics database is unavailable".into())
}

fn failure_rate(c: &MinuteCounts) -> Option<f64> {
    let settled = c.paid + c.payment_failed;
    (settled > 0).then(|| c.payment_failed as f64 / settled as f64)
}

async fn aggregates(State(pool): State<PgPool>, params: RangeParams) -> Response {
    let range = match range_of(params) {
        Ok(range) => range,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, detail),
    };
    match crate::aggregates(&pool, range).await {
        Ok((counts, revenue)) => {
            let minutes: Vec<_> = counts
                .iter()
                .map(|c| {
                    let mut value = serde_json::to_value(c).unwrap_or_default();
                    value["payment_failure_rate"] = json!(failure_rate(c));
                    value
                })
                .collect();
            Json(json!({ "from": range.from, "to": range.to, "minutes": minutes, "revenue": revenue })).into_response()
        }
        Err(error) => unavailable(error),
    }
}

async fn funnel(State(pool): State<PgPool>, params: RangeParams) -> Response {
    let range = match range_of(params) {
        Ok(range) => range,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, detail),
    };
    match crate::aggregates(&pool, range).await {
        Ok((counts, _)) => Json(crate::funnel(&counts)).into_response(),
        Err(error) => unavailable(error),
    }
}

async fn check(State(pool): State<PgPool>) -> Response {
    let (stored, recounted) =
        match tokio::try_join!(crate::aggregates(&pool, Range::all()), crate::recount(&pool, Range::all())) {
            Ok(both) => both,
            Err(error) => return unavailable(error),
        };
    Json(json!({
        "consistent": stored == recounted,
        "minutes": stored.0.len(),
        "recounted_minutes": recounted.0.len(),
    }))
    .into_response()
}

pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/aggregates", get(aggregates))
        .route("/aggregates/check", get(check))
        .route("/funnel", get(funnel))
        .with_state(pool)
}

//! `orderflow-console`: the page on-call opens. Health at a glance: every consumer group's lag
//! per partition in records and seconds, the skew between its partitions, whether its commits
//! move, every outbox's backlog, each payment instance's breaker and window — read from the
//! broker (the lag exporter's [`BrokerReader`]) and the databases directly, refreshed live, so it
//! works without Prometheus and while the broker or a database is down (the page says which, and
//! shows the last good read).
//!
//! Dead letters ([`dead_letters`]): every `*.DLT` topic with its untriaged count; a topic's
//! records by error class; one record opened, its payload decoded via the registry. Operator
//! actions ([`operate`]): replay, triage and rewind — previewed, confirmed, signed in, written to
//! the audit log ([`audit`]). An order's story ([`story`]) across the services' databases and its
//! events on Kafka. A group's page: partitions, members, rebalances, why partitions are paused.
//!
//! Routes: `/` (the page), `/fragments/health` (its live section), `/api/health` (the same as
//! JSON), `/dead-letters/…`, `/operate/{replay,triage,rewind}`, `/groups/<group>`, `/audit`,
//! `/orders`, `/orders/<id>`, `/static/*` (its one stylesheet and script, built in: nothing comes
//! from a CDN), and `/metrics`, `/healthz`, `/readyz`. Every response forbids framing and inline
//! script (`Content-Security-Policy`), so a value that slipped past escaping could still not run.

pub mod access;
pub mod audit;
pub mod dead_letters;
pub mod health;
pub mod operate;
pub mod page;
pub mod rewind_page;
pub mod story;

use std::{
    future::Future,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use health::{Health, Motion};
use orderflow_consumer_runtime::dlt_tools;
use orderflow_lag_exporter::broker_view::{BrokerReader, ReaderSettings};
use orderflow_platform::kafka::KafkaSettings;
use orderflow_schemas::EventCodec;
use sqlx::PgPool;
use tokio::net::TcpListener;

pub struct ConsoleSettings {
    pub reader: ReaderSettings,
    /// Decodes dead-lettered payloads (none: they are shown as hex).
    pub codec: Option<Arc<EventCodec>>,
    /// The outbox databases shown, by name.
    pub outboxes: Vec<(String, PgPool)>,
    /// How often the broker and the databases are read.
    pub interval: Duration,
    /// Who may replay, triage and rewind (none: the console is read-only).
    pub operators: Option<orderflow_platform::users_file::UsersFile>,
    /// The services' databases an order's story is read from.
    pub stores: story::Stores,
    /// A trace UI's URL for one trace, `{trace_id}` standing for its id (none: the id is shown).
    pub trace_url: Option<String>,
}

/// What the handlers share: the latest read, and what they need to read more.
#[derive(Clone)]
struct Shared {
    health: Arc<RwLock<Health>>,
    kafka: KafkaSettings,
    codec: Option<Arc<EventCodec>>,
    operators: Arc<access::Operators>,
    audit: Arc<audit::AuditLog>,
    stores: story::Stores,
    trace_url: Option<String>,
    timeout: Duration,
}

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// Serves the console on `listener` and reads the broker and databases every `interval` until
/// `shutdown`.
pub async fn run(
    mut settings: ConsoleSettings,
    listener: TcpListener,
    registry: prometheus::Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let kafka = settings.reader.kafka.clone();
    let shared = Shared {
        health: Arc::default(),
        audit: Arc::new(audit::AuditLog::new(&kafka)?),
        operators: Arc::new(access::Operators::new(settings.operators.take())),
        codec: settings.codec.clone(),
        stores: settings.stores.clone(),
        trace_url: settings.trace_url.clone(),
        timeout: settings.reader.timeout,
        kafka,
    };
    let routes = Router::new()
        .route("/", get(index))
        .route("/dead-letters/{topic}", get(dead_letter_topic))
        .route("/dead-letters/{topic}/{partition}/{offset}", get(dead_letter_record))
        .route("/operate/replay", get(operate::replay_preview).post(operate::replay_confirm))
        .route("/operate/triage", get(operate::triage_preview).post(operate::triage_confirm))
        .route("/operate/rewind", get(rewind_page::rewind_preview).post(rewind_page::rewind_confirm))
        .route("/groups/{group}", get(group_page))
        .route("/audit", get(operate::audit_page))
        .route("/orders", get(order_search))
        .route("/orders/{id}", get(order_story))
        .route("/fragments/health", get(health_fragment))
        .route("/api/health", get(health_json))
        .route("/static/console.css", get(|| async { asset("text/css", include_str!("../static/console.css")) }))
        .route("/static/console.js", get(|| async { asset("text/javascript", include_str!("../static/console.js")) }))
        .route("/readyz", get(ready))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(shared.clone());
    let stopped = orderflow_platform::shutdown::fan_out(shutdown);
    let mut server_stopped = stopped.clone();
    let server = tokio::spawn(orderflow_platform::metrics::serve_with(listener, registry, routes, async move {
        let _ = server_stopped.wait_for(|s| *s).await;
    }));
    read_loop(settings, shared, stopped).await?;
    server.await.context("the console's server panicked")?
}

/// Reads the broker (off the async threads: its calls block) and the outboxes every interval.
async fn read_loop(
    settings: ConsoleSettings,
    shared: Shared,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let timeout = settings.reader.timeout;
    let triage_group = settings.reader.triage_group.as_deref().map(|g| settings.reader.kafka.group(g));
    let mut reader = Some(BrokerReader::new(settings.reader)?);
    let mut motion = Motion::default();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        }
        let mut taken = reader.take().expect("the reader is returned after every read");
        let broker = tokio::task::spawn_blocking(move || {
            let result = taken.read();
            (taken, result)
        });
        let guards = async {
            match &settings.stores.payments {
                Some(pool) => Some(health::payment_guards(pool, timeout).await),
                None => None,
            }
        };
        let (outboxes, guards, broker) = tokio::join!(health::outboxes(&settings.outboxes, timeout), guards, broker);
        let (back, result) = broker.context("the broker read panicked")?;
        reader = Some(back);
        let mut health = shared.health.write().expect("health lock");
        health.outboxes = outboxes;
        match guards {
            Some(Ok(guards)) => (health.payment_guards, health.payment_guards_error) = (guards, None),
            Some(Err(error)) => health.payment_guards_error = Some(error),
            None => {}
        }
        match result {
            Ok(snapshot) => {
                health.groups = motion.groups(&snapshot, Instant::now());
                health.dead_letters = dead_letters::topics(&snapshot, triage_group.as_deref());
                health.read_at = Some(health::unix_now());
                health.broker_error = None;
            }
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "reading the broker failed; the page shows the last read");
                health.broker_error = Some(format!("{error:#}"));
            }
        }
    }
}

async fn index(State(shared): State<Shared>) -> Html<String> {
    Html(page::health_page(&shared.health.read().expect("health lock")))
}

async fn health_fragment(State(shared): State<Shared>) -> Html<String> {
    Html(page::health_fragment(&shared.health.read().expect("health lock")))
}

async fn health_json(State(shared): State<Shared>) -> Json<Health> {
    Json(shared.health.read().expect("health lock").clone())
}

/// A DLT the last read of the broker listed; only those may be read through the console.
fn known_topic(shared: &Shared, topic: &str) -> Option<dead_letters::DeadLetterTopic> {
    let health = shared.health.read().expect("health lock");
    health.dead_letters.iter().find(|t| t.topic == topic).cloned()
}

fn not_found(what: &str) -> Response {
    let body = page::layout("Not found", &format!("<p class=\"error\">{}.</p>", page::esc(what)));
    (StatusCode::NOT_FOUND, Html(body)).into_response()
}

/// The broker did not answer: the page says so.
fn unavailable(what: &str, error: &anyhow::Error) -> Response {
    let body = page::layout(
        "Kafka unavailable",
        &format!("<p class=\"error\">{}: {}</p>", page::esc(what), page::esc(&format!("{error:#}"))),
    );
    (StatusCode::SERVICE_UNAVAILABLE, Html(body)).into_response()
}

async fn dead_letter_topic(State(shared): State<Shared>, Path(topic): Path<String>) -> Response {
    let Some(known) = known_topic(&shared, &topic) else {
        return not_found(&format!("No dead-letter topic {topic}"));
    };
    let kafka = shared.kafka.clone();
    let name = topic.clone();
    let read = tokio::task::spawn_blocking(move || {
        let records = dlt_tools::read_tail(&kafka, &name, Some(dead_letters::RECENT_PER_PARTITION))?;
        // The audit log is a second read: when it fails, the records still show.
        anyhow::Ok((records, audit::recent_for(&kafka, &name)))
    });
    match read.await.map_err(anyhow::Error::from).and_then(|r| r) {
        Ok((records, audit)) => Html(dead_letters::topic_page(&known, &records, &audit)).into_response(),
        Err(error) => unavailable(&format!("reading {topic}"), &error),
    }
}

async fn dead_letter_record(
    State(shared): State<Shared>,
    Path((topic, partition, offset)): Path<(String, i32, i64)>,
) -> Response {
    if known_topic(&shared, &topic).is_none() {
        return not_found(&format!("No dead-letter topic {topic}"));
    }
    let kafka = shared.kafka.clone();
    let name = topic.clone();
    let read = tokio::task::spawn_blocking(move || dlt_tools::read_one(&kafka, &name, partition, offset));
    match read.await.map_err(anyhow::Error::from).and_then(|r| r) {
        Ok(Some(record)) => {
            Html(dead_letters::record_page(&topic, &record, shared.codec.as_deref()).await).into_response()
        }
        Ok(None) => not_found(&format!("{topic} has no record at [{partition}] {offset}")),
        Err(error) => unavailable(&format!("reading {topic}"), &error),
    }
}

/// A group's page: its partitions as the last read saw them, and the rewind form.
async fn group_page(State(shared): State<Shared>, Path(name): Path<String>) -> Response {
    let group = shared.health.read().expect("health lock").groups.iter().find(|g| g.name == name).cloned();
    let Some(group) = group else { return not_found(&format!("No consumer group {name}")) };
    let kafka = shared.kafka.clone();
    let target = name.clone();
    let audit = tokio::task::spawn_blocking(move || audit::recent_for(&kafka, &target))
        .await
        .unwrap_or_else(|e| Err(format!("reading the audit log panicked: {e}")));
    let instances = health::instances(&shared.stores, &name, shared.timeout).await;
    Html(page::group_page(&group, &instances, &audit)).into_response()
}

#[derive(serde::Deserialize)]
struct Search {
    #[serde(default)]
    q: String,
}

async fn order_search(State(shared): State<Shared>, Query(search): Query<Search>) -> Response {
    match story::search(&shared.stores, &search.q, shared.timeout).await {
        Ok(page) => Html(page).into_response(),
        Err(story) => axum::response::Redirect::to(&story).into_response(),
    }
}

async fn order_story(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.trim().parse::<uuid::Uuid>() else {
        let body = page::layout(
            "Not an order id",
            &format!(
                "{}<p class=\"error\">{} is not an order id (a UUID).</p>",
                story::search_form(&id),
                page::esc(&id)
            ),
        );
        return (StatusCode::BAD_REQUEST, Html(body)).into_response();
    };
    Html(story::story(&shared.stores, &shared.kafka, id, shared.trace_url.as_deref(), shared.timeout).await)
        .into_response()
}

async fn ready(State(shared): State<Shared>) -> (StatusCode, &'static str) {
    match shared.health.read().expect("health lock").read_at {
        Some(_) => (StatusCode::OK, "ready"),
        None => (StatusCode::SERVICE_UNAVAILABLE, "the broker has not been read yet"),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not no-referrer: under it a browser sends `Origin: null` with the console's own forms, and
    // the operator's confirmations could not be told from another site's.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

//! The payment provider's HTTP API as the payment service calls it. Every charge carries an
//! idempotency key derived from the order, the same on every retry, restart and redelivery, so
//! asking again can never charge twice.
//!
//! One call, in order: the circuit breaker (open: fail fast, no request); the retry budget (a
//! request under a key whose last request failed is a retry); a place in the adaptive window;
//! a slot from the shared rate limit; the request, bounded by the per-attempt timeout and the
//! call's deadline. An ambiguous answer (no answer, 5xx, reset, a 200 carrying an error) is
//! resolved by reading the provider's ledger under the same key; if the ledger has nothing,
//! the caller retries later with the same key — never with a new one.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use tracing::Instrument;

use crate::resilience::{Breaker, BreakerSettings, Resilience, RetryBudget, SharedRateLimit, Window};

/// What the provider said, classified for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Approved { provider_reference: String },
    Declined { code: String },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ChargeError {
    /// No answer, a 5xx or an error payload, and the ledger could not say: the charge may or
    /// may not exist; retry later with the same key.
    #[error("ambiguous provider outcome: {0}")]
    Ambiguous(String),
    /// 429: retry after the given wait.
    #[error("rate limited for {0:?}")]
    RateLimited(Duration),
    /// No request was made: the breaker is open, the retry budget is spent, or no slot or
    /// window place came before the deadline. Ask again after the wait.
    #[error("held back for {wait:?}: {reason}")]
    HeldBack { reason: &'static str, wait: Duration },
    /// A 4xx that retrying cannot fix (our request is wrong, or the key was reused).
    #[error("provider rejected the request: {0}")]
    Rejected(String),
    /// The provider refuses how we call it (API version, credentials): no order is at fault
    /// and none can succeed until an operator fixes the configuration.
    #[error("provider refuses our configuration: {0}")]
    Misconfigured(String),
}

/// How the client treats the provider.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub base_url: String,
    /// One request's timeout.
    pub attempt_timeout: Duration,
    /// One call's time, all waits and the ledger read included.
    pub deadline: Duration,
    pub breaker: BreakerSettings,
    /// The adaptive window's ceiling (calls in flight per instance).
    pub max_window: usize,
    /// Retries as a share of first requests, and a floor per second.
    pub retry_ratio: f64,
    pub retry_floor_per_sec: f64,
    /// The provider's limit in requests per second, shared by all instances through Postgres.
    pub rate_limit_per_sec: Option<f64>,
    /// The API key sent as `Authorization: Bearer` on every request (never printed).
    pub api_key: Option<orderflow_platform::secret::Secret>,
    /// A PEM file of CA certificates trusted for the provider's HTTPS besides the system's.
    pub ca_cert: Option<std::path::PathBuf>,
}

/// The provider client's defaults, written once: [`ProviderSettings::new`] and the `payment`
/// flags take them from here.
pub mod defaults {
    pub const ATTEMPT_TIMEOUT_MS: u64 = 5_000;
    pub const DEADLINE_MS: u64 = 15_000;
    pub const MAX_WINDOW: usize = 64;
    pub const RETRY_RATIO: f64 = 0.1;
    pub const RETRY_FLOOR_PER_SEC: f64 = 2.0;
    pub const BREAKER_FAILURES: u32 = 5;
}

impl ProviderSettings {
    pub fn new(base_url: &str) -> Self {
        ProviderSettings {
            base_url: base_url.trim_end_matches('/').into(),
            attempt_timeout: Duration::from_millis(defaults::ATTEMPT_TIMEOUT_MS),
            deadline: Duration::from_millis(defaults::DEADLINE_MS),
            breaker: BreakerSettings::default(),
            max_window: defaults::MAX_WINDOW,
            retry_ratio: defaults::RETRY_RATIO,
            retry_floor_per_sec: defaults::RETRY_FLOOR_PER_SEC,
            rate_limit_per_sec: None,
            api_key: None,
            ca_cert: None,
        }
    }
}

/// The client's metrics (registered once per registry).
#[derive(Clone)]
pub struct ProviderMetrics {
    /// operation: charge | refund | lookup; outcome: approved | declined | refunded | found |
    /// not_found | ambiguous | rate_limited | rejected | misconfigured
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    /// 0 closed, 1 half-open, 2 open.
    pub breaker_state: IntGauge,
    pub breaker_transitions: IntCounterVec,
    pub window: IntGauge,
    /// The configured limit (0: none), to plot requests against.
    pub rate_limit: IntGauge,
    /// decision: allowed | denied
    pub retries: IntCounterVec,
    /// reason: breaker_open | retry_budget | rate_limit | window
    pub held_back: IntCounterVec,
}

impl ProviderMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = ProviderMetrics {
            requests: IntCounterVec::new(
                Opts::new("orderflow_provider_requests_total", "Requests sent to the payment provider, by outcome"),
                &["operation", "outcome"],
            )?,
            request_seconds: HistogramVec::new(
                HistogramOpts::new("orderflow_provider_request_seconds", "Payment provider request latency")
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["operation"],
            )?,
            breaker_state: IntGauge::new(
                "orderflow_provider_breaker_state",
                "Payment provider circuit breaker: 0 closed, 1 half-open, 2 open",
            )?,
            breaker_transitions: IntCounterVec::new(
                Opts::new(
                    "orderflow_provider_breaker_transitions_total",
                    "Circuit breaker state changes, by new state",
                ),
                &["to"],
            )?,
            window: IntGauge::new(
                "orderflow_provider_window",
                "Provider calls this instance may have in flight (adaptive, AIMD)",
            )?,
            rate_limit: IntGauge::new(
                "orderflow_provider_rate_limit_per_second",
                "The provider's request limit shared by all instances (0: none configured)",
            )?,
            retries: IntCounterVec::new(
                Opts::new("orderflow_provider_retries_total", "Retry requests, allowed or denied by the retry budget"),
                &["decision"],
            )?,
            held_back: IntCounterVec::new(
                Opts::new("orderflow_provider_held_back_total", "Calls that sent no request, by reason"),
                &["reason"],
            )?,
        };
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.request_seconds.clone()))?;
        registry.register(Box::new(metrics.breaker_state.clone()))?;
        registry.register(Box::new(metrics.breaker_transitions.clone()))?;
        registry.register(Box::new(metrics.window.clone()))?;
        registry.register(Box::new(metrics.rate_limit.clone()))?;
        registry.register(Box::new(metrics.retries.clone()))?;
        registry.register(Box::new(metrics.held_back.clone()))?;
        // At 0 from the start, so a rate over them reads "nothing held back", not "no data".
        for reason in ["breaker_open", "retry_budget", "window", "rate_limit"] {
            metrics.held_back.with_label_values(&[reason]);
        }
        Ok(metrics)
    }
}

#[derive(Clone)]
pub struct PaymentProviderClient {
    settings: Arc<ProviderSettings>,
    http: reqwest::Client,
    metrics: ProviderMetrics,
    guard: Arc<Resilience>,
}

#[derive(Deserialize)]
struct Answer {
    id: String,
    status: String,
    decline_code: Option<String>,
}

#[derive(Clone, Copy)]
enum Operation {
    Charge,
    Refund,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Charge => "charge",
            Operation::Refund => "refund",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Operation::Charge => "/v1/charges",
            Operation::Refund => "/v1/refunds",
        }
    }
}

impl PaymentProviderClient {
    /// A client; with a rate limit, `limits` is a pool on the database holding the shared bucket
    /// (the bucket opens a connection of its own there, see [`SharedRateLimit`]).
    pub async fn new(settings: ProviderSettings, registry: &Registry, limits: Option<PgPool>) -> anyhow::Result<Self> {
        let metrics = ProviderMetrics::register(registry)?;
        let limit = match (settings.rate_limit_per_sec, limits) {
            (Some(per_sec), Some(pool)) => Some(SharedRateLimit::new(pool, "payment-provider", per_sec).await?),
            (Some(_), None) => anyhow::bail!("a provider rate limit needs the database holding the shared bucket"),
            (None, _) => None,
        };
        metrics.rate_limit.set(settings.rate_limit_per_sec.unwrap_or(0.0) as i64);
        let guard = Arc::new(Resilience {
            breaker: Breaker::new(settings.breaker, metrics.breaker_state.clone(), metrics.breaker_transitions.clone()),
            window: Window::new(settings.max_window, metrics.window.clone()),
            budget: RetryBudget::new(settings.retry_ratio, settings.retry_floor_per_sec, metrics.retries.clone()),
            limit,
        });
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = &settings.api_key {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                .map_err(|_| anyhow::anyhow!("the provider API key is not a valid header value"))?;
            // Kept out of reqwest's debug output.
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = orderflow_http::client_trusting(settings.ca_cert.as_deref())?
            .no_proxy()
            .default_headers(headers)
            .build()?;
        Ok(PaymentProviderClient { settings: Arc::new(settings), http, metrics, guard })
    }

    pub fn resilience(&self) -> &Resilience {
        &self.guard
    }

    /// Writes this client's breaker and window to `provider_health` in `pool` (the payments
    /// database) as `instance`, every few seconds while the client lives.
    pub fn report_to(&self, pool: PgPool, instance: String) {
        crate::resilience::report::spawn(Arc::downgrade(&self.guard), pool, instance);
    }

    pub async fn charge(
        &self,
        idempotency_key: &str,
        amount_minor: i64,
        currency: &str,
        customer: &str,
        reference: &str,
    ) -> Result<ChargeOutcome, ChargeError> {
        let body =
            json!({ "amount_minor": amount_minor, "currency": currency, "customer": customer, "reference": reference });
        let answer = self.call(Operation::Charge, idempotency_key, &body).await?;
        match answer.status.as_str() {
            "approved" => Ok(ChargeOutcome::Approved { provider_reference: answer.id }),
            "declined" => Ok(ChargeOutcome::Declined { code: answer.decline_code.unwrap_or_else(|| "unknown".into()) }),
            other => Err(ChargeError::Ambiguous(format!("unknown charge status {other:?}"))),
        }
    }

    /// Refunds `amount_minor` of the charge `charge_id`; returns the refund's reference. The
    /// key is the refund's own (never the charge's), stable across retries.
    pub async fn refund(
        &self,
        idempotency_key: &str,
        charge_id: &str,
        amount_minor: i64,
        reference: &str,
    ) -> Result<String, ChargeError> {
        let body = json!({ "charge_id": charge_id, "amount_minor": amount_minor, "reference": reference });
        let answer = self.call(Operation::Refund, idempotency_key, &body).await?;
        match answer.status.as_str() {
            "refunded" => Ok(answer.id),
            other => Err(ChargeError::Ambiguous(format!("unknown refund status {other:?}"))),
        }
    }

    fn held_back(&self, reason: &'static str, wait: Duration) -> ChargeError {
        self.metrics.held_back.with_label_values(&[reason]).inc();
        ChargeError::HeldBack { reason, wait }
    }

    async fn call(&self, op: Operation, key: &str, body: &serde_json::Value) -> Result<Answer, ChargeError> {
        let deadline = Instant::now() + self.settings.deadline;
        let guard = &self.guard;
        let permit = guard.breaker.allow().map_err(|wait| self.held_back("breaker_open", wait))?;
        if guard.budget.is_retry(key) {
            if !guard.budget.try_retry() {
                return Err(self.held_back("retry_budget", guard.budget.refill_wait()));
            }
        } else {
            guard.budget.deposit();
        }
        let Ok(_place) = tokio::time::timeout_at(deadline.into(), guard.window.acquire()).await else {
            return Err(self.held_back("window", Duration::from_millis(100)));
        };
        self.token(deadline).await?;
        // Waiting for a place and a token can take a while; in key order many calls wait at
        // once. If the circuit opened meanwhile, they hold back instead of draining into the
        // outage (dropping an unsent permit settles nothing).
        if let Some(wait) = permit.opened_since() {
            return Err(self.held_back("breaker_open", wait));
        }
        let result = self.send(op, key, body, deadline).await;
        let congestion = Duration::from_millis(200);
        match result {
            Ok(answer) => {
                permit.success();
                guard.window.on_success();
                guard.budget.settled(key);
                Ok(answer)
            }
            Err(ChargeError::Ambiguous(reason)) => {
                permit.failure();
                if guard.breaker.state().gauge() == 2 {
                    guard.window.on_outage();
                } else {
                    guard.window.on_congestion(congestion);
                }
                guard.budget.failed(key);
                // Did the request take effect? The ledger under the same key says.
                match self.lookup(key, deadline).await {
                    Ok(Some(answer)) => {
                        guard.budget.settled(key);
                        Ok(answer)
                    }
                    Ok(None) => Err(ChargeError::Ambiguous(format!("{reason}; not in the provider's ledger yet"))),
                    Err(lookup) => Err(ChargeError::Ambiguous(format!("{reason}; ledger unreadable: {lookup}"))),
                }
            }
            Err(ChargeError::RateLimited(wait)) => {
                // The provider is up and asks us to slow down.
                permit.success();
                guard.window.on_congestion(congestion);
                Err(ChargeError::RateLimited(wait))
            }
            Err(other) => {
                permit.success();
                guard.budget.settled(key);
                Err(other)
            }
        }
    }

    async fn token(&self, deadline: Instant) -> Result<(), ChargeError> {
        match &self.guard.limit {
            Some(limit) => limit.acquire(deadline).await.map_err(|wait| self.held_back("rate_limit", wait)),
            None => Ok(()),
        }
    }

    fn attempt_timeout(&self, deadline: Instant) -> Duration {
        self.settings
            .attempt_timeout
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1))
    }

    fn observe(&self, operation: &str, outcome: &str, started: Instant) {
        self.metrics.requests.with_label_values(&[operation, outcome]).inc();
        self.metrics.request_seconds.with_label_values(&[operation]).observe(started.elapsed().as_secs_f64());
    }

    /// The ledger entry stored under `key`, if the provider has one. Errors are ambiguous.
    async fn lookup(&self, key: &str, deadline: Instant) -> Result<Option<Answer>, ChargeError> {
        self.token(deadline).await?;
        let started = Instant::now();
        let span = tracing::info_span!(
            "provider request",
            otel.name = "provider lookup",
            otel.kind = "client",
            http.request.method = "GET",
            operation = "lookup",
        );
        let mut request = self
            .http
            .get(format!("{}/v1/charges/{key}", self.settings.base_url))
            .timeout(self.attempt_timeout(deadline));
        if let Some(traceparent) = orderflow_platform::trace::traceparent_of(&span) {
            request = request.header("traceparent", traceparent);
        }
        let response = request.send().instrument(span).await;
        let (outcome, result) = match response {
            Ok(r) if r.status() == 404 => ("not_found", Ok(None)),
            Ok(r) if r.status().is_success() => match r.json::<Answer>().await {
                Ok(answer) => ("found", Ok(Some(answer))),
                Err(e) => ("ambiguous", Err(ChargeError::Ambiguous(e.to_string()))),
            },
            Ok(r) => ("ambiguous", Err(ChargeError::Ambiguous(format!("ledger read answered {}", r.status())))),
            Err(e) => ("ambiguous", Err(ChargeError::Ambiguous(e.to_string()))),
        };
        self.observe("lookup", outcome, started);
        result
    }

    async fn send(
        &self,
        op: Operation,
        key: &str,
        body: &serde_json::Value,
        deadline: Instant,
    ) -> Result<Answer, ChargeError> {
        let started = Instant::now();
        // One span per request the provider sees, a child of the record's span; the provider
        // gets its traceparent.
        let span = tracing::info_span!(
            "provider request",
            otel.name = format!("provider {}", op.name()),
            otel.kind = "client",
            http.request.method = "POST",
            operation = op.name(),
            outcome = tracing::field::Empty,
        );
        let traceparent = orderflow_platform::trace::traceparent_of(&span);
        let result = self.post(op, key, body, deadline, traceparent).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(answer) => match answer.status.as_str() {
                "approved" | "declined" | "refunded" => answer.status.as_str(),
                _ => "ambiguous",
            },
            Err(ChargeError::Ambiguous(_)) => "ambiguous",
            Err(ChargeError::RateLimited(_)) => "rate_limited",
            Err(ChargeError::Rejected(_)) => "rejected",
            Err(ChargeError::Misconfigured(_)) => "misconfigured",
            Err(ChargeError::HeldBack { .. }) => "held_back",
        };
        span.record("outcome", outcome);
        self.observe(op.name(), outcome, started);
        result
    }

    async fn post(
        &self,
        op: Operation,
        idempotency_key: &str,
        body: &serde_json::Value,
        deadline: Instant,
        traceparent: Option<String>,
    ) -> Result<Answer, ChargeError> {
        let mut request = self
            .http
            .post(format!("{}{}", self.settings.base_url, op.path()))
            .header("Idempotency-Key", idempotency_key)
            .timeout(self.attempt_timeout(deadline))
            .json(body);
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request.send().await.map_err(|e| match orderflow_http::tls_failure(&e) {
            // The handshake failed: nothing was sent, and only a configuration change helps.
            Some(tls) => ChargeError::Misconfigured(format!("TLS with the provider failed: {tls}")),
            None => ChargeError::Ambiguous(orderflow_http::describe(&e)),
        })?;
        let status = response.status();
        if status.as_u16() == 429 {
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
            return Err(ChargeError::RateLimited(Duration::from_secs(wait)));
        }
        let text = response.text().await.map_err(|e| ChargeError::Ambiguous(e.to_string()))?;
        if status.is_server_error() {
            return Err(ChargeError::Ambiguous(format!("{status}: {text}")));
        }
        let misconfigured = matches!(status.as_u16(), 401 | 403) || text.contains("\"api_version_mismatch\"");
        if misconfigured {
            return Err(ChargeError::Misconfigured(format!("{status}: {text}")));
        }
        if !status.is_success() {
            return Err(ChargeError::Rejected(format!("{status}: {text}")));
        }
        // A 200 whose body is not an answer (an error payload) says nothing about the charge.
        serde_json::from_str(&text).map_err(|e| ChargeError::Ambiguous(format!("unreadable 200 answer {text:?}: {e}")))
    }
}

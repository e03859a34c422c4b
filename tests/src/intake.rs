//! order-api per test: its own orders database, registry, port and token issuer; and relays to
//! run beside it.

use std::{path::PathBuf, sync::Arc, time::Duration};

use orderflow_order_api::{
    ApiSettings,
    auth::{AuthSettings, JwksSource},
};
use orderflow_outbox::{OutboxRelay, RelaySettings};
use orderflow_tools::issuer::{Grant, SigningKey, jwks};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::{Running, TestDatabase, broker::TestBroker, registry::TestRegistry};

/// The `iss` of the harness's tokens.
pub const ISSUER: &str = "orderflow-test";

/// A test's token issuer: an Ed25519 key whose JWKS order-api reads from `jwks_path`.
pub struct TestIssuer {
    pub key: SigningKey,
    pub jwks_path: PathBuf,
}

impl TestIssuer {
    pub fn new() -> TestIssuer {
        let key = SigningKey::generate(jsonwebtoken::Algorithm::EdDSA).unwrap();
        let jwks_path = std::env::temp_dir().join(format!("orderflow-jwks-{}.json", uuid::Uuid::new_v4().simple()));
        let issuer = TestIssuer { key, jwks_path };
        issuer.publish(&[&issuer.key]);
        issuer
    }

    /// Replaces the published key set (a rotation).
    pub fn publish(&self, keys: &[&SigningKey]) {
        let temp = self.jwks_path.with_extension("tmp");
        std::fs::write(&temp, serde_json::to_vec(&jwks(keys)).unwrap()).unwrap();
        std::fs::rename(&temp, &self.jwks_path).unwrap();
    }

    /// A grant from this issuer to order-api for `subject` with `scope`, valid for a day.
    pub fn grant(subject: &str, scope: &str) -> Grant {
        Grant {
            issuer: ISSUER.into(),
            audience: orderflow_order_api::auth::defaults::AUDIENCE.into(),
            subject: subject.into(),
            scope: scope.into(),
            customer_id: None,
            ttl: Duration::from_secs(86_400),
        }
    }

    pub fn token(&self, grant: &Grant) -> String {
        self.key.sign(&grant.claims())
    }

    /// order-api's settings for this issuer's tokens.
    pub fn settings(&self) -> AuthSettings {
        self.settings_for(orderflow_order_api::auth::defaults::AUDIENCE)
    }

    /// Settings accepting this issuer's tokens for `audience`.
    pub fn settings_for(&self, audience: &str) -> AuthSettings {
        AuthSettings::new(JwksSource::File(self.jwks_path.clone()), ISSUER, audience)
    }
}

impl Default for TestIssuer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.jwks_path);
    }
}

/// A client sending `token` on every request.
pub fn client_with(token: &str) -> reqwest::Client {
    orderflow_tools::issuer::bearer_client(token, orderflow_http::client()).unwrap()
}

pub struct TestApi {
    pub url: String,
    pub pool: PgPool,
    pub db: TestDatabase,
    pub registry: TestRegistry,
    /// A checkout backend's client: subject `test-checkout`, scopes `orders:write orders:read`.
    pub http: reqwest::Client,
    pub issuer: TestIssuer,
    _running: Running,
}

impl TestApi {
    pub async fn spawn() -> TestApi {
        Self::spawn_with(ApiSettings::default()).await
    }

    pub async fn spawn_with(settings: ApiSettings) -> TestApi {
        Self::spawn_on(TestDatabase::create().await, settings).await
    }

    /// order-api on a database the test made (e.g. in a tablespace of its own).
    pub async fn spawn_on(db: TestDatabase, settings: ApiSettings) -> TestApi {
        Self::spawn_authenticating(db, settings, |_| {}).await
    }

    /// As [`Self::spawn_on`], with the test's changes to how tokens are checked.
    pub async fn spawn_authenticating(
        db: TestDatabase,
        settings: ApiSettings,
        auth: impl FnOnce(&mut AuthSettings),
    ) -> TestApi {
        let registry = TestRegistry::spawn_with_catalog().await;
        let pool = db.pool().await;
        orderflow_order_api::migrate(&pool).await.expect("migrate orders db");
        let codec = Arc::new(orderflow_schemas::EventCodec::new(registry.anonymous(), Duration::from_secs(5)).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let issuer = TestIssuer::new();
        let mut auth_settings = issuer.settings();
        auth(&mut auth_settings);
        let api_pool = pool.clone();
        let running = Running::spawn(move |stop| {
            orderflow_order_api::run_api(listener, api_pool, codec, settings, auth_settings, stop)
        });
        let http = client_with(&issuer.token(&TestIssuer::grant("test-checkout", "orders:write orders:read")));
        TestApi { url, pool, db, registry, http, issuer, _running: running }
    }

    pub async fn post_order(&self, key: Option<&str>, body: &Value) -> reqwest::Response {
        let mut request = self.http.post(format!("{}/orders", self.url)).json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("order-api answers")
    }

    /// Places a valid order and returns its id.
    pub async fn place(&self, key: &str) -> uuid::Uuid {
        let response = self.post_order(Some(key), &sample_order("c-1")).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        body["order_id"].as_str().unwrap().parse().unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.url)).send().await.unwrap()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }
}

pub fn sample_order(customer: &str) -> Value {
    json!({
        "customer_id": customer,
        "customer_email": format!("{customer}@example.com"),
        "currency": "EUR",
        "items": [{"sku": "SKU-1", "quantity": 2, "unit_price_minor": 1250}, {"sku": "SKU-2", "quantity": 1, "unit_price_minor": 499}]
    })
}

/// An in-process relay over `pool` into `broker`, stopped on drop.
/// A relay in process, with its metrics (the outbox's backlog sampled every 100 ms).
pub struct TestRelay {
    running: Running,
    pub registry: prometheus::Registry,
    /// The outbox it relays (its metrics' `outbox` label).
    pub outbox: String,
}

impl TestRelay {
    pub fn spawn(pool: &PgPool, broker: &TestBroker, settings: RelaySettings) -> TestRelay {
        Self::spawn_named(pool, broker, settings, "outbox")
    }

    /// As [`Self::spawn`], labelling its metrics `outbox="<name>"`.
    pub fn spawn_named(pool: &PgPool, broker: &TestBroker, settings: RelaySettings, name: &str) -> TestRelay {
        let producer = broker.settings().producer("test-relay", Duration::from_secs(5));
        let settings = RelaySettings { namespace: broker.namespace.clone(), ..settings };
        let registry = prometheus::Registry::new();
        let metrics = orderflow_outbox::RelayMetrics::register(&registry, name).unwrap();
        let relay = OutboxRelay::new(pool.clone(), producer, settings).with_metrics(metrics.clone());
        let pool = pool.clone();
        let running = Running::spawn(move |stop| async move {
            tokio::select! {
                result = relay.run(stop) => result,
                () = metrics.sample_backlog(pool, Duration::from_millis(100)) => Ok(()),
            }
        });
        TestRelay { running, registry, outbox: name.to_string() }
    }

    pub async fn stop(self) {
        self.running.stop().await
    }
}

/// Fast-polling relay settings for tests.
pub fn quick_relay() -> RelaySettings {
    RelaySettings {
        batch_size: 200,
        poll_interval: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        ..Default::default()
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

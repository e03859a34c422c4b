//! The whole walking skeleton in one test: broker, registry, order-api, both relays, the payment
//! simulator, payment and order-service — each on its own database, port and group.

use std::{sync::Arc, time::Duration};

use orderflow_consumer_runtime::ConsumerSettings;
use orderflow_payment::{PaymentHandler, PaymentProviderClient, ProviderSettings};
use orderflow_payment_simulator::LedgerEntry;
use serde_json::Value;
use sqlx::PgPool;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::{
    Running, TestDatabase,
    broker::TestBroker,
    intake::{TestApi, TestRelay, eventually, quick_relay},
};

pub struct TestSimulator {
    pub url: String,
    /// The admin port: faults, ledger and stats, up even while the API port is `down`.
    pub admin_url: String,
    pub pool: PgPool,
    _db: TestDatabase,
    _running: Running,
}

impl TestSimulator {
    pub async fn spawn() -> TestSimulator {
        let db = TestDatabase::create().await;
        let pool = db.pool().await;
        orderflow_payment_simulator::migrate(&pool).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let admin_url = format!("http://{}", admin.local_addr().unwrap());
        let p = pool.clone();
        let running = Running::spawn(move |stop| orderflow_payment_simulator::run(listener, Some(admin), p, stop));
        TestSimulator { url, admin_url, pool, _db: db, _running: running }
    }

    pub async fn ledger(&self) -> Vec<LedgerEntry> {
        reqwest::get(format!("{}/ledger", self.admin_url)).await.unwrap().json().await.unwrap()
    }

    /// What the provider saw: requests, 429s, requests per second.
    pub async fn stats(&self) -> orderflow_payment_simulator::faults::Stats {
        reqwest::get(format!("{}/admin/stats", self.admin_url)).await.unwrap().json().await.unwrap()
    }

    /// Switches the provider's faults, e.g. `{"mode": "unavailable"}`; the answer is returned.
    pub async fn faults(&self, faults: Value) -> reqwest::Response {
        reqwest::Client::new().put(format!("{}/admin/faults", self.admin_url)).json(&faults).send().await.unwrap()
    }
}

/// The email/SMS provider stand-in on its own database.
pub struct TestNotifier {
    pub url: String,
    pub pool: PgPool,
    _db: TestDatabase,
    _running: Running,
}

impl TestNotifier {
    pub async fn spawn() -> TestNotifier {
        let db = TestDatabase::create().await;
        let pool = db.pool().await;
        orderflow_notification_simulator::migrate(&pool).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let p = pool.clone();
        let running = Running::spawn(move |stop| orderflow_notification_simulator::run(listener, p, stop));
        TestNotifier { url, pool, _db: db, _running: running }
    }

    pub async fn ledger(&self) -> Vec<orderflow_notification_simulator::Delivered> {
        reqwest::get(format!("{}/ledger", self.url)).await.unwrap().json().await.unwrap()
    }

    /// Switches the provider's faults, e.g. `{"mode": "unavailable"}`.
    pub async fn faults(&self, faults: Value) {
        let response =
            reqwest::Client::new().put(format!("{}/admin/faults", self.url)).json(&faults).send().await.unwrap();
        assert!(response.status().is_success(), "faults refused: {}", response.text().await.unwrap());
    }
}

/// An optional consumer's database and its provider, when the test started it.
pub struct Extra {
    pub db: TestDatabase,
    pub pool: PgPool,
}

pub struct TestStack {
    pub broker: TestBroker,
    pub api: TestApi,
    pub payments_db: TestDatabase,
    pub payments: PgPool,
    pub inventory_db: TestDatabase,
    pub inventory: PgPool,
    pub simulator: TestSimulator,
    pub parts: Vec<Running>,
    pub relays: Vec<TestRelay>,
    /// Each consumer's metrics registry, by group.
    pub metrics: Vec<(String, prometheus::Registry)>,
    pub notifications: Option<Extra>,
    pub notifier: Option<TestNotifier>,
    pub analytics: Option<Extra>,
    /// The analytics HTTP API, when started.
    pub analytics_url: Option<String>,
}

impl TestStack {
    /// Every service, in process.
    pub async fn spawn() -> TestStack {
        let stack = Self::spawn_without_inventory().await;
        let mut stack = stack;
        stack.start_inventory();
        stack
    }

    /// Every service but the inventory consumer (a test runs that as a process).
    pub async fn spawn_without_inventory() -> TestStack {
        let mut stack = Self::spawn_without_consumers().await;
        let provider = stack.provider_settings();
        stack.start_payment(provider).await;
        stack
    }

    /// Every service but payment (started by the test, as many instances as it wants).
    pub async fn spawn_without_payment() -> TestStack {
        let mut stack = Self::spawn_without_consumers().await;
        stack.start_inventory();
        stack
    }

    /// The broker, databases, API, relays, simulator and order-service.
    async fn spawn_without_consumers() -> TestStack {
        Self::spawn_without_consumers_on(TestBroker::spawn()).await
    }

    async fn spawn_without_consumers_on(broker: TestBroker) -> TestStack {
        broker.create_topic("orders", 12).await;
        broker.create_topic("payments", 12).await;
        let api = TestApi::spawn().await;
        orderflow_order_service::migrate(&api.pool).await.unwrap();
        let payments_db = TestDatabase::create().await;
        let payments = payments_db.pool().await;
        orderflow_payment::migrate(&payments).await.unwrap();
        let inventory_db = TestDatabase::create().await;
        let inventory = inventory_db.pool().await;
        orderflow_inventory::migrate(&inventory).await.unwrap();
        let simulator = TestSimulator::spawn().await;
        let mut stack = TestStack {
            broker,
            api,
            payments_db,
            payments,
            inventory_db,
            inventory,
            simulator,
            parts: Vec::new(),
            relays: Vec::new(),
            metrics: Vec::new(),
            notifications: None,
            notifier: None,
            analytics: None,
            analytics_url: None,
        };
        stack.relays.push(TestRelay::spawn_named(&stack.api.pool, &stack.broker, quick_relay(), "orders"));
        stack.relays.push(TestRelay::spawn_named(&stack.payments, &stack.broker, quick_relay(), "payments"));
        stack.relays.push(TestRelay::spawn_named(&stack.inventory, &stack.broker, quick_relay(), "inventory"));
        stack.start_order_service();
        // Plenty of what `sample_order` buys, so only tests that want a shortage get one.
        stack.stock(&[("SKU-1", 1_000_000), ("SKU-2", 1_000_000)]).await;
        stack
    }

    pub fn start_inventory(&mut self) {
        let codec = self.codec();
        let handler = orderflow_inventory::InventoryHandler { codec: codec.clone() };
        let settings = self.consumer_settings(orderflow_inventory::GROUP, &["orders"]);
        self.metrics.push((orderflow_inventory::GROUP.into(), settings.registry.clone()));
        let pool = self.inventory.clone();
        self.parts
            .push(Running::spawn(move |stop| orderflow_consumer_runtime::run(settings, pool, codec, handler, stop)));
    }

    /// Starts the notifications consumer and its provider simulator; `timeout` is the client's
    /// per-call timeout.
    pub async fn start_notifications(&mut self, timeout: Duration) {
        let notifier = TestNotifier::spawn().await;
        let db = TestDatabase::create().await;
        let pool = db.pool().await;
        orderflow_notifications::migrate(&pool).await.unwrap();
        let handler = orderflow_notifications::NotificationHandler {
            provider: orderflow_notifications::NotificationClient::new(&notifier.url, timeout),
        };
        let settings = self.consumer_settings(orderflow_notifications::GROUP, &["orders"]);
        self.metrics.push((orderflow_notifications::GROUP.into(), settings.registry.clone()));
        let (codec, p) = (self.codec(), pool.clone());
        self.parts.push(Running::spawn(move |stop| orderflow_consumer_runtime::run(settings, p, codec, handler, stop)));
        self.notifications = Some(Extra { db, pool });
        self.notifier = Some(notifier);
    }

    /// Starts the analytics consumer and its HTTP API.
    pub async fn start_analytics(&mut self) {
        let db = TestDatabase::create().await;
        let pool = db.pool().await;
        orderflow_analytics::migrate(&pool).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.analytics_url = Some(format!("http://{}", listener.local_addr().unwrap()));
        let routes = orderflow_analytics::http::router(pool.clone());
        self.parts.push(Running::spawn(move |stop| async move {
            axum::serve(listener, routes).with_graceful_shutdown(stop).await?;
            Ok(())
        }));
        let settings = self.consumer_settings(orderflow_analytics::GROUP, &["orders"]);
        self.metrics.push((orderflow_analytics::GROUP.into(), settings.registry.clone()));
        let (codec, p) = (self.codec(), pool.clone());
        self.parts.push(Running::spawn(move |stop| {
            orderflow_consumer_runtime::run(settings, p, codec, orderflow_analytics::AnalyticsHandler, stop)
        }));
        self.analytics = Some(Extra { db, pool });
    }

    /// Sets stock levels, as `inventory stock set` does.
    pub async fn stock(&self, levels: &[(&str, i32)]) {
        let levels: Vec<(String, i32)> = levels.iter().map(|(s, n)| (s.to_string(), *n)).collect();
        orderflow_inventory::set_stock(&self.inventory, &levels).await.unwrap();
    }

    pub async fn available(&self, sku: &str) -> i32 {
        sqlx::query_scalar("SELECT available FROM stock WHERE sku = $1")
            .bind(sku)
            .fetch_one(&self.inventory)
            .await
            .unwrap()
    }

    fn codec(&self) -> Arc<orderflow_schemas::EventCodec> {
        Arc::new(orderflow_schemas::EventCodec::new(&self.api.registry.url, Duration::from_secs(5)).unwrap())
    }

    fn consumer_settings(&self, group: &str, topics: &[&str]) -> ConsumerSettings {
        let mut settings = ConsumerSettings::new(group, topics, self.broker.settings());
        settings.backoff_base = Duration::from_millis(20);
        settings.backoff_cap = Duration::from_millis(500);
        settings.lag_interval = Duration::from_millis(200);
        settings
    }

    /// The payment client as the stack's tests run it: a 2 s attempt timeout, a breaker that
    /// probes after 200 ms (at most 2 s), no rate limit.
    pub fn provider_settings(&self) -> ProviderSettings {
        let mut provider = ProviderSettings::new(&self.simulator.url);
        provider.attempt_timeout = Duration::from_secs(2);
        provider.deadline = Duration::from_secs(6);
        provider.breaker.open_for = Duration::from_millis(200);
        provider.breaker.max_open_for = Duration::from_secs(2);
        provider
    }

    /// Starts a payment instance; its metrics are under `payment` (the first), then
    /// `payment#2`, `payment#3`…
    pub async fn start_payment(&mut self, provider: ProviderSettings) -> String {
        let pool = self.payments.clone();
        self.start_payment_on(provider, pool).await
    }

    /// Starts a payment instance on a pool of the test's choosing (its size, its timeouts).
    pub async fn start_payment_on(&mut self, provider: ProviderSettings, pool: PgPool) -> String {
        let codec = self.codec();
        let settings = self.consumer_settings(orderflow_payment::GROUP, &["orders"]);
        let limits = match provider.rate_limit_per_sec {
            Some(_) => Some(self.payments_db.pool().await),
            None => None,
        };
        let client = PaymentProviderClient::new(provider, &settings.registry, limits).await.unwrap();
        let handler = PaymentHandler { provider: client, codec: codec.clone() };
        let instances = self.metrics.iter().filter(|(g, _)| g.starts_with(orderflow_payment::GROUP)).count();
        let name = match instances {
            0 => orderflow_payment::GROUP.to_string(),
            n => format!("{}#{}", orderflow_payment::GROUP, n + 1),
        };
        self.metrics.push((name.clone(), settings.registry.clone()));
        self.parts
            .push(Running::spawn(move |stop| orderflow_consumer_runtime::run(settings, pool, codec, handler, stop)));
        name
    }

    pub fn start_order_service(&mut self) {
        let codec = self.codec();
        let settings = self.consumer_settings(orderflow_order_service::GROUP, &orderflow_order_service::TOPICS);
        let handler = orderflow_order_service::OrderStatusHandler::new(codec.clone(), &settings.registry).unwrap();
        self.metrics.push((orderflow_order_service::GROUP.into(), settings.registry.clone()));
        let pool = self.api.pool.clone();
        self.parts
            .push(Running::spawn(move |stop| orderflow_consumer_runtime::run(settings, pool, codec, handler, stop)));
    }

    /// A consumer's `/metrics` text.
    pub fn metrics_text(&self, group: &str) -> String {
        let (_, registry) = self.metrics.iter().find(|(g, _)| g == group).expect("no such consumer");
        orderflow_platform::metrics::render(registry)
    }

    pub async fn status(&self, order_id: Uuid) -> String {
        let order: Value = self.api.get(&format!("/orders/{order_id}")).await.json().await.unwrap();
        order["status"].as_str().unwrap_or_default().to_string()
    }

    pub async fn wait_for_status(&self, order_id: Uuid, status: &str, timeout: Duration) {
        eventually(timeout, &format!("order {order_id} to be {status}"), || async {
            self.status(order_id).await == status
        })
        .await;
    }
}

//! The whole walking skeleton in one test: broker, registry, order-api, both relays, the payment
//! simulator, payment and order-service — each on its own database, port and group.

use std::{sync::Arc, time::Duration};

use orderflow_consumer_runtime::ConsumerSettings;
use orderflow_payment::{PaymentHandler, PaymentProviderClient, ProviderSettings};
use orderflow_payment_simulator::LedgerEntry;
use orderflow_tools::connect::{ConnectWorker, Outbox};
use serde_json::Value;
use sqlx::PgPool;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::{
    Running, TestDatabase,
    broker::TestBroker,
    intake::{TestApi, TestRelay, eventually, quick_relay},
    proxy::FaultProxy,
};

pub struct TestSimulator {
    pub url: String,
    /// The admin port: faults, ledger and stats, up even while the API port is `down`.
    pub admin_url: String,
    /// The API key its API wants (every test simulator has one, as a real provider does).
    pub api_key: String,
    pub pool: PgPool,
    _db: TestDatabase,
    _running: Running,
}

impl TestSimulator {
    pub async fn spawn() -> TestSimulator {
        TestSimulator::spawn_with(None).await
    }

    /// A simulator whose API speaks HTTPS with `tls` (the admin port stays plain HTTP).
    pub async fn spawn_with(tls: Option<Arc<orderflow_http::ServerConfig>>) -> TestSimulator {
        let api_key = format!("sk_test_{}", uuid::Uuid::new_v4().simple());
        let db = TestDatabase::create().await;
        let pool = db.pool().await;
        orderflow_payment_simulator::migrate(&pool).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let admin_url = format!("http://{}", admin.local_addr().unwrap());
        let p = pool.clone();
        let options = orderflow_payment_simulator::ApiOptions { api_key: Some(api_key.clone()), tls };
        let running =
            Running::spawn(move |stop| orderflow_payment_simulator::run(listener, Some(admin), p, options, stop));
        TestSimulator { url, admin_url, api_key, pool, _db: db, _running: running }
    }

    pub async fn ledger(&self) -> Vec<LedgerEntry> {
        crate::http().get(format!("{}/ledger", self.admin_url)).send().await.unwrap().json().await.unwrap()
    }

    /// What the provider saw: requests, 429s, requests per second.
    pub async fn stats(&self) -> orderflow_payment_simulator::faults::Stats {
        crate::http().get(format!("{}/admin/stats", self.admin_url)).send().await.unwrap().json().await.unwrap()
    }

    /// Switches the provider's faults, e.g. `{"mode": "unavailable"}`; the answer is returned.
    pub async fn faults(&self, faults: Value) -> reqwest::Response {
        crate::http().put(format!("{}/admin/faults", self.admin_url)).json(&faults).send().await.unwrap()
    }
}

/// The email/SMS provider stand-in on its own database.
pub struct TestNotifier {
    pub url: String,
    /// The admin port: ledger, faults, throttled requests.
    pub admin_url: String,
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
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let admin_url = format!("http://{}", admin.local_addr().unwrap());
        let p = pool.clone();
        let running =
            Running::spawn(move |stop| orderflow_notification_simulator::run(listener, Some(admin), p, None, stop));
        TestNotifier { url, admin_url, pool, _db: db, _running: running }
    }

    pub async fn ledger(&self) -> Vec<orderflow_notification_simulator::Delivered> {
        crate::http().get(format!("{}/ledger", self.admin_url)).send().await.unwrap().json().await.unwrap()
    }

    /// The requests refused with 429 so far.
    pub async fn throttled(&self) -> Vec<orderflow_notification_simulator::Throttled> {
        crate::http().get(format!("{}/admin/throttled", self.admin_url)).send().await.unwrap().json().await.unwrap()
    }

    /// Switches the provider's faults, e.g. `{"mode": "unavailable"}`.
    pub async fn faults(&self, faults: Value) {
        let response =
            crate::http().put(format!("{}/admin/faults", self.admin_url)).json(&faults).send().await.unwrap();
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
    /// The dedupe horizon and prune interval of consumers started from now on (the runtime's
    /// defaults when unset).
    pub retention: Option<(Duration, Duration)>,
    /// The pools the relays and consumers use (orders, payments, inventory): the test's own
    /// pools, or pools through [`TestStack::db_proxy`].
    pub service_pools: [PgPool; 3],
    /// Between the relays and consumers and Postgres, when the test asked for it (order-api
    /// and the test's own pools connect directly).
    pub db_proxy: Option<FaultProxy>,
    /// Publishing the orders outbox instead of its relay, when the test asked for CDC.
    pub connect: Option<ConnectWorker>,
}

impl TestStack {
    /// Every service, in process.
    pub async fn spawn() -> TestStack {
        let stack = Self::spawn_without_inventory().await;
        let mut stack = stack;
        stack.start_inventory();
        stack
    }

    /// Every service and every consumer group (notifications and analytics too) on `broker`:
    /// a broker or cluster of the test's own.
    pub async fn spawn_all_on(broker: TestBroker) -> TestStack {
        let stack = Self::spawn_without_consumers_on(broker).await;
        Self::with_every_consumer(stack).await
    }

    /// Every service and every consumer group, with the orders outbox (order-api's and
    /// order-service's events) published by Debezium in Kafka Connect instead of its relay.
    pub async fn spawn_all_with_cdc() -> TestStack {
        let stack = Self::spawn_without_consumers_with(TestBroker::spawn(), None, true).await;
        Self::with_every_consumer(stack).await
    }

    async fn with_every_consumer(mut stack: TestStack) -> TestStack {
        let provider = stack.provider_settings();
        stack.start_payment(provider).await;
        stack.start_inventory();
        stack.start_notifications(Duration::from_secs(5)).await;
        stack.start_analytics().await;
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

    /// As [`Self::spawn`], with every relay and consumer reaching Postgres through a fault
    /// proxy (`db_proxy`).
    pub async fn spawn_behind_db_proxy() -> TestStack {
        let postgres = crate::admin_url();
        let host = postgres.split_once("://").unwrap().1.split('/').next().unwrap();
        let host = host.rsplit_once('@').map(|(_, h)| h).unwrap_or(host).to_string();
        let proxy = FaultProxy::start(&host).await;
        let mut stack = Self::spawn_without_consumers_with(TestBroker::spawn(), Some(proxy), false).await;
        let provider = stack.provider_settings();
        stack.start_payment(provider).await;
        stack.start_inventory();
        stack
    }

    async fn spawn_without_consumers_on(broker: TestBroker) -> TestStack {
        Self::spawn_without_consumers_with(broker, None, false).await
    }

    async fn spawn_without_consumers_with(broker: TestBroker, db_proxy: Option<FaultProxy>, cdc: bool) -> TestStack {
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
        let service_pools = match &db_proxy {
            None => [api.pool.clone(), payments.clone(), inventory.clone()],
            Some(proxy) => [&api.db, &payments_db, &inventory_db].map(|db| {
                // Lazy: a pool made during a cut connects once the cut is over.
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(20)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_lazy(&proxy.postgres_url(&db.url))
                    .unwrap()
            }),
        };
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
            retention: None,
            service_pools,
            db_proxy,
            connect: None,
        };
        for (pool, name) in stack.service_pools.clone().iter().zip(["orders", "payments", "inventory"]) {
            if cdc && name == "orders" {
                let outbox = Outbox {
                    database_url: &stack.api.db.url,
                    database: &stack.api.db.name,
                    bootstrap: &stack.broker.bootstrap,
                    namespace: &stack.broker.namespace,
                };
                let worker = ConnectWorker::spawn(&connector_template(), &outbox).await;
                stack.connect = Some(worker.unwrap_or_else(|e| panic!("{e:#}")));
                continue;
            }
            stack.relays.push(TestRelay::spawn_named(pool, &stack.broker, quick_relay(), name));
        }
        stack.start_order_service();
        // Plenty of what `sample_order` buys, so only tests that want a shortage get one.
        stack.stock(&[("SKU-1", 1_000_000), ("SKU-2", 1_000_000)]).await;
        stack
    }

    pub fn start_inventory(&mut self) {
        let codec = self.codec();
        let handler = orderflow_inventory::InventoryHandler { codec: codec.clone() };
        let settings = self.consumer_settings(orderflow_inventory::GROUP, &orderflow_inventory::TOPICS);
        self.metrics.push((orderflow_inventory::GROUP.into(), settings.registry.clone()));
        let pool = self.service_pools[2].clone();
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
            provider: orderflow_notifications::NotificationClient::new(&notifier.url, timeout, None).unwrap(),
        };
        let mut settings = self.consumer_settings(orderflow_notifications::GROUP, &orderflow_notifications::TOPICS);
        // As the binary runs it.
        settings.set_ordering(orderflow_consumer_runtime::Ordering::Key);
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
        let settings = self.consumer_settings(orderflow_analytics::GROUP, &orderflow_analytics::TOPICS);
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

    pub fn codec(&self) -> Arc<orderflow_schemas::EventCodec> {
        Arc::new(orderflow_schemas::EventCodec::new(self.api.registry.anonymous(), Duration::from_secs(5)).unwrap())
    }

    fn consumer_settings(&self, group: &str, topics: &[&str]) -> ConsumerSettings {
        let mut settings = ConsumerSettings::new(group, topics, self.broker.settings());
        settings.backoff_base = Duration::from_millis(20);
        settings.backoff_cap = Duration::from_millis(500);
        settings.lag_interval = Duration::from_millis(200);
        if let Some((horizon, interval)) = self.retention {
            (settings.retention, settings.prune_interval) = (horizon, interval);
        }
        settings
    }

    /// The payment client as the stack's tests run it: a 2 s attempt timeout, a breaker that
    /// probes after 200 ms (at most 2 s), no rate limit.
    pub fn provider_settings(&self) -> ProviderSettings {
        let mut provider = ProviderSettings::new(&self.simulator.url);
        provider.api_key = Some(orderflow_platform::secret::Secret::new(&self.simulator.api_key));
        provider.attempt_timeout = Duration::from_secs(2);
        provider.deadline = Duration::from_secs(6);
        provider.breaker.open_for = Duration::from_millis(200);
        provider.breaker.max_open_for = Duration::from_secs(2);
        provider
    }

    /// Starts a payment instance; its metrics are under `payment` (the first), then
    /// `payment#2`, `payment#3`…
    pub async fn start_payment(&mut self, provider: ProviderSettings) -> String {
        let pool = self.service_pools[1].clone();
        self.start_payment_on(provider, pool).await
    }

    /// Starts a payment instance on a pool of the test's choosing (its size, its timeouts).
    pub async fn start_payment_on(&mut self, provider: ProviderSettings, pool: PgPool) -> String {
        let codec = self.codec();
        let mut settings = self.consumer_settings(orderflow_payment::GROUP, &orderflow_payment::TOPICS);
        // As the binary runs it.
        settings.set_ordering(orderflow_consumer_runtime::Ordering::Key);
        let limits = match provider.rate_limit_per_sec {
            Some(_) => Some(self.payments_db.pool().await),
            None => None,
        };
        let client = PaymentProviderClient::new(provider, &settings.registry, limits).await.unwrap();
        let instances = self.metrics.iter().filter(|(g, _)| g.starts_with(orderflow_payment::GROUP)).count();
        let name = match instances {
            0 => orderflow_payment::GROUP.to_string(),
            n => format!("{}#{}", orderflow_payment::GROUP, n + 1),
        };
        // As the binary does: the instance's guard in provider_health, for the console.
        client.report_to(pool.clone(), name.clone());
        let handler = PaymentHandler { provider: client, codec: codec.clone() };
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
        let pool = self.service_pools[0].clone();
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

    /// A service binary run as a process against this stack: its broker and namespace, the
    /// registry, metrics on a free port, warnings only; the caller adds its database.
    pub fn service_command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut command = std::process::Command::new(program);
        command
            .env("ORDERFLOW_KAFKA_BOOTSTRAP", &self.broker.bootstrap)
            .env("ORDERFLOW_KAFKA_NAMESPACE", &self.broker.namespace)
            .env("ORDERFLOW_REGISTRY_URL", &self.api.registry.url)
            .env("ORDERFLOW_METRICS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn");
        if !self.broker.client_properties.is_empty() {
            // A secured broker's credentials, as a service gets a secret: from a file.
            command.env("ORDERFLOW_KAFKA_PROPERTIES_FILE", self.broker.properties_file(&self.broker.password()));
        }
        command
    }

    /// The sum of a consumer's `orderflow_consumer_records_total` with this outcome.
    pub fn records(&self, group: &str, outcome: &str) -> f64 {
        orderflow_tools::drill::metric_sum(
            &self.metrics_text(group),
            "orderflow_consumer_records_total",
            &[&format!(r#"outcome="{outcome}""#)],
        )
    }

    /// Publishes typed events to their topic (as any producer would: framed, with `event_id`
    /// and `event_type` headers), pipelined; returns their event ids.
    pub async fn publish<E: orderflow_schemas::events::Event>(&self, events: &[E]) -> Vec<Uuid> {
        use rdkafka::message::{Header, OwnedHeaders};
        let codec = self.codec();
        let producer = self.broker.producer();
        let topic = self.broker.topic(&E::schema().topic);
        let mut sends = Vec::new();
        let mut ids = Vec::new();
        for event in events {
            let payload = codec.encode_event(event).await.unwrap();
            let (id, key) = (Uuid::now_v7(), event.key());
            let id_text = id.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header { key: "event_id", value: Some(&id_text) })
                .insert(Header { key: "event_type", value: Some(E::NAME) });
            let record = rdkafka::producer::FutureRecord::to(&topic).key(&key).payload(&payload).headers(headers);
            sends.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
            ids.push(id);
        }
        for send in sends {
            send.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
        ids
    }

    pub async fn wait_for_status(&self, order_id: Uuid, status: &str, timeout: Duration) {
        eventually(timeout, &format!("order {order_id} to be {status}"), || async {
            self.status(order_id).await == status
        })
        .await;
    }
}

/// `connect/outbox-connector.json` of the checkout under test.
pub fn connector_template() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../connect/outbox-connector.json")
}

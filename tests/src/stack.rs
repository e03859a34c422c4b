//! The whole walking skeleton in one test: broker, registry, order-api, both relays, the payment
//! simulator, payment and order-service — each on its own database, port and group.

use std::{sync::Arc, time::Duration};

use orderflow_consumer_runtime::ConsumerSettings;
use orderflow_payment::{PaymentHandler, PaymentProviderClient};
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
        let url = format!("http://{}", listener.local_addr().unwrap());
        let p = pool.clone();
        let running = Running::spawn(move |stop| orderflow_payment_simulator::run(listener, p, stop));
        TestSimulator { url, pool, _db: db, _running: running }
    }

    pub async fn ledger(&self) -> Vec<LedgerEntry> {
        reqwest::get(format!("{}/ledger", self.url)).await.unwrap().json().await.unwrap()
    }
}

pub struct TestStack {
    pub broker: TestBroker,
    pub api: TestApi,
    pub payments_db: TestDatabase,
    pub payments: PgPool,
    pub simulator: TestSimulator,
    pub parts: Vec<Running>,
    pub relays: Vec<TestRelay>,
    /// Each consumer's metrics registry, by group.
    pub metrics: Vec<(String, prometheus::Registry)>,
}

impl TestStack {
    pub async fn spawn() -> TestStack {
        let broker = TestBroker::spawn();
        broker.create_topic("orders", 12).await;
        broker.create_topic("payments", 12).await;
        let api = TestApi::spawn().await;
        orderflow_order_service::migrate(&api.pool).await.unwrap();
        let payments_db = TestDatabase::create().await;
        let payments = payments_db.pool().await;
        orderflow_payment::migrate(&payments).await.unwrap();
        let simulator = TestSimulator::spawn().await;
        let mut stack = TestStack {
            broker,
            api,
            payments_db,
            payments,
            simulator,
            parts: Vec::new(),
            relays: Vec::new(),
            metrics: Vec::new(),
        };
        stack.relays.push(TestRelay::spawn(&stack.api.pool, &stack.broker, quick_relay()));
        stack.relays.push(TestRelay::spawn(&stack.payments, &stack.broker, quick_relay()));
        stack.start_payment();
        stack.start_order_service();
        stack
    }

    fn codec(&self) -> Arc<orderflow_schemas::EventCodec> {
        Arc::new(orderflow_schemas::EventCodec::new(&self.api.registry.url, Duration::from_secs(5)).unwrap())
    }

    fn consumer_settings(&self, group: &str, topic: &str) -> ConsumerSettings {
        let mut settings = ConsumerSettings::new(group, &[topic], self.broker.settings());
        settings.backoff_base = Duration::from_millis(20);
        settings.backoff_cap = Duration::from_millis(500);
        settings.lag_interval = Duration::from_millis(200);
        settings
    }

    pub fn start_payment(&mut self) {
        let codec = self.codec();
        let handler = PaymentHandler {
            provider: PaymentProviderClient::new(&self.simulator.url, Duration::from_secs(2)),
            codec: codec.clone(),
        };
        let settings = self.consumer_settings(orderflow_payment::GROUP, "orders");
        self.metrics.push((orderflow_payment::GROUP.into(), settings.registry.clone()));
        let pool = self.payments.clone();
        self.parts
            .push(Running::spawn(move |stop| orderflow_consumer_runtime::run(settings, pool, codec, handler, stop)));
    }

    pub fn start_order_service(&mut self) {
        let codec = self.codec();
        let handler = orderflow_order_service::OrderStatusHandler { codec: codec.clone() };
        let settings = self.consumer_settings(orderflow_order_service::GROUP, "payments");
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

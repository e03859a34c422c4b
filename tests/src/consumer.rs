//! A test bed for the consumer runtime itself: a broker, a registry, a database with the dedupe
//! table and an `effects` table, and a handler whose behaviour each test scripts per event
//! (fail n times, always fail, take a while). Each effect row is the side effect of one
//! successful handling, so a doubled side effect shows as two rows.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use orderflow_consumer_runtime::{ConsumedEvent, ConsumerSettings, Failure, Handler, Ordering};
use orderflow_schemas::{
    EventCodec,
    events::{Event, Money, OrderLine, OrderPlaced},
};
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::FutureRecord,
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{Running, TestDatabase, broker::TestBroker, registry::TestRegistry};

/// What the scripted handler does with one event.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    /// `Retry` on the runtime's first `n` attempts, then succeed.
    FailTimes(u32),
    /// Always `Retry`.
    AlwaysRetry,
    /// `Unavailable` this many times, then succeed.
    UnavailableTimes(u32),
    /// Succeed after holding the transaction this long.
    Slow(Duration),
    /// Wait this long outside any transaction first (a provider call, `Handler::call_out`),
    /// then succeed.
    SlowCallOut(Duration),
}

/// Handler calls of one event: when, and the runtime's attempt number.
pub type Calls = Vec<(DateTime<Utc>, u32)>;

#[derive(Default)]
pub struct Script {
    plans: Mutex<HashMap<Uuid, Plan>>,
    /// Every handler call per event, with its time and the runtime's attempt number.
    pub calls: Mutex<HashMap<Uuid, Calls>>,
    /// The plan for events without one of their own.
    default: Mutex<Option<Plan>>,
    /// Each key's events in the order the handler was entered.
    pub by_key: Mutex<HashMap<String, Vec<Uuid>>>,
    /// Handler calls running now, and the most ever at once.
    running: std::sync::atomic::AtomicUsize,
    pub most_at_once: std::sync::atomic::AtomicUsize,
}

/// Counts a handler call as running until dropped.
struct RunningCall<'a>(&'a Script);

impl<'a> RunningCall<'a> {
    /// The event's work begins (its call-out, or its handling when it has none).
    fn enter(script: &'a Script, event: &ConsumedEvent) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        if let Some(key) = &event.key {
            script.by_key.lock().unwrap().entry(key.clone()).or_default().push(event.event_id);
        }
        let now = script.running.fetch_add(1, SeqCst) + 1;
        script.most_at_once.fetch_max(now, SeqCst);
        RunningCall(script)
    }
}

impl Drop for RunningCall<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Script {
    pub fn plan(&self, event_id: Uuid, plan: Plan) {
        self.plans.lock().unwrap().insert(event_id, plan);
    }

    pub fn plan_all(&self, plan: Option<Plan>) {
        *self.default.lock().unwrap() = plan;
    }

    fn plan_of(&self, event: &ConsumedEvent) -> Option<Plan> {
        self.plans.lock().unwrap().get(&event.event_id).copied().or(*self.default.lock().unwrap())
    }

    pub fn calls(&self, event_id: Uuid) -> Calls {
        self.calls.lock().unwrap().get(&event_id).cloned().unwrap_or_default()
    }

    /// The last call of each attempt (a batch that was rolled back and re-run one by one calls
    /// the handler twice with the same attempt number).
    pub fn attempts(&self, event_id: Uuid) -> Vec<(u32, DateTime<Utc>)> {
        let by_attempt: std::collections::BTreeMap<u32, DateTime<Utc>> =
            self.calls(event_id).into_iter().map(|(at, attempt)| (attempt, at)).collect();
        by_attempt.into_iter().collect()
    }
}

#[derive(Clone)]
pub struct ScriptedHandler(pub Arc<Script>);

impl Handler for ScriptedHandler {
    async fn handle(&self, tx: &mut PgConnection, event: &ConsumedEvent) -> Result<(), Failure> {
        let _running =
            (!matches!(self.0.plan_of(event), Some(Plan::SlowCallOut(_)))).then(|| RunningCall::enter(&self.0, event));
        let calls = {
            let mut all = self.0.calls.lock().unwrap();
            let calls = all.entry(event.event_id).or_default();
            calls.push((Utc::now(), event.attempt));
            calls.len() as u32
        };
        match self.0.plan_of(event) {
            Some(Plan::FailTimes(n)) if event.attempt <= n => {
                return Err(Failure::Retry(format!("scripted failure on attempt {}", event.attempt)));
            }
            Some(Plan::AlwaysRetry) => return Err(Failure::Retry("scripted: always fails".into())),
            Some(Plan::UnavailableTimes(n)) if calls <= n => {
                return Err(Failure::Unavailable("scripted: dependency down".into()));
            }
            Some(Plan::Slow(wait)) => tokio::time::sleep(wait).await,
            _ => {}
        }
        sqlx::query("INSERT INTO effects (event_id, attempt) VALUES ($1, $2)")
            .bind(event.event_id)
            .bind(event.attempt as i32)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    fn calls_out(&self, _event_type: &str) -> bool {
        true
    }

    async fn call_out(&self, _pool: &PgPool, event: &ConsumedEvent) -> Result<(), Failure> {
        if let Some(Plan::SlowCallOut(wait)) = self.0.plan_of(event) {
            let _running = RunningCall::enter(&self.0, event);
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}

pub struct RuntimeBed {
    pub broker: TestBroker,
    pub registry: TestRegistry,
    pub db: TestDatabase,
    pub pool: PgPool,
    pub codec: Arc<EventCodec>,
    pub script: Arc<Script>,
    /// The source topic, as the broker knows it (the test's namespace + `orders`).
    pub topic: String,
    /// The ordering [`Self::settings`] asks for (partition order unless [`Self::in_order`]).
    pub ordering: Ordering,
}

/// The bed's logical source topic and consumer group.
pub const SOURCE: &str = "orders";
pub const GROUP: &str = "runtime-test";

impl RuntimeBed {
    pub async fn spawn(partitions: i32) -> RuntimeBed {
        Self::spawn_on(TestBroker::spawn(), partitions).await
    }

    pub async fn spawn_on(broker: TestBroker, partitions: i32) -> RuntimeBed {
        let topic = broker.topic(SOURCE);
        broker.create_topic(&topic, partitions).await;
        let registry = TestRegistry::spawn_with_catalog().await;
        let db = TestDatabase::create().await;
        let pool = db.pool().await;
        orderflow_consumer_runtime::migrate(&pool).await.unwrap();
        sqlx::query("CREATE TABLE effects (event_id uuid NOT NULL, attempt int NOT NULL, at timestamptz DEFAULT clock_timestamp())")
            .execute(&pool)
            .await
            .unwrap();
        let codec = Arc::new(EventCodec::new(registry.anonymous(), Duration::from_secs(5)).unwrap());
        RuntimeBed { broker, registry, db, pool, codec, script: Arc::default(), topic, ordering: Ordering::Partition }
    }

    /// The bed with its consumers in `ordering`.
    pub fn in_order(self, ordering: Ordering) -> Self {
        RuntimeBed { ordering, ..self }
    }

    /// The consumer group, as the broker (and the metrics) know it.
    pub fn group(&self) -> String {
        self.broker.group(GROUP)
    }

    /// The group's retry topic for the source topic.
    pub fn retry_topic(&self) -> String {
        orderflow_consumer_runtime::retry_topic(&self.topic, GROUP)
    }

    /// The group's dead-letter topic for the source topic.
    pub fn dlt_topic(&self) -> String {
        orderflow_consumer_runtime::dlt_topic(&self.topic, GROUP)
    }

    /// The group's committed offset (the next to read) on one partition of the source topic.
    pub fn committed(&self, partition: i32) -> Option<i64> {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer =
            self.broker.settings().consumer("test-committed", &self.group()).create().unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition(&self.topic, partition);
        let committed = consumer.committed_offsets(list, Duration::from_secs(10)).unwrap();
        match committed.find_partition(&self.topic, partition)?.offset() {
            rdkafka::Offset::Offset(offset) => Some(offset),
            _ => None,
        }
    }

    /// Settings for the group `runtime-test` with short backoffs, in the bed's ordering.
    pub fn settings(&self) -> ConsumerSettings {
        let mut settings = ConsumerSettings::new(GROUP, &[SOURCE], self.broker.settings());
        settings.ordering = self.ordering;
        settings.backoff_base = Duration::from_millis(100);
        settings.backoff_cap = Duration::from_secs(2);
        settings.lag_interval = Duration::from_millis(200);
        settings.commit_interval = Duration::from_millis(200);
        settings
    }

    pub fn start(&self, settings: ConsumerSettings) -> Running {
        let (pool, codec, handler) = (self.pool.clone(), self.codec.clone(), ScriptedHandler(self.script.clone()));
        Running::spawn(move |stop| orderflow_consumer_runtime::run(settings, pool, codec, handler, stop))
    }

    /// Publishes `count` OrderPlaced events with `key` (one partition) and returns their ids.
    pub async fn publish(&self, key: &str, count: usize) -> Vec<Uuid> {
        self.publish_to(key, None, count).await
    }

    /// As [`Self::publish`], to a chosen partition.
    pub async fn publish_to(&self, key: &str, partition: Option<i32>, count: usize) -> Vec<Uuid> {
        self.publish_with(&self.broker.producer(), key, partition, count).await
    }

    /// As [`Self::publish_to`], through `producer`.
    pub async fn publish_with(
        &self,
        producer: &rdkafka::producer::FutureProducer,
        key: &str,
        partition: Option<i32>,
        count: usize,
    ) -> Vec<Uuid> {
        let mut ids = Vec::with_capacity(count);
        let mut sends = Vec::with_capacity(count);
        for i in 0..count {
            let event = OrderPlaced {
                order_id: Uuid::new_v4(),
                customer_id: format!("c-{i}"),
                lines: vec![OrderLine { sku: "SKU-1".into(), quantity: 1, unit_price_minor: 100 }],
                total: Money { amount_minor: 100, currency: "EUR".into() },
                placed_at: Utc::now(),
                customer_email: None,
            };
            let payload = self.codec.encode_event(&event).await.unwrap();
            let event_id = Uuid::now_v7();
            ids.push(event_id);
            let id = event_id.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header { key: "event_id", value: Some(&id) })
                .insert(Header { key: "event_type", value: Some(OrderPlaced::NAME) });
            let mut record = FutureRecord::to(&self.topic).key(key).payload(&payload).headers(headers);
            record.partition = partition;
            sends.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        for send in sends {
            send.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
        ids
    }

    /// Effect rows of one event (1 = handled once).
    pub async fn effects(&self, event_id: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM effects WHERE event_id = $1")
            .bind(event_id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// (distinct events with an effect, total effect rows).
    pub async fn effect_totals(&self) -> (i64, i64) {
        sqlx::query_as("SELECT count(DISTINCT event_id), count(*) FROM effects").fetch_one(&self.pool).await.unwrap()
    }
}

/// A metric's value in a Prometheus text rendering (the first series whose line starts with
/// `series`), or 0.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

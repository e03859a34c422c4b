//! The payment benchmark (`orderflow-bench --phases payment`): payment's real handler under the
//! real runtime charges N orders through the payment simulator (in this process, on a scratch
//! database) answering after a fixed latency, once in partition order and once in key order.
//! Orders/s in steady state (the middle 80% of the settlements) is compared with the ceiling the
//! provider allows, `min(limit, in-flight ÷ latency)`, where in-flight is what key order may have
//! outstanding: the instance's `max_in_flight`, within the provider client's adaptive window.
//!
//! Two shapes of load: a backlog (every order produced before payment starts: partition order
//! gets full batches, each with `call_out_concurrency` calls at once) and orders arriving at a
//! steady pace while payment runs (as checkout sends them: a partition's batches are one or two
//! orders, each waiting out the provider's latency), where what counts is whether payment keeps
//! up and how long an order waits to be settled.

use std::{sync::Arc, time::Duration};

use orderflow_consumer_runtime::{ConsumerSettings, Ordering};
use orderflow_payment::{PaymentHandler, PaymentProviderClient, ProviderSettings};
use orderflow_platform::kafka::KafkaSettings;
use orderflow_schemas::EventCodec;
use sqlx::PgPool;

use crate::consumer_bench::{Setup, new_topic, publish_orders, run_group, seed_topic};

/// One measurement: a latency, an ordering, what it reached and what it could.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub latency: Duration,
    pub ordering: Ordering,
    /// Orders settled per second in steady state: over the middle 80% of the settlements (the
    /// ceiling is a steady-state rate; the first seconds are the window's slow start, and in
    /// partition order the first batches' commits).
    pub orders_per_sec: f64,
    /// From the first settlement to the last: the slow start included.
    pub whole_run: f64,
    pub ceiling: f64,
    /// A request's mean time at the provider (its latency, plus the simulator's own work).
    pub request_time: Duration,
    pub window: usize,
    /// Records the instance may hold at once (`max_in_flight`).
    pub records_bound: usize,
}

/// A payment simulator in this process whose answers take `latency` (the `latency` fault).
pub struct Simulator {
    pub url: String,
    admin_url: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Simulator {
    pub async fn start(pool: PgPool) -> anyhow::Result<Simulator> {
        orderflow_payment_simulator::migrate(&pool).await?;
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", api.local_addr()?);
        let admin_url = format!("http://{}", admin.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = orderflow_payment_simulator::ApiOptions::default();
        tokio::spawn(orderflow_payment_simulator::run(api, Some(admin), pool, options, async move {
            let _ = stopped.await;
        }));
        let http = orderflow_http::client().no_proxy().build()?;
        Ok(Simulator { url, admin_url, http, stop: Some(stop) })
    }

    pub async fn answer_after(&self, latency: Duration) -> anyhow::Result<()> {
        let faults = serde_json::json!({"mode": "latency", "delay_ms": latency.as_millis() as u64});
        self.http.put(format!("{}/admin/faults", self.admin_url)).json(&faults).send().await?.error_for_status()?;
        Ok(())
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What the benchmark needs from its caller.
pub struct Bench<'a> {
    pub kafka: &'a KafkaSettings,
    pub codec: Arc<EventCodec>,
    pub simulator: &'a Simulator,
    /// The provider's limit (requests/s), shared through Postgres as in production.
    pub rate_limit: f64,
    /// Seconds each measurement should last at its ceiling (bounds its order count).
    pub seconds: f64,
}

/// One paced measurement: orders arriving at `arrival`/s, settled at `settled`/s, and how long an
/// order waited from its event to its settlement (median, 99th percentile).
#[derive(Debug, Clone, Copy)]
pub struct Paced {
    pub latency: Duration,
    pub ordering: Ordering,
    pub arrival: f64,
    pub settled: f64,
    pub wait_p50: Duration,
    pub wait_p99: Duration,
}

impl Bench<'_> {
    /// The provider settings for a provider answering in `latency`, and the ceiling it allows
    /// (with key order's in-flight: the records one instance handles at once, within the
    /// client's window).
    fn provider(&self, latency: Duration) -> (ProviderSettings, f64) {
        let mut provider = ProviderSettings::new(&self.simulator.url);
        provider.rate_limit_per_sec = Some(self.rate_limit);
        // The latency is the provider's normal pace here, not an outage: time out well past it.
        provider.attempt_timeout = latency * 4 + Duration::from_secs(1);
        provider.deadline = provider.attempt_timeout * 3;
        let in_flight = max_in_flight(Ordering::Key).min(provider.max_window) as f64;
        (provider, self.rate_limit.min(in_flight / latency.as_secs_f64()))
    }

    /// Payment's handler on `pool` (migrated here) against the simulator, answering in `latency`.
    async fn handler(
        &self,
        provider: ProviderSettings,
        latency: Duration,
        pool: &PgPool,
    ) -> anyhow::Result<(PaymentHandler, prometheus::Registry)> {
        orderflow_payment::migrate(pool).await?;
        self.simulator.answer_after(latency).await?;
        let registry = prometheus::Registry::new();
        let client = PaymentProviderClient::new(provider, &registry, Some(pool.clone())).await?;
        Ok((PaymentHandler { provider: client, codec: self.codec.clone() }, registry))
    }

    /// Charges a backlog of orders through the simulator at `latency` in `ordering` on the
    /// scratch database `pool` (freshly made): orders/s and the ceiling.
    pub async fn measure(&self, latency: Duration, ordering: Ordering, pool: PgPool) -> anyhow::Result<Measured> {
        let (provider, ceiling) = self.provider(latency);
        // Enough orders for about `seconds` at the ceiling, within bounds that keep a slow
        // ordering's run short enough to wait for.
        let orders = ((ceiling * self.seconds) as usize).clamp(200, 5_000);
        let topic = seed_topic(self.kafka, &self.codec, orders * 2).await?;
        let window = provider.max_window;
        let (handler, registry) = self.handler(provider, latency, &pool).await?;
        let setup = Setup { kafka: self.kafka, codec: self.codec.clone(), pool };
        let group = format!("bench-payment-{}-{ordering:?}", latency.as_millis()).to_lowercase();
        let pool = setup.pool.clone();
        let whole_run = run_group(setup, &group, &topic, handler, orders as i64, ordering).await?;
        let orders_per_sec = steady_rate(&pool, &self.kafka.group(&group)).await?;
        let (requests, seconds) = requests(&registry);
        let request_time = Duration::from_secs_f64(seconds / requests.max(1) as f64);
        let records_bound = max_in_flight(ordering);
        Ok(Measured { latency, ordering, orders_per_sec, whole_run, ceiling, request_time, window, records_bound })
    }

    /// Orders arriving at `share` × the ceiling for `seconds` while payment runs in `ordering`:
    /// orders settled per second and how long each waited.
    pub async fn measure_paced(
        &self,
        latency: Duration,
        ordering: Ordering,
        share: f64,
        pool: PgPool,
    ) -> anyhow::Result<Paced> {
        let (provider, ceiling) = self.provider(latency);
        let arrival = ceiling * share;
        let orders = (arrival * self.seconds).max(50.0) as usize;
        let topic = new_topic(self.kafka).await?;
        let (handler, _) = self.handler(provider, latency, &pool).await?;
        let (kafka, codec, name) = (self.kafka.clone(), self.codec.clone(), topic.clone());
        let checkout =
            tokio::spawn(async move { publish_orders(&kafka, &codec, &name, orders * 2, Some(arrival)).await });
        let setup = Setup { kafka: self.kafka, codec: self.codec.clone(), pool: pool.clone() };
        let group = format!("bench-payment-paced-{}-{ordering:?}", latency.as_millis()).to_lowercase();
        let settled = run_group(setup, &group, &topic, handler, orders as i64, ordering).await?;
        checkout.await??;
        // An event's id is a UUIDv7: its first 48 bits are the milliseconds it was made at.
        let waits: Vec<f64> = sqlx::query_scalar(
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY
                 extract(epoch FROM processed_at) * 1000
                 - ('x' || lpad(substr(replace(event_id::text, '-', ''), 1, 12), 16, '0'))::bit(64)::bigint)
             FROM processed_events WHERE consumer_group = $1",
        )
        .bind(self.kafka.group(&group))
        .fetch_one(&pool)
        .await?;
        let wait = |i: usize| Duration::from_millis(waits.get(i).copied().unwrap_or_default().max(0.0) as u64);
        Ok(Paced { latency, ordering, arrival, settled, wait_p50: wait(0), wait_p99: wait(1) })
    }
}

/// `max_in_flight` in `ordering` (partitions, or records in key order), as the services
/// default it.
fn max_in_flight(ordering: Ordering) -> usize {
    let mut settings = ConsumerSettings::new("bench", &["bench"], KafkaSettings::new("127.0.0.1:1"));
    settings.set_ordering(ordering);
    settings.max_in_flight
}

/// Settlements per second of `group` over the middle 80% of them (by their dedupe rows' time).
async fn steady_rate(pool: &PgPool, group: &str) -> anyhow::Result<f64> {
    let (settled, seconds): (i64, f64) = sqlx::query_as(
        "WITH r AS (SELECT processed_at, row_number() OVER (ORDER BY processed_at) AS n, count(*) OVER () AS total
                    FROM processed_events WHERE consumer_group = $1)
         SELECT count(*) FILTER (WHERE n > total / 10 AND n <= total - total / 10),
                COALESCE(extract(epoch FROM max(processed_at) FILTER (WHERE n <= total - total / 10)
                                          - max(processed_at) FILTER (WHERE n <= total / 10))::float8, 0)
         FROM r",
    )
    .bind(group)
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(seconds > 0.0, "{group}: its settlements span no time");
    Ok(settled as f64 / seconds)
}

/// The provider's requests and the seconds they took in all (its latency histogram).
fn requests(registry: &prometheus::Registry) -> (u64, f64) {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == "orderflow_provider_request_seconds")
        .flat_map(|family| family.get_metric())
        .map(|metric| metric.get_histogram())
        .fold((0, 0.0), |(count, sum), h| (count + h.get_sample_count(), sum + h.get_sample_sum()))
}

//! The payment benchmark (`orderflow-bench --phases payment`): payment's real handler under the
//! real runtime charges N orders through the payment simulator (in this process, on a scratch
//! database) answering after a fixed latency, once in partition order and once in key order.
//! Orders/s is compared with the ceiling the provider allows, `min(limit, in-flight ÷ latency)`,
//! where in-flight is what key order may have outstanding: the instance's `max_in_flight`,
//! within the provider client's adaptive window.

use std::{sync::Arc, time::Duration};

use orderflow_consumer_runtime::{ConsumerSettings, Ordering};
use orderflow_payment::{PaymentHandler, PaymentProviderClient, ProviderSettings};
use orderflow_platform::kafka::KafkaSettings;
use orderflow_schemas::EventCodec;
use sqlx::PgPool;

use crate::consumer_bench::{Setup, run_group, seed_topic};

/// One measurement: a latency, an ordering, what it reached and what it could.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub latency: Duration,
    pub ordering: Ordering,
    pub orders_per_sec: f64,
    pub ceiling: f64,
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

impl Bench<'_> {
    /// Charges orders through the simulator at `latency` in `ordering` on the scratch database
    /// `pool` (freshly made): orders/s and the ceiling.
    pub async fn measure(&self, latency: Duration, ordering: Ordering, pool: PgPool) -> anyhow::Result<Measured> {
        orderflow_payment::migrate(&pool).await?;
        self.simulator.answer_after(latency).await?;
        let defaults = ConsumerSettings::new("bench", &["bench"], self.kafka.clone());
        let mut provider = ProviderSettings::new(&self.simulator.url);
        provider.rate_limit_per_sec = Some(self.rate_limit);
        // The latency is the provider's normal pace here, not an outage: time out well past it.
        provider.attempt_timeout = latency * 4 + Duration::from_secs(1);
        provider.deadline = provider.attempt_timeout * 3;
        let in_flight = defaults.max_in_flight.min(provider.max_window) as f64;
        let ceiling = self.rate_limit.min(in_flight / latency.as_secs_f64());
        // Enough orders for about `seconds` at the ceiling, within bounds that keep a slow
        // ordering's run short enough to wait for.
        let orders = ((ceiling * self.seconds) as usize).clamp(200, 5_000);
        let topic = seed_topic(self.kafka, &self.codec, orders * 2).await?;
        let registry = prometheus::Registry::new();
        let client = PaymentProviderClient::new(provider, &registry, Some(pool.clone())).await?;
        let handler = PaymentHandler { provider: client, codec: self.codec.clone() };
        let setup = Setup { kafka: self.kafka, codec: self.codec.clone(), pool };
        let group = format!("bench-payment-{}-{ordering:?}", latency.as_millis()).to_lowercase();
        let orders_per_sec = run_group(setup, &group, &topic, handler, orders as i64, ordering).await?;
        Ok(Measured { latency, ordering, orders_per_sec, ceiling })
    }
}

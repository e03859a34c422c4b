//! `orderflow-bench`: measures order intake and the outbox relay on this machine, each as a
//! ratio to a baseline taken in the same run — never a timed test.
//!
//! The relay phases run first, while the stack is idle, so the broker measures only them.
//!
//! 1. Baseline: `pgbench` runs the same two inserts order-api makes (order + outbox row, one
//!    transaction) with the same concurrency for the same time, on a scratch database.
//! 2. Intake: POST /orders at full speed against the running order-api (relay and consumers
//!    running beside it, as in production); accepted orders/s, and the outbox lag at the end.
//! 3. Broker baselines: Kafka's own `ProducerPerformance` sends N records of the same size
//!    (idempotent, `acks=all`; it has no option for keys, so its records are unkeyed), and a
//!    plain idempotent rdkafka producer sends N keyed records — the ceiling any relay reaches.
//! 4. Relay: a scratch outbox seeded with N events is drained by one relay into the broker;
//!    events/s from first claim to last acknowledgement, as a ratio to `ProducerPerformance`.
//! 5. Consumers: inventory, notifications and analytics each consume the same seeded topic with
//!    their real handler on a scratch database; records/s read, against Kafka's own
//!    `ConsumerPerformance` (and a plain rdkafka consumer) reading the same records (see
//!    `orderflow_tools::consumer_bench`).
//! 6. CDC (`--phases relay,cdc`, not in the default set: it starts a JVM): the same N events
//!    inserted into a scratch outbox that Debezium (a standalone Kafka Connect worker with
//!    `connect/outbox-connector.json`) already streams; events/s from the insert's commit until
//!    the topic holds all N, as a ratio to the relay's rate of the same run.
//! 7. Payment (`--phases payment`, not in the default set: it takes minutes): orders charged per
//!    second through a provider answering in 50, 200 and 500 ms, in partition order and in key
//!    order, against the ceiling `min(limit, in-flight ÷ latency)`; then orders arriving at 0.8 of
//!    the slowest provider's ceiling while payment runs, settled/s and each order's wait, in both
//!    orderings (see `orderflow_tools::payment_bench`).

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use orderflow_outbox::{OutboxRelay, RelaySettings};
use orderflow_platform::kafka::KafkaArgs;
use sqlx::{PgPool, postgres::PgPoolOptions};

#[derive(Parser)]
#[command(name = "orderflow-bench", about = "Intake and relay throughput against same-run baselines")]
struct Args {
    #[arg(long, env = "ORDERFLOW_API_URL", default_value = "http://127.0.0.1:18080")]
    api: String,
    #[command(flatten)]
    auth: orderflow_tools::issuer::ApiAuthArgs,
    /// The running stack's orders database (for the outbox lag after intake).
    #[arg(long, env = "ORDERFLOW_ORDERS_DATABASE_URL", hide_env_values = true)]
    orders_database_url: String,
    /// Admin URL of the same Postgres server (scratch databases are made there).
    #[arg(long, env = "ORDERFLOW_PG_ADMIN_URL", hide_env_values = true)]
    admin_url: String,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value_t = 50_000)]
    relay_events: i64,
    #[arg(long, default_value_t = 2000)]
    relay_batch: i64,
    #[arg(long, default_value_t = 4)]
    relay_concurrent_batches: usize,
    /// Records produced for the consumer-group phase (half OrderPlaced, half OrderPaid).
    #[arg(long, default_value_t = 40_000)]
    consumer_events: usize,
    #[arg(long, env = "ORDERFLOW_REGISTRY_URL", default_value = "http://127.0.0.1:18081")]
    registry_url: String,
    /// The email/SMS provider the notifications phase sends through.
    #[arg(long, env = "ORDERFLOW_NOTIFY_PROVIDER_URL", default_value = "http://127.0.0.1:18091")]
    notify_provider_url: String,
    /// The payment phase's provider latencies.
    #[arg(long, value_delimiter = ',', default_value = "50,200,500")]
    payment_latencies_ms: Vec<u64>,
    /// The payment phase's provider limit (requests/s): generous, so latency is what bounds.
    #[arg(long, default_value_t = 1000.0)]
    payment_rate_limit: f64,
    /// Which measurements to run (also: cdc, payment).
    #[arg(long, value_delimiter = ',', default_value = "relay,intake,consumers")]
    phases: Vec<String>,
}

async fn scratch_database(admin: &str, name: &str) -> anyhow::Result<(String, PgPool)> {
    let pool = PgPool::connect(admin).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&pool).await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&pool).await?;
    let url = format!("{}/{name}", admin.rsplit_once('/').map_or(admin, |(base, _)| base));
    let db = PgPoolOptions::new().max_connections(20).connect(&url).await?;
    Ok((url, db))
}

const PGBENCH_SCRIPT: &str = r#"BEGIN;
INSERT INTO orders (order_id, idempotency_key, request_fingerprint, customer_id, customer_email, currency, lines, total_minor, status)
  VALUES (gen_random_uuid(), gen_random_uuid()::text, '\x0011223344556677', 'cust-12345', 'cust-12345@example.com', 'EUR',
          '[{"sku":"TEE-BLK-M","quantity":2,"unit_price_minor":1250},{"sku":"MUG-CLASSIC","quantity":1,"unit_price_minor":899}]', 3399, 'PENDING_PAYMENT');
INSERT INTO outbox (event_id, topic, message_key, event_type, schema_version, payload, occurred_at)
  VALUES (gen_random_uuid(), 'orders', gen_random_uuid()::text, 'OrderPlaced', 2, decode(repeat('00', 180), 'hex'), now());
END;
"#;

/// A Postgres URL as libpq's environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE), so
/// pgbench is told it without the password on its command line.
fn libpq_env(url: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let url = reqwest::Url::parse(url).context("the database URL does not parse")?;
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let mut env = vec![("PGHOST", url.host_str().unwrap_or("localhost").to_string())];
    env.push(("PGPORT", url.port().unwrap_or(5432).to_string()));
    env.push(("PGDATABASE", decode(url.path().trim_start_matches('/'))));
    if !url.username().is_empty() {
        env.push(("PGUSER", decode(url.username())));
    }
    if let Some(password) = url.password() {
        env.push(("PGPASSWORD", decode(password)));
    }
    Ok(env)
}

async fn baseline(args: &Args) -> anyhow::Result<f64> {
    let (url, pool) = scratch_database(&args.admin_url, "orderflow_bench_baseline").await?;
    orderflow_orders::migrate(&pool).await?;
    let script = std::env::temp_dir().join("orderflow-bench-intake.sql");
    std::fs::write(&script, PGBENCH_SCRIPT)?;
    let output = Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &args.concurrency.to_string(),
            "-j",
            "2",
            "-T",
            &args.seconds.to_string(),
            "-f",
        ])
        .arg(&script)
        .envs(libpq_env(&url)?)
        .output()
        .context("running pgbench (Debian package postgresql-client)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("pgbench failed: {}{}", text, String::from_utf8_lossy(&output.stderr));
    }
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no tps in pgbench output")
}

async fn intake(args: &Args) -> anyhow::Result<(f64, u64)> {
    let accepted = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let start = Instant::now();
    // One subject per worker, as checkout backends would be (rate limits are per subject).
    let clients = (0..args.concurrency)
        .map(|worker| args.auth.client(&format!("bench-{worker}"), orderflow_http::client().pool_max_idle_per_host(1)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let workers = clients.into_iter().map(|http| {
        let (api, accepted, other) = (args.api.clone(), accepted.clone(), other.clone());
        tokio::spawn(async move {
            while Instant::now() < deadline {
                let body = orderflow_tools::sample_order(&mut rand::rng(), 0.1);
                let status = http
                    .post(format!("{api}/orders"))
                    .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                if status == 202 {
                    accepted.fetch_add(1, Ordering::Relaxed)
                } else {
                    other.fetch_add(1, Ordering::Relaxed)
                };
            }
        })
    });
    futures::future::join_all(workers).await;
    let elapsed = start.elapsed().as_secs_f64();
    Ok((accepted.load(Ordering::Relaxed) as f64 / elapsed, other.load(Ordering::Relaxed)))
}

/// Kafka's `ProducerPerformance` with the relay's record count and size, idempotent, `acks=all`
/// and the relay's linger, to a fresh 12-partition topic.
async fn producer_performance(args: &Args) -> anyhow::Result<f64> {
    let kafka = args.kafka.settings()?;
    let topic = kafka.topic(&format!("bench-perf-{}", uuid::Uuid::new_v4().simple()));
    kafka.ensure_topics(&[(&topic, 12)]).await?;
    let (bootstrap, count) = (kafka.bootstrap.clone(), args.relay_events as u64);
    tokio::task::spawn_blocking(move || {
        orderflow_tools::kafka_cli::producer_performance(
            &bootstrap,
            &topic,
            count,
            180,
            &["acks=all", "enable.idempotence=true", "linger.ms=5"],
        )
    })
    .await?
}

async fn broker_baseline(args: &Args) -> anyhow::Result<f64> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let kafka = args.kafka.settings()?;
    let topic = kafka.topic(&format!("bench-baseline-{}", uuid::Uuid::new_v4().simple()));
    kafka.ensure_topics(&[(&topic, 12)]).await?;
    let producer: FutureProducer = kafka.producer("bench-baseline", Duration::from_secs(120)).create()?;
    let payload = [0u8; 180];
    let start = Instant::now();
    let mut deliveries = Vec::with_capacity(args.relay_events as usize);
    for _ in 0..args.relay_events {
        let key = uuid::Uuid::new_v4().to_string();
        let record = FutureRecord::to(&topic).key(&key).payload(&payload[..]);
        deliveries.push(orderflow_tools::send_queued(&producer, record).await);
    }
    let acked = futures::future::join_all(deliveries).await.into_iter().filter(|d| matches!(d, Ok(Ok(_)))).count();
    let elapsed = start.elapsed().as_secs_f64();
    if acked as i64 != args.relay_events {
        bail!("the broker acknowledged {acked} of {} records", args.relay_events);
    }
    Ok(acked as f64 / elapsed)
}

/// `count` outbox rows for `topic`, 180-byte payloads, random keys, in one statement.
async fn seed_outbox(pool: &PgPool, topic: &str, count: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, message_key, event_type, schema_version, payload, occurred_at)
         SELECT gen_random_uuid(), $1, gen_random_uuid()::text, 'OrderPlaced', 2, decode(repeat('00', 180), 'hex'), now()
         FROM generate_series(1, $2)",
    )
    .bind(topic)
    .bind(count)
    .execute(pool)
    .await?;
    Ok(())
}

async fn relay(args: &Args) -> anyhow::Result<f64> {
    let (_, pool) = scratch_database(&args.admin_url, "orderflow_bench_relay").await?;
    orderflow_outbox::migrate(&pool).await?;
    let kafka = args.kafka.settings()?;
    let topic = format!("bench-relay-{}", uuid::Uuid::new_v4().simple());
    kafka.ensure_topics(&[(&kafka.topic(&topic), 12)]).await?;
    seed_outbox(&pool, &topic, args.relay_events).await?;
    let producer = kafka.producer("bench-relay", Duration::from_secs(120));
    let settings = RelaySettings {
        batch_size: args.relay_batch,
        concurrent_batches: args.relay_concurrent_batches,
        poll_interval: Duration::from_millis(20),
        namespace: kafka.namespace.clone(),
        ..Default::default()
    };
    let relay = OutboxRelay::new(pool.clone(), producer, settings);
    let start = Instant::now();
    relay.drain().await?;
    let elapsed = start.elapsed().as_secs_f64();
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(&pool).await?;
    if left > 0 {
        bail!("{left} events were not acknowledged");
    }
    Ok(args.relay_events as f64 / elapsed)
}

/// Debezium's rate: N rows committed at once into an outbox it streams, until all N are on the
/// topic (the worker's producer waits for `acks=all`; the topic's end offsets count them).
async fn cdc(args: &Args) -> anyhow::Result<f64> {
    use orderflow_tools::connect::{ConnectWorker, Outbox};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    const NAME: &str = "orderflow_bench_cdc";
    let template = std::env::var("ORDERFLOW_CONNECT_CONNECTOR")
        .context("ORDERFLOW_CONNECT_CONNECTOR is not set: run this through scripts/bench.sh")?;
    // A slot an interrupted run left would keep the scratch database from being dropped.
    let admin = PgPool::connect(&args.admin_url).await?;
    sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active",
    )
    .bind(NAME)
    .execute(&admin)
    .await?;
    let (url, pool) = scratch_database(&args.admin_url, NAME).await?;
    orderflow_outbox::migrate(&pool).await?;
    let kafka = args.kafka.settings()?;
    let topic = format!("bench-cdc-{}", uuid::Uuid::new_v4().simple());
    let partitions = 12;
    kafka.ensure_topics(&[(&kafka.topic(&topic), partitions)]).await?;
    let outbox =
        Outbox { database_url: &url, database: NAME, bootstrap: &kafka.bootstrap, namespace: &kafka.namespace };
    let worker = ConnectWorker::spawn(std::path::Path::new(&template), &outbox).await?;
    seed_outbox(&pool, &topic, args.relay_events).await?;
    let start = Instant::now();
    let reader: BaseConsumer = kafka.consumer("bench-cdc-watermarks", &kafka.group("bench-cdc")).create()?;
    let broker_topic = kafka.topic(&topic);
    loop {
        let mut published = 0;
        for partition in 0..partitions {
            published += reader.fetch_watermarks(&broker_topic, partition, Duration::from_secs(10))?.1;
        }
        if published >= args.relay_events {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("Debezium published {published} of {} events in 600 s:\n{}", args.relay_events, worker.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(args.relay_events as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("orderflow-bench");
    let args: Args = orderflow_platform::secret::parse();
    let phase = |name: &str| args.phases.iter().any(|p| p == name);
    println!(
        "orderflow-bench: {} s per phase, concurrency {}, {} relay events",
        args.seconds, args.concurrency, args.relay_events
    );
    let mut relay_rate = None;
    if phase("relay") {
        let perf_rate = producer_performance(&args).await?;
        println!("baseline  Kafka ProducerPerformance (unkeyed):       {perf_rate:>9.0} records/s");
        let broker_rate = broker_baseline(&args).await?;
        println!("baseline  plain idempotent rdkafka producer, keyed:  {broker_rate:>9.0} records/s");
        let rate = relay(&args).await?;
        relay_rate = Some(rate);
        println!("relay     outbox -> broker, acknowledged:            {rate:>9.0} events/s");
        println!(
            "relay / ProducerPerformance = {:.2}   (target >= 0.5; / rdkafka producer = {:.2})",
            rate / perf_rate,
            rate / broker_rate
        );
    }
    if phase("cdc") {
        let rate = cdc(&args).await?;
        println!("cdc       outbox -> Debezium -> broker, on Kafka:    {rate:>9.0} events/s");
        if let Some(relay_rate) = relay_rate {
            println!("cdc / relay = {:.2}   (the relay's rate of this run)", rate / relay_rate);
        }
    }
    if phase("intake") {
        let pgbench_tps = baseline(&args).await?;
        println!("baseline  pgbench, same two inserts per transaction: {pgbench_tps:>9.0} tx/s");
        let (accepted, refused) = intake(&args).await?;
        let orders = PgPool::connect(&args.orders_database_url).await?;
        let (pending, oldest) = orderflow_outbox::backlog(&orders).await?;
        println!(
            "intake    POST /orders accepted:                     {accepted:>9.0} orders/s  ({refused} not accepted)"
        );
        println!("          outbox lag right after intake:             {pending:>9} rows, oldest {oldest:.1} s");
        let draining = Instant::now();
        while orderflow_outbox::backlog(&orders).await?.0 > 0 && draining.elapsed() < Duration::from_secs(300) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("          the stack's relay drained it in:           {:>9.1} s", draining.elapsed().as_secs_f64());
        println!("intake / pgbench baseline  = {:.2}   (target >= 0.5)", accepted / pgbench_tps);
    }
    if phase("consumers") {
        consumers(&args).await?;
    }
    if phase("payment") {
        payment(&args).await?;
    }
    Ok(())
}

async fn payment(args: &Args) -> anyhow::Result<()> {
    use orderflow_consumer_runtime::Ordering;
    use orderflow_tools::payment_bench::{Bench, Simulator};
    let kafka = args.kafka.settings()?;
    let codec = Arc::new(orderflow_schemas::EventCodec::new(&args.registry_url, Duration::from_secs(5))?);
    let (_, simulator_db) = scratch_database(&args.admin_url, "orderflow_bench_payment_simulator").await?;
    let simulator = Simulator::start(simulator_db).await?;
    let bench =
        Bench { kafka: &kafka, codec, simulator: &simulator, rate_limit: args.payment_rate_limit, seconds: 20.0 };
    for latency in args.payment_latencies_ms.iter().map(|ms| Duration::from_millis(*ms)) {
        for ordering in [Ordering::Partition, Ordering::Key] {
            let name = format!("orderflow_bench_payment_{}_{ordering:?}", latency.as_millis()).to_lowercase();
            let (_, pool) = scratch_database(&args.admin_url, &name).await?;
            let m = bench.measure(latency, ordering, pool).await?;
            let verdict = match (ordering, latency >= Duration::from_millis(500)) {
                (Ordering::Key, true) if m.orders_per_sec >= 0.8 * m.ceiling => "   (target >= 0.8 at 500 ms: met)",
                (Ordering::Key, true) => "   (target >= 0.8 at 500 ms: MISSED)",
                _ => "",
            };
            println!(
                "payment   provider {:>4} ms, {:<9} order: {:>7.1} orders/s (whole run {:>6.1})   ceiling {:>6.1}   ratio {:.2}{verdict}",
                latency.as_millis(),
                format!("{ordering:?}").to_lowercase(),
                m.orders_per_sec,
                m.whole_run,
                m.ceiling,
                m.orders_per_sec / m.ceiling
            );
            // Where the time goes (Little's law): calls in flight = rate × a request's time,
            // against the window; and (key order) how long each record held its place of
            // max_in_flight: its request, and the rest its own work (decode, dedupe, the call's
            // intent and outcome rows, the transaction) and its waits (a window place, the CPU).
            let at_provider = m.request_time.as_secs_f64();
            let held = m.records_bound as f64 / m.orders_per_sec;
            println!(
                "          provider calls in flight {:>5.1} (window {}), a request {:.0} ms{}",
                m.orders_per_sec * at_provider,
                m.window,
                at_provider * 1000.0,
                match ordering {
                    Ordering::Key => format!(
                        "; a record held one of {} places {:.0} ms, {:.0} ms of it outside its request",
                        m.records_bound,
                        held * 1000.0,
                        (held - at_provider) * 1000.0
                    ),
                    Ordering::Partition => String::new(),
                }
            );
        }
    }
    // Orders arriving while payment runs, at 0.8 of the ceiling of the slowest provider.
    let Some(latency) = args.payment_latencies_ms.iter().max().map(|ms| Duration::from_millis(*ms)) else {
        return Ok(());
    };
    for ordering in [Ordering::Partition, Ordering::Key] {
        let name = format!("orderflow_bench_payment_paced_{}_{ordering:?}", latency.as_millis()).to_lowercase();
        let (_, pool) = scratch_database(&args.admin_url, &name).await?;
        let p = bench.measure_paced(latency, ordering, 0.8, pool).await?;
        println!(
            "payment   provider {:>4} ms, {:<9} order, orders arriving at {:>5.1}/s: settled {:>6.1}/s ({:.2} of arrivals)   wait p50 {:>6} ms  p99 {:>6} ms",
            latency.as_millis(),
            format!("{ordering:?}").to_lowercase(),
            p.arrival,
            p.settled,
            p.settled / p.arrival,
            p.wait_p50.as_millis(),
            p.wait_p99.as_millis()
        );
    }
    Ok(())
}

async fn consumers(args: &Args) -> anyhow::Result<()> {
    use orderflow_consumer_runtime::Ordering;
    use orderflow_tools::consumer_bench::{Setup, read_baseline, run_group, seed_topic};
    let kafka = args.kafka.settings()?;
    let codec = Arc::new(orderflow_schemas::EventCodec::new(&args.registry_url, Duration::from_secs(5))?);
    let n = args.consumer_events;
    let topic = seed_topic(&kafka, &codec, n).await?;
    let (bootstrap, physical) = (kafka.bootstrap.clone(), kafka.topic(&topic));
    let perf = tokio::task::spawn_blocking(move || {
        orderflow_tools::kafka_cli::consumer_performance(&bootstrap, &physical, n as u64)
    })
    .await??;
    println!("baseline  Kafka ConsumerPerformance, {n} records:   {perf:>9.0} records/s");
    let read = read_baseline(&kafka, &topic, n).await?;
    println!("baseline  plain rdkafka consumer, same records:      {read:>9.0} records/s");
    let report = |group: &str, handled: f64, share: f64| {
        let records = handled / share;
        let met = records >= 0.5 * perf || handled >= 5000.0;
        println!(
            "{group:<13} handled {handled:>7.0} events/s  = {records:>7.0} records/s read   / ConsumerPerformance = {:.2}   (target >= 0.5 or 5000 events/s: {})",
            records / perf,
            if met { "met" } else { "MISSED" }
        );
    };

    let (_, pool) = scratch_database(&args.admin_url, "orderflow_bench_inventory").await?;
    orderflow_inventory::migrate(&pool).await?;
    let skus: Vec<(String, i32)> = (0..50).map(|i| (format!("BENCH-{i}"), 10_000_000)).collect();
    orderflow_inventory::set_stock(&pool, &skus).await?;
    let setup = Setup { kafka: &kafka, codec: codec.clone(), pool: pool.clone() };
    let handler = orderflow_inventory::InventoryHandler { codec: codec.clone() };
    let rate = run_group(setup, "bench-inventory", &topic, handler, (n / 2) as i64, Ordering::Partition).await?;
    report("inventory", rate, 0.5);

    let (_, pool) = scratch_database(&args.admin_url, "orderflow_bench_notifications").await?;
    orderflow_notifications::migrate(&pool).await?;
    let setup = Setup { kafka: &kafka, codec: codec.clone(), pool: pool.clone() };
    let provider =
        orderflow_notifications::NotificationClient::new(&args.notify_provider_url, Duration::from_secs(5), None)?;
    let handler = orderflow_notifications::NotificationHandler { provider };
    let rate = run_group(setup, "bench-notifications", &topic, handler, n as i64, Ordering::Key).await?;
    report("notifications", rate, 1.0);

    let (_, pool) = scratch_database(&args.admin_url, "orderflow_bench_analytics").await?;
    orderflow_analytics::migrate(&pool).await?;
    let setup = Setup { kafka: &kafka, codec: codec.clone(), pool: pool.clone() };
    let handler = orderflow_analytics::AnalyticsHandler;
    let rate = run_group(setup, "bench-analytics", &topic, handler, n as i64, Ordering::Partition).await?;
    report("analytics", rate, 1.0);
    Ok(())
}

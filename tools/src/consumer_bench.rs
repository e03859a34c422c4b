//! The consumer-group benchmark (`orderflow-bench --phases consumers`): for inventory,
//! notifications and analytics, N events are produced to a scratch topic first, then the
//! service's real handler under the real runtime (in this process, on a scratch database)
//! consumes them; events/s is N over the time from start to the last dedupe row. The baseline,
//! taken in the same run on the same records, is a plain consumer that only reads them.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::bail;
use chrono::Utc;
use orderflow_consumer_runtime::{ConsumerSettings, Handler, Ordering};
use orderflow_platform::kafka::KafkaSettings;
use orderflow_schemas::headers;
use orderflow_schemas::{
    EventCodec,
    events::{Event, Money, OrderLine, OrderPaid, OrderPlaced},
};
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use sqlx::PgPool;
use uuid::Uuid;

/// What one group's run needs.
pub struct Setup<'a> {
    pub kafka: &'a KafkaSettings,
    pub codec: Arc<EventCodec>,
    pub pool: PgPool,
}

/// Produces `count` events (OrderPlaced then OrderPaid per order, so each group finds the events
/// it handles) to a fresh 12-partition topic; returns its logical name.
pub async fn seed_topic(kafka: &KafkaSettings, codec: &EventCodec, count: usize) -> anyhow::Result<String> {
    let name = new_topic(kafka).await?;
    publish_orders(kafka, codec, &name, count, None).await?;
    Ok(name)
}

/// A fresh 12-partition topic; its logical name.
pub async fn new_topic(kafka: &KafkaSettings) -> anyhow::Result<String> {
    let name = format!("bench-consumers-{}", Uuid::new_v4().simple());
    kafka.ensure_topics(&[(&kafka.topic(&name), 12)]).await?;
    Ok(name)
}

/// Produces `count` events to `topic` (logical), as [`seed_topic`] does: as fast as the broker
/// takes them, or, with `orders_per_sec`, orders arriving at that pace (as checkout sends them).
pub async fn publish_orders(
    kafka: &KafkaSettings,
    codec: &EventCodec,
    topic: &str,
    count: usize,
    orders_per_sec: Option<f64>,
) -> anyhow::Result<()> {
    let topic = kafka.topic(topic);
    // Large batches, as the outbox relay writes them (thousands of rows per claim); a paced
    // stream sends each order at once.
    let linger = if orders_per_sec.is_some() { "1" } else { "100" };
    let producer: FutureProducer = kafka
        .producer("bench-seed", Duration::from_secs(120))
        .set("linger.ms", linger)
        .set("batch.size", "1000000")
        .create()?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(count);
    let mut i = 0usize;
    while deliveries.len() < count {
        if let Some(rate) = orders_per_sec {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let order_id = Uuid::new_v4();
        let line = OrderLine { sku: format!("BENCH-{}", i % 50), quantity: 1, unit_price_minor: 1250 };
        let total = Money { amount_minor: 1250, currency: "EUR".into() };
        let placed = OrderPlaced {
            order_id,
            customer_id: format!("bench-{i}"),
            lines: vec![line.clone()],
            total: total.clone(),
            placed_at: Utc::now(),
            customer_email: Some(format!("bench-{i}@example.com")),
        };
        let paid = OrderPaid {
            order_id,
            payment_id: Uuid::new_v4(),
            customer_id: placed.customer_id.clone(),
            lines: vec![line],
            amount: total,
            paid_at: Utc::now(),
        };
        for (event_type, payload) in [
            (OrderPlaced::NAME, codec.encode_event(&placed).await?),
            (OrderPaid::NAME, codec.encode_event(&paid).await?),
        ] {
            let (id, key) = (Uuid::now_v7().to_string(), placed.key());
            let headers = OwnedHeaders::new()
                .insert(Header { key: headers::EVENT_ID, value: Some(&id) })
                .insert(Header { key: headers::EVENT_TYPE, value: Some(event_type) });
            let record = FutureRecord::to(&topic).key(&key).payload(&payload[..]).headers(headers);
            deliveries.push(crate::send_queued(&producer, record).await);
        }
        i += 1;
    }
    let acked = futures::future::join_all(deliveries).await.into_iter().filter(|d| matches!(d, Ok(Ok(_)))).count();
    if acked < count {
        bail!("the broker acknowledged {acked} of {count} records");
    }
    Ok(())
}

/// Reads every record of `topic` with a plain consumer (assigned partitions, no group): records/s.
pub async fn read_baseline(kafka: &KafkaSettings, topic: &str, count: usize) -> anyhow::Result<f64> {
    let group = kafka.group(&format!("bench-read-{}", Uuid::new_v4().simple()));
    let consumer: StreamConsumer = kafka.consumer("bench-read", &group).create()?;
    let topic = kafka.topic(topic);
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in 0..12 {
        assignment.add_partition_offset(&topic, partition, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut first: Option<Instant> = None;
    let mut seen = 0;
    while seen < count {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
        let _ = message.payload();
        first.get_or_insert_with(Instant::now);
        seen += 1;
    }
    Ok(seen as f64 / first.map_or(1.0, |f| f.elapsed().as_secs_f64()))
}

/// Runs `handler` in group `group` over `topic`, in `ordering` (as the service's binary runs it),
/// until `expected` records have a dedupe row (the records the handler takes; the others are
/// read and skipped): handled records/s.
pub async fn run_group<H: Handler>(
    setup: Setup<'_>,
    group: &str,
    topic: &str,
    handler: H,
    expected: i64,
    ordering: Ordering,
) -> anyhow::Result<f64> {
    let mut settings = ConsumerSettings::new(group, &[topic], setup.kafka.clone());
    settings.set_ordering(ordering);
    settings.lag_interval = Duration::from_secs(60);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (pool, codec) = (setup.pool.clone(), setup.codec.clone());
    let consumer = tokio::spawn(orderflow_consumer_runtime::run(settings, pool, codec, handler, async move {
        let _ = stopped.await;
    }));
    // The clock starts at the first handled record: joining the group is not throughput.
    let handled = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM processed_events WHERE consumer_group = $1")
            .bind(setup.kafka.group(group))
            .fetch_one(&setup.pool)
            .await
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut started: Option<(Instant, i64)> = None;
    loop {
        let done = handled().await?;
        if done > 0 && started.is_none() {
            started = Some((Instant::now(), done));
        }
        if done >= expected {
            break;
        }
        if Instant::now() > deadline {
            bail!("{group}: {done} of {expected} handled in 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (started, before) = started.unwrap_or((Instant::now(), 0));
    let elapsed = started.elapsed().as_secs_f64().max(0.001);
    let _ = stop.send(());
    consumer.await??;
    Ok((expected - before) as f64 / elapsed)
}

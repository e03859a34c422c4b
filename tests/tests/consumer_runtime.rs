//! The consumer runtime against a real broker and Postgres: non-blocking retries through the
//! group's retry topic, exhausted retries to the DLT with every reason header, replay handled
//! once, backpressure by pausing, and rebalances between two instances without a doubled side
//! effect — each in partition order and in key order.

use std::time::Duration;

use orderflow_consumer_runtime::{Ordering, backoff_ceiling, dlt_tools, retry_headers};
use orderflow_tests::{
    broker::{TestBroker, header},
    consumer::{GROUP, Plan, RuntimeBed, SOURCE, metric},
    intake::eventually,
};
use rdkafka::Message;

const WAIT: Duration = Duration::from_secs(60);

/// Every guarantee here holds in both orderings: `<test>::partition_order` and
/// `<test>::key_order` run the same test on a bed in each.
macro_rules! in_both_orderings {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn partition_order() {
                super::$name(orderflow_consumer_runtime::Ordering::Partition).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn key_order() {
                super::$name(orderflow_consumer_runtime::Ordering::Key).await
            }
        }
    )*};
}

in_both_orderings!(
    a_transient_failure_is_retried_through_the_retry_topic_without_blocking_its_partition,
    exhausted_retries_go_to_the_dlt_with_every_reason_and_a_replay_is_handled_once,
    a_slow_partition_is_paused_instead_of_buffered_and_others_keep_moving,
    a_partition_paused_when_revoked_is_fetched_again_when_assigned_back,
    a_group_committed_inside_a_batch_starts_at_its_committed_offset_and_skips_nothing,
    two_instances_rebalancing_under_load_never_double_a_side_effect,
    a_failure_inside_a_batch_costs_only_that_record_a_retry,
    a_consumer_started_while_kafka_is_down_waits_for_it_and_then_consumes,
);

async fn a_transient_failure_is_retried_through_the_retry_topic_without_blocking_its_partition(ordering: Ordering) {
    let bed = RuntimeBed::spawn(2).await.in_order(ordering);
    let settings = bed.settings();
    let registry = settings.registry.clone();
    let ids = bed.publish("one-key", 2).await;
    let (flaky, next) = (ids[0], ids[1]);
    bed.script.plan(flaky, Plan::FailTimes(3));
    let _consumer = bed.start(settings.clone());

    // The record behind the failing one, on the same partition, is not held up by its retries.
    eventually(WAIT, "the next record to be handled", || async { bed.effects(next).await == 1 }).await;
    eventually(WAIT, "the flaky record to succeed on its fourth attempt", || async { bed.effects(flaky).await == 1 })
        .await;
    let attempts = bed.script.attempts(flaky);
    assert!(bed.script.calls(next).last().unwrap().0 < attempts[3].1, "the next record went first");

    // Three trips through orders.runtime-test.retry, each due within its growing ceiling and
    // handled no earlier than due.
    let retries = bed.broker.read(&bed.retry_topic(), 3, WAIT).await;
    assert_eq!(attempts.iter().map(|a| a.0).collect::<Vec<_>>(), [1, 2, 3, 4], "attempt numbers");
    let mut ceilings = Vec::new();
    for (n, retry) in retries.iter().enumerate() {
        let made: u32 = header(retry, retry_headers::ATTEMPTS).unwrap().parse().unwrap();
        assert_eq!(made, n as u32 + 1);
        assert_eq!(header(retry, retry_headers::ORIGINAL_TOPIC), Some(bed.topic.clone()));
        assert_eq!(header(retry, "event_id").unwrap(), flaky.to_string(), "original headers are kept");
        assert_eq!(retry.key(), Some(&b"one-key"[..]), "the original key is kept");
        let due: i64 = header(retry, retry_headers::DUE_AT_MS).unwrap().parse().unwrap();
        let (failed_at, handled_at) = (attempts[n].1.timestamp_millis(), attempts[n + 1].1.timestamp_millis());
        let ceiling = backoff_ceiling(&settings, made).as_millis() as i64;
        assert!(due >= failed_at && due <= failed_at + ceiling + 50, "attempt {made}: due within its ceiling");
        assert!(handled_at >= due, "attempt {} ran {} ms before due", made + 1, due - handled_at);
        ceilings.push(ceiling);
    }
    assert!(ceilings.windows(2).all(|w| w[0] < w[1]), "the backoff ceilings grow: {ceilings:?}");

    let text = orderflow_platform::metrics::render(&registry);
    let series = |outcome: &str| {
        format!(
            r#"orderflow_consumer_records_total{{group="{}",outcome="{outcome}",topic="{}"}}"#,
            bed.group(),
            bed.topic
        )
    };
    assert_eq!(metric(&text, &series("retried")), 3.0, "{text}");
    assert_eq!(metric(&text, &series("processed")), 2.0, "{text}");
}

async fn exhausted_retries_go_to_the_dlt_with_every_reason_and_a_replay_is_handled_once(ordering: Ordering) {
    let bed = RuntimeBed::spawn(2).await.in_order(ordering);
    let mut settings = bed.settings();
    settings.max_attempts = 3;
    let ids = bed.publish("k", 1).await;
    let doomed = ids[0];
    bed.script.plan(doomed, Plan::AlwaysRetry);
    let _consumer = bed.start(settings);

    let kafka = bed.broker.settings();
    let mut letters = Vec::new();
    eventually(WAIT, "the record in the DLT", || {
        letters = dlt_tools::read(&kafka, &bed.dlt_topic()).unwrap_or_default();
        let found = !letters.is_empty();
        async move { found }
    })
    .await;
    let original = bed.broker.read("orders", 1, WAIT).await.remove(0);
    let dead = &letters[0];
    assert_eq!(dead.error_class, "retries_exhausted");
    assert_eq!(dead.attempts.as_deref(), Some("3"));
    assert_eq!(dead.original_topic, Some(bed.topic.clone()), "the source topic, not the retry topic");
    assert_eq!(header(&dead.message, "dlt_original_partition"), Some(original.partition().to_string()));
    assert_eq!(header(&dead.message, "dlt_original_offset"), Some(original.offset().to_string()));
    assert_eq!(header(&dead.message, "dlt_consumer_group"), Some(bed.group()));
    assert!(dead.error_message.contains("always fails"), "{}", dead.error_message);
    let first = header(&dead.message, "dlt_first_failure_at").unwrap();
    let last = header(&dead.message, "dlt_last_failure_at").unwrap();
    assert!(first < last, "first failure {first} before last {last}");
    assert_eq!(dead.message.payload(), original.payload(), "the original value is kept");
    assert_eq!(dead.message.key(), original.key(), "the original key is kept");
    assert_eq!(header(&dead.message, "event_type").as_deref(), Some("OrderPlaced"), "original headers are kept");
    assert!(header(&dead.message, retry_headers::ATTEMPTS).is_none(), "no stale retry bookkeeping");
    assert_eq!(bed.script.calls(doomed).len(), 3);
    assert_eq!(bed.effects(doomed).await, 0);

    // Fixed downstream: replay by event id, twice. Handled once; the second is a duplicate.
    bed.script.plan(doomed, Plan::FailTimes(0));
    let selection = dlt_tools::Selection { event_id: Some(doomed.to_string()), ..Default::default() };
    assert_eq!(dlt_tools::replay(&kafka, &bed.dlt_topic(), &selection).await.unwrap(), 1);
    eventually(WAIT, "the replayed record to be handled", || async { bed.effects(doomed).await == 1 }).await;
    assert_eq!(dlt_tools::replay(&kafka, &bed.dlt_topic(), &selection).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(bed.effects(doomed).await, 1, "a second replay changes nothing");
}

async fn a_slow_partition_is_paused_instead_of_buffered_and_others_keep_moving(ordering: Ordering) {
    let bed = RuntimeBed::spawn(2).await.in_order(ordering);
    let mut settings = bed.settings();
    settings.partition_queue = 4;
    settings.batch_size = 1;
    let registry = settings.registry.clone();
    let slow = bed.publish_to("slow", Some(0), 60).await;
    for id in &slow {
        bed.script.plan(*id, Plan::Slow(Duration::from_millis(50)));
    }
    let _consumer = bed.start(settings);
    let fast = bed.publish_to("fast", Some(1), 20).await;
    eventually(WAIT, "the fast partition's records", || async {
        let mut done = 0;
        for id in &fast {
            done += bed.effects(*id).await;
        }
        done == 20
    })
    .await;
    let paused_series = &format!(r#"orderflow_consumer_paused_partitions{{group="{}"}}"#, bed.group());
    let text = orderflow_platform::metrics::render(&registry);
    let handled_slow = futures::future::join_all(slow.iter().map(|id| bed.effects(*id))).await.iter().sum::<i64>();
    assert!(handled_slow < 60, "the slow partition was still behind when the fast one finished");
    let pauses = metric(&text, &format!(r#"orderflow_consumer_pauses_total{{group="{}"}}"#, bed.group()));
    assert!(pauses >= 1.0, "the slow partition was paused rather than buffered: {text}");
    let in_flight = metric(&text, &format!(r#"orderflow_consumer_in_flight{{group="{}"}}"#, bed.group()));
    assert!(in_flight <= 2.0, "one record per partition at a time: {in_flight}");

    eventually(WAIT, "the slow partition to drain", || async {
        futures::future::join_all(slow.iter().map(|id| bed.effects(*id))).await.iter().all(|n| *n == 1)
    })
    .await;
    eventually(WAIT, "the partition to be resumed", || async {
        metric(&orderflow_platform::metrics::render(&registry), paused_series) == 0.0
    })
    .await;
}

async fn a_partition_paused_when_revoked_is_fetched_again_when_assigned_back(ordering: Ordering) {
    // librdkafka keeps an application pause across revoke and assign: without a resume on
    // assignment, a partition paused (its queue full) when a member joined stays paused for good.
    let bed = RuntimeBed::spawn(2).await.in_order(ordering);
    bed.script.plan_all(Some(Plan::Slow(Duration::from_millis(200))));
    let mut ids = bed.publish_to("p0", Some(0), 100).await;
    ids.extend(bed.publish_to("p1", Some(1), 100).await);
    let settings = || {
        let mut settings = bed.settings();
        settings.partition_queue = 2;
        settings.batch_size = 1;
        settings
    };
    let first_settings = settings();
    let first_registry = first_settings.registry.clone();
    let _first = bed.start(first_settings);
    eventually(WAIT, "a partition paused in the first instance", || async {
        let text = orderflow_platform::metrics::render(&first_registry);
        metric(&text, &format!(r#"orderflow_consumer_paused_partitions{{group="{}"}}"#, bed.group())) >= 1.0
    })
    .await;
    // A second member joins (everything is revoked and re-assigned), then leaves (its
    // partitions come back to the first).
    let second = bed.start(settings());
    eventually(WAIT, "the second member takes a partition", || async {
        let text = orderflow_platform::metrics::render(&first_registry);
        metric(&text, &format!(r#"orderflow_consumer_rebalances_total{{group="{}",kind="assign"}}"#, bed.group()))
            >= 2.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    second.stop().await;
    eventually(Duration::from_secs(120), "every record handled", || async {
        bed.effect_totals().await.0 == ids.len() as i64
    })
    .await;
}

async fn a_group_committed_inside_a_batch_starts_at_its_committed_offset_and_skips_nothing(ordering: Ordering) {
    // Records produced in batches of 60; the group's commit (25) and, with a small queue, every
    // resume after a pause fall inside a stored batch.
    let bed = RuntimeBed::spawn(1).await.in_order(ordering);
    let producer = bed.broker.batching_producer(Duration::from_millis(200));
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.extend(bed.publish_with(&producer, "one-key", Some(0), 60).await);
    }
    bed.broker.commit(GROUP, SOURCE, 0, 25);
    bed.script.plan_all(Some(Plan::Slow(Duration::from_millis(5))));
    let mut settings = bed.settings();
    settings.partition_queue = 4;
    settings.batch_size = 2;
    let _consumer = bed.start(settings);

    eventually(WAIT, "every record from the committed offset on handled", || async {
        bed.effect_totals().await.0 == (ids.len() - 25) as i64
    })
    .await;
    for (offset, id) in ids.iter().enumerate() {
        assert_eq!(bed.effects(*id).await, i64::from(offset >= 25), "record at offset {offset}");
    }
}

async fn two_instances_rebalancing_under_load_never_double_a_side_effect(ordering: Ordering) {
    let bed = RuntimeBed::spawn(6).await.in_order(ordering);
    bed.script.plan_all(Some(Plan::Slow(Duration::from_millis(2))));
    let mut ids = Vec::new();
    for k in 0..12 {
        ids.extend(bed.publish(&format!("key-{k}"), 100).await);
    }
    let first_settings = bed.settings();
    let first_registry = first_settings.registry.clone();
    let first = bed.start(first_settings);
    eventually(WAIT, "the first instance to be under way", || async { bed.effect_totals().await.0 >= 100 }).await;

    // A second member joins (revoke + assign on the first), more load arrives, then the first
    // leaves (its partitions move to the second).
    let second = bed.start(bed.settings());
    for k in 0..12 {
        ids.extend(bed.publish(&format!("key-{k}"), 50).await);
    }
    eventually(WAIT, "both instances to share the work", || async { bed.effect_totals().await.0 >= 1000 }).await;
    first.stop().await;
    eventually(Duration::from_secs(120), "every record to be handled", || async {
        bed.effect_totals().await.0 == ids.len() as i64
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (distinct, rows) = bed.effect_totals().await;
    assert_eq!((distinct, rows), (ids.len() as i64, ids.len() as i64), "every record handled exactly once");
    let text = orderflow_platform::metrics::render(&first_registry);
    assert!(
        metric(&text, &format!(r#"orderflow_consumer_rebalances_total{{group="{}",kind="revoke"}}"#, bed.group()))
            >= 1.0,
        "the first instance saw its partitions revoked: {text}"
    );
    second.stop().await;
}

async fn a_failure_inside_a_batch_costs_only_that_record_a_retry(ordering: Ordering) {
    let bed = RuntimeBed::spawn(2).await.in_order(ordering);
    let mut settings = bed.settings();
    // A failed batch is re-run one by one: batches of 10 keep that to 10 records each time.
    settings.batch_size = 10;
    let registry = settings.registry.clone();
    // Queued before the consumer starts, so they arrive as batches.
    let ids = bed.publish_to("batched", Some(0), 300).await;
    for id in ids.iter().step_by(50) {
        bed.script.plan(*id, Plan::FailTimes(1));
    }
    // Handlers that take a moment, so records queue up behind the one in hand even when the
    // broker delivers slowly (a busy machine): batches form.
    bed.script.plan_all(Some(Plan::Slow(Duration::from_millis(5))));
    let _consumer = bed.start(settings);
    eventually(WAIT, "every record handled", || async { bed.effect_totals().await.0 == 300 }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(bed.effect_totals().await, (300, 300), "each record's side effect exactly once");
    let text = orderflow_platform::metrics::render(&registry);
    let series = |outcome: &str| {
        format!(
            r#"orderflow_consumer_records_total{{group="{}",outcome="{outcome}",topic="{}"}}"#,
            bed.group(),
            bed.topic
        )
    };
    assert_eq!(metric(&text, &series("retried")), 6.0, "{text}");
    assert_eq!(metric(&text, &series("processed")), 300.0, "{text}");
    let transactions = metric(
        &text,
        &format!(r#"orderflow_consumer_handler_seconds_count{{group="{}",topic="{}"}}"#, bed.group(), bed.topic),
    );
    if ordering == Ordering::Partition {
        assert!(transactions < 300.0, "records shared transactions ({transactions} for 300 records)");
    }
}

async fn a_consumer_started_while_kafka_is_down_waits_for_it_and_then_consumes(ordering: Ordering) {
    // This test stops its broker: one of its own.
    let mut bed = RuntimeBed::spawn_on(TestBroker::spawn_own(), 2).await.in_order(ordering);
    bed.broker.kill();
    // The service as a binary runs it: /metrics, /healthz and /readyz beside the consumer.
    let listen = format!("127.0.0.1:{}", orderflow_tests::broker::free_port());
    let (pool, codec) = (bed.pool.clone(), bed.codec.clone());
    let handler = orderflow_tests::consumer::ScriptedHandler(bed.script.clone());
    let (settings, at) = (bed.settings(), listen.clone());
    let service = tokio::spawn(async move {
        orderflow_consumer_runtime::run_service_with(settings, pool, codec, handler, &at, axum::Router::new()).await
    });
    let http = orderflow_tests::http();
    let probe = |path: &'static str| {
        let (http, listen) = (http.clone(), listen.clone());
        async move { http.get(format!("http://{listen}{path}")).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    // It keeps waiting (and logging) rather than exiting, alive but not ready.
    eventually(WAIT, "the service to answer", || async { probe("/healthz").await == 200 }).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!service.is_finished(), "the consumer gave up while Kafka was down");
    assert_eq!(probe("/readyz").await, 503, "not ready while Kafka is down");

    bed.broker.start();
    eventually(WAIT, "ready once Kafka is up", || async { probe("/readyz").await == 200 }).await;
    let ids = bed.publish("after-the-outage", 20).await;
    eventually(WAIT, "every record published after Kafka came up handled", || async {
        bed.effect_totals().await == (20, 20)
    })
    .await;
    for id in ids {
        assert_eq!(bed.effects(id).await, 1);
    }
    service.abort();
}

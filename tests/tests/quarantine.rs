//! The quarantine (`--retry-mode quarantine`, key order): a failing record holds its key, not
//! its partition. The key's later records are parked behind it in Postgres and handled in
//! order once it is; other keys flow meanwhile; the committed offset moves past what is parked;
//! a restart picks the parked records up; a dead-lettered head lets the rest resume, or take
//! them to the DLT after it.

use std::time::Duration;

use orderflow_consumer_runtime::{AfterDeadLetter, ConsumerSettings, Ordering, RetryMode, dlt_tools};
use orderflow_tests::{
    consumer::{Plan, RuntimeBed, metric},
    intake::eventually,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);

fn quarantining(bed: &RuntimeBed) -> ConsumerSettings {
    let mut settings = bed.settings();
    settings.ordering = Ordering::Key;
    settings.retry_mode = RetryMode::Quarantine;
    settings.backoff_base = Duration::from_millis(50);
    settings.backoff_cap = Duration::from_millis(300);
    settings
}

async fn parked(bed: &RuntimeBed) -> Vec<Uuid> {
    // The event ids of the parked records, in offset order (from their kept headers).
    sqlx::query_scalar(
        "SELECT convert_from(header_values[array_position(header_names, 'event_id')], 'UTF8')::uuid
         FROM quarantined_records ORDER BY kafka_offset",
    )
    .fetch_all(&bed.pool)
    .await
    .unwrap()
}

/// The events of `ids` with an effect, in the order their effects were written.
async fn handled_order(bed: &RuntimeBed, ids: &[Uuid]) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT event_id FROM effects WHERE event_id = ANY($1) ORDER BY at")
        .bind(ids)
        .fetch_all(&bed.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_key_is_held_while_other_keys_flow_and_then_drains_in_order() {
    let bed = RuntimeBed::spawn(1).await;
    let producer = bed.broker.producer();
    // One partition: the poison key's 5 records interleaved with 20 other keys' 3 each.
    let (mut poison, mut others) = (Vec::new(), Vec::new());
    for round in 0..5 {
        poison.extend(bed.publish_with(&producer, "poison", Some(0), 1).await);
        for k in 0..20 {
            if round < 3 {
                others.extend(bed.publish_with(&producer, &format!("key-{k}"), Some(0), 1).await);
            }
        }
    }
    let total = (poison.len() + others.len()) as i64;
    bed.script.plan(poison[0], Plan::AlwaysRetry);
    let mut settings = quarantining(&bed);
    settings.max_attempts = 1_000;
    let registry = settings.registry.clone();
    let running = bed.start(settings);

    eventually(WAIT, "every other key's records handled", || async {
        handled_order(&bed, &others).await.len() == others.len()
    })
    .await;
    eventually(WAIT, "the poison key's five records parked", || async { parked(&bed).await == poison }).await;
    assert!(handled_order(&bed, &poison).await.is_empty(), "nothing of the held key handled out of turn");
    // Parked counts as finished: the commit is not pinned below the failing record.
    eventually(WAIT, "every offset committed", || async { bed.committed(0) == Some(total) }).await;
    let group = bed.group();
    let gauge = |name: &str| {
        let text = orderflow_platform::metrics::render(&registry);
        metric(&text, &format!(r#"{name}{{group="{group}"}}"#))
    };
    assert_eq!(gauge("orderflow_consumer_quarantined_keys"), 1.0);
    assert_eq!(gauge("orderflow_consumer_parked_records"), 5.0);
    let failed_attempts = bed.script.attempts(poison[0]).len();
    assert!(failed_attempts >= 2, "the head is tried again while held ({failed_attempts} attempts)");

    // The cause fixed: the head goes through, then the rest of its key, in order, each once.
    bed.script.plan(poison[0], Plan::FailTimes(0));
    eventually(WAIT, "the poison key drained", || async { handled_order(&bed, &poison).await.len() == poison.len() })
        .await;
    assert_eq!(handled_order(&bed, &poison).await, poison, "the key's records in the order they were published");
    eventually(WAIT, "nothing parked", || async { parked(&bed).await.is_empty() }).await;
    for id in &poison[1..] {
        assert_eq!(bed.script.attempts(*id).iter().map(|a| a.0).collect::<Vec<_>>(), [1], "parked, not failed");
    }
    assert_eq!(bed.effect_totals().await, (total, total), "each record handled exactly once");
    eventually(WAIT, "the gauges back to 0", || async {
        gauge("orderflow_consumer_quarantined_keys") == 0.0 && gauge("orderflow_consumer_parked_records") == 0.0
    })
    .await;
    let text = orderflow_platform::metrics::render(&registry);
    let parked_count = metric(
        &text,
        &format!(r#"orderflow_consumer_records_total{{group="{group}",outcome="parked",topic="{}"}}"#, bed.topic),
    );
    assert!(parked_count >= 5.0, "{text}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parked_records_survive_a_restart_and_a_record_arriving_later_waits_behind_them() {
    let bed = RuntimeBed::spawn(1).await;
    let producer = bed.broker.producer();
    let mut poison = bed.publish_with(&producer, "poison", Some(0), 3).await;
    bed.script.plan(poison[0], Plan::AlwaysRetry);
    let settings = || ConsumerSettings { max_attempts: 1_000, ..quarantining(&bed) };
    let first = bed.start(settings());
    eventually(WAIT, "three records parked", || async { parked(&bed).await == poison }).await;
    eventually(WAIT, "their offsets committed", || async { bed.committed(0) == Some(3) }).await;
    first.stop().await;

    // A new instance: the parked records are the partition's before anything read from Kafka.
    bed.script.plan(poison[0], Plan::Slow(Duration::from_millis(500)));
    poison.extend(bed.publish_with(&producer, "poison", Some(0), 1).await);
    let other = bed.publish_with(&producer, "other", Some(0), 1).await[0];
    let second = bed.start(settings());
    eventually(WAIT, "the key drained", || async { handled_order(&bed, &poison).await.len() == 4 }).await;
    assert_eq!(handled_order(&bed, &poison).await, poison, "parked first, the later record last");
    assert_eq!(bed.effects(other).await, 1);
    eventually(WAIT, "nothing parked", || async { parked(&bed).await.is_empty() }).await;
    eventually(WAIT, "everything committed", || async { bed.committed(0) == Some(5) }).await;
    second.stop().await;
}

/// A key whose head is dead-lettered (`max_attempts` spent): the records parked behind it are
/// handled (`resume`) or sent after it to the DLT unhandled, in order (`follow`).
async fn dead_lettered_head(after: AfterDeadLetter) -> (RuntimeBed, Vec<Uuid>, Vec<dlt_tools::DeadLetter>) {
    let bed = RuntimeBed::spawn(1).await;
    let producer = bed.broker.producer();
    let poison = bed.publish_with(&producer, "poison", Some(0), 4).await;
    let other = bed.publish_with(&producer, "other", Some(0), 2).await;
    bed.script.plan(poison[0], Plan::AlwaysRetry);
    let mut settings = quarantining(&bed);
    settings.max_attempts = 3;
    settings.after_dead_letter = after;
    let running = bed.start(settings);
    let kafka = bed.broker.settings();
    let wanted = match after {
        AfterDeadLetter::Resume => 1,
        AfterDeadLetter::Follow => 4,
    };
    let mut letters = Vec::new();
    eventually(WAIT, "the dead letters", || {
        letters = dlt_tools::read(&kafka, &bed.dlt_topic()).unwrap_or_default();
        let found = letters.len() >= wanted;
        async move { found }
    })
    .await;
    eventually(WAIT, "nothing parked", || async { parked(&bed).await.is_empty() }).await;
    for id in other {
        assert_eq!(bed.effects(id).await, 1);
    }
    eventually(WAIT, "everything committed", || async { bed.committed(0) == Some(6) }).await;
    running.stop().await;
    (bed, poison, letters)
}

fn event_id(letter: &dlt_tools::DeadLetter) -> Uuid {
    let id = orderflow_tests::broker::header(&letter.message, "event_id").unwrap();
    Uuid::parse_str(&id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_lettered_head_lets_the_rest_of_its_key_resume_in_order() {
    let (bed, poison, letters) = dead_lettered_head(AfterDeadLetter::Resume).await;
    assert_eq!(letters.len(), 1);
    assert_eq!((event_id(&letters[0]), letters[0].error_class.as_str()), (poison[0], "retries_exhausted"));
    assert_eq!(letters[0].attempts.as_deref(), Some("3"));
    assert_eq!(letters[0].original_topic, Some(bed.topic.clone()));
    assert_eq!(handled_order(&bed, &poison).await, poison[1..], "the rest handled, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_lettered_head_takes_the_rest_of_its_key_to_the_dlt_in_order() {
    let (bed, poison, letters) = dead_lettered_head(AfterDeadLetter::Follow).await;
    assert_eq!(letters.iter().map(event_id).collect::<Vec<_>>(), poison, "the key's records in the DLT, in order");
    assert_eq!(letters[0].error_class, "retries_exhausted");
    for letter in &letters[1..] {
        assert_eq!(letter.error_class, "key_dead_lettered");
        assert!(letter.error_message.contains("was dead-lettered before it"), "{}", letter.error_message);
    }
    assert!(handled_order(&bed, &poison).await.is_empty(), "none of the key's records handled after its dead letter");
}

#[tokio::test]
async fn the_quarantine_in_partition_order_is_refused_at_start() {
    let bed = RuntimeBed::spawn(1).await;
    let mut settings = quarantining(&bed);
    settings.ordering = Ordering::Partition;
    let handler = orderflow_tests::consumer::ScriptedHandler(bed.script.clone());
    let error =
        orderflow_consumer_runtime::run(settings, bed.pool.clone(), bed.codec.clone(), handler, std::future::pending())
            .await
            .unwrap_err()
            .to_string();
    assert!(error.contains("--retry-mode quarantine needs --ordering key"), "{error}");
}

//! Key order (`--ordering key`): one partition's records of different keys handled at once,
//! each key's strictly in order; the committed offset never passes an unfinished record; a
//! rebalance with records in flight loses none and doubles no side effect; records ready at the
//! same time share a commit, and one that fails in it sends the others back to commit alone.

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use orderflow_consumer_runtime::{ConsumerSettings, Ordering};
use orderflow_tests::{
    consumer::{Plan, RuntimeBed},
    intake::eventually,
};
use rand::Rng;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);

fn key_ordered(bed: &RuntimeBed) -> ConsumerSettings {
    let mut settings = bed.settings();
    settings.ordering = Ordering::Key;
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_partitions_keys_run_at_once_and_each_keys_records_in_order() {
    let bed = RuntimeBed::spawn(1).await;
    // 20 keys × 8 records, interleaved in one partition; each takes 5–60 ms, at random, so a
    // later record of one key would overtake an earlier one if anything let it.
    let producer = bed.broker.producer();
    let mut published: Vec<(String, Uuid)> = Vec::new();
    for round in 0..8 {
        for k in 0..20 {
            let key = format!("order-{k}");
            let id = bed.publish_with(&producer, &key, Some(0), 1).await[0];
            let slow = Duration::from_millis(rand::rng().random_range(5..=60) + if round == 0 { 200 } else { 0 });
            bed.script.plan(id, Plan::SlowCallOut(slow));
            published.push((key, id));
        }
    }
    let running = bed.start(key_ordered(&bed));
    eventually(WAIT, "every record handled", || async { bed.effect_totals().await.0 == published.len() as i64 }).await;
    let by_key = bed.script.by_key.lock().unwrap().clone();
    for k in 0..20 {
        let key = format!("order-{k}");
        let wanted: Vec<Uuid> = published.iter().filter(|(k, _)| *k == key).map(|(_, id)| *id).collect();
        assert_eq!(by_key[&key], wanted, "{key}'s records in the order they were published, each once");
    }
    let most = bed.script.most_at_once.load(SeqCst);
    assert!(most >= 5, "records of different keys ran at once (at most {most} did)");
    assert_eq!(bed.effect_totals().await, (published.len() as i64, published.len() as i64));
    eventually(WAIT, "everything committed", || async { bed.committed(0) == Some(published.len() as i64) }).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_committed_offset_waits_below_a_slow_record_while_later_keys_finish() {
    let bed = RuntimeBed::spawn(1).await;
    let producer = bed.broker.producer();
    let before = bed.publish_with(&producer, "fast-a", Some(0), 10).await;
    let slow = bed.publish_with(&producer, "slow", Some(0), 1).await[0];
    let mut after = Vec::new();
    for k in 0..30 {
        after.extend(bed.publish_with(&producer, &format!("fast-{k}"), Some(0), 1).await);
    }
    // Slow at its provider (a slow transaction would hold the records sharing its commit too).
    bed.script.plan(slow, Plan::SlowCallOut(Duration::from_secs(8)));
    let running = bed.start(key_ordered(&bed));
    eventually(WAIT, "every record but the slow one handled", || async { bed.effect_totals().await.0 == 40 }).await;
    assert_eq!(bed.effects(slow).await, 0, "the slow record is still in hand");
    // Committed is the next offset to read: the slow record's (10), never past it, however many
    // later records finished (commits run every 200 ms; give several a chance).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(bed.committed(0), Some(10), "a crash now re-delivers from the slow record on");
    eventually(WAIT, "the slow record handled", || async { bed.effects(slow).await == 1 }).await;
    eventually(WAIT, "everything committed", || async { bed.committed(0) == Some(41) }).await;
    for id in before.iter().chain(&after) {
        assert_eq!(bed.effects(*id).await, 1);
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_with_a_hundred_records_in_flight_loses_none_and_doubles_none() {
    let bed = RuntimeBed::spawn(2).await;
    // Each record waits 300 ms on a "provider": with 64 at once per partition, over a hundred
    // are in flight when the second member joins and again when the first leaves.
    bed.script.plan_all(Some(Plan::SlowCallOut(Duration::from_millis(300))));
    let producer = bed.broker.producer();
    let mut ids = Vec::new();
    for k in 0..400 {
        ids.extend(bed.publish_with(&producer, &format!("key-{k}"), None, 1).await);
    }
    let mut first_settings = key_ordered(&bed);
    first_settings.max_in_flight = 256;
    let first = bed.start(first_settings);
    eventually(WAIT, "the first member under way", || async { bed.script.most_at_once.load(SeqCst) >= 50 }).await;
    let mut second_settings = key_ordered(&bed);
    second_settings.max_in_flight = 256;
    let second = bed.start(second_settings);
    for k in 0..400 {
        ids.extend(bed.publish_with(&producer, &format!("key-{k}"), None, 1).await);
    }
    eventually(WAIT, "half the records handled", || async { bed.effect_totals().await.0 >= ids.len() as i64 / 2 })
        .await;
    first.stop().await;
    eventually(Duration::from_secs(180), "every record handled", || async {
        bed.effect_totals().await.0 == ids.len() as i64
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(bed.effect_totals().await, (ids.len() as i64, ids.len() as i64), "each record handled exactly once");
    assert!(bed.script.most_at_once.load(SeqCst) >= 100, "over a hundred records were in flight at once");
    second.stop().await;
}

/// Key order with one shared transaction at a time per partition, so what becomes ready while it
/// runs certainly queues for the next.
fn one_commit_at_a_time(bed: &RuntimeBed) -> ConsumerSettings {
    let mut settings = key_ordered(bed);
    settings.group_commits = 1;
    settings
}

/// Transactions that wrote the bed's effect rows (rows written by one share its id, `xmin`).
async fn transactions(bed: &RuntimeBed) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM effects").fetch_one(&bed.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_ready_while_a_commit_runs_share_the_next() {
    let bed = RuntimeBed::spawn(1).await;
    let producer = bed.broker.producer();
    let mut ids = Vec::new();
    for k in 0..120 {
        ids.extend(bed.publish_with(&producer, &format!("key-{k}"), Some(0), 1).await);
    }
    // The first record holds the partition's transaction for a second.
    bed.script.plan(ids[0], Plan::Slow(Duration::from_secs(1)));
    let running = bed.start(one_commit_at_a_time(&bed));
    let n = ids.len() as i64;
    eventually(WAIT, "every record handled", || async { bed.effect_totals().await.0 == n }).await;
    assert_eq!(bed.effect_totals().await, (n, n), "each record handled exactly once");
    let transactions = transactions(&bed).await;
    assert!(transactions <= n / 4, "{n} records committed in {transactions} transactions: ready records share one");
    let again = ids.iter().filter(|id| bed.script.calls(**id).len() > 1).count();
    assert_eq!(again, 0, "no shared commit failed, so no record ran twice");
    eventually(WAIT, "everything committed", || async { bed.committed(0) == Some(n) }).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_failing_in_a_shared_commit_sends_the_others_back_to_commit_alone() {
    let bed = RuntimeBed::spawn(1).await;
    let producer = bed.broker.producer();
    let mut ids = Vec::new();
    for k in 0..40 {
        ids.extend(bed.publish_with(&producer, &format!("key-{k}"), Some(0), 1).await);
    }
    // While the first record holds the transaction, the other 39 queue for the next one, where
    // three of them fail their first attempt.
    bed.script.plan(ids[0], Plan::Slow(Duration::from_secs(1)));
    let failing = [ids[5], ids[10], ids[15]];
    for id in failing {
        bed.script.plan(id, Plan::FailTimes(1));
    }
    let running = bed.start(one_commit_at_a_time(&bed));
    let n = ids.len() as i64;
    eventually(WAIT, "every record handled", || async { bed.effect_totals().await.0 == n }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(bed.effect_totals().await, (n, n), "each record handled exactly once");
    for id in failing {
        // Attempt 1 in the shared commit (rolled back, unless an earlier failure in it stopped
        // it before this record) and again alone, then attempt 2 from the retry topic.
        let attempts: Vec<u32> = bed.script.calls(id).iter().map(|(_, attempt)| *attempt).collect();
        assert!(attempts == [1, 2] || attempts == [1, 1, 2], "{id}: its attempts {attempts:?}");
    }
    // The handler ran in the shared commit for the records queued before its first failure,
    // then again for each alone: twice at attempt 1. Never so when each record commits alone.
    let twice = ids.iter().filter(|id| bed.script.calls(**id).iter().filter(|(_, attempt)| *attempt == 1).count() == 2);
    assert!(twice.count() >= 1, "a shared commit failed and its records ran again alone");
    eventually(WAIT, "everything committed", || async { bed.committed(0) == Some(n) }).await;
    running.stop().await;
}

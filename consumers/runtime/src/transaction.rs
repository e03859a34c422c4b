//! The one transaction every handled record goes through, alone or with the rest of its batch.
//! First, with no transaction open, the handler's `call_out` runs for the records not handled
//! yet (provider calls; see [`Handler::call_out`]). Then the dedupe rows `(group, event_id)` are inserted (a duplicate's insert does nothing, and a
//! concurrent duplicate waits on the row lock), the handler's `prepare_batch` takes its locks,
//! the handler runs once per new event, and one commit makes the side effects and the dedupe
//! rows durable together. Any failure rolls all of it back.

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use futures::{TryStreamExt, stream};
use tracing::Instrument;
use uuid::Uuid;

use crate::{ConsumedEvent, Failure, Handler, partition::Shared};

/// What a committed transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Committed {
    /// Events handled for the first time.
    pub processed: usize,
    /// Events this group had handled before (a redelivery).
    pub deduped: usize,
}

/// Handles `events` (one partition's, in order; at least one) in one transaction; its time,
/// committed or not, is `orderflow_consumer_handler_seconds`.
pub(crate) async fn handle<H: Handler>(shared: &Shared<H>, events: &[ConsumedEvent]) -> Result<Committed, Failure> {
    let started = Instant::now();
    let result = run(shared, events).await;
    observe(shared, events, started);
    result
}

/// Counts the time since `started` spent handling `events` in `orderflow_consumer_handler_seconds`.
pub(crate) fn observe<H>(shared: &Shared<H>, events: &[ConsumedEvent], started: Instant) {
    let (group, topic) = (shared.settings.group.as_str(), events[0].topic.as_str());
    shared.metrics.handler_seconds.with_label_values(&[group, topic]).observe(started.elapsed().as_secs_f64());
}

async fn run<H: Handler>(shared: &Shared<H>, events: &[ConsumedEvent]) -> Result<Committed, Failure> {
    call_out(shared, events).await?;
    let handled = commit(shared, events).await?;
    Ok(Committed { processed: handled.len(), deduped: events.len() - handled.len() })
}

/// The transaction alone (the call-outs done): the dedupe rows, the handler's work, one commit.
/// Returns the ids of the events handled for the first time.
pub(crate) async fn commit<H: Handler>(shared: &Shared<H>, events: &[ConsumedEvent]) -> Result<HashSet<Uuid>, Failure> {
    assert!(!events.is_empty(), "a transaction handles at least one event");
    let group = shared.settings.group.as_str();
    let mut tx = shared.pool.begin().await?;
    // A frozen consumer's transaction ends at the server instead of holding its locks.
    let idle_limit = shared.settings.transaction_idle_limit.as_millis().clamp(1, i32::MAX as u128) as i32;
    sqlx::query("SELECT set_config('idle_in_transaction_session_timeout', $1, true)")
        .bind(idle_limit.to_string())
        .execute(&mut *tx)
        .await?;
    // Where each record was first published (a shared commit of retry records mixes them).
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    let partitions: Vec<i32> = events.iter().map(|e| e.partition).collect();
    let offsets: Vec<i64> = events.iter().map(|e| e.offset).collect();
    let claimed: HashSet<Uuid> = sqlx::query_scalar(
        "INSERT INTO processed_events (consumer_group, event_id, topic, kafka_partition, kafka_offset)
         SELECT $1, id, t, p, o FROM unnest($2::uuid[], $3::text[], $4::int[], $5::bigint[]) AS r(id, t, p, o)
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(group)
    .bind(&ids)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    if claimed.is_empty() {
        tracing::debug!(group, events = events.len(), "duplicates skipped");
        return Ok(HashSet::new());
    }
    shared.handler.prepare_batch(&mut tx, events).await?;
    let mut handled = HashSet::new();
    for event in events.iter().filter(|e| claimed.contains(&e.event_id)) {
        // The same event twice in one batch (a producer retry) is handled once.
        if handled.insert(event.event_id) {
            shared.handler.handle(&mut tx, event).instrument(event.span.clone()).await?;
        }
    }
    tx.commit().await?;
    Ok(handled)
}

/// The handler's work outside the transaction, for the events that have some and that this
/// group has not handled yet: one key's events in order, up to `call_out_concurrency` keys at
/// once. The first failure stops the rest (what finished is recorded by the handler and is not
/// repeated).
pub(crate) async fn call_out<H: Handler>(shared: &Shared<H>, events: &[ConsumedEvent]) -> Result<(), Failure> {
    let wanted: Vec<&ConsumedEvent> = events.iter().filter(|e| shared.handler.calls_out(e.event_type())).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = wanted.iter().map(|e| e.event_id).collect();
    let handled: HashSet<Uuid> =
        sqlx::query_scalar("SELECT event_id FROM processed_events WHERE consumer_group = $1 AND event_id = ANY($2)")
            .bind(&shared.settings.group)
            .bind(&ids)
            .fetch_all(&shared.pool)
            .await?
            .into_iter()
            .collect();
    let mut chains: Vec<Vec<&ConsumedEvent>> = Vec::new();
    let mut by_key: HashMap<Option<&str>, usize> = HashMap::new();
    for event in wanted.into_iter().filter(|e| !handled.contains(&e.event_id)) {
        let chain = *by_key.entry(event.key.as_deref()).or_insert_with(|| {
            chains.push(Vec::new());
            chains.len() - 1
        });
        chains[chain].push(event);
    }
    stream::iter(chains.into_iter().map(Ok))
        .try_for_each_concurrent(shared.settings.call_out_concurrency.max(1), |chain| async move {
            for event in chain {
                shared.handler.call_out(&shared.pool, event).instrument(event.span.clone()).await?;
            }
            Ok(())
        })
        .await
}

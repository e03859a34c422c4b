//! The consume loop every orderflow consumer runs. A service writes a [`Handler`]; this runtime
//! owns the rest: decoding, dedupe, transactions, retries, dead-lettering, backpressure,
//! rebalances and offset commits.
//!
//! Guarantee: at-least-once delivery, effectively-once side effects. For each record:
//! decode (and check the order contract) → the handler's provider calls, if it makes any, with
//! no transaction open ([`Handler::call_out`]: intent, call, outcome, each committed under an
//! idempotency key) → open a transaction → insert the dedupe row `(group, event_id)` (a
//! duplicate stops here, and a concurrent duplicate waits on the row lock) → the handler's side
//! effect in the same transaction → commit → store the offset. Offsets are committed only for records whose
//! transaction committed or that were forwarded (retry topic, DLT) with the broker's ack —
//! periodically, on revoke (after the records in hand finish) and on shutdown.
//!
//! In partition order ([`Ordering::Partition`]), records of one partition are handled in order;
//! partitions run concurrently, at most `max_in_flight` at once. In key order
//! ([`Ordering::Key`], [`key_order`]), records of one partition with different keys run
//! concurrently and each key's in order, and the stored offset stays below the lowest
//! unfinished record. In partition order what a partition has queued (up to `batch_size`) is
//! handled in one transaction — one dedupe insert, the handlers, one commit — and on any failure
//! in the batch the batch is rolled back and handled record by record, so a failure is treated
//! exactly as it would be alone; in key order the records whose call-outs finished together
//! share a transaction the same way ([`group_commit`]). A partition whose queue is full is paused (fetching stops,
//! polling goes on, so a slow handler never overruns `max.poll.interval.ms`) and resumed when
//! its queue drains to half.
//!
//! Failures:
//! - Poison (undecodable, unknown schema, no event id, handler says `Dead`) goes to
//!   `<topic>.<group>.DLT` at once with the reason in headers; the partition moves on.
//! - `Retry` (transient, the record's own problem) re-publishes the record to
//!   `<topic>.<group>.retry`, due after exponential backoff with full jitter, and the source
//!   partition moves on (non-blocking retries). The group consumes its retry topics and holds
//!   each retry record until due. After `max_attempts` handler attempts: the DLT.
//! - `Unavailable` (a dependency is down, not the record's fault) waits in place with capped
//!   backoff for as long as it takes, spending no attempts: the partition pauses rather than
//!   burning retries into the DLT.
//!
//! Where each part lives: [`fetch_loop`] (poll, hand out, commit, shut down), [`partition`]
//! (one partition's queue, pause/resume and worker), [`delivery`] (a record or batch to a
//! final state; what a failure means), [`transaction`] (dedupe + handler + commit, one code path
//! for a batch and a single record), [`dlt`] (retry and dead-letter records), [`context`]
//! (rebalance hooks).
//!
//! Ordering trade-off: while a record is in the retry topic, later records with the same key
//! are handled before it. Handlers must therefore accept events of one order out of order
//! (every orderflow handler checks the order's state and version, never the arrival order).
//! `Unavailable` keeps order, because it holds the partition. `Backpressure` is the same wait,
//! for as long as the dependency asks (`Retry-After`, an open circuit breaker).
//!
//! The retry mode that keeps order ([`RetryMode::Quarantine`], key order only; [`quarantine`]):
//! instead of the retry topic, a record asking for another try is parked in the service's
//! database with its key held; the key's later records are parked behind it while the
//! partition's other keys flow, a parked record counts as finished for offsets (the commit is
//! never pinned), and a partition's new owner loads its parked records before reading Kafka. The
//! key's head is retried when due; once it is handled the rest drain in offset order, and once it
//! is dead-lettered they resume or follow it to the DLT ([`AfterDeadLetter`]).

mod context;
mod delivery;
mod dlt;
pub mod dlt_tools;
mod failure;
mod fetch_loop;
mod group_commit;
mod key_order;
pub mod metrics;
mod partition;
mod quarantine;
pub mod retention;
pub mod rewind;
mod settings;
pub mod status;
mod transaction;

use std::{collections::HashMap, future::Future};

use orderflow_schemas::{Decoded, headers};
use rdkafka::Message;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use context::RuntimeContext;
pub use delivery::backoff_ceiling;
pub use dlt::{dlt_topic, retry_headers, retry_topic};
pub use failure::{Failure, classify_sqlstate};
pub use fetch_loop::{run, run_service, run_service_with};
pub use settings::{AfterDeadLetter, ConsumerArgs, ConsumerSettings, Ordering, RetryMode, RuntimeArgs, defaults};

/// Applies the dedupe-store migration (idempotent; shares the service's database).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    orderflow_platform::migrations::run(sqlx::migrate!("./migrations"), pool, "consumer-runtime (dedupe)").await
}

/// A decoded record and where it came from.
#[derive(Debug, Clone)]
pub struct ConsumedEvent {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// 1 on the first delivery; n on the (n-1)th retry.
    pub attempt: u32,
    pub key: Option<String>,
    pub event_id: Uuid,
    pub headers: HashMap<String, String>,
    pub decoded: Decoded,
    /// The record's span: a child of the span that produced it (its `traceparent` header), the
    /// parent of whatever the handler does.
    pub span: tracing::Span,
    /// The `traceparent` that makes the next hop (an event this record causes) a child of
    /// [`Self::span`].
    next_traceparent: Option<String>,
}

impl ConsumedEvent {
    pub fn event_type(&self) -> &str {
        &self.decoded.event_type
    }

    /// The record as a typed event that meets the order contract; what does not decode or
    /// breaks the contract is poison (`invalid_event`, `contract_violation`, every broken rule
    /// named), dead-lettered at once.
    pub fn decode<E: orderflow_schemas::events::Event>(&self) -> Result<E, Failure> {
        let event = E::from_avro(&self.decoded.value).map_err(|e| Failure::dead("invalid_event", e.to_string()))?;
        orderflow_schemas::contract::check(&event).map_err(|e| Failure::dead("contract_violation", e.to_string()))?;
        Ok(event)
    }

    /// What an event caused by this record carries as its `traceparent`: this record's span,
    /// or the incoming value when no tracer is installed.
    pub fn traceparent(&self) -> Option<&str> {
        self.next_traceparent.as_deref().or_else(|| self.headers.get(headers::TRACEPARENT).map(String::as_str))
    }

    pub(crate) fn new(
        group: &str,
        message: &rdkafka::message::OwnedMessage,
        origin: (&str, i32, i64),
        attempt: u32,
        event_id: Uuid,
        headers: HashMap<String, String>,
        decoded: Decoded,
    ) -> Self {
        let (topic, partition, offset) = origin;
        let span = tracing::info_span!(
            "consume",
            otel.name = format!("{topic} process"),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.destination.name = topic,
            messaging.consumer.group.name = group,
            messaging.kafka.partition = partition,
            messaging.kafka.offset = offset,
            event_type = decoded.event_type.as_str(),
            attempt,
            trace_id = tracing::field::Empty,
        );
        orderflow_platform::trace::continue_trace(
            &span,
            headers.get(orderflow_schemas::headers::TRACEPARENT).map(String::as_str),
        );
        let next_traceparent = orderflow_platform::trace::traceparent_of(&span);
        ConsumedEvent {
            topic: topic.to_string(),
            partition,
            offset,
            attempt,
            key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            event_id,
            headers,
            decoded,
            span,
            next_traceparent,
        }
    }
}

/// A service's reaction to one event: [`Handler::handle`] inside the runtime's transaction,
/// and, for a handler that calls a provider, [`Handler::call_out`] before it with none open.
pub trait Handler: Send + Sync + 'static {
    /// Whether this service reacts to an event type at all. Others are acknowledged without a
    /// transaction or a dedupe row (one topic carries every lifecycle event).
    fn handles(&self, _event_type: &str) -> bool {
        true
    }

    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a ConsumedEvent,
    ) -> impl Future<Output = Result<(), Failure>> + Send + 'a;

    /// Whether [`Handler::call_out`] has work for this event type (the runtime then checks the
    /// dedupe store before the transaction, so a handled record never calls out again).
    fn calls_out(&self, _event_type: &str) -> bool {
        false
    }

    /// Work that must not hold a transaction or a connection open: a call to a provider. It
    /// runs before the record's transaction, for records this group has not handled yet; one
    /// order's records (one key) in order, different keys concurrently. It may run again for
    /// the same record (a crash before the commit, a retry, a batch done again one by one), so
    /// it must be idempotent: commit the intent under an idempotency key, call, commit the
    /// outcome; [`Handler::handle`] then applies the recorded outcome in the transaction, with
    /// the dedupe row and the events it causes. Connections come from `pool` one statement at
    /// a time, so a slow provider never holds one.
    fn call_out<'a>(
        &'a self,
        pool: &'a PgPool,
        event: &'a ConsumedEvent,
    ) -> impl Future<Output = Result<(), Failure>> + Send + 'a {
        let _ = (pool, event);
        async { Ok(()) }
    }

    /// Deletes this handler's per-event rows older than `before` (the dedupe horizon), in
    /// batches ([`retention::in_batches`]), never the business keys that absorb a late replay;
    /// returns the rows deleted per table.
    fn prune<'a>(
        &'a self,
        pool: &'a PgPool,
        before: chrono::DateTime<chrono::Utc>,
    ) -> impl Future<Output = sqlx::Result<Vec<(&'static str, u64)>>> + Send + 'a {
        let _ = (pool, before);
        async { Ok(Vec::new()) }
    }

    /// Runs once at the start of a batch transaction, before `handle` is called for each event
    /// (some of which may turn out to be duplicates). A handler whose events lock shared rows
    /// takes those locks here, in a fixed order, so that two partitions' batches never
    /// deadlock. An error sends the batch down the one-by-one path.
    fn prepare_batch<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [ConsumedEvent],
    ) -> impl Future<Output = Result<(), Failure>> + Send + 'a {
        let _ = (tx, events);
        async { Ok(()) }
    }
}

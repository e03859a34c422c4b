//! The consumer's rebalance hooks. On revoke, before librdkafka gives the partitions away, the
//! revoked partitions' workers are told to stop, the record each has in hand is given up to
//! `revoke_grace` to finish, and the offsets stored so far are committed synchronously — so the
//! next owner starts exactly after the last committed side effect instead of re-reading the
//! last commit interval.

use std::{sync::Arc, time::Instant};

use rdkafka::{
    ClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    types::RDKafkaErrorCode,
};

use crate::{metrics::ConsumerMetrics, partition::Partitions};

pub struct RuntimeContext {
    pub(crate) group: String,
    pub(crate) partitions: Arc<Partitions>,
    pub(crate) metrics: ConsumerMetrics,
    pub(crate) revoke_grace: std::time::Duration,
}

impl ClientContext for RuntimeContext {}

impl RuntimeContext {
    /// Waits for the revoked workers' records in hand. This callback runs on the task that
    /// polls the consumer; on a multi-threaded runtime the wait moves off the async threads so
    /// the workers can finish. A single-threaded runtime cannot run them while we wait: there
    /// the records in hand are abandoned (the next owner re-reads them; dedupe keeps that safe).
    fn wait_for_in_flight(&self, states: &[Arc<crate::partition::PartitionState>]) {
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi_threaded {
            return;
        }
        let deadline = Instant::now() + self.revoke_grace;
        tokio::task::block_in_place(|| {
            while states.iter().any(|s| s.is_busy()) && Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
    }
}

impl ConsumerContext for RuntimeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else { return };
        let started = Instant::now();
        let states = self.partitions.take(revoked);
        for state in &states {
            state.stop();
        }
        self.wait_for_in_flight(&states);
        let unfinished = states.iter().filter(|s| s.is_busy()).count();
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
            Err(error) => tracing::warn!(%error, "commit on revoke failed; the next owner re-reads (dedupe drops it)"),
        }
        let took = started.elapsed();
        self.metrics.rebalances.with_label_values(&[&self.group, "revoke"]).inc();
        self.metrics.revoke_seconds.with_label_values(&[&self.group]).observe(took.as_secs_f64());
        tracing::info!(group = %self.group, partitions = revoked.count(), unfinished, took_ms = took.as_millis() as u64,
            "partitions revoked: in-flight records finished, offsets committed");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                // librdkafka keeps an application pause on a partition across revoke and assign
                // (only its own pause is cleared): a partition we paused while its queue was full
                // and that comes back to us would never be fetched again. Nothing is parked for
                // a new assignment, so every assigned partition starts resumed.
                if let Err(error) = consumer.resume(assigned) {
                    tracing::warn!(group = %self.group, %error, "could not resume the assigned partitions");
                }
                self.metrics.rebalances.with_label_values(&[&self.group, "assign"]).inc();
                tracing::info!(group = %self.group, partitions = assigned.count(), "partitions assigned");
            }
            Rebalance::Error(error) => tracing::warn!(group = %self.group, %error, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// A shared handle on the consumer whose drops never block the caller. Closing a consumer
/// leaves the group, and its revoke callback commits synchronously — which, with the broker
/// gone, can wait for ever. Every handle is therefore released on a thread of its own, so
/// neither a task, a blocking-pool job nor a runtime shutting down ever waits on the close.
#[derive(Clone)]
pub(crate) struct ConsumerHandle(Option<std::sync::Arc<rdkafka::consumer::StreamConsumer<RuntimeContext>>>);

impl ConsumerHandle {
    pub fn new(consumer: rdkafka::consumer::StreamConsumer<RuntimeContext>) -> Self {
        ConsumerHandle(Some(std::sync::Arc::new(consumer)))
    }
}

impl ConsumerHandle {
    /// Lets this last handle go and waits, up to `limit`, until the consumer has closed: the
    /// caller returns with nothing of the consumer still running. (A process that exited while a
    /// consumer was closing on a detached thread, mid-TLS, aborted in OpenSSL's teardown.) The
    /// other handles — the workers', a commit's thread — are let go on threads of their own
    /// first; past `limit` the close goes on detached, as any drop's.
    pub async fn close(mut self, limit: std::time::Duration) {
        let Some(consumer) = self.0.take() else { return };
        let deadline = tokio::time::Instant::now() + limit;
        while std::sync::Arc::strong_count(&consumer) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let (done, closed) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            drop(consumer);
            let _ = done.send(());
        });
        if tokio::time::timeout_at(deadline, closed).await.is_err() {
            tracing::warn!("the consumer did not close within {limit:?}; it goes on closing in the background");
        }
    }
}

impl std::ops::Deref for ConsumerHandle {
    type Target = rdkafka::consumer::StreamConsumer<RuntimeContext>;

    fn deref(&self) -> &Self::Target {
        self.0.as_deref().expect("a consumer handle is only emptied when dropped")
    }
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            std::thread::spawn(move || drop(consumer));
        }
    }
}

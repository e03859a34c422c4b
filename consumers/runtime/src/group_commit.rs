//! Group commit for key order: the records of one partition whose call-outs have finished share
//! one transaction.
//!
//! In key order each record runs on its own, but its transaction (dedupe row, handler, commit)
//! is a handful of round trips and a WAL flush that do not depend on the record. A record whose
//! call-out is done joins the partition's queue; a record that gets one of the partition's
//! `group_commits` places commits everything queued in one [`transaction::commit`], and
//! while every place is busy the records arriving queue for the next. The records of one commit
//! have different keys (key order runs one record of a key at a time), so their order within it
//! means nothing.
//!
//! If a shared transaction fails (one record's handler refuses it, a conflict), it is rolled
//! back and every record in it runs again alone ([`transaction::handle`]), where its failure gets
//! its own treatment — as a partition-order batch falls back to one by one. A transaction of one
//! record reports its own failure. The records sharing a transaction wait for all of it: a slow
//! one (a lock wait) delays the others of its commit, as in a partition-order batch.

use std::{collections::HashSet, sync::Mutex, time::Instant};

use tokio::sync::{Semaphore, oneshot};
use uuid::Uuid;

use crate::{
    ConsumedEvent, Failure, Handler,
    partition::Shared,
    transaction::{self, Committed},
};

/// A record waiting for its partition's next commit.
struct Waiter {
    event: ConsumedEvent,
    reply: oneshot::Sender<Joined>,
}

/// How a record's part in a shared commit ended.
#[derive(Debug)]
enum Joined {
    /// Committed: handled for the first time (true) or a duplicate.
    Committed(bool),
    /// Its transaction held only this record, and failed.
    Failed(Failure),
    /// A transaction of several failed: run it again alone.
    Alone,
}

/// One partition's commit queue.
pub(crate) struct GroupCommit {
    queue: Mutex<Vec<Waiter>>,
    /// A place to run a transaction of the queue.
    places: Semaphore,
}

impl GroupCommit {
    /// A partition's queue with `places` transactions at once (`group_commits`, at least one):
    /// records queue while every place is busy, so the transactions, not their number, grow
    /// with load; a slow transaction (a lock wait) holds one place, not the partition.
    pub fn new(places: usize) -> Self {
        GroupCommit { queue: Mutex::default(), places: Semaphore::new(places.max(1)) }
    }

    /// Handles `event` (its call-out first, alone) in a transaction shared with the partition's
    /// other records ready at the same time; None when that transaction held others and failed:
    /// the caller runs the record again alone.
    pub async fn handle<H: Handler>(
        &self,
        shared: &Shared<H>,
        event: &ConsumedEvent,
    ) -> Option<Result<Committed, Failure>> {
        let started = Instant::now();
        let events = std::slice::from_ref(event);
        if let Err(failure) = transaction::call_out(shared, events).await {
            transaction::observe(shared, events, started);
            return Some(Err(failure));
        }
        let joined = self.join(shared, event.clone()).await;
        transaction::observe(shared, events, started);
        match joined {
            Joined::Committed(true) => Some(Ok(Committed { processed: 1, deduped: 0 })),
            Joined::Committed(false) => Some(Ok(Committed { processed: 0, deduped: 1 })),
            Joined::Failed(failure) => Some(Err(failure)),
            Joined::Alone => None,
        }
    }

    /// Queues `event` and waits for the transaction that takes it: one that starts before this
    /// record gets a place, or the one it runs itself when it does (with everything queued).
    async fn join<H: Handler>(&self, shared: &Shared<H>, event: ConsumedEvent) -> Joined {
        let (reply, mut answer) = oneshot::channel();
        self.queue.lock().expect("commit queue lock").push(Waiter { event, reply });
        let place = tokio::select! {
            biased;
            // Taken and answered by a transaction started by another record (a closed channel:
            // that transaction was cancelled before answering).
            joined = &mut answer => return joined.unwrap_or(Joined::Alone),
            place = self.places.acquire() => place.expect("the commit places are never closed"),
        };
        let waiters = std::mem::take(&mut *self.queue.lock().expect("commit queue lock"));
        if !waiters.is_empty() {
            let (events, replies): (Vec<_>, Vec<_>) = waiters.into_iter().map(|w| (w.event, w.reply)).unzip();
            let result = transaction::commit(shared, &events).await;
            if events.len() > 1 {
                tracing::debug!(group = %shared.settings.group, records = events.len(), ok = result.is_ok(), "group commit");
            }
            answer_all(&events, replies, result);
        }
        drop(place);
        // Answered above, or by the transaction running that took this record before.
        answer.await.unwrap_or(Joined::Alone)
    }
}

/// Tells every record of a shared commit how it ended (the same event twice, a producer retry
/// without a key, counts once as handled).
fn answer_all(events: &[ConsumedEvent], replies: Vec<oneshot::Sender<Joined>>, result: Result<HashSet<Uuid>, Failure>) {
    match result {
        Ok(mut handled) => {
            for (event, reply) in events.iter().zip(replies) {
                let _ = reply.send(Joined::Committed(handled.remove(&event.event_id)));
            }
        }
        Err(failure) if replies.len() == 1 => {
            let _ = replies.into_iter().next().expect("one reply").send(Joined::Failed(failure));
        }
        Err(failure) => {
            tracing::debug!(records = replies.len(), %failure, "group commit failed; each record runs again alone");
            for reply in replies {
                let _ = reply.send(Joined::Alone);
            }
        }
    }
}

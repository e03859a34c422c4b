//! What each instance tells the ops console about its partitions, through its own database
//! (`consumer_instances`): how many it holds, which are paused and why, what each worker waits
//! for. The fetch loop records which partitions are paused (their queue is full); a worker
//! records what it waits for while it waits — a retry not yet due, a dependency that is down, a
//! dependency asking to slow down, the schema registry — through [`Waits::wait`], whose guard
//! clears it. A reporter writes both every [`EVERY`]; a stopping instance deletes its row.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

/// How often an instance reports.
pub const EVERY: Duration = Duration::from_secs(2);

type Place = (String, i32);

/// The partitions this instance holds and why any of them waits.
#[derive(Default)]
pub(crate) struct Waits {
    waiting: Mutex<BTreeMap<Place, (String, DateTime<Utc>)>>,
    paused: Mutex<BTreeSet<Place>>,
    assigned: Mutex<usize>,
}

/// Clears its partition's reason when dropped (the wait is over, or abandoned).
pub(crate) struct Waiting<'a>(&'a Waits, Place);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.lock().expect("waits lock").remove(&self.1);
    }
}

impl Waits {
    /// `topic`'s `partition` waits for `why` until the guard is dropped.
    pub fn wait(&self, topic: &str, partition: i32, why: String) -> Waiting<'_> {
        let place = (topic.to_string(), partition);
        self.waiting.lock().expect("waits lock").insert(place.clone(), (why, Utc::now()));
        Waiting(self, place)
    }

    /// The fetch loop's view: the partitions it holds, and those paused.
    pub fn set_partitions(&self, assigned: usize, paused: BTreeSet<Place>) {
        *self.assigned.lock().expect("waits lock") = assigned;
        *self.paused.lock().expect("waits lock") = paused;
    }

    /// (assigned, paused with their reasons, others waiting) as the report's JSON.
    fn report(&self) -> (i32, serde_json::Value, serde_json::Value) {
        let waiting = self.waiting.lock().expect("waits lock").clone();
        let paused = self.paused.lock().expect("waits lock").clone();
        let entry = |(topic, partition): &Place| {
            let (why, since) = waiting.get(&(topic.clone(), *partition)).cloned().unzip();
            json!({"topic": topic, "partition": partition, "waiting": why, "since": since.map(|s| s.to_rfc3339())})
        };
        let paused_json: Vec<_> = paused.iter().map(entry).collect();
        let waiting_json: Vec<_> = waiting.keys().filter(|p| !paused.contains(*p)).map(entry).collect();
        (*self.assigned.lock().expect("waits lock") as i32, json!(paused_json), json!(waiting_json))
    }

    /// Writes the report every [`EVERY`] until `stopped`, then deletes the row.
    pub async fn run_reporter(
        &self,
        pool: PgPool,
        group: String,
        instance: String,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.wait_for(|s| *s) => break,
            }
            let (assigned, paused, waiting) = self.report();
            let write = sqlx::query(
                "INSERT INTO consumer_instances (consumer_group, instance, assigned, paused, waiting, updated_at)
                 VALUES ($1, $2, $3, $4, $5, now())
                 ON CONFLICT (consumer_group, instance) DO UPDATE
                 SET assigned = $3, paused = $4, waiting = $5, updated_at = now()",
            )
            .bind(&group)
            .bind(&instance)
            .bind(assigned)
            .bind(paused)
            .bind(waiting)
            .execute(&pool);
            match tokio::time::timeout(EVERY, write).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::debug!(%error, "could not report the partitions' status"),
                Err(_) => tracing::debug!("reporting the partitions' status took longer than {EVERY:?}"),
            }
        }
        let gone = sqlx::query("DELETE FROM consumer_instances WHERE consumer_group = $1 AND instance = $2")
            .bind(&group)
            .bind(&instance)
            .execute(&pool);
        let _ = tokio::time::timeout(EVERY, gone).await;
    }
}

/// An instance's name in a report (this one's, payment's provider guard): the pod's
/// (`HOSTNAME`) or the machine's, its pid, and a short random suffix (one process may run
/// several consumers of one group, as tests do).
pub fn instance_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..6])
}

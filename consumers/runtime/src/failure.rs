//! Why a handler did not finish a record, and what each cause means for the partition: wait
//! for a dependency (`Unavailable`, `Backpressure`), try the record again later (`Retry`,
//! `Rejected`), run the transaction again at once (`Conflict`), or dead-letter it now (`Dead`).
//!
//! Database errors are classified by SQLSTATE class, so a deterministic refusal never holds a
//! partition: only a real outage (connection lost, server shutting down, out of resources, a
//! pool timeout) waits in place; a data exception or an integrity violation (classes 22, 23) is
//! the record's fault and ends in the DLT with its SQLSTATE (`sqlstate_22003`).

use std::time::Duration;

/// Why a handler did not finish a record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// Transient: try again later; after `max_attempts` the record is dead-lettered.
    #[error("retry: {0}")]
    Retry(String),
    /// The record's data was refused (a constraint, a value out of range): tried again later
    /// like `Retry` (another event may make it fit), then dead-lettered with `class`.
    #[error("rejected ({class}): {reason}")]
    Rejected { class: String, reason: String },
    /// The transaction lost a race with another one (serialization failure, deadlock): run it
    /// again at once, a few times, before it counts as a failed attempt.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A dependency is down: try again, with capped backoff, for as long as it takes.
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    /// The dependency asks for a pause of at least `wait` (a 429's `Retry-After`, an open
    /// circuit breaker, a spent retry budget): wait that long (plus up to 10% jitter) and try
    /// again, spending no attempts.
    #[error("dependency asks to wait {wait:?}: {reason}")]
    Backpressure { reason: String, wait: Duration },
    /// Permanent: dead-letter now with this reason.
    #[error("dead-letter: {class}: {reason}")]
    Dead { class: String, reason: String },
}

impl Failure {
    pub fn dead(class: &str, reason: impl Into<String>) -> Self {
        Failure::Dead { class: class.into(), reason: reason.into() }
    }
}

/// What a database error with this SQLSTATE means for the record that caused it.
pub fn classify_sqlstate(code: &str, message: String) -> Failure {
    let message = format!("database ({code}): {message}");
    match code {
        // Lost a race: the same transaction again succeeds.
        "40001" | "40P01" => return Failure::Conflict(message),
        // The server is going away or cannot take the connection now.
        "57P01" | "57P02" | "57P03" => return Failure::Unavailable(message),
        _ => {}
    }
    match code.get(..2).unwrap_or_default() {
        // Connection exception, insufficient resources, program limit / system error, internal
        // error: the database, not the record.
        "08" | "53" | "58" | "XX" => Failure::Unavailable(message),
        // Invalid authorization, undefined or inaccessible objects (a migration not applied,
        // a missing grant): the deployment, not the record — wait for the operator rather than
        // dead-letter everything.
        "28" | "3D" | "3F" | "42" => Failure::Unavailable(message),
        // Data exception, integrity constraint violation, and anything else the server refuses
        // for this statement: the record's fault.
        _ => Failure::Rejected { class: format!("sqlstate_{code}"), reason: message },
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) => match db.code() {
                Some(code) => classify_sqlstate(&code, db.message().to_string()),
                None => Failure::Unavailable(format!("database: {e}")),
            },
            // The connection or the pool, not the record.
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Configuration(_) => Failure::Unavailable(format!("database: {e}")),
            // A row the handler expected is not there (yet): another event may bring it.
            sqlx::Error::RowNotFound => Failure::Retry(format!("database: {e}")),
            // A value that does not decode or encode: the record's data.
            _ => Failure::Rejected { class: "database_value".into(), reason: format!("database: {e}") },
        }
    }
}

impl From<orderflow_outbox::EnqueueError> for Failure {
    fn from(e: orderflow_outbox::EnqueueError) -> Self {
        match e {
            orderflow_outbox::EnqueueError::Codec(e) if e.is_retryable() => Failure::Unavailable(e.to_string()),
            orderflow_outbox::EnqueueError::Codec(e) => Failure::dead(e.class(), e.to_string()),
            orderflow_outbox::EnqueueError::Database(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(code: &str) -> String {
        match classify_sqlstate(code, "m".into()) {
            Failure::Unavailable(_) => "unavailable".into(),
            Failure::Conflict(_) => "conflict".into(),
            Failure::Rejected { class, .. } => class,
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn an_outage_waits() {
        for code in ["08006", "08001", "57P01", "57P02", "57P03", "53100", "53200", "53300", "58030", "XX000"] {
            assert_eq!(class(code), "unavailable", "{code}");
        }
    }

    #[test]
    fn a_lost_race_runs_again() {
        assert_eq!(class("40001"), "conflict");
        assert_eq!(class("40P01"), "conflict");
    }

    #[test]
    fn a_data_exception_or_integrity_violation_is_the_records_fault_with_its_sqlstate() {
        for code in ["22003", "22012", "22P02", "23505", "23503", "23514"] {
            assert_eq!(class(code), format!("sqlstate_{code}"), "{code}");
        }
    }

    #[test]
    fn a_deployment_problem_waits_for_the_operator() {
        for code in ["42P01", "42703", "42501", "28P01", "3D000"] {
            assert_eq!(class(code), "unavailable", "{code}");
        }
    }
}

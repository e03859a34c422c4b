//! Kafka record headers: the ones every orderflow event carries (set by the outbox relay or any
//! producer), and the ones the consumer runtime adds to the copies it forwards to a group's
//! retry and dead-letter topics. Producers, the runtime, the DLT tools and the tests name them
//! from here.

/// The event's id (a UUID): what consumers dedupe on.
pub const EVENT_ID: &str = "event_id";
/// The event's type, e.g. `OrderPlaced` (the record name of its schema).
pub const EVENT_TYPE: &str = "event_type";
/// The schema version the producer wrote.
pub const SCHEMA_VERSION: &str = "schema_version";
/// W3C trace context: the span that produced the event.
pub const TRACEPARENT: &str = "traceparent";
/// When the change the event announces happened (RFC 3339), as its producer recorded it.
pub const OCCURRED_AT: &str = "occurred_at";

/// On a copy in a group's retry topic.
pub mod retry {
    /// Every retry header starts with this; a forwarded copy drops the old ones.
    pub const PREFIX: &str = "retry_";
    pub const ATTEMPTS: &str = "retry_attempts";
    pub const DUE_AT_MS: &str = "retry_due_at_ms";
    pub const ORIGINAL_TOPIC: &str = "retry_original_topic";
    pub const ORIGINAL_PARTITION: &str = "retry_original_partition";
    pub const ORIGINAL_OFFSET: &str = "retry_original_offset";
    pub const FIRST_FAILURE_AT: &str = "retry_first_failure_at";
    pub const LAST_ERROR: &str = "retry_last_error";
}

/// On a copy in a group's dead-letter topic.
pub mod dlt {
    /// Every dead-letter header starts with this; a replay drops them.
    pub const PREFIX: &str = "dlt_";
    pub const ORIGINAL_TOPIC: &str = "dlt_original_topic";
    pub const ORIGINAL_PARTITION: &str = "dlt_original_partition";
    pub const ORIGINAL_OFFSET: &str = "dlt_original_offset";
    pub const CONSUMER_GROUP: &str = "dlt_consumer_group";
    pub const ATTEMPTS: &str = "dlt_attempts";
    /// A short, stable class: `contract_violation`, `sqlstate_22003`, `retries_exhausted`, …
    pub const ERROR_CLASS: &str = "dlt_error_class";
    pub const ERROR_MESSAGE: &str = "dlt_error_message";
    pub const FIRST_FAILURE_AT: &str = "dlt_first_failure_at";
    pub const LAST_FAILURE_AT: &str = "dlt_last_failure_at";
}

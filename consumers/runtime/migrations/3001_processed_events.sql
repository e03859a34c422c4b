-- Dedupe store: one row per (consumer group, event) handled. Written in the same transaction as
-- the handler's side effect, so "processed" and "done" commit together or not at all.
CREATE TABLE processed_events (
    consumer_group  text NOT NULL,
    event_id        uuid NOT NULL,
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    processed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, event_id)
);

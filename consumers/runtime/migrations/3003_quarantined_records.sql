-- Quarantine (--retry-mode quarantine, key order): a record whose handler asked for a retry is
-- parked here instead of the retry topic, and so is every later record of its key, until the
-- key's records are handled (or dead-lettered) in offset order. A parked record counts as
-- finished for the group's offsets: the row is what keeps it, across crashes and rebalances.
-- `topic`/`kafka_partition`/`kafka_offset` are where the group read it (the partition whose
-- worker owns the row); `origin_*` where it was first published (a retry record's source).
CREATE TABLE quarantined_records (
    consumer_group   text NOT NULL,
    topic            text NOT NULL,
    kafka_partition  integer NOT NULL,
    kafka_offset     bigint NOT NULL,
    record_key       bytea NOT NULL,
    payload          bytea,
    header_names     text[] NOT NULL,
    header_values    bytea[] NOT NULL,
    record_timestamp_ms bigint,
    origin_topic     text NOT NULL,
    origin_partition integer NOT NULL,
    origin_offset    bigint NOT NULL,
    -- Handler attempts made; 0 for a record parked behind its key's failing one.
    attempts         integer NOT NULL DEFAULT 0,
    first_failure_at timestamptz,
    -- When the record may be tried again (NULL: as soon as it is the key's first).
    due_at           timestamptz,
    last_error       text,
    -- Set when, in `--quarantine-after-dead-letter follow`, an earlier record of the key was
    -- dead-lettered: this one follows it to the DLT unhandled.
    follows          text,
    parked_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, kafka_partition, kafka_offset)
);

CREATE INDEX quarantined_records_key ON quarantined_records (consumer_group, topic, kafka_partition, record_key, kafka_offset);

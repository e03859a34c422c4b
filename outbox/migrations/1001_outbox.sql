-- The transactional outbox. A row is written in the same transaction as the business change
-- it announces, and marked published only after the broker acknowledged it.
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- publish order
    event_id        uuid NOT NULL UNIQUE,
    topic           text NOT NULL,
    message_key     text NOT NULL,          -- the order id: one order's events share a partition
    event_type      text NOT NULL,
    schema_version  integer NOT NULL,
    payload         bytea NOT NULL,         -- framed at the source: Confluent wire format
    traceparent     text,
    occurred_at     timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz
);

-- What the relay scans, and its "no earlier unpublished event for this key" probe.
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_unpublished_by_key ON outbox (message_key, id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wake relays at commit time; one notification per inserting statement.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orderflow_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

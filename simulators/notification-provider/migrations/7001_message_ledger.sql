-- The simulated email/SMS provider's ledger: one row per idempotency key, i.e. per message
-- actually delivered to a customer. It is the test oracle for "exactly one message".
CREATE TABLE message_ledger (
    idempotency_key  text PRIMARY KEY,
    request_hash     bytea NOT NULL,
    id               uuid NOT NULL UNIQUE,
    channel          text NOT NULL CHECK (channel IN ('email', 'sms')),
    recipient        text NOT NULL,
    template         text NOT NULL,
    reference        text NOT NULL,
    requests         integer NOT NULL DEFAULT 1,  -- how often the key was sent (retries included)
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_ledger_reference ON message_ledger (reference);

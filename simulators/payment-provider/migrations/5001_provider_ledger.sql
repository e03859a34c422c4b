-- The simulated provider's ledger: one row per idempotency key. It is the test oracle: a
-- charge appears here once however often it was requested.
CREATE TABLE provider_ledger (
    idempotency_key  text PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('charge', 'refund')),
    request_hash     bytea NOT NULL,
    id               uuid NOT NULL UNIQUE,
    status           text NOT NULL,
    decline_code     text,
    amount_minor     bigint NOT NULL,
    currency         text NOT NULL,
    customer         text,
    reference        text NOT NULL,
    charge_id        uuid,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX provider_ledger_reference ON provider_ledger (reference);

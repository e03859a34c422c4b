-- Every provider call, recorded before it is made (PENDING, under its idempotency key) and
-- completed with its outcome, each in a commit of its own: no transaction is open while the
-- provider is called. The consumer's transaction then applies the outcome (the payments row,
-- the outbox event, the dedupe row). A crash between the call and the outcome resumes from
-- PENDING under the same key, and the provider answers with what it did the first time.
CREATE TABLE provider_calls (
    idempotency_key  text PRIMARY KEY,
    order_id         uuid NOT NULL,
    operation        text NOT NULL CHECK (operation IN ('charge', 'refund')),
    amount_minor     bigint NOT NULL,
    currency         text NOT NULL,
    status           text NOT NULL CHECK (status IN ('PENDING', 'APPROVED', 'DECLINED')),
    -- The provider's charge or refund reference (APPROVED), or its decline code (DECLINED).
    reference        text,
    decline_code     text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz
);
CREATE INDEX provider_calls_pending ON provider_calls (created_at) WHERE status = 'PENDING';

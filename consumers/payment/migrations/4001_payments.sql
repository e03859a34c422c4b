-- One payment per order. The row, its outcome event (outbox) and the dedupe record commit
-- together, after the provider answered.
CREATE TABLE payments (
    payment_id          uuid PRIMARY KEY,
    order_id            uuid NOT NULL UNIQUE,
    status              text NOT NULL CHECK (status IN ('AUTHORIZED', 'DECLINED')),
    amount_minor        bigint NOT NULL,
    currency            text NOT NULL,
    provider_reference  text,
    decline_reason      text,
    idempotency_key     text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);

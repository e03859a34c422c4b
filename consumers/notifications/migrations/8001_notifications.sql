-- Where to reach the customer of an order (from OrderPlaced).
CREATE TABLE contacts (
    order_id     uuid PRIMARY KEY,
    customer_id  text NOT NULL,
    email        text
);

-- One notification per (order, kind). The intent (PENDING) is committed before the provider is
-- called, with the idempotency key and the exact recipient, so every retry sends the same
-- request under the same key; SENT commits with the consumer's dedupe row.
CREATE TABLE notifications (
    order_id             uuid NOT NULL,
    kind                 text NOT NULL,
    channel              text NOT NULL CHECK (channel IN ('email', 'sms')),
    recipient            text NOT NULL,
    idempotency_key      text NOT NULL UNIQUE,
    status               text NOT NULL CHECK (status IN ('PENDING', 'SENT')),
    provider_message_id  uuid,
    created_at           timestamptz NOT NULL DEFAULT now(),
    sent_at              timestamptz,
    PRIMARY KEY (order_id, kind)
);

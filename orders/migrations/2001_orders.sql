-- Orders as accepted by order-api. One row per order; status moves forward under optimistic
-- concurrency (version), and every change is kept in order_status_history.
CREATE TABLE orders (
    order_id             uuid PRIMARY KEY,
    idempotency_key      text NOT NULL UNIQUE,
    request_fingerprint  bytea NOT NULL,       -- SHA-256 of the normalized request
    customer_id          text NOT NULL,
    customer_email       text,
    currency             text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    lines                jsonb NOT NULL,
    total_minor          bigint NOT NULL CHECK (total_minor >= 0),
    status               text NOT NULL,
    version              integer NOT NULL DEFAULT 1,
    traceparent          text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE order_status_history (
    order_id    uuid NOT NULL REFERENCES orders (order_id),
    version     integer NOT NULL,
    status      text NOT NULL,
    reason      text,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, version)
);

-- One row per order: each lifecycle fact set once, by event time, whatever the arrival order
-- or the number of deliveries. It is the source a recount reads.
CREATE TABLE order_facts (
    order_id            uuid PRIMARY KEY,
    placed_at           timestamptz,
    placed_total_minor  bigint,
    paid_at             timestamptz,
    paid_amount_minor   bigint,
    currency            text,
    payment_failed_at   timestamptz,
    shortage_at         timestamptz,
    cancelled_at        timestamptz
);

-- Per event-time minute: how many orders reached each step. Bumped in the same transaction
-- that first sets the fact, so aggregates = a recount of order_facts, always.
CREATE TABLE minute_counts (
    minute          timestamptz PRIMARY KEY,
    placed          bigint NOT NULL DEFAULT 0,
    paid            bigint NOT NULL DEFAULT 0,
    payment_failed  bigint NOT NULL DEFAULT 0,
    shortage        bigint NOT NULL DEFAULT 0,
    cancelled       bigint NOT NULL DEFAULT 0
);

-- Paid revenue per event-time minute and currency (never summed across currencies).
CREATE TABLE minute_revenue (
    minute         timestamptz NOT NULL,
    currency       text NOT NULL,
    paid_orders    bigint NOT NULL DEFAULT 0,
    revenue_minor  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, currency)
);

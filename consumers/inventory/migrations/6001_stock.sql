-- Stock per SKU. `available` can never go below zero: the reservation decrements with
-- `WHERE available >= qty`, and this CHECK refuses anything that slips past.
CREATE TABLE stock (
    sku         text PRIMARY KEY,
    available   integer NOT NULL CHECK (available >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One reservation decision per order, whatever the number of OrderPaid events announcing it.
CREATE TABLE reservations (
    order_id    uuid PRIMARY KEY,
    outcome     text NOT NULL CHECK (outcome IN ('RESERVED', 'SHORTAGE')),
    lines       jsonb NOT NULL,
    decided_at  timestamptz NOT NULL DEFAULT now()
);

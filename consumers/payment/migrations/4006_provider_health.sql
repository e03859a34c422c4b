-- Each payment instance's guard in front of the provider — its circuit breaker and adaptive
-- window — written every few seconds (consumers/payment/src/resilience/report.rs), so the ops
-- console shows them from the database, without Prometheus and without reaching the instances.
CREATE TABLE IF NOT EXISTS provider_health (
    instance     text PRIMARY KEY,
    breaker      text NOT NULL CHECK (breaker IN ('closed', 'half_open', 'open')),
    window_size  integer NOT NULL,
    window_max   integer NOT NULL,
    in_flight    integer NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

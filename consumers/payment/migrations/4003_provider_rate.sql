-- The payment provider's rate limit as one token bucket shared by every payment instance
-- (see consumers/payment/src/resilience.rs): each request takes a token in one UPDATE.
CREATE TABLE IF NOT EXISTS provider_rate_buckets (
    name         text PRIMARY KEY,
    rate_per_sec double precision NOT NULL CHECK (rate_per_sec > 0),
    burst        double precision NOT NULL CHECK (burst >= 1),
    tokens       double precision NOT NULL,
    refilled_at  timestamptz NOT NULL
);
